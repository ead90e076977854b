//! The binaries as processes: where they are, and a child with its output
//! read line by line.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

pub use tunnel_testkit::process::Proc;
pub use tunnel_testkit::ready::field;

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
