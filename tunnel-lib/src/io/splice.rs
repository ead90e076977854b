//! One QUIC stream spliced with one local connection, both ways: the
//! client's forwarding (plain TCP, or TLS to a local https service) and the
//! server's TCP tunnels and TLS passthrough.

use bytes::Bytes;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::{quic_to_tcp_tapped, GrowBuf, LeanRead, SendOrder, StreamError, Tap};
use crate::proto::reset;

/// How a splice ended.
#[derive(Debug)]
pub enum SpliceEnd<S = TcpStream> {
    /// Both directions ran to their end (or the local side closed).
    Closed,
    /// The server ended the stream with `REUSE` at a clean HTTP boundary and
    /// nothing was left in flight: the local connection can serve the next
    /// stream.
    Reusable(S),
}

impl<S> SpliceEnd<S> {
    /// The same end around another type of connection.
    pub fn map<U>(self, f: impl FnOnce(S) -> U) -> SpliceEnd<U> {
        match self {
            SpliceEnd::Closed => SpliceEnd::Closed,
            SpliceEnd::Reusable(s) => SpliceEnd::Reusable(f(s)),
        }
    }
}

/// A connection to a local service the splice runs on: plain TCP (its two
/// halves borrowed, no lock), or TLS to a local https service (split
/// through tokio's lock, as the edge's TLS is).
pub trait Local: Send + Sized {
    type Rd<'a>: LeanRead
    where
        Self: 'a;
    type Wr<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>);
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Local for TcpStream {
    type Rd<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Wr<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        self.split()
    }
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Local for tokio_rustls::client::TlsStream<TcpStream> {
    type Rd<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Wr<'a> = tokio::io::WriteHalf<&'a mut Self>;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        tokio::io::split(self)
    }
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Splices a QUIC stream with a TCP connection both ways. Half-closes
/// propagate (FIN ↔ shutdown); an error on either side resets the other, so
/// a visitor who leaves cancels the local request and a local reset ends the
/// visitor's response. A `REUSE` reset from the server hands the connection
/// back instead.
pub async fn splice(
    tcp: tokio::net::TcpStream,
    send: &mut SendStream,
    recv: &mut RecvStream,
    first: Bytes,
) -> Result<SpliceEnd, StreamError> {
    splice_tapped(tcp, send, recv, first, &()).await
}

/// [`splice`], showing every chunk to `tap` on its way.
pub async fn splice_tapped<T: Tap, S: Local>(
    mut tcp: S,
    send: &mut SendStream,
    recv: &mut RecvStream,
    first: Bytes,
    tap: &T,
) -> Result<SpliceEnd<S>, StreamError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Set while bytes read from the local service are not yet handed to the
    // stream: a reuse then would lose them, so it is refused.
    let local_busy = AtomicBool::new(false);
    let outcome = {
        let (mut rd, mut wr) = tcp.halves();
        let to_local = async {
            match quic_to_tcp_tapped(recv, first, &mut wr, tap).await {
                Err(StreamError::Read(quinn::ReadError::Reset(code)))
                    if code == VarInt::from_u32(reset::REUSE) =>
                {
                    Ok(true)
                }
                Err(e) => Err(e),
                Ok(_) => Ok(false),
            }
        };
        let from_local = async {
            let mut buf = GrowBuf::new();
            let mut order = SendOrder::new();
            loop {
                let n = buf.read_from(&mut rd).await?;
                if n == 0 {
                    send.finish()?;
                    return Ok::<(), StreamError>(());
                }
                local_busy.store(true, Ordering::Relaxed);
                let chunk = buf.take();
                tap.toward_visitor(&chunk);
                order.write(send, chunk).await?;
                local_busy.store(false, Ordering::Relaxed);
            }
        };
        tokio::pin!(to_local, from_local);
        tokio::select! {
            r = &mut to_local => match r {
                // Dropping `from_local` cancels a local read (cancel-safe).
                Ok(true) => Ok(!local_busy.load(Ordering::Relaxed)),
                Ok(false) => from_local.await.map(|_| false),
                Err(e) => Err(e),
            },
            r = &mut from_local => match r {
                Ok(()) => to_local.await.map(|_| false),
                Err(e) => Err(e),
            },
        }
    };
    match outcome {
        Ok(true) => Ok(SpliceEnd::Reusable(tcp)),
        Ok(false) => Ok(SpliceEnd::Closed),
        Err(e) => {
            let _ = send.reset(VarInt::from_u32(reset::LOCAL_RESET));
            let _ = recv.stop(VarInt::from_u32(reset::CANCELLED));
            // A cut exchange reaches the local service as a reset (RST), not
            // as a clean end of its request.
            let _ = socket2::SockRef::from(tcp.tcp()).set_linger(Some(std::time::Duration::ZERO));
            Err(e)
        }
    }
}
