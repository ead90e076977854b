//! Request heads: the scanner and parser never panic, agree however the
//! input is split, and a head they accept re-serialises into one they accept
//! with the same meaning.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tunnel_lib::http1::scan::Scan;
use tunnel_lib::http1::{Forwarded, HeadScanner, Limits, RequestHead};

fn scan_all(input: &[u8], split: usize, limits: &Limits) -> Result<Option<usize>, u16> {
    let mut sc = HeadScanner::new();
    let first = &input[..split.min(input.len())];
    match sc.scan(first, limits).map_err(|e| e.status())? {
        Scan::Complete(n) => return Ok(Some(n)),
        Scan::SkipEmptyLines(_) => return Ok(None),
        Scan::Partial => {}
    }
    match sc.scan(input, limits).map_err(|e| e.status())? {
        Scan::Complete(n) => Ok(Some(n)),
        _ => Ok(None),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize;
    let input = &data[1..];
    let limits = Limits::default();
    let whole = scan_all(input, input.len(), &limits);
    let parts = scan_all(input, split, &limits);
    // Where the input is split changes nothing: same head, same verdict.
    assert_eq!(whole, parts);
    let Ok(Some(n)) = whole else { return };
    let Ok(head) = RequestHead::parse(Bytes::copy_from_slice(&input[..n]), &limits) else { return };
    let mut out = BytesMut::new();
    head.write_forwarded(&mut out, &Forwarded { client_ip: "192.0.2.1".parse().unwrap(), proto: "http" });
    // The proxy adds up to four fields (X-Forwarded-For/-Proto/-Host,
    // Connection) and a few bytes: re-parse with that headroom.
    let relaxed = Limits { max_headers: limits.max_headers + 4, max_head: limits.max_head + 1024, ..limits.clone() };
    let again = match HeadScanner::new().scan(&out, &relaxed) {
        Ok(Scan::Complete(m)) => RequestHead::parse(out.clone().freeze().slice(..m), &relaxed),
        other => panic!("re-serialised head does not scan: {other:?} {:?}", String::from_utf8_lossy(&out)),
    };
    let again = again.unwrap_or_else(|e| panic!("re-serialised head rejected: {e} {:?}", String::from_utf8_lossy(&out)));
    assert_eq!(head.method(), again.method());
    assert_eq!(head.target(), again.target());
    assert_eq!(head.host(), again.host());
    assert_eq!(head.body, again.body);
    // HTTP/1.1 "close" is the edge's business (not forwarded); HTTP/1.0's
    // keep-alive must survive.
    if head.version() == tunnel_lib::http1::Version::Http10 {
        assert_eq!(head.keep_alive, again.keep_alive);
    }
});
