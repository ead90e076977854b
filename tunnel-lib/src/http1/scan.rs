//! Incremental search for the end of a head.

use super::{HeadError, Limits};

/// Finds where a head ends, looking at each byte once across calls.
///
/// Feed it the whole buffer each time (the buffer only grows between calls
/// for one head); it remembers how far it has looked. Leading empty lines
/// (`CRLF`) are reported so the caller can drop them.
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    scanned: usize,
    /// Whether the request line has ended (for 414 vs 431).
    line_done: bool,
}

/// What the scanner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Need more bytes.
    Partial,
    /// The head is `buf[..n]` (including the final empty line).
    Complete(usize),
    /// `buf[..n]` are empty lines before a request line: drop them and call
    /// again with a fresh scanner.
    SkipEmptyLines(usize),
}

impl HeadScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `buf` (which starts at the head's first byte).
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Scan, HeadError> {
        if self.scanned == 0 {
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
        let mut i = self.scanned;
        while i < buf.len() {
            match buf[i] {
                b'\n' => {
                    if i == 0 || buf[i - 1] != b'\r' {
                        return Err(HeadError::Malformed("bare LF line ending"));
                    }
                    self.line_done = true;
                    if i >= 3 && &buf[i - 3..i] == b"\r\n\r" {
                        self.scanned = i + 1;
                        if i + 1 > limits.max_head {
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
            if !self.line_done && i > limits.max_target + 64 {
                return Err(HeadError::UriTooLong);
            }
            if i > limits.max_head {
                return Err(HeadError::HeadTooLarge);
            }
        }
        // A CR at the very end is re-examined once its successor arrives.
        self.scanned = if buf.last() == Some(&b'\r') {
            buf.len() - 1
        } else {
            buf.len()
        };
        Ok(Scan::Partial)
    }
}
