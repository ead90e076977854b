//! HTTP/1.1 at the edge, sans-IO.
//!
//! `httparse` only tokenises; the RFC 9112 rules that make a proxy
//! smuggling-proof are ours and live here:
//!
//! - [`HeadScanner`] finds the end of a head incrementally (each byte looked
//!   at once, so a visitor trickling bytes costs linear time), rejecting bare
//!   LF, bare CR and oversized request lines and heads as they arrive.
//! - [`RequestHead::parse`] validates a complete request head: exactly one
//!   Host, one unambiguous framing header, request-target forms, hop-by-hop
//!   fields; header positions are kept as spans in a `SmallVec`.
//! - [`RequestHead::write_forwarded`] re-serialises the head we send to the
//!   local service: CRLF only, exactly one Host, exactly one framing header,
//!   hop-by-hop fields removed, `X-Forwarded-*` written by us. Raw header
//!   bytes are never forwarded.
//! - [`ResponseHead::parse`] reads the local service's response head and
//!   decides its framing (RFC 9112 §6.3), so request/response pairing cannot
//!   slip on HEAD, 1xx, 204 or 304.
//! - [`ChunkedDecoder`] is a strict chunked-coding state machine
//!   (`step` for callers that move payload, `advance` for callers that only
//!   need the body's end).
//! - [`RequestReader`] composes scanner and parser over a growing buffer
//!   (empty lines skipped): what the edge, the tests, the fuzzers and the
//!   benchmarks all call.
//! - [`host`]: the Host grammar (validation and the routing key), and the
//!   wildcard parents routing probes. [`encode`]: chunk framing and header
//!   lines the edge adds to relayed responses.
//!
//! Bare LF: rejected with 400 in request heads and chunk framing (RFC 9112
//! §2.2 allows a recipient to accept it; a proxy that does invites desync with
//! a backend that does not). Leading empty lines before a request line are
//! skipped, as §2.2 recommends.

mod chunked;
pub mod encode;
pub mod host;
mod parts;
mod reader;
mod request;
mod response;
pub mod scan;

pub use chunked::{ChunkError, ChunkStep, ChunkedDecoder, Progress};
pub use host::normalise_host;
pub use parts::{BodyParts, Framing, Parts};
pub use reader::RequestReader;
pub use request::{BodyKind, Forwarded, HeadError, RequestHead};
pub use response::{relay_head, ResponseBody, ResponseError, ResponseHead};
pub use scan::HeadScanner;

/// Limits of the HTTP/1 edge, with the documented defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line and all header lines): 64 KiB → 431.
    pub max_head: usize,
    /// Most header lines in a head: 100 → 431.
    pub max_headers: usize,
    /// Longest request target: 16 KiB → 414.
    pub max_target: usize,
    /// Longest chunk extension: 4 KiB → 400.
    pub max_chunk_ext: usize,
    /// Most trailer bytes after the last chunk: 16 KiB → 400.
    pub max_trailer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_headers: 100,
            max_target: 16 * 1024,
            max_chunk_ext: 4 * 1024,
            max_trailer: 16 * 1024,
        }
    }
}

/// Hard cap on `Limits::max_headers` (the parser's stack array).
pub const MAX_HEADERS_CAP: usize = 256;

/// HTTP version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A byte range into a head's buffer (kept small: heads are < 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
    fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// Trims optional whitespace (SP / HTAB) at both ends.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Iterates the elements of a comma-separated list value, trimmed, skipping
/// empty elements.
pub(crate) fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
