//! Typed errors of the sans-IO cores. The async adapters have their own
//! error types next to them.

use thiserror::Error;

/// A control frame, preface or reply that could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; the peer is not a tunnel endpoint of this version")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed {what}; the peer is not a tunnel endpoint of this version")]
    Malformed { what: &'static str },
    #[error("unknown message type {0:#04x}; upgrade the older of client and server")]
    UnknownType(u8),
}
