use bytes::{Bytes, BytesMut};

use super::scan::Scan;
use super::*;

fn limits() -> Limits {
    Limits::default()
}

/// Scans and parses a whole head the way the edge does.
fn parse(input: &[u8]) -> Result<(RequestHead, usize), HeadError> {
    let mut buf = input;
    let mut skipped = 0;
    loop {
        let mut sc = HeadScanner::new();
        match sc.scan(buf, &limits())? {
            Scan::Complete(n) => {
                let head = RequestHead::parse(Bytes::copy_from_slice(&buf[..n]), &limits())?;
                return Ok((head, skipped + n));
            }
            Scan::SkipEmptyLines(n) => {
                skipped += n;
                buf = &buf[n..];
            }
            Scan::Partial => return Err(HeadError::Malformed("incomplete (test)")),
        }
    }
}

fn forwarded(input: &[u8]) -> String {
    let (head, _) = parse(input).unwrap();
    let mut out = BytesMut::new();
    head.write_forwarded(
        &mut out,
        &Forwarded::plain("203.0.113.7".parse().unwrap(), "http"),
    );
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn simple_get_is_canonicalised() {
    let out = forwarded(b"GET /a?b=1 HTTP/1.1\r\nHost: App.localhost:8000\r\nAccept: */*\r\n\r\n");
    assert_eq!(
        out,
        "GET /a?b=1 HTTP/1.1\r\nHost: App.localhost:8000\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.7\r\n\
         X-Forwarded-Proto: http\r\nX-Forwarded-Host: App.localhost:8000\r\n\r\n"
    );
}

#[test]
fn forwarded_head_drops_hop_by_hop_and_appends_xff() {
    let out = forwarded(
        b"POST /x HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-For: 3.3.3.3\r\n\
          X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nContent-Length: 5\r\n\r\n",
    );
    assert!(!out.contains("X-Secret"), "{out}");
    assert!(!out.contains("Keep-Alive"), "{out}");
    assert!(!out.contains("TE:"), "{out}");
    assert!(!out.contains("evil"), "{out}");
    assert!(
        out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 203.0.113.7\r\n"),
        "{out}"
    );
    assert!(out.contains("X-Forwarded-Proto: http\r\n"), "{out}");
    assert!(out.contains("Content-Length: 5\r\n"), "{out}");
    assert_eq!(out.matches("\r\nHost:").count(), 1);
}

/// Issue 22, item 10: the visitor's own X-Real-IP and Forwarded never reach
/// the app.
#[test]
fn visitor_sent_real_ip_and_forwarded_are_dropped() {
    let out = forwarded(
        b"GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Real-IP: 10.0.0.1\r\n\
          Forwarded: for=10.0.0.1;proto=https\r\nAccept: */*\r\n\r\n",
    );
    assert!(!out.contains("10.0.0.1"), "{out}");
    assert!(out.contains("Accept: */*\r\n"), "{out}");
}

#[test]
fn framing_and_connection_semantics() {
    let (h, _) =
        parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Chunked);
    assert!(h.keep_alive);
    let (h, _) = parse(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let (h, _) = parse(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").unwrap();
    assert!(h.keep_alive);
    let (h, _) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let (h, _) =
        parse(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
    assert!(h.upgrade_websocket);
    let (h, _) =
        parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n").unwrap();
    assert!(!h.upgrade_websocket);
    let out = forwarded(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: x\r\n\r\n");
    assert!(
        !out.contains("h2c") && !out.contains("HTTP2-Settings") && !out.contains("pgrade"),
        "{out}"
    );
    let out = forwarded(b"GET http://a.localhost/p?q HTTP/1.1\r\nHost: a.localhost\r\n\r\n");
    assert!(out.starts_with("GET /p?q HTTP/1.1\r\n"), "{out}");
    let out = forwarded(b"GET http://a.localhost HTTP/1.1\r\nHost: a.localhost\r\n\r\n");
    assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
    let (_, used) = parse(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(used, 4 + 27);
}

#[test]
fn rejects_with_the_right_status() {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(17 * 1024));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-A: 1\r\n".repeat(100)
    );
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(65 * 1024)
    );
    let cases: Vec<(&[u8], u16)> = vec![
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
        (b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
        (long_target.as_bytes(), 414),
        (many_headers.as_bytes(), 431),
        (big_head.as_bytes(), 431),
    ];
    for (input, status) in cases {
        match parse(input) {
            Ok(_) => panic!(
                "accepted: {:?}",
                String::from_utf8_lossy(&input[..input.len().min(120)])
            ),
            Err(e) => assert_eq!(
                e.status(),
                status,
                "{e}: {:?}",
                String::from_utf8_lossy(&input[..input.len().min(120)])
            ),
        }
    }
}

#[test]
fn head_scan_split_at_every_byte_agrees() {
    let inputs: Vec<&[u8]> = vec![
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY",
        b"\r\nPOST /u HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    ];
    for input in inputs {
        let whole = parse(input)
            .map(|(h, n)| (n, h.host().to_owned(), h.body))
            .map_err(|e| e.status());
        for split in 0..=input.len() {
            // Feed the first part, then all of it, with one scanner per head.
            let mut buf = input;
            let mut skipped = 0;
            let mut sc = HeadScanner::new();
            let mut fed = split;
            let res = loop {
                match sc.scan(&buf[..fed.min(buf.len())], &limits()) {
                    Err(e) => break Err(e.status()),
                    Ok(Scan::SkipEmptyLines(n)) => {
                        skipped += n;
                        buf = &buf[n..];
                        fed = fed.saturating_sub(n);
                        sc = HeadScanner::new();
                    }
                    Ok(Scan::Partial) if fed >= buf.len() => break Err(0),
                    Ok(Scan::Partial) => fed = buf.len(),
                    Ok(Scan::Complete(n)) => {
                        break RequestHead::parse(Bytes::copy_from_slice(&buf[..n]), &limits())
                            .map(|h| (skipped + n, h.host().to_owned(), h.body))
                            .map_err(|e| e.status())
                    }
                }
            };
            assert_eq!(
                res,
                whole,
                "split at {split} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn scanner_is_linear_for_a_trickled_head() {
    // One byte at a time over a 60 KiB head: each byte is looked at once.
    let input = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(60 * 1024)
    );
    let mut sc = HeadScanner::new();
    let mut done = None;
    for end in 1..=input.len() {
        if let Scan::Complete(n) = sc.scan(&input.as_bytes()[..end], &limits()).unwrap() {
            done = Some(n);
        }
    }
    assert_eq!(done, Some(input.len()));
}

/// Decodes a whole chunked body fed in the given pieces.
fn dechunk(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize), ChunkError> {
    let mut d = ChunkedDecoder::new(64, 256);
    let mut data = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() && !d.is_done() {
            match d.step(rest)? {
                ChunkStep::Data(n) => {
                    data.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    consumed += n;
                }
                ChunkStep::Framing(n) | ChunkStep::Done(n) => {
                    rest = &rest[n..];
                    consumed += n;
                }
            }
        }
    }
    if d.is_done() {
        Ok((data, consumed))
    } else {
        Err(ChunkError::InvalidSize)
    }
}

#[test]
fn chunked_decoding_split_at_every_byte() {
    let body: &[u8] =
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let (data, used) = dechunk(&[body]).unwrap();
    assert_eq!(data, b"hello 0123456789");
    assert_eq!(used, body.len() - 4);
    for split in 0..=body.len() {
        let got = dechunk(&[&body[..split], &body[split..]]).unwrap();
        assert_eq!(got, (data.clone(), used), "split at {split}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(dechunk(&bytes).unwrap(), (data, used));
}

#[test]
fn chunked_rejects_bad_framing() {
    let bad: Vec<&[u8]> = vec![
        b"\r\nhello\r\n0\r\n\r\n",       // empty size
        b"g\r\n",                        // non-hex
        b"0x5\r\nhello\r\n0\r\n\r\n",    // prefixed
        b"+5\r\nhello\r\n0\r\n\r\n",     // sign
        b"1000000000000000\r\n",         // 16 digits
        b"5\r\nhelloXX0\r\n\r\n",        // data not followed by CRLF
        b"5\nhello\r\n0\r\n\r\n",        // bare LF after size
        b"5;a\nb\r\nhello\r\n0\r\n\r\n", // bare LF in extension
        b"5 \r\nhello\r\n0\r\n\r\n",     // whitespace without extension
        b"0\r\nX: y\n\r\n",              // bare LF in trailer
    ];
    for b in bad {
        assert!(
            dechunk(&[b]).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(b)
        );
    }
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(100));
    assert_eq!(
        dechunk(&[long_ext.as_bytes()]),
        Err(ChunkError::InvalidExtension)
    );
    let long_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(300));
    assert_eq!(
        dechunk(&[long_trailer.as_bytes()]),
        Err(ChunkError::InvalidTrailer)
    );
}

#[test]
fn response_framing() {
    let p = |s: &[u8], head: bool| ResponseHead::parse(s, head, 64 * 1024).unwrap().unwrap();
    assert_eq!(
        p(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).body,
        ResponseBody::Length(5)
    );
    assert_eq!(
        p(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).body,
        ResponseBody::None
    );
    assert_eq!(
        p(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            false
        )
        .body,
        ResponseBody::None
    );
    assert_eq!(
        p(
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .body,
        ResponseBody::None
    );
    assert_eq!(
        p(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .body,
        ResponseBody::Chunked
    );
    let r = p(b"HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!((r.body, r.keep_alive), (ResponseBody::UntilClose, false));
    let r = p(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        false,
    );
    assert_eq!(r.body, ResponseBody::Upgrade);
    assert!(p(b"HTTP/1.1 100 Continue\r\n\r\n", false).is_interim());
    let r = p(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
    assert!(!r.keep_alive);
    assert!(
        ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false, 1024)
            .unwrap()
            .is_none()
    );
    assert!(
        ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, 1024).is_err()
    );
    assert!(ResponseHead::parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        false,
        1024
    )
    .is_err());
    assert!(ResponseHead::parse(b"garbage\r\n\r\n", false, 1024).is_err());
}

/// The scanner as it was, byte by byte: the reference the jumping scanner
/// (`scan.rs`, memchr) must agree with, error for error.
fn scan_reference(
    buf: &[u8],
    scanned: &mut usize,
    line_done: &mut bool,
    l: &Limits,
) -> Result<Scan, HeadError> {
    if *scanned == 0 {
        let mut n = 0;
        while buf.len() >= n + 2 && buf[n] == b'\r' && buf[n + 1] == b'\n' {
            n += 2;
        }
        if n > 0 {
            return Ok(Scan::SkipEmptyLines(n));
        }
        if buf.first() == Some(&b'\n') {
            return Err(HeadError::Malformed("bare LF line ending"));
        }
    }
    let mut i = *scanned;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(HeadError::Malformed("bare LF line ending"));
                }
                *line_done = true;
                if i >= 3 && &buf[i - 3..i] == b"\r\n\r" {
                    *scanned = i + 1;
                    if i + 1 > l.max_head {
                        return Err(HeadError::HeadTooLarge);
                    }
                    return Ok(Scan::Complete(i + 1));
                }
            }
            b'\r' => {
                if let Some(&next) = buf.get(i + 1) {
                    if next != b'\n' {
                        return Err(HeadError::Malformed("bare CR in head"));
                    }
                }
            }
            0 => return Err(HeadError::Malformed("NUL byte in head")),
            _ => {}
        }
        i += 1;
        if !*line_done && i > l.max_target + 64 {
            return Err(HeadError::UriTooLong);
        }
        if i > l.max_head {
            return Err(HeadError::HeadTooLarge);
        }
    }
    *scanned = if buf.last() == Some(&b'\r') {
        buf.len() - 1
    } else {
        buf.len()
    };
    Ok(Scan::Partial)
}

#[test]
fn head_scan_agrees_with_the_byte_by_byte_reference() {
    // A small deterministic generator: heads of ordinary bytes, CR, LF and
    // NUL, fed in random pieces, against random (small) limits.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..20_000 {
        let len = next(160) as usize;
        let buf: Vec<u8> = (0..len)
            .map(|_| match next(20) {
                0 | 1 => b'\r',
                2 | 3 => b'\n',
                4 if next(8) == 0 => 0,
                5 => b' ',
                _ => b'a',
            })
            .collect();
        let l = Limits {
            max_target: next(100) as usize,
            max_head: next(200) as usize,
            ..Limits::default()
        };
        let (mut scanned, mut line_done) = (0usize, false);
        let mut sc = super::scan::HeadScanner::new();
        let mut fed = 0;
        loop {
            fed = (fed + 1 + next(40) as usize).min(len);
            let want = scan_reference(&buf[..fed], &mut scanned, &mut line_done, &l);
            let got = sc.scan(&buf[..fed], &l);
            assert_eq!(got, want, "input {buf:?} fed {fed} limits {l:?}");
            if !matches!(want, Ok(Scan::Partial)) || fed == len {
                break;
            }
        }
    }
}

#[test]
fn the_visitor_address_is_written_as_std_displays_it() {
    let (head, _) = parse(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n").unwrap();
    for ip in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.20.1",
        "192.168.100.9",
        "::1",
        "2001:db8::8:800:200c:417a",
        "::ffff:1.2.3.4",
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let mut out = BytesMut::new();
        head.write_forwarded(&mut out, &Forwarded::plain(ip, "http"));
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(out.contains(&format!("X-Forwarded-For: {ip}\r\n")), "{out}");
    }
}

/// RFC 9110 §7.6.1: a relayed response carries the proxy's version and none
/// of the local service's hop-by-hop fields; heads with none of those are
/// marked to go out as they are.
#[test]
fn relayed_heads_drop_the_local_hop() {
    use super::relay_head;
    let p = |s: &[u8]| ResponseHead::parse(s, false, 64 * 1024).unwrap().unwrap();
    let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n";
    assert!(!p(plain).own_hop);
    let node = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: keep-alive, X-Hop\r\n\
                 Keep-Alive: timeout=5\r\nX-Hop: secret\r\nProxy-Connection: x\r\nTE: trailers\r\n\
                 Trailer: X-T\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n";
    let h = p(node);
    assert!(h.own_hop);
    assert_eq!(
        &relay_head(node, h.status, &[], &[b"Connection: close\r\n"])[..],
        &b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"[..]
    );
    // An HTTP/1.0 answer goes out as HTTP/1.1, its reason phrase kept.
    let old = b"HTTP/1.0 404 Not Found\r\nServer: SimpleHTTP/0.6\r\n\r\n";
    let h = p(old);
    assert!(h.own_hop && !h.keep_alive);
    assert_eq!(
        &relay_head(
            old,
            h.status,
            &["server".into()],
            &[b"Transfer-Encoding: chunked\r\n"]
        )[..],
        &b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"[..]
    );
    // A 101 keeps the fields that make the switch.
    let ws = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nKeep-Alive: 5\r\n\r\n";
    let h = p(ws);
    assert!(h.own_hop);
    assert_eq!(
        &relay_head(ws, h.status, &[], &[])[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..]
    );
    // A body with a transfer coding other than chunked is known as such.
    let gz = p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert!(gz.has_te && gz.body == ResponseBody::UntilClose);
}
