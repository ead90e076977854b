//! The follower against recorded exchanges, and the book it writes.

use super::*;
use tunnel_lib::io::Tap;

fn observer(m: &Arc<Monitor>) -> Observer {
    Observer::new(
        m.clone(),
        "t".into(),
        "localhost:1".into(),
        "127.0.0.1:9".parse().unwrap(),
        None,
    )
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn pipelined_exchanges_split_anywhere() {
    let m = Arc::new(Monitor::new(true, true, false));
    let o = observer(&m);
    o.toward_local(&b("GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhe"));
    o.toward_local(&b("llo"));
    o.toward_visitor(&b("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"));
    o.toward_visitor(&b("cHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n"));
    assert!(!o.idle());
    o.toward_visitor(&b("0\r\n\r\n"));
    assert!(o.idle());
    let r = m.recent(10);
    assert_eq!(r.len(), 2);
    let (second, first) = (&r[0], &r[1]);
    assert_eq!(
        (first.method.as_str(), first.path.as_str(), first.status),
        ("GET", "/a", 200)
    );
    assert_eq!(&first.response_body.kept[..], b"abc");
    assert_eq!((second.method.as_str(), second.status), ("POST", 201));
    assert_eq!(&second.request_body.kept[..], b"hello");
    assert_eq!(
        &second.response_body.kept[..],
        b"xyz",
        "chunk framing removed"
    );
    assert!(second.ttfb.is_some());
}

#[test]
fn head_upgrade_and_garbage() {
    let m = Arc::new(Monitor::new(true, true, false));
    let o = observer(&m);
    o.toward_local(&b("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"));
    o.toward_visitor(&b("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"));
    assert!(o.idle(), "a HEAD response has no body");
    o.toward_local(&b("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x01\x05hello"));
    o.toward_visitor(&b("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x01\x02hi"));
    assert_eq!(m.recent(1)[0].status, 101);

    let o = observer(&m);
    o.toward_local(&b("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"));
    o.toward_visitor(&b("this is not http\r\n\r\n"));
    o.toward_visitor(&b("more"));
    assert_eq!(o.finish(), 1);
    assert_eq!(m.recent(1)[0].status, 0, "recorded without a response");
}

#[test]
fn bodies_are_capped_and_counted() {
    let m = Arc::new(Monitor::new(true, true, false));
    let o = observer(&m);
    o.toward_local(&b("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    o.toward_visitor(&Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        BODY_CAP * 3
    )));
    for _ in 0..3 {
        o.toward_visitor(&Bytes::from(vec![7u8; BODY_CAP]));
    }
    let e = &m.recent(1)[0];
    assert_eq!(e.response_body.kept.len(), BODY_CAP);
    assert_eq!(e.response_body.total, 3 * BODY_CAP as u64);
    assert!(e.response_body.truncated());
    let c = m.counters();
    assert_eq!(c.requests, 1);
}

#[test]
fn without_capture_nothing_is_kept() {
    let m = Arc::new(Monitor::new(true, false, false));
    let o = observer(&m);
    o.toward_local(&b(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    ));
    o.toward_visitor(&b("HTTP/1.1 204 No Content\r\n\r\n"));
    let e = &m.recent(1)[0];
    assert_eq!(e.status, 204);
    assert!(e.request_head.is_empty() && e.request_body.kept.is_empty());
    assert_eq!(e.request_body.total, 2);
}
