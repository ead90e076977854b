//! Issue 25: a client on a network that drops UDP reaches its server over
//! TLS on TCP (the server's https port), and every tunnel kind works
//! there. "UDP dropped" is a bound UDP socket that never answers, given to
//! the client as the server's QUIC address: its packets go nowhere, as
//! behind a firewall that drops them.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

use support::tls::{self, EchoTls, Made};
use support::*;
use tunnel_client::{ClientError, Transport};
use tunnel_lib::proto::TunnelKind;

const DOMAIN: &str = "edge.test";

/// The proxies' outgoing address: the server sees a proxied client come
/// from it, a direct one from 127.0.0.1.
const OUT: &str = "127.0.0.3";

/// Where the server saw its one client come from.
fn client_ip(server: &TestServer) -> std::net::IpAddr {
    let sessions = server.registry.sessions();
    assert_eq!(sessions.len(), 1);
    sessions[0].remote.ip()
}

/// A server for `edge.test` with an https listener, TCP and UDP ports.
async fn server(dir: &std::path::Path) -> TestServer {
    let made = Made::new(&["*.edge.test", "edge.test"]);
    let (cert, key) = made.write(dir, "edge");
    let listeners = TestServer::listeners(true);
    let (t, u) = (tls::free_port(), tls::free_port());
    let config = tunnel_server::Config {
        domain: DOMAIN.into(),
        https: listeners.https.as_ref().map(|l| l.local_addr().unwrap()),
        edge_cert: Some(cert),
        edge_key: Some(key),
        tcp_ports: Some(t..=t),
        udp_ports: Some(u..=u),
        ..Default::default()
    };
    TestServer::start_on(config, listeners).await
}

/// The client's settings: QUIC to `udp` (which drops everything), TCP to
/// the server's https port.
fn client_config(
    server: &TestServer,
    udp: SocketAddr,
    transport: Transport,
) -> tunnel_client::Config {
    let mut c = server.client_config(([127, 0, 0, 1], 9).into(), None);
    c.server = udp.to_string();
    c.server_tcp = Some(server.https.unwrap().to_string());
    c.transport = transport;
    c.tunnels.clear();
    c
}

fn spec(kind: TunnelKind, local: SocketAddr, name: Option<&str>) -> tunnel_client::TunnelSpec {
    tunnel_client::TunnelSpec {
        local: local.to_string(),
        subdomain: name.map(Into::into),
        kind,
        plain_http: true,
        ..Default::default()
    }
}

async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

