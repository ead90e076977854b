//! The client follows its laptop across networks: a real address change in
//! a network namespace the test makes itself, mid-download.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::bins::*;
use support::*;

use tokio::process::Command;
use tunnel_testkit::netns::Netns;

/// `ip netns exec NAME …` as a tokio command.
fn exec(ns: &Netns) -> Command {
    let [ip, rest @ ..] = ns.exec_prefix();
    let mut c = Command::new(ip);
    c.args(rest);
    c
}

/// Issue 9, active migration: the client's address changes in the middle
/// of a 50 MiB download (a laptop changing networks). The client notices,
/// moves to a new socket, QUIC migrates; the body is intact and the client
/// never reconnects.
#[tokio::test]
async fn the_client_migrates_when_its_address_changes_mid_download() {
    let net = format!("10.213.{}", std::process::id() % 250 + 1);
    let ns = match tokio::task::spawn_blocking(move || Netns::create("mig", &net))
        .await
        .unwrap()
    {
        Ok(ns) => std::sync::Arc::new(ns),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        Command::new(server_bin())
            .args([
                "--http",
                "127.0.0.1:0",
                "--quic",
                &format!("{}.1:0", ns.net),
            ])
            // Not loopback: a token is required.
            .env("TUNNEL_TOKENS", "migration-token-0123456789")
            .arg("--state-dir")
            .arg(home.path()),
    );
    let ready = server.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));
    let fingerprint = field(&ready, "fingerprint=");

    // The local app lives in the namespace: a file server for a 50 MiB file.
    const N: usize = 50 << 20;
    let files = tempfile::tempdir().unwrap();
    tokio::fs::write(files.path().join("big.bin"), pattern(0, N))
        .await
        .unwrap();
    let mut app = Proc::spawn(
        exec(&ns)
            .args([
                "python3",
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(files.path()),
    );
    let serving = app.line().await;
    let port = serving
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .unwrap_or_else(|| panic!("no port in {serving:?}"))
        .to_owned();

    let mut client = Proc::spawn(
        exec(&ns)
            .env("TUNNEL_INSPECT", "127.0.0.1:0")
            .arg(client_bin().await)
            .args([
                "--server",
                &quic,
                "--server-fingerprint",
                &fingerprint,
                "--token",
                "migration-token-0123456789",
                "--expose",
                &format!("127.0.0.1:{port}"),
            ]),
    );
    let url_line = client.line().await;
    let host = host_of(url_line.split(" -> ").next().unwrap());

    let mut tcp = tokio::net::TcpStream::connect(&http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::with_capacity(N + 4096);
    let mut chunk = vec![0u8; 1 << 16];
    let mut moved = false;
    let mut moved_at = None;
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the download kept moving")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
        if !moved && got.len() > 10 << 20 {
            moved = true;
            // The namespace's address moves from .2 to .3.
            let moving = ns.clone();
            tokio::task::spawn_blocking(move || moving.move_address(2, 3))
                .await
                .unwrap()
                .expect("the address moves");
            moved_at = Some(std::time::Instant::now());
            let said = client.log_until("migrating the connection").await;
            eprintln!(
                "{said} ({:?} after the address moved)",
                moved_at.unwrap().elapsed()
            );
        }
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
        if head_end.is_some_and(|h| got.len() >= h + 4 + N) {
            break;
        }
    }
    let h = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got[..h].starts_with(b"HTTP/1.") && got[9..12] == *b"200",
        "{:?}",
        String::from_utf8_lossy(&got[..h])
    );
    assert!(moved, "the download ended before the address moved");
    assert_eq!(got.len() - h, N, "the body was cut");
    assert!(
        got[h..] == pattern(0, N),
        "the body differs after the migration"
    );
    eprintln!(
        "50 MiB intact; the rest took {:?} after the address moved",
        moved_at.unwrap().elapsed()
    );

    let (_, log) = client.terminate().await;
    assert!(
        !log.contains("reconnecting") && !log.contains("retrying"),
        "the client reconnected instead of migrating:\n{log}"
    );
    let _ = app.terminate().await;
    let _ = server.terminate().await;
}
