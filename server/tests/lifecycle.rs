//! A running server's life as an operator sees it: SIGHUP reloads, a DNS
//! hook that fails, a `kill -9` and restart, logs without secrets, and a
//! killed client that leaves nothing behind.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::bins::*;
use support::*;
use tokio::process::Command;

#[tokio::test]
async fn sighup_reloads_the_edge_certificate_under_an_open_connection() {
    let home = tempfile::tempdir().unwrap();
    let one = support::tls::Made::new(&["edge.test", "*.edge.test"]);
    let two = support::tls::Made::new(&["edge.test", "*.edge.test"]);
    let (cert, key) = one.write(home.path(), "edge");
    let (mut server, ready) = https_server(
        home.path(),
        &[
            "--domain".as_ref(),
            "edge.test".as_ref(),
            "--edge-cert".as_ref(),
            cert.as_os_str(),
            "--edge-key".as_ref(),
            key.as_os_str(),
        ],
    )
    .await;
    let https: std::net::SocketAddr = field(&ready, "https=").parse().unwrap();
    let visitor = support::tls::visitor(&[&one.cert_pem, &two.cert_pem]);
    let get = "GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n";
    let mut open = support::tls::connect(https, "edge.test", visitor.clone())
        .await
        .unwrap();
    assert_eq!(support::tls::presented(&open), one.fingerprint());
    assert_eq!(support::tls::request(&mut open, get).await.status, 404);

    // New files with the old modification times: only SIGHUP can tell.
    let stamp = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (tc, tk) = (stamp(&cert), stamp(&key));
    two.write(home.path(), "edge");
    for (p, t) in [(&cert, tc), (&key, tk)] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let pid = server.child.id().unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    server.log_until("reloaded the certificate").await;
    let fresh = support::tls::connect(https, "edge.test", visitor.clone())
        .await
        .unwrap();
    assert_eq!(support::tls::presented(&fresh), two.fingerprint());
    // The connection opened before the reload is still served.
    assert_eq!(support::tls::request(&mut open, get).await.status, 404);
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_failing_dns_hook_is_reported_with_its_flag() {
    let pebble =
        support::tls::Pebble::start(support::tls::free_port(), support::tls::free_port()).await;
    let home = tempfile::tempdir().unwrap();
    let (mut server, _) = https_server(
        home.path(),
        &[
            "--domain".as_ref(),
            "tunnel.test".as_ref(),
            "--acme".as_ref(),
            "--acme-directory".as_ref(),
            pebble.directory.as_ref(),
            "--acme-root".as_ref(),
            pebble.tls_root.as_os_str(),
            "--acme-dns-hook".as_ref(),
            "/bin/false".as_ref(),
        ],
    )
    .await;
    let line = server.log_until("--acme-dns-hook").await;
    assert!(
        line.contains("--acme-dns-hook /bin/false") && line.contains("exited with"),
        "{line}"
    );
    assert!(
        line.contains("set|clear NAME VALUE"),
        "the message says how the hook is run: {line}"
    );
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}

/// Issue 9, restart recovery: a server killed with SIGKILL and started again
/// on the same ports is serving the old client again within seconds, not
/// after the client's 20 s idle timeout: the stateless-reset key persists in
/// the state directory, so the restarted server's resets are recognised.
#[tokio::test]
async fn a_killed_server_restarted_on_its_ports_is_back_within_seconds() {
    killed_and_restarted(false).await;
}

/// Issue 25: the same over the TCP transport: the TCP link's end tells the
/// client at once, and it dials the restarted server's https port.
#[tokio::test]
async fn over_tcp_a_killed_server_restarted_is_back_within_seconds() {
    killed_and_restarted(true).await;
}

async fn killed_and_restarted(tcp: bool) {
    let home = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) =
        support::tls::Made::new(&["localhost", "*.localhost"]).write(certs.path(), "edge");
    let start = |mut args: Vec<String>| {
        if tcp {
            args.extend(["--edge-cert".into(), cert.display().to_string()]);
            args.extend(["--edge-key".into(), key.display().to_string()]);
        }
        Proc::spawn(
            Command::new(server_bin())
                .args(&args)
                .arg("--state-dir")
                .arg(home.path()),
        )
    };
    let https = |on: &str| -> Vec<String> {
        if tcp {
            vec!["--https".into(), on.into()]
        } else {
            Vec::new()
        }
    };
    let mut first = start(
        [
            vec![
                "--http".into(),
                "127.0.0.1:0".into(),
                "--quic".into(),
                "127.0.0.1:0".into(),
            ],
            https("127.0.0.1:0"),
        ]
        .concat(),
    );
    let ready = first.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));
    let tls_port = tcp.then(|| field(&ready, "https="));
    let backend = Backend::start("again").await;
    let mut config = tunnel_client::Config {
        server: quic.clone(),
        dev_state_dir: Some(home.path().to_owned()),
        backoff_base: std::time::Duration::from_millis(100),
        backoff_cap: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    if let Some(h) = &tls_port {
        config.transport = tunnel_client::Transport::Tcp;
        config.server_tcp = Some(h.clone());
    }
    config.tunnels.push(tunnel_client::TunnelSpec {
        local: backend.addr.to_string(),
        subdomain: Some("again".into()),
        plain_http: true,
        ..Default::default()
    });
    let mut client = TestClient::start(config);
    client.online(1).await;

    let pid = first.child.id().unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let _ = first.child.wait().await;
    let mut second = start(
        [
            vec!["--http".into(), http.clone(), "--quic".into(), quic.clone()],
            https(tls_port.as_deref().unwrap_or("")),
        ]
        .concat(),
    );
    second.line().await;
    let restarted = std::time::Instant::now();
    client.online(2).await;
    let back = restarted.elapsed();
    assert!(
        back < std::time::Duration::from_secs(5),
        "back after {back:?}: the old connection was not reset"
    );
    let r = raw_exchange(
        http.parse().unwrap(),
        b"GET /hello HTTP/1.1\r\nHost: again.localhost\r\n\r\n",
    )
    .await;
    assert_eq!(r.body, b"hello from again", "the same URL serves again");
    eprintln!(
        "{}serving again {back:?} after the restarted server was ready",
        if tcp { "TCP transport: " } else { "" }
    );
    client.stop().await;
    let _ = second.terminate().await;
    backend.stop().await;
}

