//! The attack table end to end: each request on a fresh visitor connection
//! through a running tunnel; the visitor gets the status and a close, and
//! the local service receives nothing from any of them.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

include!("../../tunnel-lib/tests/data/attack_cases.rs");

#[tokio::test]
async fn attacks_are_rejected_and_nothing_reaches_the_local_service() {
    let backend = RawBackend::start().await;
    let (server, client) = rig(backend.addr, "t").await;

    let all: Vec<(&str, Vec<u8>, u16)> = ATTACKS
        .iter()
        .map(|(n, b, s)| (*n, b.to_vec(), *s))
        .chain(oversized())
        .collect();
    assert!(all.len() >= 60);
    let mut failures = Vec::new();
    for (name, bytes, status) in &all {
        let mut tcp = TcpStream::connect(server.http).await.unwrap();
        // Some oversized heads are cut off by the server mid-write.
        let _ = tcp.write_all(bytes).await;
        let raw = read_raw_response(&mut tcp).await;
        if raw.status != *status {
            failures.push(format!("{name}: expected {status}, got {}", raw.status));
        }
        if !raw.head.contains("Connection: close") {
            failures.push(format!("{name}: no Connection: close"));
        }
        expect_close(&mut tcp).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A sentinel request goes through, and it is all the local service saw:
    // rejected requests never opened a stream.
    let raw = raw_exchange(
        server.http,
        b"GET /sentinel HTTP/1.1\r\nHost: t.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        backend.connections(),
        1,
        "rejected requests must not reach the local service"
    );
    assert_eq!(
        String::from_utf8(backend.all_received()).unwrap(),
        "GET /sentinel HTTP/1.1\r\nHost: t.localhost\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: t.localhost\r\n\r\n"
    );

    unrig(server, client).await;
    backend.stop().await;
}

#[tokio::test]
async fn the_local_service_receives_only_canonical_heads() {
    let backend = RawBackend::start().await;
    let (server, client) = rig(backend.addr, "t").await;

    let cases: &[(&[u8], &str)] = &[
        (
            b"GET http://T.localhost/abs?q=1 HTTP/1.1\r\nHost: T.localhost\r\nConnection: close\r\n\r\n",
            "GET /abs?q=1 HTTP/1.1\r\nHost: T.localhost\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: T.localhost\r\n\r\n",
        ),
        (
            b"\r\nGET /hop HTTP/1.1\r\nHost: t.localhost\r\nConnection: close, X-Private\r\nX-Private: secret\r\n\
              Keep-Alive: 5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\nAccept:   text/html  \r\n\
              X-Forwarded-For: 10.9.8.7\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\r\n",
            "GET /hop HTTP/1.1\r\nHost: t.localhost\r\nAccept: text/html\r\nX-Forwarded-For: 10.9.8.7, 127.0.0.1\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: t.localhost\r\n\r\n",
        ),
        (
            b"GET /old HTTP/1.0\r\nHost: t.localhost:8000\r\n\r\n",
            "GET /old HTTP/1.0\r\nHost: t.localhost:8000\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: t.localhost:8000\r\nConnection: close\r\n\r\n",
        ),
    ];
    let mut want_all = String::new();
    for (i, (input, want)) in cases.iter().enumerate() {
        let raw = raw_exchange(server.http, input).await;
        assert_eq!(raw.status, 200, "case {i}");
        want_all.push_str(want);
        // Exactly these heads, in order (over one reused local connection).
        assert_eq!(
            String::from_utf8(backend.all_received()).unwrap(),
            want_all,
            "case {i}"
        );
    }
    unrig(server, client).await;
    backend.stop().await;
}