#[tokio::test]
async fn without_udp_auto_goes_over_tcp_and_every_tunnel_kind_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let dropped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend = Backend::start("over-tcp").await;
    let (ws_addr, _ws) = ws_echo_backend().await;
    let (tcp_local, udp_local) = (tcp_echo().await, udp_echo().await);
    let tls_local = EchoTls::start("pass.edge.test").await;

    let mut cfg = client_config(&server, dropped.local_addr().unwrap(), Transport::Auto);
    cfg.tunnels = vec![
        spec(TunnelKind::Http, backend.addr, Some("app")),
        spec(TunnelKind::Http, ws_addr, Some("ws")),
        spec(TunnelKind::Tcp, tcp_local, None),
        spec(TunnelKind::Udp, udp_local, None),
        spec(TunnelKind::Tls, tls_local.addr, Some("pass")),
    ];
    let started = Instant::now();
    let mut client = TestClient::start(cfg);
    let tunnels = client.online(1).await;
    let took = started.elapsed();
    eprintln!("serving over TLS on TCP {took:?} after start (UDP dropped)");
    assert!(took < Duration::from_secs(3), "auto took {took:?}");

    // HTTP: 50 MiB down and 50 MiB up through one keep-alive connection.
    const N: usize = 50 << 20;
    let host = "app.edge.test";
    let mut v = visitor(server.http).await;
    let down = v
        .send_request(get(host, &format!("/bytes/{N}")))
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    let body = down.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.len() == N && body == pattern(0, N),
        "the download is intact"
    );
    let up = v
        .send_request(post(host, "/upload", Bytes::from(pattern(0, N))))
        .await
        .unwrap();
    assert_eq!(
        body_text(up).await,
        format!("{N} {}", sha256_hex(&pattern(0, N)))
    );

    // WebSocket.
    let tcp = TcpStream::connect(server.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.edge.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..50 {
        let msg = Message::text(format!("message {i}"));
        ws.send(msg.clone()).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }

    // TCP echo on the tunnel's public port.
    let port = |url: &str| -> u16 { url.rsplit(':').next().unwrap().parse().unwrap() };
    let tcp_url = tunnels
        .iter()
        .find(|t| t.url.starts_with("tcp://"))
        .unwrap();
    let mut t = TcpStream::connect(("127.0.0.1", port(&tcp_url.url)))
        .await
        .unwrap();
    t.write_all(b"over tcp").await.unwrap();
    let mut buf = [0u8; 8];
    tokio::time::timeout(WAIT, t.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"over tcp");

    // UDP echo: datagrams ride QUIC DATAGRAMs, here inside the TCP link.
    let udp_url = tunnels
        .iter()
        .find(|t| t.url.starts_with("udp://"))
        .unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    u.connect(("127.0.0.1", port(&udp_url.url))).await.unwrap();
    let mut got = None;
    for _ in 0..20 {
        u.send(b"datagram").await.unwrap();
        let mut b = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), u.recv(&mut b)).await {
            got = Some(b[..n].to_vec());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"datagram"[..]));

    // TLS passthrough: the visitor sees the local service's certificate.
    let https = server.https.unwrap();
    let mut s = tls::connect(
        https,
        "pass.edge.test",
        tls::visitor(&[&tls_local.made.cert_pem]),
    )
    .await
    .unwrap();
    assert_eq!(tls::presented(&s), tls_local.made.fingerprint());
    s.write_all(b"through").await.unwrap();
    let mut b = [0u8; 7];
    tokio::time::timeout(WAIT, s.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"through");

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// `--transport quic` where UDP is dropped: it gives up (with
/// `--give-up-after`) saying how to get through.
#[tokio::test]
async fn quic_only_without_udp_names_the_tcp_transport() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let dropped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = dropped.local_addr().unwrap();
    let mut cfg = client_config(&server, udp, Transport::Quic);
    cfg.tunnels = vec![spec(
        TunnelKind::Http,
        ([127, 0, 0, 1], 9).into(),
        Some("q"),
    )];
    cfg.give_up_after = Some(Duration::from_secs(1));
    let client = TestClient::start(cfg);
    let e = tokio::time::timeout(WAIT, client.finished())
        .await
        .expect("gave up")
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ClientError::Unreachable(_)), "{e:?}");
    assert!(
        text.contains("--transport tcp") && text.contains(&udp.to_string()),
        "{text}"
    );
    server.stop().await;
}

/// `--transport tcp` goes straight to TCP, without waiting for QUIC.
#[tokio::test]
async fn tcp_only_connects_without_trying_udp() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let backend = Backend::start("tcp-only").await;
    let dropped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = client_config(&server, dropped.local_addr().unwrap(), Transport::Tcp);
    cfg.tunnels = vec![spec(TunnelKind::Http, backend.addr, Some("t"))];
    let started = Instant::now();
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    served_then_stopped(server, client, backend, "t.edge.test", "tcp-only").await;
}

/// tinyproxy on loopback, going out from [`OUT`].
async fn tinyproxy(dir: &std::path::Path, extra: &str) -> (tunnel_testkit::process::Proc, u16) {
    let extra = format!("Bind {OUT}\n{extra}");
    support::proxy::tinyproxy(dir, [127, 0, 0, 1].into(), "127.0.0.1", &extra).await
}