/// Issue 9, secrets: at `trace`, neither binary writes a token anywhere, and
/// a log that is not a terminal carries no colour codes.
#[tokio::test]
async fn tokens_never_reach_the_logs_even_at_trace() {
    const TOKEN: &str = "s3cret-token-that-must-not-leak";
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        server_cmd(home.path())
            .env("TUNNEL_TOKENS", format!("{TOKEN},another-{TOKEN}"))
            .env("RUST_LOG", "trace"),
    );
    let ready = server.line().await;
    let quic = field(&ready, "quic=");
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &quic, "--expose", "9", "--server-cert"])
            .arg(home.path().join("cert.pem"))
            .env("TUNNEL_TOKEN", TOKEN)
            .env("RUST_LOG", "trace"),
    );
    client.line().await;
    // A wrong token too: the refusal is logged, the tokens are not.
    let wrong = client_cmd()
        .await
        .args(["--server", &quic, "--expose", "9", "--server-cert"])
        .arg(home.path().join("cert.pem"))
        .env("TUNNEL_TOKEN", format!("wrong-{TOKEN}"))
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    let (_, client_log) = client.terminate().await;
    let (_, server_log) = server.terminate().await;
    let wrong_log = String::from_utf8_lossy(&wrong.stderr).into_owned();
    for (who, log) in [
        ("server", &server_log),
        ("client", &client_log),
        ("wrong client", &wrong_log),
    ] {
        assert!(log.lines().count() > 10, "{who} logged at trace: {log}");
        assert!(!log.contains(TOKEN), "the {who} log holds a token");
        assert!(!log.contains('\u{1b}'), "the {who} log holds ANSI escapes");
    }
    assert!(
        server_log.contains("wrong or missing token"),
        "{server_log}"
    );
}

use tunnel_testkit::procfs::open_fds;

/// Issue 9: a client killed with `kill -9` while visitors have streams open
/// costs the server nothing once the QUIC idle timeout has passed: its
/// session ends, the visitors are answered or closed, and the server's
/// file descriptors are back to their count before the client came.
#[tokio::test]
async fn a_killed_client_leaves_nothing_behind_on_the_server() {
    let home = tempfile::tempdir().unwrap();
    let backend = Backend::start("doomed").await;
    let (server, http, quic) = ready_server(&mut server_cmd(home.path())).await;
    let pid = server.child.id().unwrap();
    let baseline = open_fds(pid);

    let (mut client, url_line) =
        exposing_client(home.path(), &quic, &backend.addr.to_string()).await;
    let host = host_of(url_line.split(" -> ").next().unwrap());
    // Visitors with streams open and data in flight.
    let mut visitors = Vec::new();
    for _ in 0..8 {
        let mut v = visitor(http.parse().unwrap()).await;
        let resp = v
            .send_request(get(&host, &format!("/bytes/{}", 100 << 20)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        visitors.push((v, resp));
    }
    let busy = open_fds(pid);
    assert!(
        busy >= baseline + 8,
        "{busy} fds with 8 visitors, {baseline} before"
    );

    let killed = std::time::Instant::now();
    assert!(run(&["kill", "-KILL", &client.child.id().unwrap().to_string()]).await);
    let _ = client.child.wait().await;
    drop(visitors);
    // The server only learns from silence: up to the idle timeout (20 s).
    // Then the name is held for its owner: a visitor waits `OWNER_HOLD`
    // for it and reads that the tunnel's client is offline.
    let limit = std::time::Duration::from_secs(40);
    let request = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let gone = loop {
        // A request towards a session not yet known dead hangs: bounded.
        let probe = raw_exchange(http.parse().unwrap(), request.as_bytes());
        let hold = std::time::Duration::from_secs(8);
        if tokio::time::timeout(hold, probe)
            .await
            .is_ok_and(|r| r.status == 502 && String::from_utf8_lossy(&r.body).contains("offline"))
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < limit,
            "the session still stands {limit:?} after kill -9"
        );
    };
    // The probes' own connections close with them; then the count is back.
    let back = loop {
        let now = open_fds(pid);
        if now <= baseline {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < limit + std::time::Duration::from_secs(10),
            "{now} fds, baseline {baseline}"
        );
        // Polling a count that has no event to wait on.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    eprintln!("session gone {gone:?} after kill -9 (idle timeout + hold)");
    eprintln!("fds back to {baseline} and the session gone {back:?} after kill -9");
    let _ = server.terminate().await;
    backend.stop().await;
}
