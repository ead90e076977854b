//! The binaries as processes: where they are, and a child with its output
//! read line by line.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tunnel-server"))
}

/// The client binary sits next to the server's in the same target directory;
/// build it if this test runs alone.
pub async fn client_bin() -> PathBuf {
    let path =
        server_bin().with_file_name(format!("tunnel-client{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "tunnel-client", "--bin", "tunnel-client"])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }
    path
}

/// The client binary, its inspector on a free port (the default 4040 may be
/// taken on a shared machine; a taken port is only a warning anyway).
pub async fn client_cmd() -> Command {
    let mut c = Command::new(client_bin().await);
    c.env("TUNNEL_INSPECT", "127.0.0.1:0");
    c
}

/// `tunnel-server` on 127.0.0.1 port 0 with its state in `home`; callers
/// add flags and environment.
pub fn server_cmd(home: &std::path::Path) -> Command {
    let mut c = Command::new(server_bin());
    c.args([
        "--http",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--state-dir",
    ])
    .arg(home);
    c
}

/// The value of `key` (`http=`, `quic=`, ...) in the server's ready line.
pub fn field(ready: &str, key: &str) -> String {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {ready}"))
        .to_owned()
}

/// A server process with its ready line read: `(process, http, quic)`.
pub async fn ready_server(cmd: &mut Command) -> (Proc, String, String) {
    let mut server = Proc::spawn(cmd);
    let ready = server.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));
    (server, http, quic)
}

/// `tunnel-client --server QUIC --expose LOCAL` with its home (and so its
/// trust of the dev certificate) in `home`; its first URL line read.
pub async fn exposing_client(home: &std::path::Path, quic: &str, local: &str) -> (Proc, String) {
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", quic, "--expose", local])
            .env("HOME", home)
            .env("TUNNEL_STATE_DIR", home),
    );
    let url = client.line().await;
    (client, url)
}

pub struct Proc {
    pub child: Child,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Set once `log_until` started reading stderr.
    err: Option<tokio::io::Lines<BufReader<tokio::process::ChildStderr>>>,
    logged: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
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
            self.err = Some(BufReader::new(self.child.stderr.take().unwrap()).lines());
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
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line")
    }
    /// SIGTERM, then the exit status and what was logged.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
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

/// [`server_cmd`] with an https listener and `extra` arguments; returns it
/// once its ready line is read.
pub async fn https_server(home: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (Proc, String) {
    let mut server = Proc::spawn(
        server_cmd(home)
            .args(["--https", "127.0.0.1:0"])
            .args(extra),
    );
    let ready = server.line().await;
    (server, ready)
}

/// Runs a command to its end, quietly: whether it succeeded.
pub async fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}
