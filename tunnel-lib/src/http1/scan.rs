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
            // Only CR, LF and NUL need a look: jump over everything else
            // (one SIMD search, not a branch per byte; BENCHMARKS.md, issue
            // 12, lever 10). The limits apply as if each byte were counted.
            let stop = memchr::memchr3(b'\n', b'\r', 0, &buf[i..]).map_or(buf.len(), |o| i + o);
            self.within_limits(stop, limits)?;
            i = stop;
            let Some(&byte) = buf.get(i) else { break };
            match byte {
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
                _ => return Err(HeadError::Malformed("NUL byte in head")),
            }
            i += 1;
            self.within_limits(i, limits)?;
        }
        // A CR at the very end is re-examined once its successor arrives.
        self.scanned = if buf.last() == Some(&b'\r') {
            buf.len() - 1
        } else {
            buf.len()
        };
        Ok(Scan::Partial)
    }

    /// The limits once the first `upto` bytes have been looked at: the
    /// error a byte-by-byte scan would have met first (the request line's
    /// limit is checked before the head's, as for a single byte).
    fn within_limits(&self, upto: usize, limits: &Limits) -> Result<(), HeadError> {
        let line_at = match self.line_done {
            true => usize::MAX,
            false => limits.max_target.saturating_add(65),
        };
        let head_at = limits.max_head.saturating_add(1);
        if upto < line_at.min(head_at) {
            Ok(())
        } else if line_at <= head_at {
            Err(HeadError::UriTooLong)
        } else {
            Err(HeadError::HeadTooLarge)
        }
    }
}
