//! The only async I/O in the library: listeners, message reads off a QUIC
//! stream, the [`LeanRead`] seam every visitor stream (TCP or TLS) is read
//! through, and the splice between a QUIC stream and a TCP socket.
//!
//! No channels on the data path: bytes move between quinn and the socket as
//! `Bytes` chunks (`read_chunk` / `write_chunk`), and QUIC flow control is the
//! back-pressure.

use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use thiserror::Error;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ProtoError;
use crate::limits::{BULK_AFTER, BULK_HALF_LIFE, BULK_TURN, FIRST_READ, IO_CHUNK, LISTEN_BACKLOG};

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
/// An IPv6 address (`[::]:443`) also takes IPv4 visitors where the OS allows
/// it (dual-stack), whatever `net.ipv6.bindv6only` says.
pub fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG as i32)?;
    TcpListener::from_std(sock.into())
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

/// How many received chunks are taken off a QUIC stream at once (each is
/// about one packet's payload) and written with one `writev`.
pub const BATCH: usize = 32;

/// Takes up to [`BATCH`] chunks off `recv` into `out`. `Ok(false)` at the
/// stream's end. Cancel-safe, like `read_chunks`.
///
/// The slots `read_chunks` fills are not part of this future: a stream
/// waiting for data holds only quinn's small future, not 32 slots (1 KiB),
/// and no call fills and drops 32 empty slots. Each poll borrows the
/// thread's [`Scratch`] and hands the filled slots on, leaving it empty.
pub async fn read_batch(
    recv: &mut RecvStream,
    out: &mut Vec<Bytes>,
) -> Result<bool, quinn::ReadError> {
    std::future::poll_fn(|cx| {
        let mut bufs = Scratch::take();
        // `read_chunks` is cancel-safe: a fresh one per poll, dropped when
        // pending, leaves the task registered for the stream's next data.
        let polled = std::pin::pin!(recv.read_chunks(&mut bufs[..])).poll(cx);
        let done = match polled {
            Poll::Ready(Ok(Some(n))) => {
                out.extend(bufs[..n].iter_mut().map(std::mem::take));
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(false)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        Scratch::put(bufs);
        done
    })
    .await
}

/// The slots [`read_batch`] reads into: one set per thread, always empty
/// between polls (filled slots are taken, leaving `Bytes::new()`).
struct Scratch;

type Slots = Box<[Bytes; BATCH]>;

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Slots>> = const { std::cell::Cell::new(None) };
}

impl Scratch {
    /// The thread's slots (new ones on first use).
    fn take() -> Slots {
        SCRATCH
            .with(|s| s.take())
            .unwrap_or_else(|| Box::new(std::array::from_fn(|_| Bytes::new())))
    }

    fn put(slots: Slots) {
        SCRATCH.with(|s| s.set(Some(slots)));
    }
}

/// Writes every buffer in `bufs` with as few `writev` calls as the socket
/// allows, then empties `bufs` (its capacity is kept for reuse).
pub async fn write_all_bufs<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bufs: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < bufs.len() && bufs[first].is_empty() {
        first += 1;
    }
    while first < bufs.len() {
        // The slices are built per poll, so they are not part of this
        // future (34 of them are 544 bytes).
        let rest = &bufs[first..];
        let mut n = std::future::poll_fn(|cx| {
            let slices: smallvec::SmallVec<[std::io::IoSlice<'_>; BATCH + 2]> =
                rest.iter().map(|b| std::io::IoSlice::new(b)).collect();
            std::pin::Pin::new(&mut *wr).poll_write_vectored(cx, &slices)
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let len = bufs[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                bufs[first].advance(n);
                n = 0;
            }
        }
        while first < bufs.len() && bufs[first].is_empty() {
            first += 1;
        }
    }
    bufs.clear();
    Ok(())
}

/// Sees the bytes a splice moves, without owning them (a `Bytes` clone is a
/// reference count). Called inline, so it must be quick and never block.
pub trait Tap: Sync {
    /// Bytes from the stream, about to go to the local socket.
    fn toward_local(&self, _chunk: &Bytes) {}
    /// Bytes read from the local socket, about to go to the stream.
    fn toward_visitor(&self, _chunk: &Bytes) {}
}

/// No tap.
impl Tap for () {}

impl<T: Tap> Tap for Option<T> {
    fn toward_local(&self, chunk: &Bytes) {
        if let Some(t) = self {
            t.toward_local(chunk)
        }
    }
    fn toward_visitor(&self, chunk: &Bytes) {
        if let Some(t) = self {
            t.toward_visitor(chunk)
        }
    }
}

/// QUIC → TCP until the stream's FIN, then half-closes the TCP write side.
/// Chunks are taken in batches and written with one `writev` each.
pub async fn quic_to_tcp<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    first: Bytes,
    wr: &mut W,
) -> Result<u64, StreamError> {
    quic_to_tcp_tapped(recv, first, wr, &()).await
}

async fn quic_to_tcp_tapped<W: AsyncWrite + Unpin, T: Tap>(
    recv: &mut RecvStream,
    first: Bytes,
    wr: &mut W,
    tap: &T,
) -> Result<u64, StreamError> {
    let mut total = first.len() as u64;
    // Sized by what arrives: a small exchange keeps a small vector.
    let mut batch: Vec<Bytes> = Vec::new();
    if !first.is_empty() {
        batch.push(first);
    }
    loop {
        // Write what is there before waiting for more.
        if !batch.is_empty() {
            batch.iter().for_each(|b| tap.toward_local(b));
            write_all_bufs(wr, &mut batch).await?;
        }
        if !read_batch(recv, &mut batch).await? {
            break;
        }
        total += batch.iter().map(|b| b.len() as u64).sum::<u64>();
    }
    wr.shutdown().await?;
    Ok(total)
}

/// A byte source the edge and the splice read from. Plain TCP waits for
/// readiness *without* a buffer (an idle connection holds none); other
/// streams (TLS) read into `buf` directly. Every implementation is
/// cancel-safe: a read that has not completed consumed nothing.
pub trait LeanRead: Send {
    /// Reads what is there into `buf`, first reserving `want` bytes if it
    /// has less than 1 KiB of room. `Ok(0)` at EOF.
    fn read_lean<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        want: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a;
}

fn reserve(buf: &mut BytesMut, want: usize) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(want);
    }
}

