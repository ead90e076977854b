//! QUIC over a byte stream: the tunnel's second transport, for networks
//! that drop UDP. The client's QUIC packets travel as length-prefixed
//! frames (`u16` big-endian length, then the packet) inside a TLS session
//! to the server's https port, which recognises it by its ALPN
//! ([`ALPN`]). Both ends keep a real `quinn::Connection`, so everything
//! built on it (streams, DATAGRAMs for UDP tunnels, GoingAway, the
//! registry) works unchanged; only the socket under quinn differs:
//!
//! - the client's endpoint runs on a [`StreamSocket`]: one peer, packets
//!   to and from one stream;
//! - the server's endpoint runs on a [`HubSocket`]: its real UDP socket,
//!   plus a [`Hub`] of relayed peers, each seen by quinn at an address of
//!   `100::/64` (RFC 6666's discard-only prefix: never a real peer), each
//!   linked to its stream by [`Hub::serve`].
//!
//! The cost (ARCHITECTURE.md): QUIC's congestion control runs on top of
//! TCP's, and each byte is encrypted twice (the outer TLS only gets the
//! packets through; the server is authenticated by QUIC's TLS inside, with
//! the same trust as over UDP). Queues are bounded both ways; a packet that
//! finds its queue full is dropped and counted, as a full UDP buffer would
//! drop it, and QUIC's loss recovery resends it.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The ALPN a tunnel client offers on the server's https port for this
/// transport (the QUIC inside carries its own, `proto::ALPN`).
pub const ALPN: &[u8] = b"tunnel-tcp/1";

/// Packets queued each way per relayed peer, and on the server's shared
/// inbound queue per peer: about 370 KB of full-size packets, a window's
/// worth on a fast link without holding much memory per client.
pub const QUEUE: usize = 256;

/// Packets read from or written to a stream in one batch.
const BATCH: usize = 32;

/// A link that carries nothing this long is given up: a live QUIC
/// connection sends at least a keep-alive every `QUIC_KEEP_ALIVE`, and one
/// that is gone has timed out long before. Without it, a peer that
/// vanished without a FIN (its network gone) would hold its link's slot.
pub const LINK_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The address quinn sees for relayed peer `id`.
pub fn relay_addr(id: u64) -> SocketAddr {
    let s = |shift: u32| (id >> shift) as u16;
    let ip = Ipv6Addr::new(0x100, 0, 0, 0, s(48), s(32), s(16), s(0));
    SocketAddr::new(IpAddr::V6(ip), 443)
}

/// Whether `addr` stands for a relayed peer.
pub fn is_relay_addr(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V6(ip) if ip.segments()[..4] == [0x100, 0, 0, 0])
}

/// Moves packets between `stream` and a pair of queues until the stream
/// ends or `outbound` closes: frames read from the stream go to `inbound`
/// (dropped, and counted in `dropped`, when it is full); packets from
/// `outbound` are written as frames.
pub async fn pump<S>(
    stream: S,
    mut outbound: mpsc::Receiver<Bytes>,
    inbound: impl Fn(Bytes) -> Result<(), Full>,
    dropped: &AtomicU64,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reading = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                if buf.len() < 2 + len {
                    buf.reserve(2 + len - buf.len());
                    break;
                }
                buf.advance(2);
                let packet = buf.split_to(len).freeze();
                if inbound(packet).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if buf.capacity() - buf.len() < 2048 {
                buf.reserve(64 * 1024);
            }
            match tokio::time::timeout(LINK_IDLE, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Ok::<(), io::Error>(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing received for {LINK_IDLE:?}"),
                    ))
                }
            }
        }
    };
    let writing = async {
        let mut packets = Vec::with_capacity(BATCH);
        let mut out = BytesMut::new();
        while outbound.recv_many(&mut packets, BATCH).await > 0 {
            for p in packets.drain(..) {
                out.extend_from_slice(&(p.len() as u16).to_be_bytes());
                out.extend_from_slice(&p);
            }
            wr.write_all_buf(&mut out).await?;
            wr.flush().await?;
        }
        let _ = wr.shutdown().await;
        Ok::<(), io::Error>(())
    };
    tokio::select! {
        r = reading => r,
        r = writing => r,
    }
}

