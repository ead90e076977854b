//! Response heads from the local service: enough to frame them.

use thiserror::Error;

use super::{list_items, trim_ows, Version, MAX_HEADERS_CAP};

/// The local service sent a response we cannot frame; the visitor gets 502
/// (if nothing was sent yet) and the connection is not reused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResponseError {
    #[error("the local service sent a malformed response head: {0}")]
    Malformed(&'static str),
    #[error("the local service sent a response head larger than {0} bytes")]
    TooLarge(usize),
}

/// How a response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// HEAD request, 1xx, 204, 304: no body whatever the headers say.
    None,
    Length(u64),
    Chunked,
    /// No framing: the body runs until the connection closes.
    UntilClose,
    /// 101 Switching Protocols: raw bytes both ways from here on.
    Upgrade,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: Version,
    /// Length of the head in the buffer it was parsed from.
    pub head_len: usize,
    pub body: ResponseBody,
    /// Whether the local service keeps the connection open afterwards.
    pub keep_alive: bool,
    /// The head carries something of the local service's own hop (RFC 9110
    /// §7.6.1: `Connection` and what it lists, `Keep-Alive`,
    /// `Proxy-Connection`, `TE`, `Trailer`, `Upgrade` outside a 101) or
    /// another HTTP version: relayed through [`relay_head`], not as it is.
    pub own_hop: bool,
    /// A `Transfer-Encoding` header is present (an `UntilClose` body with
    /// one is not re-framed).
    pub has_te: bool,
}

impl ResponseHead {
    /// Whether this is an interim (1xx other than 101) response: the final
    /// response for the same request follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Parses a response head at the front of `buf`; `Ok(None)` until it is
    /// complete. `head_request`: the request was HEAD (no body follows).
    pub fn parse(
        buf: &[u8],
        head_request: bool,
        max_head: usize,
    ) -> Result<Option<ResponseHead>, ResponseError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut res = httparse::Response::new(&mut storage);
        let head_len = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > max_head {
                    return Err(ResponseError::TooLarge(max_head));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge(max_head)),
            Err(_) => {
                return Err(ResponseError::Malformed(
                    "unparseable status line or header",
                ))
            }
        };
        if head_len > max_head {
            return Err(ResponseError::TooLarge(max_head));
        }
        let status = res.code.unwrap_or(0);
        if !(100..=599).contains(&status) {
            return Err(ResponseError::Malformed("status code out of range"));
        }
        let version = if res.version == Some(1) {
            Version::Http11
        } else {
            Version::Http10
        };
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut close = false;
        let mut keep_alive_token = false;
        let mut own_hop = version != Version::Http11;
        for h in res.headers.iter() {
            own_hop |= is_hop_by_hop(h.name.as_bytes(), status);
            let v = trim_ows(h.value);
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(ResponseError::Malformed("invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ResponseError::Malformed("conflicting Content-Length"));
                }
                content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                has_te = true;
                chunked = list_items(v)
                    .last()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for item in list_items(v) {
                    close |= item.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= item.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        let body = if status == 101 {
            ResponseBody::Upgrade
        } else if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            ResponseBody::None
        } else if has_te {
            if chunked {
                ResponseBody::Chunked
            } else {
                ResponseBody::UntilClose
            }
        } else if let Some(n) = content_length {
            ResponseBody::Length(n)
        } else {
            ResponseBody::UntilClose
        };
        let keep_alive = body != ResponseBody::UntilClose
            && body != ResponseBody::Upgrade
            && !close
            && (version == Version::Http11 || keep_alive_token)
            // TE and CL together: TE wins, and the connection must not be reused.
            && !(has_te && content_length.is_some());
        Ok(Some(ResponseHead {
            status,
            version,
            head_len,
            body,
            keep_alive,
            own_hop,
            has_te,
        }))
    }
}

/// Header fields that belong to one hop (RFC 9110 §7.6.1), plus the
/// obsolete `Proxy-Connection`. A 101 keeps `Connection` and `Upgrade`:
/// they are the switch itself.
fn is_hop_by_hop(name: &[u8], status: u16) -> bool {
    const ALWAYS: [&[u8]; 4] = [b"keep-alive", b"proxy-connection", b"te", b"trailer"];
    if ALWAYS.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return true;
    }
    status != 101
        && (name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"upgrade"))
}

/// The head a proxy sends for a response it relays: its own version
/// (`HTTP/1.1`), none of the local service's hop-by-hop fields (nor the
/// fields its `Connection` lists), none named in `remove`, and `lines` (each
/// ending in CRLF) added at the end. `head` is a complete head that
/// [`ResponseHead::parse`] accepted.
pub fn relay_head(head: &[u8], status: u16, remove: &[Box<str>], lines: &[&[u8]]) -> bytes::Bytes {
    use bytes::BufMut;
    let body = &head[..head.len().saturating_sub(2)];
    let mut rows = body.split_inclusive(|b| *b == b'\n');
    let start = rows.next().unwrap_or_default();
    // `HTTP/1.x` is 8 bytes; the rest of the status line is kept.
    let rest = start.get(8..).unwrap_or(b" 502 Bad Gateway\r\n");
    let mut listed: smallvec::SmallVec<[&[u8]; 4]> = smallvec::SmallVec::new();
    if status != 101 {
        for line in rows.clone() {
            if header_name(line).eq_ignore_ascii_case(b"connection") {
                let value = line.splitn(2, |b| *b == b':').nth(1).unwrap_or_default();
                let value = value.strip_suffix(b"\r\n").unwrap_or(value);
                listed.extend(list_items(trim_ows(value)));
            }
        }
    }
    let extra: usize = lines.iter().map(|l| l.len()).sum();
    let mut out = bytes::BytesMut::with_capacity(head.len() + extra);
    out.put_slice(b"HTTP/1.1");
    out.put_slice(rest);
    for line in rows {
        let name = header_name(line);
        let drop = is_hop_by_hop(name, status)
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || remove
                .iter()
                .any(|r| r.as_bytes().eq_ignore_ascii_case(name));
        if !drop {
            out.put_slice(line);
        }
    }
    for l in lines {
        out.put_slice(l);
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The field name of a header line (`Name: value\r\n`).
fn header_name(line: &[u8]) -> &[u8] {
    line.split(|b| *b == b':')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}