/// The TCP read: try first; while the socket has nothing and `buf` holds
/// no unconsumed bytes, release the buffer before waiting for readiness.
async fn lean_tcp(tcp: &TcpStream, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    loop {
        reserve(buf, want);
        match read_draining(tcp, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                tcp.readable().await?;
            }
            r => return r,
        }
    }
}

/// Edge-triggered readiness (epoll, kqueue): tokio's own `poll_read` makes
/// the same exception for Windows.
const SHORT_READ_MEANS_EMPTY: bool = !cfg!(windows);

/// One read into `buf`'s spare room. A read that did not fill the room
/// emptied the socket's queue, and with edge-triggered readiness the next
/// bytes raise a new event: so readiness is cleared with it, as tokio's own
/// `poll_read` does. The next read then waits for that event instead of
/// asking the kernel for an `EAGAIN` first (one `recvfrom` less per request
/// on each side; BENCHMARKS.md, issue 12, lever 12). tokio clears only if no
/// event came in since this read's readiness was observed.
fn read_draining(tcp: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut drained = None;
    let r = tcp.try_io(tokio::io::Interest::READABLE, || {
        match tcp.try_read_buf(buf) {
            // Reported as "would block" so that `try_io` clears readiness;
            // the bytes read are returned below.
            Ok(n) if n > 0 && n < room && SHORT_READ_MEANS_EMPTY => {
                drained = Some(n);
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            other => other,
        }
    });
    match drained {
        Some(n) => Ok(n),
        None => r,
    }
}

/// The TCP types the edge and the splice read from.
macro_rules! lean_tcp {
    ($($t:ty),*) => {$(
        impl LeanRead for $t {
            fn read_lean<'a>(
                &'a mut self,
                buf: &'a mut BytesMut,
                want: usize,
            ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
                let this: &'a Self = self;
                lean_tcp(this.as_ref(), buf, want)
            }
        }
    )*};
}

lean_tcp!(
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::ReadHalf<'_>
);

impl LeanRead for TcpStream {
    fn read_lean<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        want: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        lean_tcp(self, buf, want)
    }
}

/// Any other stream (a TLS session's read half): a plain buffered read.
impl<T: tokio::io::AsyncRead + Send> LeanRead for tokio::io::ReadHalf<T> {
    fn read_lean<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        want: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        use tokio::io::AsyncReadExt;
        reserve(buf, want);
        self.read_buf(buf)
    }
}

/// A read buffer that starts small and doubles (up to [`IO_CHUNK`]) while
/// reads fill it: a chatty connection reads into 2 KiB, a bulk one 64 KiB at
/// a time, and an idle one holds none ([`read_lean`]). Each read is handed
/// on as `Bytes` without a copy.
#[derive(Debug)]
pub struct GrowBuf {
    buf: BytesMut,
    next: usize,
}

