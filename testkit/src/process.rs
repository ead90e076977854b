//! Child processes read line by line, stopped with SIGTERM.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::WAIT;

/// Asks `pid` to stop (SIGTERM), as an operator's `systemctl stop` would.
fn sigterm(pid: u32) -> std::process::Command {
    let mut c = std::process::Command::new("kill");
    c.args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A child of an async test: stdout read line by line ([`Proc::line`]),
/// stderr kept as its log ([`Proc::log_until`], [`Proc::terminate`]);
/// killed if dropped.
pub struct Proc {
    pub child: tokio::process::Child,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Set once `log_until` started reading stderr.
    err: Option<tokio::io::Lines<BufReader<tokio::process::ChildStderr>>>,
    logged: String,
}

impl Proc {
    pub fn spawn(cmd: &mut tokio::process::Command) -> Proc {
        Proc::start(cmd.stderr(Stdio::piped()))
    }

    /// As [`Proc::spawn`] with stderr discarded: for a child that logs a
    /// lot and whose log nobody reads (a benchmark's).
    pub fn spawn_quiet(cmd: &mut tokio::process::Command) -> Proc {
        Proc::start(cmd.stderr(Stdio::null()))
    }

    fn start(cmd: &mut tokio::process::Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the program starts");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Proc {
            child,
            lines,
            err: None,
            logged: String::new(),
        }
    }

    /// Reads stderr until a line contains `needle`; returns that line.
    pub async fn log_until(&mut self, needle: &str) -> String {
        if self.err.is_none() {
            let stderr = self
                .child
                .stderr
                .take()
                .expect("stderr is read (not spawn_quiet)");
            self.err = Some(BufReader::new(stderr).lines());
        }
        let err = self.err.as_mut().unwrap();
        let logged = &mut self.logged;
        tokio::time::timeout(WAIT, async {
            while let Some(l) = err.next_line().await.unwrap() {
                logged.push_str(&l);
                logged.push('\n');
                if l.contains(needle) {
                    return l;
                }
            }
            panic!("the process ended before logging {needle:?}:\n{logged}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} logged in time:\n{}", self.logged))
    }

    /// The next line on stdout (within [`WAIT`]).
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line")
    }

    /// SIGTERM, then the exit status and what was logged.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("still running");
        let _ = tokio::process::Command::from(sigterm(pid)).status().await;
        if let Some(mut err) = self.err.take() {
            while let Ok(Some(l)) = err.next_line().await {
                self.logged.push_str(&l);
                self.logged.push('\n');
            }
        }
        let out = tokio::time::timeout(WAIT, self.child.wait_with_output())
            .await
            .expect("exited after SIGTERM")
            .unwrap();
        (
            out.status,
            self.logged + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

/// A child of the load harness (which runs outside any runtime): SIGTERM
/// on drop, then SIGKILL after 5 s.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    #[allow(clippy::disallowed_methods)] // outside any runtime
    fn drop(&mut self) {
        let _ = sigterm(self.0.id()).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdout read line by line on a thread of its own (16
/// lines buffered; stderr discarded).
pub fn spawn_lines(cmd: &mut std::process::Command) -> (Guard, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the program starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(child), rx)
}
