//! The only async I/O in the library: listeners, message reads off a QUIC
//! stream, and the splice between a QUIC stream and a TCP socket.
//!
//! No channels on the data path: bytes move between quinn and the socket as
//! `Bytes` chunks (`read_chunk` / `write_chunk`), and QUIC flow control is the
//! back-pressure.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use crate::error::ProtoError;
use crate::limits::{IO_CHUNK, LISTEN_BACKLOG};
use crate::proto::reset;

#[derive(Debug, Error)]
pub enum StreamError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream ended in the middle of a message")]
    Truncated,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream already closed")]
    Closed(#[from] quinn::ClosedStream),
}

/// A TCP listener with a backlog that absorbs bursts (the OS default of 128
/// stalls a burst of new visitors for a second).
pub fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

/// Reads one message with `decode` (a sans-IO decoder), pulling chunks into
/// `buf` until it is whole. `Ok(None)`: the stream ended cleanly before a
/// message began. Bytes past the message stay in `buf`.
pub async fn read_message<T>(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    decode: fn(&mut BytesMut) -> Result<Option<T>, ProtoError>,
) -> Result<Option<T>, StreamError> {
    loop {
        if let Some(m) = decode(buf)? {
            return Ok(Some(m));
        }
        match recv.read_chunk(IO_CHUNK, true).await? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None if buf.is_empty() => return Ok(None),
            None => return Err(StreamError::Truncated),
        }
    }
}

/// QUIC → TCP until the stream's FIN, then half-closes the TCP write side.
pub async fn quic_to_tcp<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    first: Bytes,
    wr: &mut W,
) -> Result<u64, StreamError> {
    let mut total = first.len() as u64;
    if !first.is_empty() {
        wr.write_all(&first).await?;
    }
    while let Some(chunk) = recv.read_chunk(IO_CHUNK, true).await? {
        total += chunk.bytes.len() as u64;
        wr.write_all(&chunk.bytes).await?;
    }
    wr.shutdown().await?;
    Ok(total)
}

/// TCP → QUIC until EOF, then finishes the stream. Each read lands in a
/// fresh region of one buffer and is handed to quinn without a copy.
pub async fn tcp_to_quic<R: AsyncRead + Unpin>(
    rd: &mut R,
    send: &mut SendStream,
) -> Result<u64, StreamError> {
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(IO_CHUNK);
        }
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            send.finish()?;
            return Ok(total);
        }
        total += n as u64;
        send.write_chunk(buf.split().freeze()).await?;
    }
}

/// Splices a QUIC stream with a TCP connection both ways. Half-closes
/// propagate (FIN ↔ shutdown); an error on either side resets the other, so
/// a visitor who leaves cancels the local request and a local reset ends the
/// visitor's response.
pub async fn splice(
    tcp: &mut tokio::net::TcpStream,
    send: &mut SendStream,
    recv: &mut RecvStream,
    first: Bytes,
) -> Result<(u64, u64), StreamError> {
    let (mut rd, mut wr) = tcp.split();
    let res = tokio::try_join!(
        quic_to_tcp(recv, first, &mut wr),
        tcp_to_quic(&mut rd, send)
    );
    if res.is_err() {
        let _ = send.reset(VarInt::from_u32(reset::LOCAL_RESET));
        let _ = recv.stop(VarInt::from_u32(reset::CANCELLED));
    }
    res
}
