//! Frame boundaries and a bounds-checked field reader.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtoError;

/// Takes one whole frame body (type byte and fields, without the length
/// prefix) off the front of `buf`, or `Ok(None)` when more bytes are needed.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(ProtoError::FrameTooLarge { len, max });
    }
    if len == 0 {
        return Err(ProtoError::Malformed {
            what: "empty frame",
        });
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Writes the length prefix for a frame whose body was appended after
/// `start`.
pub(crate) fn patch_len(dst: &mut BytesMut, start: usize) {
    let len = (dst.len() - start - 4) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Reads fields off a frame; every read is bounds-checked and a short frame
/// is `Malformed`, never a panic.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn err(&self) -> ProtoError {
        ProtoError::Malformed { what: self.what }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub fn string(&mut self) -> Result<String, ProtoError> {
        let len = self.u16()? as usize;
        let b = self.take(len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| self.err())
    }
    /// Fails unless every byte was consumed: trailing garbage is malformed.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

pub(crate) fn put_string(dst: &mut BytesMut, s: &str) {
    // Callers bound their strings far below u16::MAX; truncate defensively at
    // a char boundary rather than write a length that lies.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    bytes::BufMut::put_u16(dst, end as u16);
    dst.extend_from_slice(&s.as_bytes()[..end]);
}
