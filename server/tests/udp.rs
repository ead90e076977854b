//! UDP tunnels over QUIC datagrams: every datagram through on loopback, a
//! flow per visitor address, idle flows expire, an oversized datagram is
//! dropped and counted (never fragmented), a clear refusal without ports.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::net::UdpSocket;
use tunnel_lib::proto::TunnelKind;

/// A UDP echo service.
async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, task)
}

async fn udp_tunnel(
    idle: Duration,
) -> (
    TestServer,
    TestClient,
    SocketAddr,
    tokio::task::JoinHandle<()>,
) {
    let (local, task) = echo().await;
    let p = support::tls::free_port();
    let server = TestServer::start_with(tunnel_server::Config {
        udp_ports: Some(p..=p.saturating_add(3)),
        udp_idle: idle,
        ..Default::default()
    })
    .await;
    let mut cfg = server.client_config(local, None);
    cfg.tunnels[0].kind = TunnelKind::Udp;
    let mut client = TestClient::start(cfg);
    let url = client.online(1).await[0].url.clone();
    let port: u16 = url
        .strip_prefix("udp://localhost:")
        .unwrap_or_else(|| panic!("{url}"))
        .parse()
        .unwrap();
    (server, client, ([127, 0, 0, 1], port).into(), task)
}

async fn visitor_socket(public: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(public).await.unwrap();
    s
}

async fn recv_within(s: &UdpSocket, d: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(d, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn ten_thousand_datagrams_each_way_all_arrive_on_loopback() {
    let (server, client, public, _echo) = udp_tunnel(Duration::from_secs(60)).await;
    let s = visitor_socket(public).await;
    const N: u32 = 10_000;
    let mut seen = vec![false; N as usize];
    let (mut sent, mut got, mut outstanding) = (0u32, 0u32, 0u32);
    let mut payload = vec![0u8; 200];
    while got < N {
        while outstanding < 32 && sent < N {
            payload[..4].copy_from_slice(&sent.to_be_bytes());
            s.send(&payload).await.unwrap();
            sent += 1;
            outstanding += 1;
        }
        let Some(d) = recv_within(&s, Duration::from_secs(5)).await else {
            break;
        };
        let i = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
        assert_eq!(d.len(), 200);
        assert!(!seen[i], "datagram {i} twice");
        seen[i] = true;
        got += 1;
        outstanding -= 1;
    }
    eprintln!("{got} of {N} datagrams came back");
    assert_eq!(got, N, "lost {} on loopback", N - got);
    assert_eq!(server.stats.udp_dropped.load(Ordering::Relaxed), 0);
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn each_visitor_address_is_its_own_flow_and_idle_flows_expire() {
    let (server, client, public, _echo) = udp_tunnel(Duration::from_millis(800)).await;
    let (a, b) = (visitor_socket(public).await, visitor_socket(public).await);
    a.send(b"from a").await.unwrap();
    b.send(b"from b").await.unwrap();
    assert_eq!(recv_within(&a, WAIT).await.unwrap(), b"from a");
    assert_eq!(recv_within(&b, WAIT).await.unwrap(), b"from b");
    assert_eq!(server.stats.udp_flows.load(Ordering::Relaxed), 2);
    // Silent past the idle time: both flows are forgotten.
    let t0 = std::time::Instant::now();
    while server.stats.udp_flows.load(Ordering::Relaxed) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "flows did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new datagram makes a new flow, which works.
    a.send(b"again").await.unwrap();
    assert_eq!(recv_within(&a, WAIT).await.unwrap(), b"again");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_datagram_is_dropped_and_counted() {
    let (server, client, public, _echo) = udp_tunnel(Duration::from_secs(60)).await;
    let s = visitor_socket(public).await;
    s.send(&vec![7u8; 4000]).await.unwrap();
    assert!(recv_within(&s, Duration::from_millis(500)).await.is_none());
    assert_eq!(server.stats.udp_oversize.load(Ordering::Relaxed), 1);
    s.send(b"small").await.unwrap();
    assert_eq!(recv_within(&s, WAIT).await.unwrap(), b"small");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_without_udp_ports_says_so() {
    let (local, _echo) = echo().await;
    let server = TestServer::start().await;
    let mut cfg = server.client_config(local, None);
    cfg.tunnels[0].kind = TunnelKind::Udp;
    let res = TestClient::start(cfg).finished().await;
    assert!(format!("{res:?}").contains("--udp-ports"), "{res:?}");
    server.stop().await;
}

/// Issue 22, item 4: one visitor IP sending from 1 100 source ports used to
/// fill the tunnel's 1 024-flow table (a new legitimate flow got no answer)
/// and the client's descriptors (one socket per flow), so the same client's
/// HTTP tunnel answered 502 "Too many open files". Now a source holds 64
/// flows (its idlest gives way), and the client at most 1 024 sockets.
#[tokio::test]
async fn a_port_flood_from_one_ip_leaves_other_flows_and_tunnels_served() {
    // As the binaries do at start.
    tunnel_lib::runtime::raise_fd_limit();
    let (local, _echo) = echo().await;
    let web = Backend::start("web").await;
    let p = support::tls::free_port();
    let server = TestServer::start_with(tunnel_server::Config {
        udp_ports: Some(p..=p.saturating_add(3)),
        ..Default::default()
    })
    .await;
    let mut cfg = server.client_config(local, None);
    cfg.tunnels[0].kind = TunnelKind::Udp;
    cfg.tunnels.push(tunnel_client::TunnelSpec {
        local: web.addr.to_string(),
        subdomain: Some("web".into()),
        ..Default::default()
    });
    let mut client = TestClient::start(cfg);
    let tunnels = client.online(1).await;
    let port: u16 = tunnels
        .iter()
        .find_map(|t| t.url.strip_prefix("udp://localhost:"))
        .unwrap()
        .parse()
        .unwrap();
    let public: SocketAddr = ([127, 0, 0, 1], port).into();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();

    let flood = 1100;
    for _ in 0..flood {
        let s = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        s.send_to(b"flood", public).await.unwrap();
    }
    // A new visitor from elsewhere is answered, as is the flooder's latest.
    let legit = visitor_socket(public).await;
    let mut answered = None;
    for _ in 0..50 {
        legit.send(b"legit").await.unwrap();
        if let Some(r) = recv_within(&legit, Duration::from_millis(200)).await {
            answered = Some(r);
            break;
        }
    }
    assert_eq!(answered.as_deref(), Some(&b"legit"[..]));
    assert!(
        server.stats.udp_evicted.load(Ordering::Relaxed) >= flood / 2,
        "the flooder's own flows gave way: {}",
        server.stats.udp_evicted.load(Ordering::Relaxed)
    );
    let grown = fds().saturating_sub(before);
    assert!(
        grown <= 1024 + 16,
        "the client holds {grown} more descriptors"
    );
    let r = raw_exchange(
        server.http,
        b"GET /hello HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    client.stop().await;
    server.stop().await;
    web.stop().await;
}
