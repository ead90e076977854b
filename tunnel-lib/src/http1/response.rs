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
        for h in res.headers.iter() {
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
        }))
    }
}
