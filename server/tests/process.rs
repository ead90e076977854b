//! The binaries as a user runs them: real processes, embedded defaults
//! (except port 0), the client finding the dev certificate by itself.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tunnel-server"))
}

/// The client binary sits next to the server's in the same target directory;
/// build it if this test runs alone.
async fn client_bin() -> PathBuf {
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

struct Proc {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Proc { child, lines }
    }
    async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line")
    }
    /// SIGTERM, then the exit status and what was logged.
    async fn terminate(self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        let out = tokio::time::timeout(WAIT, self.child.wait_with_output())
            .await
            .expect("exited after SIGTERM")
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn quickstart_with_real_processes() {
    let home = tempfile::tempdir().unwrap();
    let backend = Backend::start("laptop-app").await;
    let mut server = Proc::spawn(
        Command::new(server_bin())
            .args(["--http", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("TUNNEL_STATE_DIR"),
    );
    let ready = server.line().await;
    assert!(ready.starts_with("tunnel-server ready: "), "{ready}");
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_owned()
    };
    let http: std::net::SocketAddr = field("http=").parse().unwrap();
    let quic = field("quic=");
    assert!(home
        .path()
        .join(".local/state/tunnel-server/cert.pem")
        .exists());

    // No certificate flags: the client finds the dev server's certificate.
    let mut client = Proc::spawn(
        Command::new(client_bin().await)
            .args([
                "--server",
                &quic,
                "--expose",
                &backend.addr.port().to_string(),
            ])
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("TUNNEL_STATE_DIR"),
    );
    let url_line = client.line().await;
    let (url, local) = url_line.split_once(" -> ").expect("URL line");
    assert!(
        url.starts_with("http://") && url.ends_with(&format!(".localhost:{}", http.port())),
        "{url_line}"
    );
    assert_eq!(local, format!("http://localhost:{}", backend.addr.port()));

    let raw = raw_exchange(
        http,
        format!("GET /hello HTTP/1.1\r\nHost: {}\r\n\r\n", host_of(url)).as_bytes(),
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"hello from laptop-app");

    let (status, log) = client.terminate().await;
    assert!(status.success(), "client exit {status:?}: {log}");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "server exit {status:?}: {log}");
    assert!(log.contains("server stopped"), "{log}");
    backend.stop().await;
}

#[tokio::test]
async fn wrong_token_exits_non_zero_with_a_message() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        Command::new(server_bin())
            .args([
                "--http",
                "127.0.0.1:0",
                "--quic",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(home.path())
            .env("TUNNEL_TOKENS", "sesame,other"),
    );
    let ready = server.line().await;
    let quic = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("quic="))
        .unwrap()
        .to_owned();
    let out = tokio::time::timeout(
        WAIT,
        Command::new(client_bin().await)
            .args(["--server", &quic, "--expose", "9", "--server-cert"])
            .arg(home.path().join("cert.pem"))
            .env("TUNNEL_TOKEN", "not-sesame")
            .output(),
    )
    .await
    .expect("the client gave up without retrying")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: the server rejected the token"),
        "{stderr}"
    );
    let _ = server.terminate().await;
}

#[tokio::test]
async fn public_listener_without_token_refuses_to_start() {
    let out = Command::new(server_bin())
        .args(["--http", "0.0.0.0:0", "--quic", "127.0.0.1:0"])
        .env_remove("TUNNEL_TOKENS")
        .env("HOME", tempfile::tempdir().unwrap().path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without a token") && stderr.contains("--token"),
        "{stderr}"
    );
}
