//! What the edge writes itself into HTTP/1 messages: chunk framing and
//! header lines added to a response head it relays.

use bytes::{BufMut, Bytes, BytesMut};

/// The last chunk of a chunked body with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The CRLF that ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The size line of a chunk of `n` bytes (`n` in hex, no extensions).
pub fn chunk_size_line(n: usize) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = HEX[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let mut out = BytesMut::with_capacity(digits.len() - i + 2);
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// A complete head (ending in the empty line) with `lines` (each ending in
/// CRLF) added before its final CRLF.
pub fn with_header_lines(head: &[u8], lines: &[&[u8]]) -> Bytes {
    with_header_edits(head, &[], lines)
}

/// [`with_header_lines`], also dropping the header lines whose name is in
/// `remove` (case-insensitive). `head` is a parsed, valid head: its lines
/// end in CRLF and the first is the start line.
pub fn with_header_edits(head: &[u8], remove: &[Box<str>], lines: &[&[u8]]) -> Bytes {
    debug_assert!(head.ends_with(b"\r\n\r\n"));
    let extra: usize = lines.iter().map(|l| l.len()).sum();
    let mut out = BytesMut::with_capacity(head.len() + extra);
    let body = &head[..head.len() - 2];
    if remove.is_empty() {
        out.put_slice(body);
    } else {
        let mut first = true;
        for line in body.split_inclusive(|b| *b == b'\n') {
            let name = line.split(|b| *b == b':').next().unwrap_or(&[]);
            let drop = !first
                && remove
                    .iter()
                    .any(|r| r.as_bytes().eq_ignore_ascii_case(name.trim_ascii()));
            if !drop {
                out.put_slice(line);
            }
            first = false;
        }
    }
    for l in lines {
        out.put_slice(l);
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `Connection: close` as a header line.
pub const CONNECTION_CLOSE: &[u8] = b"Connection: close\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lower_hex() {
        assert_eq!(&chunk_size_line(0)[..], b"0\r\n");
        assert_eq!(&chunk_size_line(10)[..], b"a\r\n");
        assert_eq!(&chunk_size_line(65536)[..], b"10000\r\n");
        assert_eq!(&chunk_size_line(usize::MAX)[..], b"ffffffffffffffff\r\n");
    }

    #[test]
    fn header_edits_drop_named_lines_only() {
        let head =
            b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 0\r\nX-Powered-By: php\r\n\r\n";
        let remove: Vec<Box<str>> = vec!["x-powered-by".into(), "server".into()];
        assert_eq!(
            &with_header_edits(head, &remove, &[b"A: 1\r\n"])[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nA: 1\r\n\r\n"
        );
    }

    #[test]
    fn header_lines_go_before_the_empty_line() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            &with_header_lines(head, &[CONNECTION_CLOSE])[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            &with_header_lines(head, &[b"A: 1\r\n", b"B: 2\r\n"])[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nA: 1\r\nB: 2\r\n\r\n"
        );
    }
}
