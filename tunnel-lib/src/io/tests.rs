//! The adapters over real sockets and a real QUIC connection.

use super::*;
use std::time::{Duration, Instant};

/// A short read clears readiness (`read_draining`): bytes that arrive
/// afterwards must still wake the reader, each time, and an idle wait
/// holds no buffer.
#[tokio::test]
async fn bytes_after_a_short_read_still_wake_the_reader() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut tx = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut rx, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    for round in 0..50u8 {
        tx.write_all(&[round; 10]).await.unwrap();
        let read = rx.read_lean(&mut buf, 2048);
        let n = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the reader was not woken"))
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(&buf[..], &[round; 10]);
        buf.clear();
    }
    // Nothing more comes: the read waits, and let go of its buffer.
    let waiting = tokio::time::timeout(Duration::from_millis(50), rx.read_lean(&mut buf, 2048));
    assert!(waiting.await.is_err());
    assert_eq!(buf.capacity(), 0);
}

/// `read_batch` over a real QUIC stream: every byte in order, at most
/// [`BATCH`] chunks a call, the stream's end reported, and the thread's
/// slots left empty after every call (they hold no stream data).
#[tokio::test]
async fn read_batch_takes_every_chunk_in_order_and_keeps_nothing() {
    use crate::tls::{fingerprint, CertPair, ServerTrust};
    let g = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_string()]).unwrap();
    let pair = CertPair {
        chain: vec![g.cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into()),
    };
    let fp = fingerprint(&pair.chain[0]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = crate::quic::Tuning::default();
    let server = crate::quic::server_endpoint(
        socket,
        crate::quic::server_config(pair, &t).unwrap(),
        b"test secret",
        &t,
        None,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = crate::quic::client_endpoint(addr, &t).unwrap();
    let cfg = crate::quic::client_config(&ServerTrust::Pinned(vec![fp]), &t).unwrap();
    let connecting = client.connect_with(cfg, addr, "tunnel.test").unwrap();
    let (conn, incoming) = tokio::join!(connecting, async { server.accept().await.unwrap().await });
    let (conn, incoming) = (conn.unwrap(), incoming.unwrap());
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let sent = Bytes::from(sent.clone());
        async move {
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            // Small writes, so the reader finds many chunks at once.
            for piece in sent.chunks(700) {
                send.write_chunk(sent.slice_ref(piece)).await.unwrap();
            }
            send.finish().unwrap();
            send.stopped().await.ok();
            conn
        }
    };
    let reader = async {
        let (_send, mut recv) = incoming.accept_bi().await.unwrap();
        let mut got = Vec::new();
        let mut out = Vec::new();
        loop {
            let more = read_batch(&mut recv, &mut out).await.unwrap();
            assert!(out.len() <= BATCH, "{} chunks in one call", out.len());
            SCRATCH.with(|s| {
                let slots = s.take();
                if let Some(slots) = &slots {
                    assert!(slots.iter().all(|b| b.is_empty()), "a slot kept its chunk");
                }
                s.set(slots);
            });
            for b in out.drain(..) {
                got.extend_from_slice(&b);
            }
            if !more {
                return got;
            }
        }
    };
    let (conn, got) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the stream went through");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the bytes arrived out of order");
    conn.close(0u32.into(), b"done");
}

/// Feeds `writes` chunks of `n` bytes at `every` apart; returns the
/// priority changes in order.
fn run(order: &mut SendOrder, t0: Instant, writes: u64, n: u64, every: Duration) -> Vec<i32> {
    (0..writes)
        .filter_map(|i| order.account(t0 + every * i as u32, n))
        .collect()
}

#[test]
fn small_exchanges_stay_interactive() {
    // A busy keep-alive connection: 1 000 responses of 200 bytes a
    // second for 10 s. The count peaks at twice what one half-life
    // adds (40 KB), below `BULK_AFTER`.
    let t0 = Instant::now();
    let mut o = SendOrder::new();
    o.since = t0;
    assert!(run(&mut o, t0, 10_000, 200, Duration::from_millis(1)).is_empty());
    // At 2 000 a second (400 KB/s, peaking at 80 KB) it is a stream
    // like any download.
    let mut o = SendOrder::new();
    o.since = t0;
    assert!(!run(&mut o, t0, 20_000, 200, Duration::from_micros(500)).is_empty());
}

#[test]
fn a_download_turns_bulk_and_takes_turns() {
    let t0 = Instant::now();
    let mut o = SendOrder::new();
    o.since = t0;
    // 1 MiB in 64 KiB reads, back to back.
    let changes = run(&mut o, t0, 16, 64 * 1024, Duration::ZERO);
    // Bulk once past 64 KiB, then a new turn every 256 KiB: 4 turns.
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(changes.iter().all(|&p| p < 0));
    assert!(
        changes.windows(2).all(|w| w[1] < w[0]),
        "each turn ranks behind the one before: {changes:?}"
    );
    // After a pause (1 MiB halved five times is 32 KiB), it is
    // interactive again.
    let later = t0 + BULK_HALF_LIFE * 5;
    assert_eq!(o.account(later, 100), Some(0));
    assert_eq!(o.account(later, 100), None);
}
