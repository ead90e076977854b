//! TCP tunnels: a public port per tunnel, raw bytes both ways, half-close,
//! many connections, the same port after a reconnect, clear refusals.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::fault::{FaultProxy, Faults};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_lib::proto::TunnelKind;

/// A TCP echo service: writes back what it reads; at the visitor's EOF it
/// closes its own side (so a half-close must travel both ways).
struct Echo {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A range of four ports starting at a free one (a busy one among them is
/// skipped by the server, as in production).
fn port_range() -> std::ops::RangeInclusive<u16> {
    let p = support::tls::free_port();
    p..=p.saturating_add(3)
}

fn tcp_server_config() -> tunnel_server::Config {
    tunnel_server::Config {
        tcp_ports: Some(port_range()),
        ..Default::default()
    }
}

fn tcp_client(server: &TestServer, local: SocketAddr, remote_port: u16) -> tunnel_client::Config {
    let mut cfg = server.client_config(local, None);
    cfg.tunnels[0].kind = TunnelKind::Tcp;
    cfg.tunnels[0].remote_port = remote_port;
    cfg
}

/// `tcp://localhost:PORT` → 127.0.0.1:PORT.
fn public_addr(url: &str) -> SocketAddr {
    let port: u16 = url
        .strip_prefix("tcp://localhost:")
        .unwrap_or_else(|| panic!("{url}"))
        .parse()
        .unwrap();
    ([127, 0, 0, 1], port).into()
}

/// Writes `data` while reading the echo, half-closes, reads to EOF.
async fn echo_through(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let writer = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::time::timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .expect("the echo ended (half-close travelled both ways)");
    got
}

#[tokio::test]
async fn ten_mib_echo_both_ways_with_half_close() {
    let echo = Echo::start().await;
    let server = TestServer::start_with(tcp_server_config()).await;
    let mut client = TestClient::start(tcp_client(&server, echo.addr, 0));
    let url = client.online(1).await[0].url.clone();
    assert!(url.starts_with("tcp://localhost:"), "{url}");
    let data = pattern(0, 10 << 20);
    let got = echo_through(public_addr(&url), &data).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "10 MiB echo differs");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_connections_each_get_their_own_bytes() {
    let echo = Echo::start().await;
    let server = TestServer::start_with(tcp_server_config()).await;
    let mut client = TestClient::start(tcp_client(&server, echo.addr, 0));
    let addr = public_addr(&client.online(1).await[0].url);
    let mut all = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        all.spawn(async move {
            let data = pattern(i * 1_000_003, 64 * 1024);
            echo_through(addr, &data).await == data
        });
    }
    let mut ok = 0;
    while let Some(r) = all.join_next().await {
        ok += usize::from(r.unwrap());
    }
    assert_eq!(ok, 200);
    assert_eq!(echo.connections.load(Ordering::SeqCst), 200);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_same_port_comes_back_after_a_reconnect() {
    let echo = Echo::start().await;
    let server = TestServer::start_with(tcp_server_config()).await;
    let mut client = TestClient::start(tcp_client(&server, echo.addr, 0));
    let first = client.online(1).await[0].clone();
    assert!(server
        .registry
        .disconnect_host(&first.hostname, "test drops the client"));
    let second = client.online(2).await[0].clone();
    assert_eq!(second.url, first.url, "the same public port");
    assert_eq!(
        echo_through(public_addr(&second.url), b"again").await,
        b"again"
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_long_lived_connection_survives_a_path_change() {
    let echo = Echo::start().await;
    let server = TestServer::start_with(tcp_server_config()).await;
    let proxy = FaultProxy::start(server.quic, Faults::default()).await;
    let mut cfg = tcp_client(&server, echo.addr, 0);
    cfg.server = proxy.addr.to_string();
    let mut client = TestClient::start(cfg);
    let addr = public_addr(&client.online(1).await[0].url);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 5];
    tcp.write_all(b"one..").await.unwrap();
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one..");
    proxy.rebind().await;
    tcp.write_all(b"two..").await.unwrap();
    tokio::time::timeout(WAIT, tcp.read_exact(&mut buf))
        .await
        .expect("the echo after the path change")
        .unwrap();
    assert_eq!(&buf, b"two..");
    match &*client.status.borrow() {
        tunnel_client::Status::Online { generation, .. } => assert_eq!(*generation, 1),
        other => panic!("{other:?}"),
    }
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn refusals_say_what_to_do() {
    let echo = Echo::start().await;
    // No --tcp-ports.
    let plain = TestServer::start().await;
    let res = TestClient::start(tcp_client(&plain, echo.addr, 0))
        .finished()
        .await;
    let msg = format!("{res:?}");
    assert!(msg.contains("--tcp-ports"), "{msg}");
    plain.stop().await;

    let config = tcp_server_config();
    let range = config.tcp_ports.clone().unwrap();
    let server = TestServer::start_with(config).await;
    // Outside the range.
    let outside = range.start() - 1;
    let res = TestClient::start(tcp_client(&server, echo.addr, outside))
        .finished()
        .await;
    let msg = format!("{res:?}");
    assert!(
        msg.contains(&format!("port {outside} is outside")) && msg.contains("--remote-port"),
        "{msg}"
    );
    // Taken by a live tunnel.
    let mut holder = TestClient::start(tcp_client(&server, echo.addr, 0));
    let held = public_addr(&holder.online(1).await[0].url).port();
    let res = TestClient::start(tcp_client(&server, echo.addr, held))
        .finished()
        .await;
    let msg = format!("{res:?}");
    assert!(msg.contains(&format!("port {held} is taken")), "{msg}");
    holder.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_closes_its_visitors_connections() {
    let echo = Echo::start().await;
    let server = TestServer::start_with(tcp_server_config()).await;
    let mut client = TestClient::start(tcp_client(&server, echo.addr, 0));
    let addr = public_addr(&client.online(1).await[0].url);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    tcp.read_exact(&mut buf).await.unwrap();
    client.stop().await;
    // The idle visitor learns at once, not at some later write.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok(),
        "the visitor's connection stayed open after the client left"
    );
    // The port stops accepting: its accept loop (the listeners' own,
    // `accept::accept_tcp`) ended with the session.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{addr} still accepts"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    // And nothing holds the server's drain.
    let t0 = std::time::Instant::now();
    server.stop().await;
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "drain took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_token_with_its_own_range_gets_ports_only_from_it() {
    let echo = Echo::start().await;
    let range = port_range();
    let own = *range.start()..=*range.start();
    let server = TestServer::start_with(tunnel_server::Config {
        tokens: vec!["alice-token".into(), "bob-token".into()],
        tcp_ports: Some(range.clone()),
        token_ports: vec![tunnel_server::config::TokenPorts {
            token: 0,
            tcp: Some(own.clone()),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    let as_token = |token: &str, port: u16| {
        let mut cfg = tcp_client(&server, echo.addr, port);
        cfg.token = Some(token.into());
        cfg
    };
    // Outside alice's own range (though inside the server's): refused.
    let res = TestClient::start(as_token("alice-token", own.start() + 1))
        .finished()
        .await;
    let msg = format!("{res:?}");
    assert!(msg.contains("outside this token's TCP ports"), "{msg}");
    // Any port: hers.
    let mut alice = TestClient::start(as_token("alice-token", 0));
    let url = alice.online(1).await[0].url.clone();
    assert_eq!(public_addr(&url).port(), *own.start());
    // Her range is full now; bob still gets one of the server's.
    let res = TestClient::start(as_token("alice-token", 0))
        .finished()
        .await;
    assert!(format!("{res:?}").contains("this token's range"), "{res:?}");
    let mut bob = TestClient::start(as_token("bob-token", 0));
    let bob_port = public_addr(&bob.online(1).await[0].url).port();
    assert!(range.contains(&bob_port) && bob_port != *own.start());
    alice.stop().await;
    bob.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_token_without_tcp_rights_is_told_so() {
    let echo = Echo::start().await;
    let server = TestServer::start_with(tunnel_server::Config {
        tokens: vec!["web-only".into()],
        tcp_ports: Some(port_range()),
        token_ports: vec![tunnel_server::config::TokenPorts {
            token: 0,
            no_tcp: true,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    let mut cfg = tcp_client(&server, echo.addr, 0);
    cfg.token = Some("web-only".into());
    let res = TestClient::start(cfg).finished().await;
    let msg = format!("{res:?}");
    assert!(msg.contains("this token may not open TCP tunnels"), "{msg}");
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_keeps_each_port_for_its_owner() {
    let echo = Echo::start().await;
    let p = support::tls::free_port();
    let config = || tunnel_server::Config {
        tokens: vec!["alice".into(), "bob".into()],
        tcp_ports: Some(p..=p),
        ..Default::default()
    };
    let server = TestServer::start_with(config()).await;
    let as_token = |server: &TestServer, token: &str, port: u16| {
        let mut cfg = tcp_client(server, echo.addr, port);
        cfg.token = Some(token.into());
        cfg
    };
    let mut alice = TestClient::start(as_token(&server, "alice", 0));
    let url = alice.online(1).await[0].url.clone();
    alice.stop().await;
    let state = server.stop_keeping_state().await;
    let names = std::fs::read_to_string(state.path().join("names.json")).unwrap();
    assert!(names.contains(&format!("tcp:{p}")), "{names}");

    let again = TestServer::start_in(config(), TestServer::listeners(false), state).await;
    // The only port is reserved for alice: bob is told the range is full.
    let res = TestClient::start(as_token(&again, "bob", 0))
        .finished()
        .await;
    assert!(format!("{res:?}").contains("is taken"), "{res:?}");
    let mut alice = TestClient::start(as_token(&again, "alice", p));
    assert_eq!(alice.online(1).await[0].url, url);
    assert_eq!(echo_through(public_addr(&url), b"back").await, b"back");
    alice.stop().await;
    again.stop().await;
}
