//! Strangers and token holders against the QUIC side (issue 22, items 2, 3
//! and 6): a flood of Initial packets must not lock clients out, a
//! connection must not pin memory the protocol never reads, and one token
//! must not take every client slot.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use support::bins::*;
use support::*;
use tunnel_lib::io::read_message;
use tunnel_lib::proto::{Control, PROTOCOL_VERSION};
use tunnel_lib::tls::ServerTrust;

/// A client configuration that trusts any certificate with this pin; the
/// handshakes below never need to finish, or pin the dev certificate.
fn quic_config(pin: [u8; 32]) -> quinn::ClientConfig {
    tunnel_lib::quic::client_config(&ServerTrust::Pinned(vec![pin]), &Default::default()).unwrap()
}

/// `n` distinct QUIC Initial packets (each a new connection attempt), as a
/// real client sends them, captured from a socket that never answers.
async fn initials(n: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = quic_config([0; 32]);
    let to = sink.local_addr().unwrap();
    let attempts: Vec<_> = (0..n)
        .map(|_| ep.connect_with(cfg.clone(), to, "localhost").unwrap())
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while out.len() < n {
        let (len, _) = tokio::time::timeout(WAIT, sink.recv_from(&mut buf))
            .await
            .expect("the Initials arrive")
            .unwrap();
        // Long header: flags, version (4), DCID length, DCID.
        let d = &buf[..len];
        let dcid = d[6..6 + usize::from(d[5])].to_vec();
        if seen.insert(dcid) {
            out.push(d.to_vec());
        }
    }
    drop(attempts);
    ep.close(0u32.into(), b"");
    out
}

