//! The preface that starts every data stream, and the client's reply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};

use super::codec::{decode_frame, patch_len, put_string, Reader};

use crate::error::ProtoError;

/// Prefaces and replies are tiny; a larger frame is garbage.
const MAX_STREAM_FRAME: usize = 1024;

/// What a data stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// One visitor's HTTP/1 connection: canonical request heads and bodies
    /// one way, raw responses the other.
    Http1,
    /// A TLS-passthrough visitor connection: raw bytes both ways, starting
    /// with the visitor's ClientHello.
    Tls,
    /// A TCP-tunnel visitor connection: raw bytes both ways.
    Tcp,
}

/// Server → client, first bytes of a data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preface {
    pub kind: StreamKind,
    pub tunnel_id: u32,
    pub visitor: SocketAddr,
}

impl Preface {
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(match self.kind {
            StreamKind::Http1 => 1,
            StreamKind::Tls => 2,
            StreamKind::Tcp => 3,
        });
        dst.put_u32(self.tunnel_id);
        match self.visitor.ip() {
            IpAddr::V4(ip) => {
                dst.put_u8(4);
                dst.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                dst.put_u8(6);
                dst.extend_from_slice(&ip.octets());
            }
        }
        dst.put_u16(self.visitor.port());
        patch_len(dst, start);
    }

    pub fn decode(buf: &mut BytesMut) -> Result<Option<Preface>, ProtoError> {
        let Some(frame) = decode_frame(buf, MAX_STREAM_FRAME)? else {
            return Ok(None);
        };
        let mut r = Reader::new(&frame, "stream preface");
        let kind = match r.u8()? {
            1 => StreamKind::Http1,
            2 => StreamKind::Tls,
            3 => StreamKind::Tcp,
            t => return Err(ProtoError::UnknownType(t)),
        };
        let tunnel_id = r.u32()?;
        let ip = match r.u8()? {
            4 => {
                let b = r.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(r.take(16)?);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => {
                return Err(ProtoError::Malformed {
                    what: "stream preface address",
                })
            }
        };
        let port = r.u16()?;
        r.finish()?;
        Ok(Some(Preface {
            kind,
            tunnel_id,
            visitor: SocketAddr::new(ip, port),
        }))
    }
}

/// Client → server, first bytes back on a data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The local service accepted the connection; its bytes follow.
    Connected,
    /// The local service could not be reached; the stream ends after this.
    Failed { code: ReplyCode, message: String },
}

/// Why the client could not serve a data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCode {
    /// The local service refused the connection (nothing listening).
    Refused,
    /// Dialling the local service timed out.
    TimedOut,
    /// The tunnel id is not one of this client's (stale registration).
    UnknownTunnel,
    /// Any other dial error.
    Unreachable,
    /// Recent dials failed: the client answers at once for a while.
    CircuitOpen,
    /// TLS with a local https service failed (most often: its
    /// certificate is not trusted by the client).
    TlsFailed,
    Other(u16),
}

impl ReplyCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::Refused => 1,
            Self::TimedOut => 2,
            Self::UnknownTunnel => 3,
            Self::Unreachable => 4,
            Self::CircuitOpen => 5,
            Self::TlsFailed => 6,
            Self::Other(c) => c,
        }
    }
    fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::Refused,
            2 => Self::TimedOut,
            3 => Self::UnknownTunnel,
            4 => Self::Unreachable,
            5 => Self::CircuitOpen,
            6 => Self::TlsFailed,
            c => Self::Other(c),
        }
    }
}

impl Reply {
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32(0);
        match self {
            Reply::Connected => dst.put_u8(0),
            Reply::Failed { code, message } => {
                dst.put_u8(1);
                dst.put_u16(code.to_u16());
                put_string(dst, message);
            }
        }
        patch_len(dst, start);
    }

    pub fn decode(buf: &mut BytesMut) -> Result<Option<Reply>, ProtoError> {
        let Some(frame) = decode_frame(buf, MAX_STREAM_FRAME)? else {
            return Ok(None);
        };
        let mut r = Reader::new(&frame, "stream reply");
        let reply = match r.u8()? {
            0 => Reply::Connected,
            1 => Reply::Failed {
                code: ReplyCode::from_u16(r.u16()?),
                message: r.string()?,
            },
            t => return Err(ProtoError::UnknownType(t)),
        };
        r.finish()?;
        Ok(Some(reply))
    }
}