/// Only an HTTP proxy gets out: the client reaches its server through it,
/// from `HTTPS_PROXY` as curl would read it; QUIC is not tried.
#[tokio::test]
async fn through_an_http_proxy_from_https_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let backend = Backend::start("proxied").await;
    let (mut proxy, port) = tinyproxy(dir.path(), "").await;
    let https = server.https.unwrap();
    let mut cfg = client_config(&server, server.quic, Transport::Auto);
    cfg.tunnels = vec![spec(TunnelKind::Http, backend.addr, Some("p"))];
    let env = |name: &str| (name == "HTTPS_PROXY").then(|| format!("http://127.0.0.1:{port}"));
    // As `settings::resolve` reads it for a server by its public name (a
    // server on this machine is never reached through a proxy, as Go's
    // ProxyFromEnvironment does); the proxy then dials the test's loopback.
    cfg.proxy = tunnel_client::proxy::from_env("tunnel.example.com", env).map(Result::unwrap);
    // What settings::resolve does with a proxy and no --transport.
    cfg.transport = Transport::Tcp;
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    assert_eq!(
        client_ip(&server).to_string(),
        OUT,
        "the link came through the proxy"
    );
    let needle = format!("127.0.0.1:{}", https.port());
    while !proxy.line().await.contains(&needle) {}
    served_then_stopped(server, client, backend, "p.edge.test", "proxied").await;
}

/// `host` answers with `backend`'s hello; then everything stops.
async fn served_then_stopped(
    server: TestServer,
    client: TestClient,
    backend: Backend,
    host: &str,
    tag: &str,
) {
    let mut v = visitor(server.http).await;
    let r = v.send_request(get(host, "/hello")).await.unwrap();
    assert_eq!(body_text(r).await, format!("hello from {tag}"));
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// A proxy that wants credentials: the client stops at once, naming the
/// proxy, what it answered and the fix.
#[tokio::test]
async fn a_proxy_answering_407_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let (_proxy, port) = tinyproxy(dir.path(), "BasicAuth alice s3cret\n").await;
    let mut cfg = client_config(&server, server.quic, Transport::Tcp);
    cfg.tunnels = vec![spec(
        TunnelKind::Http,
        ([127, 0, 0, 1], 9).into(),
        Some("x"),
    )];
    cfg.proxy = Some(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = TestClient::start(cfg);
    let e = tokio::time::timeout(WAIT, client.finished())
        .await
        .expect("stopped")
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.exit_code(), 78, "{text}");
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}"))
            && text.contains("407")
            && text.contains("USER:PASSWORD@"),
        "{text}"
    );
    // With the credentials it goes through.
    let backend = Backend::start("authed").await;
    let mut cfg = client_config(&server, server.quic, Transport::Tcp);
    cfg.tunnels = vec![spec(TunnelKind::Http, backend.addr, Some("y"))];
    cfg.proxy = Some(
        format!("http://alice:s3cret@127.0.0.1:{port}")
            .parse()
            .unwrap(),
    );
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// A SOCKS5 proxy (microsocks) the same way; the proxy holds the link's
/// sockets while the client is online.
#[tokio::test]
async fn through_a_socks5_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let backend = Backend::start("socks").await;
    let port = tls::free_port();
    let _proxy =
        tunnel_testkit::process::Proc::spawn(tokio::process::Command::new("microsocks").args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-b",
            OUT,
        ]));
    // microsocks prints nothing: it is ready when its port accepts.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::task::spawn_blocking(move || tunnel_testkit::net::wait_addr(addr))
        .await
        .unwrap();
    let mut cfg = client_config(&server, server.quic, Transport::Tcp);
    cfg.tunnels = vec![spec(TunnelKind::Http, backend.addr, Some("s"))];
    cfg.proxy = Some(format!("socks5://127.0.0.1:{port}").parse().unwrap());
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    assert_eq!(
        client_ip(&server).to_string(),
        OUT,
        "the link came through the proxy"
    );
    served_then_stopped(server, client, backend, "s.edge.test", "socks").await;
}

