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

/// A file server for `dir` on the namespace's loopback (the developer's
/// app): the process and its port.
async fn files_in(ns: &Netns, dir: &std::path::Path) -> (Proc, String) {
    let mut app = Proc::spawn(
        exec(ns)
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
            .arg(dir),
    );
    let serving = app.line().await;
    let port = serving
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .unwrap_or_else(|| panic!("no port in {serving:?}"))
        .to_owned();
    (app, port)
}

/// A namespace `tag` on `10.NET.x` for this test, or `None` (and the test
/// says it is skipped) where namespaces cannot be made.
async fn namespace(tag: &'static str, net: u8) -> Option<std::sync::Arc<Netns>> {
    let net = format!("10.{net}.{}", std::process::id() % 250 + 1);
    match tokio::task::spawn_blocking(move || Netns::create(tag, &net))
        .await
        .unwrap()
    {
        Ok(ns) => Some(std::sync::Arc::new(ns)),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// Issue 9, active migration: the client's address changes in the middle
/// of a 50 MiB download (a laptop changing networks). The client notices,
/// moves to a new socket, QUIC migrates; the body is intact and the client
/// never reconnects.
#[tokio::test]
async fn the_client_migrates_when_its_address_changes_mid_download() {
    let Some(ns) = namespace("mig", 213).await else {
        return;
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
    let (app, port) = files_in(&ns, files.path()).await;

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

/// Issue 25: a network whose one way out is an HTTP proxy. The client runs
/// in a namespace where iptables drops every packet leaving it except TCP
/// to tinyproxy (UDP included); the server and the proxy are outside.
/// With nothing but `HTTPS_PROXY` set, the client gets its URL through the
/// proxy and a visitor gets the app's file (and the same through a SOCKS5
/// proxy from `ALL_PROXY`); a direct connection from the namespace gets
/// nowhere.
#[tokio::test]
async fn behind_only_an_http_proxy_the_client_gets_its_url_from_https_proxy() {
    let Some(ns) = namespace("prx", 212).await else {
        return;
    };
    let here = ns.here();
    let home = tempfile::tempdir().unwrap();
    const TOKEN: &str = "proxy-only-token-0123456789";
    let mut server = Proc::spawn(
        Command::new(server_bin())
            .args(["--http", "127.0.0.1:0", "--domain", "proxied.test"])
            .args([
                "--https",
                &format!("{here}:0"),
                "--quic",
                &format!("{here}:0"),
            ])
            .env("TUNNEL_TOKENS", TOKEN)
            .arg("--state-dir")
            .arg(home.path()),
    );
    let ready = server.line().await;
    let (https, quic) = (field(&ready, "https="), field(&ready, "quic="));
    let fingerprint = field(&ready, "fingerprint=");

    let conf = tempfile::tempdir().unwrap();
    let allow = format!("{}.0/24", ns.net);
    let (mut proxy, proxy_port) = support::proxy::tinyproxy(conf.path(), here, &allow, "").await;
    let proxy_addr = std::net::SocketAddr::new(here, proxy_port);
    // And a SOCKS5 proxy (microsocks) beside it; it prints nothing, so it
    // is ready when its port accepts.
    let socks_addr = std::net::SocketAddr::new(here, tunnel_testkit::net::free_port());
    let socks = Proc::spawn(Command::new("microsocks").args([
        "-i",
        &here.to_string(),
        "-p",
        &socks_addr.port().to_string(),
    ]));
    tokio::task::spawn_blocking(move || tunnel_testkit::net::wait_addr(socks_addr))
        .await
        .unwrap();
    let walled = ns.clone();
    tokio::task::spawn_blocking(move || walled.only_tcp_out_to(&[proxy_addr, socks_addr]))
        .await
        .unwrap()
        .expect("iptables rules in the namespace (install iptables)");

    let files = tempfile::tempdir().unwrap();
    tokio::fs::write(
        files.path().join("hello.txt"),
        "hello from behind the proxy",
    )
    .await
    .unwrap();
    let (app, port) = files_in(&ns, files.path()).await;

    // The server's own addresses, only --server-tcp beyond the defaults
    // because this test's https port is not the QUIC one; the proxy comes
    // from the environment alone.
    let pem = tokio::fs::read_to_string(home.path().join("cert.pem"))
        .await
        .unwrap();
    // A client in the namespace with one proxy variable set, online, and a
    // visitor served through it.
    let through = |var: &'static str, proxy: String| {
        let (ns, quic, https, fingerprint, pem) = (
            ns.clone(),
            quic.clone(),
            https.clone(),
            fingerprint.clone(),
            pem.clone(),
        );
        let port = port.clone();
        async move {
            let mut client = Proc::spawn(
                exec(&ns)
                    .env("TUNNEL_INSPECT", "127.0.0.1:0")
                    .env(var, proxy)
                    .arg(client_bin().await)
                    .args(["--server", &quic, "--server-tcp", &https])
                    .args(["--server-fingerprint", &fingerprint, "--token", TOKEN])
                    .args(["--expose", &format!("127.0.0.1:{port}")]),
            );
            let url = client.line().await;
            let host = host_of(url.split(" -> ").next().unwrap());
            let got = support::tls::get(
                https.parse().unwrap(),
                host.split(':').next().unwrap(),
                support::tls::visitor(&[&pem]),
                "/hello.txt",
            )
            .await;
            assert_eq!(got.status, 200, "{}", got.head);
            assert_eq!(got.body, b"hello from behind the proxy");
            client
        }
    };
    let client = through("HTTPS_PROXY", format!("http://{proxy_addr}")).await;
    // The proxy carried the link to the server's https port.
    while !proxy.line().await.contains(&https) {}
    // A second client through the SOCKS5 proxy, from ALL_PROXY alone.
    let socksed = through("ALL_PROXY", format!("socks5://{socks_addr}")).await;
    let (_, log) = socksed.terminate().await;
    assert!(log.contains("connected over TLS over TCP"), "{log}");

    // The wall is real: straight to the server's https port from the
    // namespace, a connection gets no answer, and iptables counted it.
    let direct = exec(&ns)
        .args(["python3", "-c"])
        .arg("import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)")
        .args([here.to_string(), https.rsplit(':').next().unwrap().to_owned()])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(
        !direct.success(),
        "a direct connection got out of the namespace"
    );
    let walled = ns.clone();
    let dropped = tokio::task::spawn_blocking(move || walled.dropped_out())
        .await
        .unwrap()
        .unwrap();
    assert!(dropped > 0, "iptables dropped nothing");

    let (_, log) = client.terminate().await;
    assert!(log.contains("connected over TLS over TCP"), "{log}");
    let _ = app.terminate().await;
    let _ = proxy.terminate().await;
    let _ = socks.terminate().await;
    let _ = server.terminate().await;
}
