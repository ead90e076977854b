//! Faults on the client's path to the server, made by a UDP impairment
//! proxy in the test (`support::fault`): loss, NAT rebinding, partitions.
//! The visitor side is plain loopback TCP; every fault is on the QUIC path.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::fault::{FaultProxy, Faults, TcpFaultProxy};
use support::*;

/// A server, a backend and a client whose QUIC path runs through a proxy.
struct Rig {
    backend: Backend,
    server: TestServer,
    proxy: FaultProxy,
    client: TestClient,
    host: String,
    url: String,
    /// On the TCP transport: its path (the UDP one is cut for good).
    tcp: Option<(TcpFaultProxy, tempfile::TempDir)>,
}

async fn rig(faults: Faults) -> Rig {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.quic, faults).await;
    let mut cfg = server.client_config(backend.addr, None);
    cfg.server = proxy.addr.to_string();
    online(backend, server, proxy, cfg, None).await
}

/// Starts the client with `cfg` and waits for its URL.
async fn online(
    backend: Backend,
    server: TestServer,
    proxy: FaultProxy,
    cfg: tunnel_client::Config,
    tcp: Option<(TcpFaultProxy, tempfile::TempDir)>,
) -> Rig {
    let mut client = TestClient::start(cfg);
    let url = client.online(1).await[0].url.clone();
    Rig {
        backend,
        server,
        proxy,
        client,
        host: host_of(&url),
        url,
        tcp,
    }
}

/// The same on the TCP transport: UDP cut, the client's TLS over TCP path
/// through a [`TcpFaultProxy`].
async fn tcp_rig() -> Rig {
    let backend = Backend::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) =
        support::tls::Made::new(&["localhost", "*.localhost"]).write(certs.path(), "edge");
    let listeners = TestServer::listeners(true);
    let config = tunnel_server::Config {
        https: listeners.https.as_ref().map(|l| l.local_addr().unwrap()),
        edge_cert: Some(cert),
        edge_key: Some(key),
        ..Default::default()
    };
    let server = TestServer::start_on(config, listeners).await;
    let cut = Faults {
        partition: true,
        ..Default::default()
    };
    let proxy = FaultProxy::start(server.quic, cut).await;
    let tcp = TcpFaultProxy::start(server.https.unwrap()).await;
    let mut cfg = server.client_config(backend.addr, None);
    cfg.server = proxy.addr.to_string();
    cfg.transport = tunnel_client::Transport::Tcp;
    cfg.server_tcp = Some(tcp.addr.to_string());
    cfg.tunnels[0].plain_http = true;
    online(backend, server, proxy, cfg, Some((tcp, certs))).await
}

impl Rig {
    /// Cuts the client's path (`true`), or heals it.
    async fn partition(&self, on: bool) {
        match &self.tcp {
            Some((tcp, _)) => tcp.partition(on),
            None => {
                self.proxy
                    .set(Faults {
                        partition: on,
                        ..Default::default()
                    })
                    .await
            }
        }
    }

    async fn stop(self) {
        self.client.stop().await;
        self.server.stop().await;
        self.backend.stop().await;
    }

    /// The client's connection count so far (1: never reconnected).
    fn generation(&self) -> u64 {
        match &*self.client.status.borrow() {
            tunnel_client::Status::Online { generation, .. } => *generation,
            _ => 0,
        }
    }
}

/// One GET on a new visitor connection; the body, or why not.
async fn fetch(rig: &Rig, path: &str, within: Duration) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(rig.server.http)
        .await
        .map_err(|e| e.to_string())?;
    try_get(tcp, &rig.host, path, within)
        .await
        .map(|b| b.to_vec())
}

/// `n` GETs of /hello, `parallel` at a time; the failures.
async fn hellos(rig: &Rig, n: usize, parallel: usize) -> Vec<String> {
    let mut failures = Vec::new();
    for _ in 0..n / parallel {
        let batch = (0..parallel).map(|_| fetch(rig, "/hello", Duration::from_secs(20)));
        for r in futures_util::future::join_all(batch).await {
            match r {
                Ok(b) if b == b"hello from app" => {}
                Ok(b) => failures.push(format!("wrong body {:?}", String::from_utf8_lossy(&b))),
                Err(e) => failures.push(e),
            }
        }
    }
    failures
}

#[tokio::test]
async fn ten_percent_loss_each_way_loses_no_request() {
    let rig = rig(Faults::loss(0.10)).await;
    let failures = hellos(&rig, 100, 10).await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    rig.stop().await;
}

#[tokio::test]
async fn twenty_percent_loss_each_way_loses_at_most_one_in_a_hundred() {
    let rig = rig(Faults::loss(0.20)).await;
    let failures = hellos(&rig, 200, 10).await;
    assert!(
        failures.len() <= 2,
        "{} of 200 failed: {failures:?}",
        failures.len()
    );
    rig.stop().await;
}