/// UDP comes back: a client that `auto` put on TLS over TCP tries QUIC
/// again (`--quic-retry`) and moves back to it make-before-break, while a
/// steady request loop and a long download run: no request fails.
#[tokio::test]
async fn back_to_quic_when_udp_returns_without_losing_a_request() {
    use support::fault::{FaultProxy, Faults};
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let backend = Backend::start("moving").await;
    let udp = FaultProxy::start(
        server.quic,
        Faults {
            partition: true,
            ..Default::default()
        },
    )
    .await;
    let mut cfg = client_config(&server, udp.addr, Transport::Auto);
    cfg.tunnels = vec![spec(TunnelKind::Http, backend.addr, Some("m"))];
    cfg.quic_retry = Duration::from_millis(500);
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    // The session's transport (none for a moment while one replaces the
    // other: the registry's list is not one atomic snapshot).
    let relayed = |s: &TestServer| {
        let sessions = s.registry.sessions();
        let first = sessions.first()?;
        Some(tunnel_lib::quic::relay::is_relay_addr(
            &first.conn.remote_address(),
        ))
    };
    assert_eq!(relayed(&server), Some(true), "UDP dropped: on TLS over TCP");

    // A 20 MiB download that spans the move, read slowly, and a loop of
    // small requests on their own connection.
    const N: usize = 20 << 20;
    let http = server.http;
    let download = tokio::spawn(async move {
        let mut v = visitor(http).await;
        let r = v
            .send_request(get("m.edge.test", &format!("/bytes/{N}")))
            .await
            .unwrap();
        let mut body = r.into_body();
        let mut got = 0usize;
        while let Some(f) = body.frame().await {
            got += f.unwrap().into_data().map_or(0, |d| d.len());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        got
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let looping = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            let mut v = visitor(http).await;
            while !stop.is_cancelled() {
                match v.send_request(get("m.edge.test", "/hello")).await {
                    Ok(r) if r.status() == 200 => {
                        body_text(r).await;
                        ok += 1;
                    }
                    other => {
                        eprintln!("failed: {:?}", other.map(|r| r.status()));
                        failed += 1;
                        v = visitor(http).await;
                    }
                }
            }
            (ok, failed)
        })
    };
    // UDP is back: the probe finds QUIC and the client moves.
    udp.set(Faults::default()).await;
    client.online(2).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while relayed(&server) != Some(false) {
        assert!(tokio::time::Instant::now() < deadline, "still on TCP");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        download.await.unwrap(),
        N,
        "the download in flight finished whole"
    );
    stop.cancel();
    let (ok, failed) = looping.await.unwrap();
    eprintln!("moved back to QUIC: {ok} requests in the loop, {failed} failed");
    assert!(ok > 0 && failed == 0, "{ok} ok, {failed} failed");
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// A network that rejects UDP rather than dropping it (or a host with
/// nothing on the UDP port) says so by ICMP: `auto` starts TLS over TCP on
/// that answer instead of waiting out QUIC's head start, and says why.
/// Real processes: the reason is in the client's log.
#[tokio::test]
async fn an_icmp_unreachable_starts_tcp_at_once_and_is_named() {
    use support::bins::*;
    let home = tempfile::tempdir().unwrap();
    let (server, ready) = https_server(home.path(), &[]).await;
    let (https, fingerprint) = (field(&ready, "https="), field(&ready, "fingerprint="));
    // A UDP port nothing listens on: the kernel answers port unreachable.
    let closed = SocketAddr::from(([127, 0, 0, 1], tls::free_port()));
    let started = Instant::now();
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &closed.to_string(), "--server-tcp", &https])
            .args(["--server-fingerprint", &fingerprint])
            .args(["--expose", "127.0.0.1:9"])
            .env("HOME", home.path())
            .env("TUNNEL_STATE_DIR", home.path()),
    );
    let said = client.log_until("trying TLS over TCP").await;
    assert!(
        said.contains(&format!("UDP {closed}: port unreachable (ICMP)")),
        "the reason is the ICMP answer, not the head start: {said}"
    );
    let url = client.line().await;
    eprintln!("online over TCP {:?} after start: {url}", started.elapsed());
    assert!(url.contains("https://"), "{url}");
    let (_, log) = client.terminate().await;
    assert!(log.contains("connected over TLS over TCP"), "{log}");
    let _ = server.terminate().await;
}
