//! Property tests: parse → serialise → parse gives the same message, and
//! the chunked decoder gives the same bytes however the input is split.

use bytes::BytesMut;
use proptest::prelude::*;
use tunnel_lib::http1::scan::Scan;
use tunnel_lib::http1::{
    BodyKind, ChunkStep, ChunkedDecoder, Forwarded, HeadScanner, Limits, RequestHead,
};

fn parse(input: &[u8]) -> RequestHead {
    let limits = Limits::default();
    tunnel_lib::http1::RequestReader::new()
        .read(&mut BytesMut::from(input), &limits)
        .unwrap()
        .expect("a complete head")
}

fn forwarded(h: &RequestHead) -> Vec<u8> {
    let mut out = BytesMut::new();
    h.write_forwarded(
        &mut out,
        &Forwarded::plain("192.0.2.1".parse().unwrap(), "http"),
    );
    out.to_vec()
}

/// What must survive a trip through the proxy.
#[derive(Debug, PartialEq)]
struct Meaning {
    method: Vec<u8>,
    target: Vec<u8>,
    host: Vec<u8>,
    body: BodyKind,
    keep_alive: bool,
    upgrade: bool,
    headers: Vec<(String, Vec<u8>)>,
}

fn meaning(h: &RequestHead) -> Meaning {
    let headers = h
        .headers()
        .filter(|(n, _)| {
            let n = String::from_utf8_lossy(n).to_ascii_lowercase();
            !matches!(
                n.as_str(),
                "host"
                    | "connection"
                    | "content-length"
                    | "transfer-encoding"
                    | "x-forwarded-for"
                    | "x-forwarded-host"
                    | "x-forwarded-proto"
                    // hop-by-hop: dropped on the way, by design
                    | "te"
                    | "trailer"
                    | "keep-alive"
                    | "proxy-connection"
                    | "upgrade"
                    // the visitor's own claims about its address
                    | "x-real-ip"
                    | "forwarded"
            )
        })
        .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.to_vec()))
        .collect();
    Meaning {
        method: h.method().to_vec(),
        target: h.target().to_vec(),
        host: h.host().to_vec(),
        body: h.body,
        // HTTP/1.1 "close" is the edge's business (it closes the visitor's
        // connection itself and keeps the local one reusable), so only
        // HTTP/1.0's keep-alive must survive the trip.
        keep_alive: h.keep_alive || h.version() == tunnel_lib::http1::Version::Http11,
        upgrade: h.upgrade_websocket,
        headers,
    }
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

fn header_value() -> impl Strategy<Value = String> {
    // Visible ASCII and inner spaces; no leading/trailing whitespace.
    "[!-~]([ !-~]{0,20}[!-~])?"
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            "GET",
            "POST",
            "PUT",
            "DELETE",
            "PATCH",
            "OPTIONS",
            "HEAD",
            token()
        ],
        "/[A-Za-z0-9/._~%?=&-]{0,40}",
        any::<bool>(),
        // A port is at most 65535 (a larger one is not a Host).
        "[a-z0-9-]{1,10}\\.localhost(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5]?[0-9]{1,4}))?",
        proptest::collection::vec((token(), header_value()), 0..12),
        prop_oneof![Just(None), (0u64..1_000_000).prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(method, target, http10, host, headers, len, chunked, close)| {
                let mut s = format!(
                    "{method} {target} HTTP/1.{}\r\nHost: {host}\r\n",
                    if http10 { 0 } else { 1 }
                );
                for (n, v) in headers {
                    let l = n.to_ascii_lowercase();
                    if matches!(
                        l.as_str(),
                        "host"
                            | "content-length"
                            | "transfer-encoding"
                            | "expect"
                            | "connection"
                            | "upgrade"
                    ) {
                        continue;
                    }
                    s.push_str(&format!("{n}: {v}\r\n"));
                }
                if chunked && !http10 {
                    s.push_str("Transfer-Encoding: chunked\r\n");
                } else if let Some(n) = len {
                    s.push_str(&format!("Content-Length: {n}\r\n"));
                }
                if close {
                    s.push_str("Connection: close\r\n");
                }
                s.push_str("\r\n");
                s.into_bytes()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_serialise_parse_is_stable(req in request()) {
        let first = parse(&req);
        let once = forwarded(&first);
        let second = parse(&once);
        prop_assert_eq!(meaning(&first), meaning(&second));
        // Serialising again changes nothing but the appended X-Forwarded-For.
        let twice = forwarded(&second);
        let third = parse(&twice);
        prop_assert_eq!(meaning(&second), meaning(&third));
    }

    #[test]
    fn scanning_is_split_independent(req in request(), split in 0usize..400) {
        let split = split.min(req.len());
        let limits = Limits::default();
        let mut sc = HeadScanner::new();
        let first = sc.scan(&req[..split], &limits).unwrap();
        let whole = if let Scan::Complete(n) = first { n } else {
            match sc.scan(&req, &limits).unwrap() { Scan::Complete(n) => n, other => panic!("{other:?}") }
        };
        prop_assert_eq!(whole, req.len());
    }

    #[test]
    fn chunked_decoding_is_split_independent(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
        cuts in proptest::collection::vec(0usize..4000, 0..6),
    ) {
        let mut wire = Vec::new();
        let mut data = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
            data.extend_from_slice(c);
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
        cuts.sort();
        let mut dec = ChunkedDecoder::new(64, 64);
        let mut got = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain([wire.len()]) {
            let mut piece = &wire[start..end.max(start)];
            start = end.max(start);
            while !piece.is_empty() {
                match dec.step(piece).unwrap() {
                    ChunkStep::Data(n) => { got.extend_from_slice(&piece[..n]); piece = &piece[n..]; }
                    ChunkStep::Framing(n) | ChunkStep::Done(n) => piece = &piece[n..],
                }
            }
        }
        prop_assert!(dec.is_done());
        prop_assert_eq!(got, data);
    }
}
