//! The edge's halves driven over `tokio::io::duplex`: a visitor connection
//! with no socket, no QUIC and no client, against the state of a server
//! (`State::for_tests`). What the server answers by itself (routing
//! refusals, malformed and oversized heads, deadlines, pipelining order,
//! discarded bodies) is decided here, byte for byte, and the same answer
//! must come whatever way the input is split (hyper's decode tests over
//! `&[u8]` are the model).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::config::Config;

const PEER: ([u8; 4], u16) = ([192, 0, 2, 7], 50_000);

/// A visitor connection to a fresh server state: the visitor's end of the
/// pipe and the connection task (ends when the edge closes).
fn connect(config: Config) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let state = State::for_tests(config);
    let (visitor, edge) = tokio::io::duplex(64 * 1024);
    let (rd, wr) = tokio::io::split(edge);
    let task = tokio::spawn(serve_stream(
        state,
        rd,
        wr,
        BytesMut::new(),
        PEER.into(),
        Scheme::Http,
        None,
        CancellationToken::new(),
    ));
    (visitor, task)
}

/// Everything the edge writes until it closes the connection.
async fn read_to_close(visitor: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(600), visitor.read_to_end(&mut out))
        .await
        .expect("the edge closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Sends `input` in pieces of `step` bytes (the last one smaller), then
/// reads until the edge closes.
async fn exchange(input: &[u8], step: usize) -> String {
    let (mut visitor, task) = connect(Config::default());
    for piece in input.chunks(step) {
        visitor.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let out = read_to_close(&mut visitor).await;
    task.await.unwrap();
    out
}

#[tokio::test]
async fn pipelined_requests_for_unknown_hosts_are_answered_in_order() {
    let input = b"GET /a HTTP/1.1\r\nHost: one.localhost\r\n\r\n\
                  POST /b HTTP/1.1\r\nHost: two.localhost\r\nContent-Length: 5\r\n\r\nhello\
                  GET /c HTTP/1.1\r\nHost: three.localhost\r\nConnection: close\r\n\r\n";
    let out = exchange(input, input.len()).await;
    assert_eq!(statuses(&out), [404, 404, 404], "{out}");
    let (one, two, three) = (
        out.find("one.localhost").unwrap(),
        out.find("two.localhost").unwrap(),
        out.find("three.localhost").unwrap(),
    );
    assert!(
        one < two && two < three,
        "each page names its host, in order:\n{out}"
    );
}

/// The same bytes split at every size from 1 byte up give the same answer:
/// the head parser resumes wherever a read ends.
#[tokio::test]
async fn the_answer_does_not_depend_on_how_the_bytes_arrive() {
    let input = b"GET /x HTTP/1.1\r\nHost: nobody.localhost\r\nContent-Length: 3\r\n\r\nabc\
                  GET /y HTTP/1.1\r\nHost: nobody.localhost\r\nConnection: close\r\n\r\n";
    let whole = exchange(input, input.len()).await;
    assert_eq!(statuses(&whole), [404, 404], "{whole}");
    for step in [1, 2, 3, 7, 16, 41] {
        let split = exchange(input, step).await;
        assert_eq!(split, whole, "split every {step} bytes");
    }
}

#[tokio::test]
async fn malformed_heads_get_their_4xx_and_a_close() {
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
        "x".repeat(20_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a.localhost\r\n{}\r\n",
        "X-Filler: yes\r\n".repeat(2_000)
    );
    let cases: [(&[u8], u16); 6] = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (long_target.as_bytes(), 414),
        (many_headers.as_bytes(), 431),
    ];
    for (input, status) in cases {
        let out = exchange(input, input.len()).await;
        assert_eq!(
            statuses(&out),
            [status],
            "{:?}:\n{out}",
            String::from_utf8_lossy(&input[..input.len().min(60)])
        );
        assert!(
            out.contains("Connection: close") || out.contains("connection: close"),
            "{out}"
        );
    }
}

/// A head that stops halfway gets 408 when its deadline passes, measured
/// on tokio's clock (paused: the test takes no real time).
#[tokio::test(start_paused = true)]
async fn a_stalled_head_gets_408_at_its_deadline() {
    let config = Config::default();
    let deadline = config.timeouts.head;
    let (mut visitor, task) = connect(config);
    visitor
        .write_all(b"GET / HTTP/1.1\r\nHost: slow")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let out = read_to_close(&mut visitor).await;
    let took = started.elapsed();
    assert_eq!(statuses(&out), [408], "{out}");
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(1),
        "{took:?}"
    );
    task.await.unwrap();
}

/// A keep-alive connection with nothing in flight is closed after its idle
/// time, without a word (nothing was asked).
#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_quietly() {
    let config = Config::default();
    let idle = config.timeouts.keep_alive_idle;
    let (mut visitor, task) = connect(config);
    visitor
        .write_all(b"GET / HTTP/1.1\r\nHost: gone.localhost\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let out = read_to_close(&mut visitor).await;
    assert_eq!(statuses(&out), [404], "{out}");
    let took = started.elapsed();
    assert!(
        took >= idle && took < idle + Duration::from_secs(1),
        "{took:?}"
    );
    task.await.unwrap();
}

/// A refused request's body is read and dropped up to `MAX_DISCARD`, so a
/// keep-alive visitor goes on; a larger one closes the connection after
/// the page instead of reading it all.
#[tokio::test]
async fn a_large_body_to_nowhere_closes_instead_of_being_read() {
    let big = MAX_DISCARD as usize * 2;
    let (mut visitor, task) = connect(Config::default());
    let head =
        format!("POST /up HTTP/1.1\r\nHost: none.localhost\r\nContent-Length: {big}\r\n\r\n");
    visitor.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < big {
            if visitor.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        (visitor, sent)
    });
    let (mut visitor, sent) = writer.await.unwrap();
    let out = read_to_close(&mut visitor).await;
    assert_eq!(statuses(&out), [404], "{out}");
    let closes = |t: &str| t.to_ascii_lowercase().contains("connection: close");
    assert!(closes(&out), "the page says it closes: {out}");
    assert!(sent <= big, "{sent}");
    // A small body is read and dropped: the page keeps the connection.
    let small = exchange(
        b"POST /up HTTP/1.1\r\nHost: none.localhost\r\nContent-Length: 2\r\n\r\nhi\
                           GET / HTTP/1.1\r\nHost: none.localhost\r\nConnection: close\r\n\r\n",
        1000,
    )
    .await;
    assert_eq!(statuses(&small), [404, 404], "{small}");
    let first = &small[..small.rfind("HTTP/1.1 ").unwrap()];
    assert!(!closes(first), "{first}");
    task.await.unwrap();
}
