//! A body taken apart into its data and its trailers (sans-IO): what an
//! HTTP/1.1 message becomes on the way to HTTP/2 (DATA frames and a
//! trailer HEADERS frame), on the server for a visitor's response and on
//! the client for a request to a local HTTP/2 service.

use bytes::{Buf, Bytes, BytesMut};

use super::{ChunkError, ChunkStep, ChunkedDecoder, Limits};

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// To the end of the stream.
    UntilClose,
}

/// Splits a framed body into data (slices of the input: no copy) and, at
/// its end, its trailer section.
#[derive(Debug, Clone)]
pub struct BodyParts {
    framing: Framing,
    /// Bytes left of a `Length` body.
    left: u64,
    chunks: ChunkedDecoder,
    /// Framing since the last chunk's data: the trailer section is in it
    /// when the body ends. Bounded by the decoder's trailer limit.
    tail: BytesMut,
}

/// What one [`BodyParts::take`] found.
#[derive(Debug, Default)]
pub struct Parts {
    pub data: Vec<Bytes>,
    /// The body ended: `Some(lines)` with its trailer field lines (each
    /// `name: value\r\n`, possibly none).
    pub end: Option<Bytes>,
}

impl BodyParts {
    pub fn new(framing: Framing, limits: &Limits) -> BodyParts {
        BodyParts {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer),
            tail: BytesMut::new(),
        }
    }

    /// Takes what it can of `input`; what belongs after the body stays.
    pub fn take(&mut self, input: &mut Bytes) -> Result<Parts, ChunkError> {
        let mut out = Parts::default();
        match self.framing {
            Framing::None => out.end = Some(Bytes::new()),
            Framing::Length(_) => {
                let n = (input.len() as u64).min(self.left) as usize;
                if n > 0 {
                    out.data.push(input.split_to(n));
                }
                self.left -= n as u64;
                if self.left == 0 {
                    out.end = Some(Bytes::new());
                }
            }
            Framing::UntilClose => {
                if !input.is_empty() {
                    out.data.push(std::mem::take(input));
                }
            }
            Framing::Chunked => {
                while !input.is_empty() && out.end.is_none() {
                    match self.chunks.step(input)? {
                        ChunkStep::Data(n) => {
                            self.tail.clear();
                            out.data.push(input.split_to(n));
                        }
                        ChunkStep::Framing(n) => {
                            self.tail.extend_from_slice(&input[..n]);
                            input.advance(n);
                        }
                        ChunkStep::Done(n) => {
                            self.tail.extend_from_slice(&input[..n]);
                            input.advance(n);
                            out.end = Some(trailer_lines(&self.tail));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The trailer field lines in the framing that ended a chunked body: what
/// follows the last chunk's size line, without the final empty line.
fn trailer_lines(tail: &[u8]) -> Bytes {
    let tail = tail.strip_prefix(b"\r\n").unwrap_or(tail);
    let Some(at) = tail.windows(2).position(|w| w == b"\r\n") else {
        return Bytes::new();
    };
    let fields = &tail[at + 2..];
    let fields = fields.strip_suffix(b"\r\n").unwrap_or(fields);
    Bytes::copy_from_slice(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, pieces: &[&[u8]]) -> (Vec<u8>, Option<Bytes>, Vec<u8>) {
        let mut p = BodyParts::new(framing, &Limits::default());
        let (mut data, mut end) = (Vec::new(), None);
        let mut rest = Vec::new();
        for piece in pieces {
            let mut input = Bytes::copy_from_slice(piece);
            let got = p.take(&mut input).unwrap();
            for d in got.data {
                data.extend_from_slice(&d);
            }
            if got.end.is_some() {
                end = got.end;
            }
            rest.extend_from_slice(&input);
        }
        (data, end, rest)
    }

    #[test]
    fn chunked_bodies_give_their_data_and_trailers_however_split() {
        let body: &[u8] =
            b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\nNEXT";
        for cut in 0..body.len() {
            let (data, end, rest) = all(Framing::Chunked, &[&body[..cut], &body[cut..]]);
            assert_eq!(data, b"helloabc", "cut at {cut}");
            assert_eq!(
                end.as_deref(),
                Some(&b"grpc-status: 0\r\ngrpc-message: ok\r\n"[..]),
                "cut at {cut}"
            );
            assert_eq!(rest, b"NEXT", "cut at {cut}");
        }
        let (data, end, _) = all(Framing::Chunked, &[b"0\r\n\r\n"]);
        assert!(data.is_empty());
        assert_eq!(end.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn lengths_stop_at_their_end_and_the_rest_stays() {
        let (data, end, rest) = all(Framing::Length(4), &[b"ab", b"cdef"]);
        assert_eq!(
            (data.as_slice(), rest.as_slice()),
            (&b"abcd"[..], &b"ef"[..])
        );
        assert_eq!(end.as_deref(), Some(&b""[..]));
        let (data, end, _) = all(Framing::UntilClose, &[b"ab", b"cd"]);
        assert_eq!((data.as_slice(), end), (&b"abcd"[..], None));
        assert!(BodyParts::new(Framing::Chunked, &Limits::default())
            .take(&mut Bytes::from_static(b"zz\r\n"))
            .is_err());
    }
}
