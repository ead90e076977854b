//! Descriptors and silent visitors (issue 22, item 8): the soft open-file
//! limit is raised at start, a full descriptor table makes `accept` back
//! off with one warning instead of spinning, and a visitor that says
//! nothing is closed after the first-byte deadline.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::bins::*;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `tunnel-server` under `sh` with `ulimit` flags applied first.
fn limited_server(home: &std::path::Path, ulimit: &str) -> tokio::process::Command {
    let std = server_cmd(home);
    let std = std.as_std();
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(std.get_program())
        .args(std.get_args());
    c
}

fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut w = line.split_whitespace().skip(3);
    (w.next().unwrap().into(), w.next().unwrap().into())
}

/// Also item 13: the state directory it creates is 0700.
#[tokio::test]
async fn the_soft_open_file_limit_is_raised_at_start() {
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("new/state");
    let (server, _, _) = ready_server(&mut limited_server(&state, "-S -n 256")).await;
    let (soft, hard) = open_files_limit(server.child.id().unwrap());
    assert_eq!(soft, hard, "soft {soft}, hard {hard}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_full_descriptor_table_backs_off_with_one_warning() {
    let home = tempfile::tempdir().unwrap();
    let (mut server, http, _) = ready_server(&mut limited_server(home.path(), "-n 96")).await;
    let http: std::net::SocketAddr = http.parse().unwrap();
    // Idle visitors, more than the process may hold descriptors for.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(TcpStream::connect(http).await.unwrap());
    }
    let warned = server.log_until("accept failed").await;
    assert!(warned.contains("LimitNOFILE"), "{warned}");
    drop(idle);
    // Served again once descriptors are free (the connection waits in the
    // backlog meanwhile).
    let r = raw_exchange(
        http,
        b"GET / HTTP/1.1\r\nHost: nobody.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
}

/// A visitor that connects and says nothing is closed at the first-byte
/// deadline (it used to be kept for the 60 s keep-alive idle time).
#[tokio::test]
async fn a_silent_visitor_is_closed_at_the_first_byte_deadline() {
    let mut config = tunnel_server::Config::default();
    config.timeouts.first_byte = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0);
    server.stop().await;
}
