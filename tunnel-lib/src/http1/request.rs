//! Request heads: strict validation and re-serialisation.

use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use thiserror::Error;

use super::{list_items, trim_ows, Limits, Span, Version, MAX_HEADERS_CAP};

/// Why a request head was rejected; each maps to the status the visitor gets,
/// and the connection is closed after it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeadError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request target too long")]
    UriTooLong,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("transfer coding not supported: only a single \"chunked\" is")]
    UnsupportedTransferCoding,
    #[error("method not allowed through the tunnel: {0}")]
    MethodNotAllowed(&'static str),
    #[error("HTTP version not supported")]
    UnsupportedVersion,
    #[error("unsupported Expect value: only 100-continue is")]
    ExpectationFailed,
}

impl HeadError {
    /// The status code the visitor gets.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::UriTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedTransferCoding => 501,
            HeadError::MethodNotAllowed(_) => 405,
            HeadError::UnsupportedVersion => 505,
            HeadError::ExpectationFailed => 417,
        }
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No Content-Length and no Transfer-Encoding: no body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

#[derive(Debug, Clone, Copy)]
struct Header {
    name: Span,
    value: Span,
    /// Dropped when forwarding (hop-by-hop, framing, Host, X-Forwarded-*).
    skip: bool,
}

/// A validated request head. Header positions are spans into `raw`, the
/// head's own bytes (a zero-copy slice of the connection's read buffer).
#[derive(Debug, Clone)]
pub struct RequestHead {
    raw: Bytes,
    method: Span,
    /// The target to forward (origin-form; for an absolute-form request, its
    /// path and query).
    target: Span,
    version: Version,
    host: Span,
    headers: SmallVec<[Header; 24]>,
    /// How the body is framed.
    pub body: BodyKind,
    /// Whether the connection stays open after this exchange.
    pub keep_alive: bool,
    /// `Connection: upgrade` + `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// What the edge writes into a forwarded head.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The visitor's address, appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// `http` or `https`: the scheme the visitor used.
    pub proto: &'a str,
    /// Sent as `Host` instead of the visitor's (which stays in
    /// `X-Forwarded-Host`): dev servers that check Host.
    pub host: Option<&'a str>,
    /// Header names (case-insensitive) not forwarded.
    pub remove: &'a [Box<str>],
    /// Header lines added (names and values already checked).
    pub add: &'a [(Box<str>, Box<str>)],
}

impl<'a> Forwarded<'a> {
    /// No edits: the visitor's Host and headers.
    pub fn plain(client_ip: IpAddr, proto: &'a str) -> Self {
        Forwarded {
            client_ip,
            proto,
            host: None,
            remove: &[],
            add: &[],
        }
    }
}

fn eq_ic(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Field names dropped when forwarding: hop-by-hop (RFC 9110 §7.6.1), framing
/// (re-written from `body`), Host (written first, once) and the
/// `X-Forwarded-*` we write ourselves (`X-Forwarded-For` is appended to),
/// and the visitor's own `X-Real-IP` and `Forwarded`: an app that trusts
/// its proxy would take them for the truth.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
];

/// 505 only for a well-formed request line naming another HTTP version
/// (`GET / HTTP/2.0`); anything else that trips the version check is 400.
fn version_error(buf: &[u8]) -> HeadError {
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    match parts.as_slice() {
        [m, t, v]
            if !m.is_empty()
                && !t.is_empty()
                && v.len() == 8
                && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit()
                && v[6] == b'.'
                && v[7].is_ascii_digit() =>
        {
            HeadError::UnsupportedVersion
        }
        _ => HeadError::Malformed("invalid request line"),
    }
}

fn valid_host(v: &[u8]) -> bool {
    super::host::split_host(v).is_some()
}

/// Parses a Content-Length value: 1*DIGIT, no sign, no spaces inside, no
/// list, no overflow.
fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