#[tokio::test]
async fn reordered_duplicated_and_delayed_packets_change_nothing() {
    let rig = rig(Faults {
        delay: Duration::from_millis(10),
        reorder: 0.2,
        duplicate: 0.1,
        ..Default::default()
    })
    .await;
    let failures = hellos(&rig, 50, 10).await;
    assert!(failures.is_empty(), "{failures:?}");
    let n = 4 << 20;
    let body = fetch(&rig, &format!("/bytes/{n}"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(body == pattern(0, n), "4 MiB body differs");
    rig.stop().await;
}

#[tokio::test]
async fn a_twenty_mib_download_is_intact_under_five_percent_loss() {
    let rig = rig(Faults::loss(0.05)).await;
    let n = 20 << 20;
    let body = fetch(&rig, &format!("/bytes/{n}"), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(body.len(), n);
    assert!(body == pattern(0, n), "20 MiB body differs");
    rig.stop().await;
}

/// Reads a download of `n` bytes, calling `midway` once after `at` bytes;
/// whether the body was intact.
async fn download_with<F: std::future::Future<Output = ()>>(
    rig: &Rig,
    n: usize,
    at: usize,
    midway: F,
) -> bool {
    let mut v = visitor(rig.server.http).await;
    let resp = v
        .send_request(get(&rig.host, &format!("/bytes/{n}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got: Vec<u8> = Vec::with_capacity(n);
    let mut midway = Some(midway);
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the download kept moving")
    {
        if let Ok(d) = frame.unwrap().into_data() {
            got.extend_from_slice(&d);
        }
        if got.len() >= at {
            if let Some(m) = midway.take() {
                m.await;
            }
        }
    }
    got.len() == n && got == pattern(0, n)
}

#[tokio::test]
async fn nat_rebinding_during_a_fifty_mib_download_keeps_the_connection() {
    let rig = rig(Faults::default()).await;
    let intact = download_with(&rig, 50 << 20, 10 << 20, rig.proxy.rebind()).await;
    assert!(intact, "50 MiB body differs after the rebinding");
    // Still the first connection, and it serves.
    assert_eq!(rig.generation(), 1, "the client reconnected");
    assert!(fetch(&rig, "/hello", WAIT).await.is_ok());
    assert_eq!(rig.generation(), 1);
    rig.stop().await;
}

#[tokio::test]
async fn after_a_three_second_partition_the_tunnel_serves_within_two_seconds() {
    three_second_partition(rig(Faults::default()).await).await;
}

/// Issue 25: the same on the TCP transport (bytes wait in the stalled path).
#[tokio::test]
async fn over_tcp_after_a_three_second_partition_the_tunnel_serves_within_two_seconds() {
    three_second_partition(tcp_rig().await).await;
}

async fn three_second_partition(rig: Rig) {
    // Traffic right before, so the partition starts with a live path.
    assert!(fetch(&rig, "/hello", WAIT).await.is_ok());
    rig.partition(true).await;
    // The fault's duration, not a wait for readiness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.partition(false).await;
    let healed = Instant::now();
    loop {
        let last = match fetch(&rig, "/hello", Duration::from_millis(500)).await {
            Ok(_) => break,
            Err(e) => e,
        };
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "not serving 5 s after the partition healed: {last}"
        );
    }
    let took = healed.elapsed();
    eprintln!(
        "{}serving again {took:?} after a 3 s partition healed",
        if rig.tcp.is_some() {
            "TCP transport: "
        } else {
            ""
        }
    );
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        rig.generation(),
        1,
        "a 3 s partition should not cost a reconnect"
    );
    rig.stop().await;
}

#[tokio::test]
async fn after_a_sixty_second_partition_the_client_reconnects_with_the_same_url() {
    sixty_second_partition(rig(Faults::default()).await).await;
}

/// Issue 25: the same on the TCP transport.
#[tokio::test]
async fn over_tcp_after_a_sixty_second_partition_the_client_reconnects_with_the_same_url() {
    sixty_second_partition(tcp_rig().await).await;
}

async fn sixty_second_partition(mut rig: Rig) {
    rig.partition(true).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    rig.partition(false).await;
    let healed = Instant::now();
    // Both ends gave the connection up long ago (idle timeout); the client
    // reconnects by itself and is given its name back.
    let again = rig.client.online(2).await;
    eprintln!(
        "{}online again {:?} after a 60 s partition healed",
        if rig.tcp.is_some() {
            "TCP transport: "
        } else {
            ""
        },
        healed.elapsed()
    );
    assert_eq!(again[0].url, rig.url);
    assert_eq!(
        fetch(&rig, "/hello", WAIT).await.unwrap(),
        b"hello from app"
    );
    rig.stop().await;
}
