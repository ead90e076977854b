//! A strict decoder of the chunked transfer coding (RFC 9112 §7.1).

use thiserror::Error;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size too large")]
    SizeOverflow,
    #[error("chunk extension too long or invalid")]
    InvalidExtension,
    #[error("chunk data not followed by CRLF")]
    MissingDataCrlf,
    #[error("invalid line ending in chunk framing")]
    InvalidLineEnding,
    #[error("trailer section too large or invalid")]
    InvalidTrailer,
}

/// What one call to [`ChunkedDecoder::step`] consumed from the front of its
/// input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// The first `n` bytes are chunk payload.
    Data(usize),
    /// The first `n` bytes were framing (size line, CRLF, trailers). `n` may
    /// be the whole input: feed more.
    Framing(usize),
    /// The first `n` bytes finished the body (last chunk and trailers).
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a size.
    SizeStart,
    Size,
    /// Whitespace after the size: only `;` may follow.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What [`ChunkedDecoder::advance`] found in one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes of the input that belong to the body (all of it unless the
    /// body ended inside the input).
    pub consumed: usize,
    /// How many of them were chunk payload.
    pub data: u64,
    /// Whether the body ended (at `consumed`).
    pub done: bool,
}

/// Largest chunk size accepted: 15 hex digits (under 2^60 bytes).
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    ext_len: usize,
    trailer_len: usize,
    max_ext: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    pub fn new(max_ext: usize, max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            ext_len: 0,
            trailer_len: 0,
            max_ext,
            max_trailer,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes from the front of `input`: either payload or framing, never
    /// both in one step. Call again with the rest.
    pub fn step(&mut self, input: &[u8]) -> Result<ChunkStep, ChunkError> {
        if self.state == State::Done {
            return Ok(ChunkStep::Done(0));
        }
        if self.state == State::Data {
            let n = (input.len() as u64).min(self.size) as usize;
            self.size -= n as u64;
            if self.size == 0 {
                self.state = State::DataCr;
            }
            return Ok(ChunkStep::Data(n));
        }
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                State::SizeStart | State::Size => match hex(b) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > MAX_SIZE_DIGITS {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.state = State::Size;
                    }
                    None if self.state == State::SizeStart => return Err(ChunkError::InvalidSize),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Ext,
                        b' ' | b'\t' => self.state = State::SizeWs,
                        _ => return Err(ChunkError::InvalidSize),
                    },
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Ext,
                    _ => return Err(ChunkError::InvalidSize),
                },
                State::Ext => {
                    self.ext_len += 1;
                    if self.ext_len > self.max_ext {
                        return Err(ChunkError::InvalidExtension);
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(ChunkError::InvalidExtension),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.ext_len = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                        return Ok(ChunkStep::Framing(i));
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::MissingDataCrlf);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingDataCrlf);
                    }
                    self.state = State::SizeStart;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.trailer_byte(b)?;
                        self.state = State::Trailer;
                    }
                }
                State::Trailer => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else {
                        self.trailer_byte(b)?;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::InvalidLineEnding);
                    }
                    self.state = State::Done;
                    return Ok(ChunkStep::Done(i));
                }
                // Entering Data returns above, and Done is handled on entry.
                State::Data | State::Done => return Ok(ChunkStep::Framing(i - 1)),
            }
        }
        Ok(ChunkStep::Framing(i))
    }

    /// Walks all of `input` (or up to the body's end): for callers that only
    /// need to know where a chunked body ends and how much payload it holds,
    /// not the payload's positions.
    pub fn advance(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let mut p = Progress::default();
        while p.consumed < input.len() && !self.is_done() {
            match self.step(&input[p.consumed..])? {
                ChunkStep::Data(n) => {
                    p.data += n as u64;
                    p.consumed += n;
                }
                ChunkStep::Framing(n) | ChunkStep::Done(n) => p.consumed += n,
            }
        }
        p.done = self.is_done();
        Ok(p)
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer {
            return Err(ChunkError::InvalidTrailer);
        }
        match b {
            b'\t' | 0x20..=0x7e | 0x80..=0xff => Ok(()),
            _ => Err(ChunkError::InvalidTrailer),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