/// Item 2: 1 100 Initials (1.3 MB, from 11 sockets on other loopback
/// addresses, never answered) used to take every `--max-clients` slot for
/// the handshake timeout, so a real client read "refused". Now a pending
/// handshake holds no client slot, each source has a small pending budget,
/// and past a few pending ones new addresses are sent a Retry first.
#[tokio::test]
async fn an_initial_flood_does_not_lock_clients_out() {
    let backend = Backend::start("flooded").await;
    let server = TestServer::start().await;
    let packets = initials(1100).await;
    let bytes: usize = packets.iter().map(Vec::len).sum();
    assert!(bytes > 1_300_000, "{bytes}");
    let mut sources = Vec::new();
    for (i, chunk) in packets.chunks(100).enumerate() {
        let from = tokio::net::UdpSocket::bind(format!("127.0.0.{}:0", i + 2))
            .await
            .unwrap();
        for p in chunk {
            from.send_to(p, server.quic).await.unwrap();
        }
        // Kept open (the server's answers land in its buffer, unread).
        sources.push(from);
    }
    let started = Instant::now();
    let mut client = TestClient::start(server.client_config(backend.addr, Some("flooded")));
    // Every status until online: a refusal shows as Reconnecting.
    let mut seen = Vec::new();
    let online = tokio::time::timeout(WAIT, async {
        loop {
            let s = client.status.borrow_and_update().clone();
            if matches!(s, tunnel_client::Status::Online { .. }) {
                return;
            }
            seen.push(format!("{s:?}"));
            client.status.changed().await.unwrap();
        }
    })
    .await;
    let took = started.elapsed();
    assert!(online.is_ok(), "not online: {seen:?}");
    assert!(
        !seen.iter().any(|s| s.contains("Reconnecting")),
        "the client was turned away first: {seen:?}"
    );
    eprintln!("connected {took:?} after an Initial flood of {bytes} bytes");
    assert!(
        server.stats.handshakes_refused.get() > 0,
        "the flood met the pending budgets"
    );
    let r = raw_exchange(
        server.http,
        b"GET /hello HTTP/1.1\r\nHost: flooded.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.body, b"hello from flooded");
    drop(sources);
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// An authenticated raw connection (no tunnel), with its control stream.
type Raw = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

/// The hello a client sends, and the welcome.
async fn hello(ep: &quinn::Endpoint, quic: SocketAddr, pin: [u8; 32], token: &str) -> Raw {
    let (raw, welcome) = try_hello(ep, quic, pin, token).await;
    assert!(
        matches!(welcome, Some(Control::Welcome { .. })),
        "{welcome:?}"
    );
    raw
}

/// A connection, its hello, and the server's answer.
async fn try_hello(
    ep: &quinn::Endpoint,
    quic: SocketAddr,
    pin: [u8; 32],
    token: &str,
) -> (Raw, Option<Control>) {
    let conn = ep
        .connect_with(quic_config(pin), quic, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut out = BytesMut::new();
    Control::Hello {
        version: PROTOCOL_VERSION,
        token: token.into(),
        client_id: rand_id(),
        agent: "attack".into(),
    }
    .encode(&mut out);
    send.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let answer = read_message(&mut recv, &mut buf, Control::decode)
        .await
        .unwrap();
    ((conn, send, recv), answer)
}

fn rand_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
    id
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Item 3: 50 authenticated sessions each opened three more streams with
/// 1 MiB in each and sent 2 MB of DATAGRAMs without a UDP tunnel; the
/// server buffered all of it for as long as they stayed (7 → 257 MiB). Now
/// a client may open one stream only and unread DATAGRAMs are dropped, so
/// the server's memory stays near where it started.
#[tokio::test]
async fn sessions_cannot_pin_server_memory() {
    let home = tempfile::tempdir().unwrap();
    let (server, _http, quic) = ready_server(
        server_cmd(home.path())
            .env("TUNNEL_TOKENS", TOKEN)
            .args(["--max-sessions-per-token", "52"]),
    )
    .await;
    let pid = server.child.id().unwrap();
    let quic: SocketAddr = quic.parse().unwrap();
    let pem = tokio::fs::read(home.path().join("cert.pem")).await.unwrap();
    let cert = tunnel_lib::tls::parse_certs(&pem, &home.path().join("cert.pem")).unwrap();
    let pin = tunnel_lib::tls::fingerprint(&cert[0]);
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    // One session first, so the baseline includes quinn's own warm-up.
    let first = hello(&ep, quic, pin, TOKEN).await;
    let before = rss_kib(pid);
    let mut conns = vec![first];
    let mut extra_streams = Vec::new();
    for _ in 0..50 {
        let raw = hello(&ep, quic, pin, TOKEN).await;
        let conn = &raw.0;
        for _ in 0..3 {
            // With credit for the stream, open_bi is ready at once.
            if let Some(Ok((mut s, r))) = conn.open_bi().now_or_never() {
                // The old server took it all (its window), then stalled us.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), s.write_all(&vec![0u8; 1 << 20]))
                        .await;
                extra_streams.push((s, r));
            }
        }
        let d = Bytes::from(vec![7u8; 1000]);
        for _ in 0..2000 {
            let _ = conn.send_datagram(d.clone());
        }
        conns.push(raw);
    }
    // Every session still answers: the server read what it was sent.
    let probe = hello(&ep, quic, pin, TOKEN).await;
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before) / 1024;
    eprintln!(
        "server RSS {} MiB -> {} MiB after 50 pinning sessions ({} extra streams opened)",
        before / 1024,
        after / 1024,
        extra_streams.len()
    );
    assert_eq!(
        extra_streams.len(),
        0,
        "a client may open the control stream only"
    );
    assert!(grown < 40, "the server grew by {grown} MiB");
    // Item 6: the 53rd session of the token is told to wait (another
    // token's clients are not affected by this one's count).
    let (_refused_conn, refused) = try_hello(&ep, quic, pin, TOKEN).await;
    assert!(
        matches!(&refused, Some(Control::Error { code: tunnel_lib::proto::ErrorCode::Busy, message, .. })
            if message.contains("max_sessions_per_token")),
        "{refused:?}"
    );
    drop((conns, probe, extra_streams));
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}