/// A queue that had no room for a packet.
#[derive(Debug)]
pub struct Full;

/// The packets of one `Transmit` (several when the endpoint batches them).
fn segments<'a>(t: &'a Transmit<'_>) -> impl Iterator<Item = &'a [u8]> + 'a {
    let size = t.segment_size.unwrap_or(t.contents.len()).max(1);
    t.contents.chunks(size)
}

/// Copies queued packets into quinn's buffers: as many as fit, each its
/// own `RecvMeta`.
fn deliver(
    cx: &mut Context,
    rx: &mut mpsc::Receiver<(SocketAddr, Bytes)>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> Poll<io::Result<usize>> {
    let mut n = 0;
    while n < bufs.len().min(meta.len()) {
        match rx.poll_recv(cx) {
            Poll::Ready(Some((addr, p))) => {
                if p.len() > bufs[n].len() {
                    continue;
                }
                bufs[n][..p.len()].copy_from_slice(&p);
                meta[n] = RecvMeta {
                    addr,
                    len: p.len(),
                    stride: p.len(),
                    ecn: None,
                    dst_ip: None,
                };
                n += 1;
            }
            // Every sender gone: nothing more will come (the endpoint
            // learns the peer is gone by its idle timeout or its close).
            Poll::Ready(None) | Poll::Pending => break,
        }
    }
    if n > 0 {
        Poll::Ready(Ok(n))
    } else {
        Poll::Pending
    }
}

/// [`deliver`] from a queue behind a mutex (the socket is shared).
fn deliver_from(
    cx: &mut Context,
    rx: &Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> Poll<io::Result<usize>> {
    let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
    deliver(cx, &mut rx, bufs, meta)
}

/// Queues every packet of `transmit` on `out`; one that finds it full is
/// dropped and counted.
fn queue(out: &mpsc::Sender<Bytes>, transmit: &Transmit, dropped: &AtomicU64) {
    for p in segments(transmit) {
        if out.try_send(Bytes::copy_from_slice(p)).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A poller that is always writable: relayed sends never wait (a full
/// queue drops the packet, as a full UDP buffer would).
#[derive(Debug)]
struct Ready;

impl UdpPoller for Ready {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The client's socket for the stream transport: one peer (the server,
/// at `peer`), packets to and from a [`pump`].
pub struct StreamSocket {
    peer: SocketAddr,
    outbound: mpsc::Sender<Bytes>,
    inbound: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    /// Packets dropped on a full queue, either way.
    pub dropped: Arc<AtomicU64>,
}

/// What the client's pump needs: the queue its frames go to, the queue it
/// writes from.
pub struct StreamEnds {
    pub outbound: mpsc::Receiver<Bytes>,
    pub inbound: mpsc::Sender<(SocketAddr, Bytes)>,
    pub peer: SocketAddr,
    pub dropped: Arc<AtomicU64>,
}

impl StreamSocket {
    /// A socket whose only peer is `relay_addr(0)`, and the ends its pump
    /// takes.
    pub fn new() -> (StreamSocket, StreamEnds) {
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let peer = relay_addr(0);
        (
            StreamSocket {
                peer,
                outbound: out_tx,
                inbound: Mutex::new(in_rx),
                dropped: dropped.clone(),
            },
            StreamEnds {
                outbound: out_rx,
                inbound: in_tx,
                peer,
                dropped,
            },
        )
    }
}

impl StreamEnds {
    /// Runs the pump over `stream` until it ends.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) -> io::Result<()> {
        let StreamEnds {
            outbound,
            inbound,
            peer,
            dropped,
        } = self;
        let push = |p| inbound.try_send((peer, p)).map_err(|_| Full);
        pump(stream, outbound, push, &dropped).await
    }
}

impl fmt::Debug for StreamSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSocket")
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncUdpSocket for StreamSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Ready)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        queue(&self.outbound, transmit, &self.dropped);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        deliver_from(cx, &self.inbound, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        // Another address of the same discard-only prefix.
        Ok(relay_addr(u64::MAX))
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// The server's relayed peers: each one's outbound queue by its address,
/// and one inbound queue they all feed.
pub struct Hub {
    links: Mutex<HashMap<SocketAddr, Link>>,
    inbound_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inbound_rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    next: AtomicU64,
    /// Packets dropped on a full queue, either way.
    pub dropped: AtomicU64,
}

struct Link {
    outbound: mpsc::Sender<Bytes>,
    /// The TCP peer: for per-source budgets and logs.
    real: SocketAddr,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        let (tx, rx) = mpsc::channel(QUEUE * 4);
        Arc::new(Hub {
            links: Mutex::new(HashMap::new()),
            inbound_tx: tx,
            inbound_rx: Mutex::new(rx),
            next: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
        })
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Relays one peer that reached us over `stream` from `real` until the
    /// stream ends; quinn sees it at a `100::/64` address meanwhile.
    pub async fn serve<S>(&self, stream: S, real: SocketAddr) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let addr = relay_addr(self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(QUEUE);
        self.links().insert(addr, Link { outbound: tx, real });
        let push = |p| self.inbound_tx.try_send((addr, p)).map_err(|_| Full);
        let r = pump(stream, rx, push, &self.dropped).await;
        self.links().remove(&addr);
        r
    }

    /// The TCP peer behind a relayed address (the address itself for a
    /// peer over UDP, or one no longer linked).
    pub fn real_peer(&self, addr: SocketAddr) -> SocketAddr {
        if !is_relay_addr(&addr) {
            return addr;
        }
        self.links().get(&addr).map_or(addr, |l| l.real)
    }

    /// Relayed peers linked now.
    pub fn linked(&self) -> usize {
        self.links().len()
    }

    fn send(&self, transmit: &Transmit) {
        let out = self
            .links()
            .get(&transmit.destination)
            .map(|l| l.outbound.clone());
        if let Some(out) = out {
            queue(&out, transmit, &self.dropped);
        }
    }
}

/// The server's endpoint socket: its UDP socket, and the relayed peers of
/// a [`Hub`] (their addresses routed to their streams).
pub struct HubSocket {
    udp: Arc<dyn AsyncUdpSocket>,
    hub: Arc<Hub>,
    /// Which source is polled first (they take turns, so neither starves).
    relay_first: AtomicBool,
}

impl HubSocket {
    pub fn new(udp: Arc<dyn AsyncUdpSocket>, hub: Arc<Hub>) -> HubSocket {
        HubSocket {
            udp,
            hub,
            relay_first: AtomicBool::new(false),
        }
    }
}

impl fmt::Debug for HubSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSocket").field("udp", &self.udp).finish()
    }
}

impl AsyncUdpSocket for HubSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.udp.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if is_relay_addr(&transmit.destination) {
            self.hub.send(transmit);
            Ok(())
        } else {
            self.udp.try_send(transmit)
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let relay_first = !self.relay_first.fetch_xor(true, Ordering::Relaxed);
        let relayed = |cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]| {
            let mut rx = self
                .hub
                .inbound_rx
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            deliver(cx, &mut rx, bufs, meta)
        };
        if relay_first {
            if let Poll::Ready(r) = relayed(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            self.udp.poll_recv(cx, bufs, meta)
        } else {
            if let Poll::Ready(r) = self.udp.poll_recv(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            relayed(cx, bufs, meta)
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // #[tokio::test] expands to a block_on
#[path = "relay_tests.rs"]
mod tests;
