//! The tunnel protocol, sans-IO.
//!
//! A client opens one QUIC connection (ALPN [`ALPN`], which carries the
//! protocol version) and then one bidirectional *control stream* on which
//! [`Control`] frames flow both ways:
//!
//! ```text
//! client                                   server
//!   Hello{version, token, client_id}  ──▶
//!                                     ◀──  Welcome{version, session_id}   | Error + close
//!   Register{request_id, name, kind, remote_port, policy}  ──▶
//!                                     ◀──  Registered{request_id, tunnel_id, url} | Error{request_id}
//!                                     ◀──  GoingAway{reason}   (server shutting down)
//! ```
//!
//! For every proxied visitor connection the *server* opens a bidirectional
//! data stream that starts with a [`Preface`] (which tunnel, which visitor).
//! The client answers with a [`Reply`] (local service reached, or why not)
//! and then bytes flow raw both ways.
//!
//! Every frame is `u32 length (big endian) | u8 type | fields`; strings are
//! `u16 length | UTF-8`. Decoders take a `BytesMut` that may hold a partial
//! frame and return `Ok(None)` until it is whole.

mod codec;
mod control;
mod stream;

pub use codec::{decode_frame, Reader};
pub mod datagram;
pub use control::{Control, ErrorCode, Policy, TunnelKind};
pub use stream::{Preface, Reply, ReplyCode, StreamKind};

/// Version of the control protocol and stream format.
pub const PROTOCOL_VERSION: u16 = 3;

/// TLS ALPN of this protocol version. A client and server of different
/// versions fail the handshake with `no_application_protocol`, which both
/// sides translate into a version-mismatch message.
pub const ALPN: &[u8] = b"tunnel/3";

/// QUIC application close codes.
pub mod close {
    /// Orderly close (client shutting down).
    pub const NORMAL: u32 = 0;
    /// The server is shutting down; reconnect later.
    pub const GOING_AWAY: u32 = 1;
    /// The token was rejected; do not retry.
    pub const UNAUTHORIZED: u32 = 2;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 3;
    /// The operator (or a newer connection of the same client) ended the session.
    pub const DISCONNECTED: u32 = 4;
    /// Protocol versions differ; do not retry.
    pub const VERSION_MISMATCH: u32 = 5;
    /// The server (or the token) is at its client limit; retry later.
    pub const BUSY: u32 = 6;
}

/// Stream reset / stop codes on data streams.
pub mod reset {
    /// The visitor went away: cancel the local request.
    pub const CANCELLED: u32 = 0x10;
    /// The local service reset its connection.
    pub const LOCAL_RESET: u32 = 0x11;
    /// Server → client, on both directions of a data stream: the exchange
    /// ended at a clean HTTP boundary (every response complete, keep-alive,
    /// nothing left over), so the client may keep the local connection for
    /// the next stream.
    pub const REUSE: u32 = 0x12;
}

#[cfg(test)]
mod tests;
