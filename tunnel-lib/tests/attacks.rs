//! The attack table against the sans-IO core: head scanner, head parser and
//! chunked decoder, the way the edge applies them.

use bytes::BytesMut;
use tunnel_lib::http1::{BodyKind, ChunkedDecoder, Limits, RequestReader};

include!("data/attack_cases.rs");

/// `Err(status)` if the core rejects the input, `Ok` if it accepts it whole.
fn judge(input: &[u8]) -> Result<(), u16> {
    let limits = Limits::default();
    let mut buf = BytesMut::from(input);
    let head = RequestReader::new()
        .read(&mut buf, &limits)
        .map_err(|e| e.status())?
        .ok_or(0u16)?;
    if head.body == BodyKind::Chunked {
        let mut dec = ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer);
        dec.advance(&buf).map_err(|_| 400u16)?;
    }
    Ok(())
}

#[test]
fn every_attack_gets_its_status() {
    let all: Vec<(&str, Vec<u8>, u16)> = ATTACKS
        .iter()
        .map(|(n, b, s)| (*n, b.to_vec(), *s))
        .chain(oversized())
        .collect();
    assert!(
        all.len() >= 60,
        "the table must have at least 60 cases, has {}",
        all.len()
    );
    let mut failures = Vec::new();
    for (name, bytes, status) in &all {
        let got = judge(bytes);
        if got != Err(*status) {
            failures.push(format!("{name}: expected {status}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} wrong:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn well_formed_requests_pass() {
    let good: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: t.localhost\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 3\r\n\r\nabc",
        b"GET http://t.localhost/x HTTP/1.1\r\nHost: t.localhost\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: t.localhost\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: t.localhost\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: caf\xc3\xa9\r\n\r\n",
    ];
    for g in good {
        assert_eq!(judge(g), Ok(()), "{:?}", String::from_utf8_lossy(g));
    }
}