impl RequestHead {
    /// Validates a complete head (`raw` ends with the empty line, as found by
    /// [`super::HeadScanner`]).
    pub fn parse(raw: Bytes, limits: &Limits) -> Result<RequestHead, HeadError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let cap = limits.max_headers.min(MAX_HEADERS_CAP);
        let mut req = httparse::Request::new(&mut storage[..cap]);
        let buf: &[u8] = &raw;
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
            Ok(_) => return Err(HeadError::Malformed("incomplete head")),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(httparse::Error::Version) => return Err(version_error(buf)),
            Err(httparse::Error::HeaderName) => {
                return Err(HeadError::Malformed("invalid header name"))
            }
            Err(httparse::Error::HeaderValue) => {
                return Err(HeadError::Malformed("invalid header value"))
            }
            Err(httparse::Error::Token) => return Err(HeadError::Malformed("invalid method")),
            Err(httparse::Error::NewLine) => {
                return Err(HeadError::Malformed("invalid line ending"))
            }
            Err(_) => return Err(HeadError::Malformed("invalid request line")),
        }
        let method = req.method.unwrap_or_default();
        let path = req.path.unwrap_or_default();
        let version = match req.version {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(HeadError::UnsupportedVersion),
        };
        if method.eq_ignore_ascii_case("CONNECT") {
            return Err(HeadError::MethodNotAllowed("CONNECT"));
        }
        if path.len() > limits.max_target {
            return Err(HeadError::UriTooLong);
        }
        if path.is_empty() || !path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(HeadError::Malformed("invalid request target"));
        }

        let mut headers: SmallVec<[Header; 24]> = SmallVec::with_capacity(req.headers.len());
        let mut host: Option<Span> = None;
        let mut content_length: Option<u64> = None;
        let mut transfer_encoding: Option<&[u8]> = None;
        let mut conn_close = false;
        let mut conn_keep_alive = false;
        let mut conn_upgrade = false;
        let mut upgrade_ws = false;
        let mut expect_continue = false;
        // Names the Connection header lists (hop-by-hop by declaration).
        let mut conn_listed: SmallVec<[&[u8]; 4]> = SmallVec::new();

        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let value = trim_ows(h.value);
            let lower_is = |s: &str| eq_ic(name, s);
            if lower_is("host") {
                if host.is_some() {
                    return Err(HeadError::Malformed("duplicate Host header"));
                }
                if !valid_host(value) {
                    return Err(HeadError::Malformed("invalid Host header"));
                }
                host = Some(Span::of(buf, value));
            } else if lower_is("content-length") {
                if content_length.is_some() {
                    return Err(HeadError::Malformed("duplicate Content-Length header"));
                }
                content_length = Some(
                    parse_content_length(value)
                        .ok_or(HeadError::Malformed("invalid Content-Length"))?,
                );
            } else if lower_is("transfer-encoding") {
                if transfer_encoding.is_some() {
                    return Err(HeadError::Malformed("duplicate Transfer-Encoding header"));
                }
                transfer_encoding = Some(value);
            } else if lower_is("connection") {
                for item in list_items(value) {
                    if eq_ic(item, "close") {
                        conn_close = true;
                    } else if eq_ic(item, "keep-alive") {
                        conn_keep_alive = true;
                    } else if eq_ic(item, "upgrade") {
                        conn_upgrade = true;
                    } else {
                        conn_listed.push(item);
                    }
                }
            } else if lower_is("upgrade") {
                upgrade_ws = list_items(value).any(|p| eq_ic(p, "websocket"));
            } else if lower_is("expect") {
                if eq_ic(value, "100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HeadError::ExpectationFailed);
                }
            }
            headers.push(Header {
                name: Span::of(buf, name),
                value: Span::of(buf, value),
                skip: false,
            });
        }

        // Request target forms (RFC 9112 §3.2).
        let pb = path.as_bytes();
        let target_span;
        if pb[0] == b'/' {
            target_span = Span::of(buf, pb);
        } else if pb == b"*" {
            if !method.eq_ignore_ascii_case("OPTIONS") {
                return Err(HeadError::Malformed("asterisk-form target outside OPTIONS"));
            }
            target_span = Span::of(buf, pb);
        } else {
            // absolute-form: scheme "://" authority [path-abempty] [ "?" query ]
            let rest = if pb.len() > 7 && eq_ic(&pb[..7], "http://") {
                &pb[7..]
            } else if pb.len() > 8 && eq_ic(&pb[..8], "https://") {
                &pb[8..]
            } else {
                return Err(HeadError::Malformed("invalid request target"));
            };
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b'?' | b'#'))
                .unwrap_or(rest.len());
            let authority = &rest[..end];
            if !valid_host(authority) {
                return Err(HeadError::Malformed(
                    "invalid authority in absolute-form target",
                ));
            }
            let Some(h) = host else {
                return Err(HeadError::Malformed("missing Host header"));
            };
            if !h.get(buf).eq_ignore_ascii_case(authority) {
                return Err(HeadError::Malformed(
                    "absolute-form target host differs from Host",
                ));
            }
            let tail = &rest[end..];
            if tail.first() == Some(&b'/') {
                target_span = Span::of(buf, tail);
            } else if tail.is_empty() {
                // "http://host" → "/": point at a static "/" by leaving the span empty.
                target_span = Span { start: 0, end: 0 };
            } else {
                return Err(HeadError::Malformed("invalid request target"));
            }
        }

        let Some(host) = host else {
            return Err(HeadError::Malformed("missing Host header"));
        };

        let body = match (transfer_encoding, content_length) {
            (Some(_), Some(_)) => {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            (Some(te), None) => {
                if version == Version::Http10 {
                    return Err(HeadError::Malformed(
                        "Transfer-Encoding in an HTTP/1.0 request",
                    ));
                }
                let mut items = list_items(te);
                match (items.next(), items.next()) {
                    (Some(c), None) if eq_ic(c, "chunked") => BodyKind::Chunked,
                    (None, _) => return Err(HeadError::Malformed("empty Transfer-Encoding")),
                    _ => return Err(HeadError::UnsupportedTransferCoding),
                }
            }
            (None, Some(n)) => BodyKind::Length(n),
            (None, None) => BodyKind::None,
        };

        let keep_alive = match version {
            Version::Http11 => !conn_close,
            Version::Http10 => conn_keep_alive && !conn_close,
        };
        let upgrade_websocket = conn_upgrade && upgrade_ws && version == Version::Http11;

        for h in headers.iter_mut() {
            let name = h.name.get(buf);
            h.skip = DROPPED.iter().any(|d| eq_ic(name, d))
                || conn_listed.iter().any(|l| l.eq_ignore_ascii_case(name));
        }

        Ok(RequestHead {
            method: Span::of(buf, method.as_bytes()),
            target: target_span,
            version,
            host,
            headers,
            body,
            keep_alive,
            upgrade_websocket,
            expect_continue,
            // A reference-count bump: `buf` still borrows the original.
            raw: raw.clone(),
        })
    }

    /// The head's bytes, as received (request line to the empty line).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn method(&self) -> &[u8] {
        self.method.get(&self.raw)
    }
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }
    /// The target as forwarded (origin-form).
    pub fn target(&self) -> &[u8] {
        let t = self.target.get(&self.raw);
        if t.is_empty() {
            b"/"
        } else {
            t
        }
    }
    pub fn version(&self) -> Version {
        self.version
    }
    /// The Host header's value, as sent (may carry a port and upper case).
    pub fn host(&self) -> &[u8] {
        self.host.get(&self.raw)
    }
    /// Header fields as received (name, trimmed value), including dropped ones.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|h| (h.name.get(&self.raw), h.value.get(&self.raw)))
    }
    /// Values of every field named `name`, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| eq_ic(n, name))
            .map(|(_, v)| v)
    }

    /// Appends the canonical head to send to the local service.
    pub fn write_forwarded(&self, dst: &mut BytesMut, fwd: &Forwarded<'_>) {
        let raw: &[u8] = &self.raw;
        dst.reserve(raw.len() + 128);
        dst.put_slice(self.method());
        dst.put_u8(b' ');
        dst.put_slice(self.target());
        dst.put_u8(b' ');
        dst.put_slice(self.version.as_str().as_bytes());
        dst.put_slice(b"\r\nHost: ");
        dst.put_slice(fwd.host.map_or(self.host(), str::as_bytes));
        dst.put_slice(b"\r\n");
        for h in self.headers.iter().filter(|h| !h.skip) {
            let name = h.name.get(raw);
            if fwd
                .remove
                .iter()
                .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            {
                continue;
            }
            dst.put_slice(name);
            dst.put_slice(b": ");
            dst.put_slice(h.value.get(raw));
            dst.put_slice(b"\r\n");
        }
        // X-Forwarded-For: the visitor's own list (never trusted, only kept)
        // with the address we saw appended.
        dst.put_slice(b"X-Forwarded-For: ");
        for v in self.header_values("x-forwarded-for") {
            for item in list_items(v) {
                dst.put_slice(item);
                dst.put_slice(b", ");
            }
        }
        write_ip(dst, fwd.client_ip);
        dst.put_slice(b"\r\nX-Forwarded-Proto: ");
        dst.put_slice(fwd.proto.as_bytes());
        dst.put_slice(b"\r\nX-Forwarded-Host: ");
        dst.put_slice(self.host());
        dst.put_slice(b"\r\n");
        for (k, v) in fwd.add {
            dst.put_slice(k.as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(v.as_bytes());
            dst.put_slice(b"\r\n");
        }
        match self.body {
            BodyKind::None => {}
            BodyKind::Length(n) => {
                dst.put_slice(b"Content-Length: ");
                write_u64(dst, n);
                dst.put_slice(b"\r\n");
            }
            BodyKind::Chunked => dst.put_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        // HTTP/1.1 without `Connection: close`: the edge closes the visitor's
        // connection itself, and the local connection stays reusable.
        if self.upgrade_websocket {
            dst.put_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n");
        } else if self.version == Version::Http10 {
            dst.put_slice(if self.keep_alive {
                b"Connection: keep-alive\r\n"
            } else {
                b"Connection: close\r\n"
            });
        }
        dst.put_slice(b"\r\n");
    }
}

fn write_u64(dst: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
}

fn write_ip(dst: &mut BytesMut, ip: IpAddr) {
    use std::fmt::Write;
    match ip {
        // Dotted decimal by hand: the formatting machinery cost about 450
        // instructions per request here (BENCHMARKS.md, issue 12, lever 10).
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    dst.put_u8(b'.');
                }
                write_u64(dst, u64::from(octet));
            }
        }
        // IPv6's compressed form is std's to get right (RFC 5952).
        IpAddr::V6(_) => {
            let _ = write!(BytesMutWriter(dst), "{ip}");
        }
    }
}

struct BytesMutWriter<'a>(&'a mut BytesMut);
impl std::fmt::Write for BytesMutWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}
