//! Scanner + parser over a growing buffer: the one way to take request
//! heads off a visitor's byte stream.

use bytes::{Buf, BytesMut};

use super::scan::Scan;
use super::{HeadError, HeadScanner, Limits, RequestHead};

/// Takes request heads off the front of a buffer that grows as bytes
/// arrive. Each byte is scanned once however the head is split; empty
/// lines before a request line are dropped (RFC 9112 §2.2).
#[derive(Debug, Default, Clone)]
pub struct RequestReader {
    scanner: HeadScanner,
}

impl RequestReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// A complete head taken off the front of `buf` (the body's first bytes
    /// stay in `buf`), `Ok(None)` while more bytes are needed, or the
    /// error to answer with. Call again with the same buffer once it grew.
    pub fn read(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<RequestHead>, HeadError> {
        loop {
            match self.scanner.scan(buf, limits)? {
                Scan::Complete(n) => {
                    self.scanner = HeadScanner::new();
                    let raw = buf.split_to(n).freeze();
                    return RequestHead::parse(raw, limits).map(Some);
                }
                Scan::SkipEmptyLines(n) => {
                    buf.advance(n);
                    self.scanner = HeadScanner::new();
                }
                Scan::Partial => return Ok(None),
            }
        }
    }
}
