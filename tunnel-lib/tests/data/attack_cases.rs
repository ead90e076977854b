// Malformed and attack requests, each with the status it must get. Shared by
// the core test (tunnel-lib/tests/attacks.rs) and the end-to-end test
// (server/tests/attacks.rs), which sends each on a fresh connection to a
// tunnel for `t.localhost` and checks that the visitor gets the status and a
// close, and that the local service receives nothing at all.
//
// Each entry: (class, raw bytes, status).

pub const ATTACKS: &[(&str, &[u8], u16)] = &[
    // --- Content-Length / Transfer-Encoding conflicts (smuggling) ---
    ("CL and TE", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE and CL", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("duplicate CL same", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("duplicate CL differing", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("CL sign plus", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("CL sign minus", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL hex", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("CL inner space", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 1 2\r\n\r\n", 400),
    ("CL empty", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: \r\n\r\n", 400),
    ("CL overflow", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
    ("CL twenty digits", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 00000000000000000001\r\n\r\na", 400),
    ("CL decimal point", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 3.0\r\n\r\nabc", 400),
    ("CL letters", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: three\r\n\r\nabc", 400),
    // --- Transfer-Encoding other than a single final chunked ---
    ("TE gzip", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("TE gzip chunked", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE chunked gzip", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501),
    ("TE chunked twice in list", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE identity", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    ("TE misspelt", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunk\r\n\r\n0\r\n\r\n", 501),
    ("TE prefixed", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("TE two headers", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE empty", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: \r\n\r\n", 400),
    ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    // --- header syntax ---
    ("space before colon", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\nHost\t: t.localhost\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: one\r\n two\r\n\r\n", 400),
    ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: one\r\n\ttwo\r\n\r\n", 400),
    ("first header line starts with space", b"GET / HTTP/1.1\r\n Host: t.localhost\r\n\r\n", 400),
    ("empty header name", b"GET / HTTP/1.1\r\nHost: t.localhost\r\n: v\r\n\r\n", 400),
    ("header without colon", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nNoColon\r\n\r\n", 400),
    ("bare CR in value", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: a\rb\r\n\r\n", 400),
    ("bare CR line end", b"GET / HTTP/1.1\r\nHost: t.localhost\rX-A: b\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: a\x00b\r\n\r\n", 400),
    ("NUL in name", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX\x00A: b\r\n\r\n", 400),
    ("control byte in value", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: a\x01b\r\n\r\n", 400),
    ("DEL in value", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("bare LF request line", b"GET / HTTP/1.1\nHost: t.localhost\r\n\r\n", 400),
    ("bare LF header line", b"GET / HTTP/1.1\r\nHost: t.localhost\nX-A: b\r\n\r\n", 400),
    ("bare LF end of head", b"GET / HTTP/1.1\r\nHost: t.localhost\n\n", 400),
    // --- request line ---
    ("lower-case version", b"GET / http/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("HTTP/2.0 on HTTP/1 port", b"GET / HTTP/2.0\r\nHost: t.localhost\r\n\r\n", 505),
    ("HTTP/0.9 request", b"GET /\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("invalid method token", b"G\"T / HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("relative target", b"GET index.html HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("asterisk outside OPTIONS", b"GET * HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("non-ASCII target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("CONNECT", b"CONNECT t.localhost:443 HTTP/1.1\r\nHost: t.localhost:443\r\n\r\n", 405),
    // --- Host ---
    ("missing Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("duplicate Host", b"GET / HTTP/1.1\r\nHost: t.localhost\r\nHost: other.localhost\r\n\r\n", 400),
    ("empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: evil@t.localhost\r\n\r\n", 400),
    ("Host with path", b"GET / HTTP/1.1\r\nHost: t.localhost/x\r\n\r\n", 400),
    ("Host with bad port", b"GET / HTTP/1.1\r\nHost: t.localhost:80a\r\n\r\n", 400),
    ("absolute-form host differs", b"GET http://other.localhost/ HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    ("absolute-form bad scheme", b"GET ftp://t.localhost/ HTTP/1.1\r\nHost: t.localhost\r\n\r\n", 400),
    // --- chunked framing (bytes sent with the head) ---
    ("chunk size empty", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size non-hex", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size 0x prefix", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size plus", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n", 400),
    ("chunk size sixteen digits", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000003\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size trailing space", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk data without CRLF", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("chunk data bare LF", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", 400),
    ("chunk size bare LF", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk extension bare LF", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk extension control byte", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01\r\nabc\r\n0\r\n\r\n", 400),
    ("trailer bare LF", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\n\r\n", 400),
    ("last chunk bad end", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rX", 400),
    // --- Expect ---
    ("unsupported Expect", b"POST / HTTP/1.1\r\nHost: t.localhost\r\nExpect: 200-maybe\r\nContent-Length: 0\r\n\r\n", 417),
];

/// Oversized inputs, built at run time: (class, bytes, status).
pub fn oversized() -> Vec<(&'static str, Vec<u8>, u16)> {
    let target = format!("GET /{} HTTP/1.1\r\nHost: t.localhost\r\n\r\n", "a".repeat(17 * 1024));
    let headers = format!("GET / HTTP/1.1\r\nHost: t.localhost\r\n{}\r\n", "X-A: 1\r\n".repeat(100));
    let head = format!("GET / HTTP/1.1\r\nHost: t.localhost\r\nX-Big: {}\r\n\r\n", "b".repeat(65 * 1024));
    let many_small = format!("GET / HTTP/1.1\r\nHost: t.localhost\r\n{}\r\n", "X-Abcdefghijklmnop: 0123456789abcdef0123456789\r\n".repeat(90).repeat(20));
    let ext = format!(
        "POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3;{}\r\nabc\r\n0\r\n\r\n",
        "e".repeat(5000)
    );
    let trailer = format!(
        "POST / HTTP/1.1\r\nHost: t.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: {}\r\n\r\n",
        "t".repeat(17 * 1024)
    );
    vec![
        ("request target over 16 KiB", target.into_bytes(), 414),
        ("101 header fields", headers.into_bytes(), 431),
        ("head over 64 KiB", head.into_bytes(), 431),
        ("many header lines over 64 KiB", many_small.into_bytes(), 431),
        ("chunk extension over 4 KiB", ext.into_bytes(), 400),
        ("trailer section over 16 KiB", trailer.into_bytes(), 400),
    ]
}
