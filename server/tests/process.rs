//! The binaries as a user runs them: real processes, embedded defaults
//! (except port 0), the client finding the dev certificate by itself; its
//! commands and config file. More subjects: `startup.rs` (refusals, the
//! config file, the deploy unit), `lifecycle.rs` (signals, restarts, logs),
//! `netns.rs` (migration).

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::bins::*;
use support::*;
use tokio::process::Command;

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
    let ready = tunnel_testkit::ready::Ready::parse(&server.line().await);
    let (http, quic) = (ready.http, ready.quic);
    assert!(home
        .path()
        .join(".local/state/tunnel-server/cert.pem")
        .exists());

    // No certificate flags: the client finds the dev server's certificate.
    let mut client = Proc::spawn(
        client_cmd()
            .await
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
async fn client_commands_take_connection_flags_before_or_after() {
    let home = tempfile::tempdir().unwrap();
    let (server, ready) = https_server(home.path(), &[]).await;
    let (quic, https) = (field(&ready, "quic="), field(&ready, "https="));
    let https_port = https.rsplit(':').next().unwrap().to_owned();
    let cert = home.path().join("cert.pem");
    // Flags before the command, --subdomain after it.
    let mut http = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &quic, "--server-cert"])
            .arg(&cert)
            .args(["http", "127.0.0.1:9", "--subdomain", "cli"]),
    );
    assert_eq!(
        http.line().await,
        format!("https://cli.localhost:{https_port} -> http://127.0.0.1:9")
    );
    // Everything after the command.
    let mut tls = Proc::spawn(
        client_cmd()
            .await
            .args([
                "tls",
                "8443",
                "--subdomain",
                "secure",
                "--server",
                &quic,
                "--server-cert",
            ])
            .arg(&cert),
    );
    assert_eq!(
        tls.line().await,
        format!("tls://secure.localhost:{https_port} -> localhost:8443")
    );
    // Both ways of saying what to expose at once: a clear refusal.
    let out = client_cmd()
        .await
        .args(["--expose", "8080", "http", "8080"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass one"));
    for p in [http, tls] {
        let (status, log) = p.terminate().await;
        assert!(status.success(), "{log}");
    }
    let _ = server.terminate().await;
}

/// Issue 10: one client config file with two HTTP tunnels, a TCP and a UDP one,
/// run by `tunnel-client start` over one connection; each local service
/// sees only its own traffic. `login` saves the server and token (0600) so
/// a later run needs no flags.
#[tokio::test]
async fn start_runs_every_tunnel_of_the_config_file_and_login_saves_the_server() {
    let home = tempfile::tempdir().unwrap();
    let web = Backend::start("web").await;
    let api = Backend::start("api").await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let echo_task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let udp_echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp_echo.local_addr().unwrap();
    let udp_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp_echo.recv_from(&mut buf).await {
            let _ = udp_echo.send_to(&buf[..n], from).await;
        }
    });
    let first = support::tls::free_port();
    let udp_first = support::tls::free_port();
    let mut server = Proc::spawn(
        server_cmd(home.path())
            .args(["--tcp-ports", &format!("{first}-{}", first + 3)])
            .args(["--udp-ports", &format!("{udp_first}-{}", udp_first + 3)])
            .env("TUNNEL_TOKENS", "team-token"),
    );
    let ready = server.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));

    // login, then a file that only adds tunnels.
    let cfg = home.path().join("client.toml");
    let out = client_cmd()
        .await
        .arg("--config")
        .arg(&cfg)
        .args(["login", "--server", &quic, "--token", "team-token"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token's file is private");
    let mut text = tokio::fs::read_to_string(&cfg).await.unwrap();
    assert!(
        text.contains(&quic) && text.contains("team-token"),
        "{text}"
    );
    text.push_str(&format!(
        "\n[tunnels.web]\nlocal = \"{}\"\nsubdomain = \"web\"\n\n[tunnels.api]\nlocal = \"{}\"\nsubdomain = \"api\"\n\n\
         [tunnels.echo]\nkind = \"tcp\"\nlocal = \"{echo_addr}\"\n\n[tunnels.game]\nkind = \"udp\"\nlocal = \"{udp_addr}\"\n",
        web.addr, api.addr
    ));
    tokio::fs::write(&cfg, text).await.unwrap();

    // No --server, no --token: they come from the file.
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .arg("--config")
            .arg(&cfg)
            .arg("start")
            .env("HOME", home.path())
            .env("TUNNEL_STATE_DIR", home.path()),
    );
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push(client.line().await);
    }
    lines.sort();
    assert!(lines[0].starts_with("http://api.localhost:"), "{lines:?}");
    assert!(lines[1].starts_with("http://web.localhost:"), "{lines:?}");
    assert!(lines[2].starts_with("tcp://localhost:"), "{lines:?}");
    assert!(lines[3].starts_with("udp://localhost:"), "{lines:?}");
    let udp_port: u16 = lines[3]
        .split(" -> ")
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let visitor_udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    visitor_udp.connect(("127.0.0.1", udp_port)).await.unwrap();
    visitor_udp.send(b"datagram").await.unwrap();
    let mut dbuf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, visitor_udp.recv(&mut dbuf))
        .await
        .expect("the udp echo through the tunnel")
        .unwrap();
    assert_eq!(&dbuf[..n], b"datagram");

    let http: std::net::SocketAddr = http.parse().unwrap();
    for (name, n) in [("web", 3), ("api", 2)] {
        for _ in 0..n {
            let r = raw_exchange(
                http,
                format!("GET /hello HTTP/1.1\r\nHost: {name}.localhost\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(r.body, format!("hello from {name}").as_bytes());
        }
    }
    assert_eq!(web.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(api.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let port: u16 = lines[2]
        .split(" -> ")
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");

    // With a TCP connection still open through it, the client stops.
    let (status, log) = client.terminate().await;
    assert!(status.success(), "{log}");
    drop(tcp);
    assert!(
        !log.contains("team-token"),
        "the token reached the log: {log}"
    );
    let _ = server.terminate().await;
    echo_task.abort();
    udp_task.abort();
    web.stop().await;
    api.stop().await;
}