impl Default for GrowBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl GrowBuf {
    pub fn new() -> Self {
        GrowBuf {
            buf: BytesMut::new(),
            next: FIRST_READ,
        }
    }

    /// One read; `Ok(0)` at EOF.
    pub async fn read_from<R: LeanRead>(&mut self, rd: &mut R) -> std::io::Result<usize> {
        let n = rd.read_lean(&mut self.buf, self.next).await?;
        if n > 0 && self.buf.capacity() == self.buf.len() {
            self.next = (self.next * 2).min(IO_CHUNK);
        }
        Ok(n)
    }

    /// What was read, as `Bytes` (the buffer keeps its spare room).
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// Socket → QUIC until EOF, then finishes the stream. Each read lands in a
/// fresh region of one buffer and is handed to quinn without a copy, in the
/// stream's place in the send `order` (the caller's, kept across modes).
pub async fn tcp_to_quic<R: LeanRead>(
    rd: &mut R,
    send: &mut SendStream,
    order: &mut SendOrder,
) -> Result<u64, StreamError> {
    let mut total = 0u64;
    let mut buf = GrowBuf::new();
    loop {
        let n = buf.read_from(rd).await?;
        if n == 0 {
            send.finish()?;
            return Ok(total);
        }
        total += n as u64;
        order.write(send, buf.take()).await?;
    }
}

/// A stream's place in its connection's send order, through quinn's stream
/// priorities (transmission order only: flow control is untouched).
///
/// Least attained service first: a stream that wrote more than
/// [`BULK_AFTER`] bytes lately (a count that halves every
/// [`BULK_HALF_LIFE`]) is *bulk*; every other stream is *interactive*
/// (priority 0) and is sent ahead of it, so a page or an API answer never
/// queues behind a download sharing the client. Bulk streams take turns of
/// [`BULK_TURN`] bytes, oldest turn first: each turn draws a lower priority
/// from one counter. Without turns quinn's round robin interleaves every
/// active stream packet by packet, so each packet wakes a different reader
/// on the far side for one packet's worth of bytes.
#[derive(Debug)]
pub struct SendOrder {
    /// Bytes written lately (halved every `BULK_HALF_LIFE` since `since`).
    recent: u64,
    since: std::time::Instant,
    /// Bytes left in the current bulk turn; `None` while interactive.
    turn_left: Option<u64>,
}

/// Bulk turns handed out in this process. Priorities are compared only
/// between the streams of one connection, so one counter serves them all;
/// it wraps after 2^30 turns (one turn then runs early).
static TURNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Default for SendOrder {
    fn default() -> Self {
        Self::new()
    }
}

impl SendOrder {
    pub fn new() -> Self {
        SendOrder {
            recent: 0,
            since: std::time::Instant::now(),
            turn_left: None,
        }
    }

    /// The priority for a write of `n` bytes, when it changes.
    fn account(&mut self, now: std::time::Instant, n: u64) -> Option<i32> {
        let halvings =
            now.saturating_duration_since(self.since).as_nanos() / BULK_HALF_LIFE.as_nanos();
        if halvings > 0 {
            self.recent >>= halvings.min(63);
            self.since += BULK_HALF_LIFE * halvings.min(u32::MAX as u128) as u32;
        }
        self.recent += n;
        match self.turn_left {
            None if self.recent <= BULK_AFTER => None,
            Some(_) if self.recent <= BULK_AFTER => {
                self.turn_left = None;
                Some(0)
            }
            Some(left) if left > n => {
                self.turn_left = Some(left - n);
                None
            }
            _ => {
                self.turn_left = Some(BULK_TURN);
                let turn = TURNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x3fff_ffff;
                Some(-1 - turn as i32)
            }
        }
    }

    /// Writes `chunk` on `send` whole, first moving the stream in the send
    /// order where this write changes its class or starts a turn.
    pub async fn write(
        &mut self,
        send: &mut SendStream,
        chunk: Bytes,
    ) -> Result<(), quinn::WriteError> {
        if let Some(p) = self.account(std::time::Instant::now(), chunk.len() as u64) {
            let _ = send.set_priority(p);
        }
        send.write_chunk(chunk).await
    }
}

mod splice;
pub use splice::{splice, splice_tapped, Local, SpliceEnd};

#[cfg(test)]
// `#[tokio::test]` expands to the runtime's `block_on`, outside any async code.
#[allow(clippy::disallowed_methods)]
mod tests;
