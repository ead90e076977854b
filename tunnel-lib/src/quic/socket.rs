//! The UDP socket under quinn: quinn's tokio runtime, except for how the
//! socket waits.
//!
//! quinn's own socket (`quinn::TokioRuntime`) registers for reading *and*
//! writing. A UDP socket is writable nearly always, and the kernel signals
//! it again every time a sent datagram is freed, so every send cost the
//! event loop an extra turn (`epoll_wait` returning `EPOLLOUT` for nothing
//! is waiting for it); and every receive batch ended with one more
//! `recvmmsg` that could only say `EAGAIN`. Here the socket is registered for
//! reading only; a send that would block (a full send buffer) registers a
//! duplicate descriptor for writing until the socket drains, then drops it;
//! and a receive batch shorter than the batch quinn asked for marks the
//! socket not ready (the queue was empty, the next datagram raises a fresh
//! edge). BENCHMARKS.md, issue 12, lever 12.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncTimer, AsyncUdpSocket, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// quinn's runtime: tokio's timers and tasks, [`Socket`] for the socket.
#[derive(Debug)]
pub struct Runtime;

impl quinn::Runtime for Runtime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        quinn::TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // quinn's drivers: they end with their endpoint or connection.
        quinn::TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, sock: UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let state = UdpSocketState::new((&sock).into())?;
        sock.set_nonblocking(true)?;
        Ok(Arc::new(Socket {
            io: register(sock, Interest::READABLE)?,
            state,
            blocked: AtomicBool::new(false),
            said_at: AtomicU64::new(0),
        }))
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

/// A UDP socket registered for reading only.
struct Socket {
    io: AsyncFd<UdpSocket>,
    state: UdpSocketState,
    /// The last send found the send buffer full: pollers wait for room.
    blocked: AtomicBool,
    /// When a failed send was last reported (seconds on [`since_start`], 0:
    /// never): once a minute at most, as quinn-udp does.
    said_at: AtomicU64,
}

/// Seconds since the first call (a process-wide monotonic clock in seconds).
fn since_start() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// What a person reads when the network refuses a datagram: the cause and
/// what to check, never quinn-udp's raw `Os { .. }, Transmit { .. }` dump.
fn send_failure(e: &io::Error, to: &SocketAddr) -> String {
    let what = match e.raw_os_error() {
        Some(libc::ENETUNREACH) => {
            "the network is unreachable: is this machine offline, or its route gone?"
        }
        Some(libc::EHOSTUNREACH) => "no route to the host: check the address and the network",
        Some(libc::EADDRNOTAVAIL) => {
            "the local address is gone (the network changed): reconnecting will pick a new one"
        }
        Some(libc::EPERM | libc::EACCES) => "a firewall on this machine refused it",
        _ => "",
    };
    match what {
        "" => format!("sending to {to} failed: {e}"),
        _ => format!("sending to {to} failed: {what}"),
    }
}

/// The most one UDP send may carry (IPv4's limit, the lower of the two).
const MAX_UDP_SEND: usize = 65_507;

impl Socket {
    /// One send as quinn-udp makes it, with our handling of its errors.
    fn send_one(&self, transmit: &Transmit) -> io::Result<()> {
        // No readiness to consult: a send is tried, and `WouldBlock` sends
        // quinn to the poller.
        match self.state.try_send(self.io.get_ref().into(), transmit) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.blocked.store(true, Ordering::Relaxed);
                Err(e)
            }
            // Expected for MTU probes larger than the path (quinn-udp's rule).
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Ok(()),
            // Anything else is a lost datagram to QUIC (it retransmits), and
            // a line for the person at the screen.
            Err(e) => {
                let now = since_start();
                let last = self.said_at.load(Ordering::Relaxed);
                if (last == 0 || now >= last + 60)
                    && self
                        .said_at
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!("{}", send_failure(&e, &transmit.destination));
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("local", &self.io.get_ref().local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // A GSO batch larger than one UDP send may carry (10 × 8 952 bytes
        // with jumbo MTUs) would fail whole with EMSGSIZE: it goes out in
        // sends that fit, each a whole number of segments.
        let Some(seg) = transmit
            .segment_size
            .filter(|_| transmit.contents.len() > MAX_UDP_SEND)
        else {
            return self.send_one(transmit);
        };
        let per_send = (MAX_UDP_SEND / seg).max(1) * seg;
        for (i, part) in transmit.contents.chunks(per_send).enumerate() {
            let piece = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: part,
                segment_size: (part.len() > seg).then_some(seg),
                src_ip: transmit.src_ip,
            };
            match self.send_one(&piece) {
                Ok(()) => {}
                // Nothing sent yet: quinn retries the whole batch later.
                Err(e) if i == 0 => return Err(e),
                // Part of it went: the rest is lost to QUIC, which resends
                // it; the poller waits for room before the next batch.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            match guard.try_io(|io| self.state.recv(io.get_ref().into(), bufs, meta)) {
                Ok(Ok(n)) => {
                    // `recvmmsg` on a non-blocking socket stops at the first
                    // datagram that is not there: a short batch emptied the
                    // queue. Readiness is only cleared if no new edge came
                    // in meanwhile (tokio compares the event's tick).
                    if SHORT_BATCH_MEANS_EMPTY && n < meta.len().min(bufs.len()) {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // `WouldBlock`: readiness cleared by `try_io`; wait again.
                Err(_) => continue,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Registers an owned socket with the runtime for `interest` only.
///
/// tokio 1.54 deprecated its safe constructors in favour of an `unsafe` one
/// (an `AsyncFd` over a type whose descriptor could change or close under
/// it would be unsound). A `std::net::UdpSocket` owns its descriptor for its
/// whole life and always returns the same one, so the safe constructor is
/// sound here, and this crate forbids `unsafe`.
#[allow(deprecated)]
fn register(sock: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    AsyncFd::with_interest(sock, interest)
}

/// quinn-udp receives with `recvmmsg` on Linux (one datagram per call
/// elsewhere, where a short batch says nothing).
const SHORT_BATCH_MEANS_EMPTY: bool = cfg!(target_os = "linux");

/// Waits for room in the send buffer. quinn polls it before every send: it
/// answers at once unless a send found the buffer full; then a duplicate of
/// the socket's descriptor is registered for writing while quinn waits, and
/// dropped (deregistered) once there is room.
struct WritablePoller {
    socket: Arc<Socket>,
    waiting: Option<AsyncFd<UdpSocket>>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller")
            .field("waiting", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // quinn asks before every send: room is assumed until a send found
        // none.
        if this.waiting.is_none() && !this.socket.blocked.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        if this.waiting.is_none() {
            let dup = this.socket.io.get_ref().try_clone()?;
            this.waiting = Some(register(dup, Interest::WRITABLE)?);
        }
        let Some(fd) = this.waiting.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        let ready = ready!(fd.poll_write_ready(cx)).map(|_guard| ());
        // Room again (or an error to report): stop listening for write space.
        this.waiting = None;
        this.socket.blocked.store(false, Ordering::Relaxed);
        Poll::Ready(ready)
    }
}

#[cfg(test)]
// `#[tokio::test]` expands to the runtime's `block_on`, outside any async code.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use quinn::Runtime as _;
    use std::time::Duration;

    async fn recv(s: &Arc<dyn AsyncUdpSocket>, batch: usize) -> usize {
        let mut storage = vec![[0u8; 1500]; batch];
        let mut meta = vec![RecvMeta::default(); batch];
        let mut bufs: Vec<IoSliceMut<'_>> = storage
            .iter_mut()
            .map(|b| IoSliceMut::new(&mut b[..]))
            .collect();
        let got = std::future::poll_fn(|cx| s.poll_recv(cx, &mut bufs, &mut meta));
        tokio::time::timeout(Duration::from_secs(10), got)
            .await
            .expect("a datagram that arrived wakes the receiver")
            .expect("receive")
    }

    /// A short batch marks the socket not ready; the next datagram must
    /// still wake the receiver (a fresh edge), or quinn would stall.
    #[tokio::test]
    async fn a_datagram_after_a_short_batch_still_wakes_the_receiver() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let s = Runtime.wrap_udp_socket(rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            tx.send_to(b"one", to).unwrap();
        }
        // A full batch (2 of 3) must leave the socket ready: the third
        // datagram raises no new edge.
        let mut seen = 0;
        while seen < 3 {
            seen += recv(&s, 2).await;
        }
        assert_eq!(seen, 3);
        for round in 0..20 {
            tx.send_to(b"again", to).unwrap();
            assert_eq!(recv(&s, 8).await, 1, "round {round}");
        }
    }

    /// The poller for write space answers at once for a socket with room,
    /// and can be asked again (its registration is made and dropped).
    #[tokio::test]
    async fn the_writable_poller_answers_for_a_socket_with_room() {
        let s = Runtime
            .wrap_udp_socket(UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let mut poller = s.clone().create_io_poller();
        for _ in 0..3 {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .expect("writable");
        }
    }

    /// After a send found the buffer full, the poller waits on the kernel's
    /// word (a registration for write space) and then lets go of it.
    #[tokio::test]
    async fn after_a_full_send_buffer_the_poller_waits_for_write_space() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = Arc::new(Socket {
            state: UdpSocketState::new((&sock).into()).unwrap(),
            io: register(sock, Interest::READABLE).unwrap(),
            blocked: AtomicBool::new(true),
            said_at: AtomicU64::new(0),
        });
        let mut poller = Box::pin(WritablePoller {
            socket: socket.clone(),
            waiting: None,
        });
        let ready = std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx));
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("an empty send buffer is reported writable")
            .expect("writable");
        assert!(poller.waiting.is_none(), "the registration is dropped");
        assert!(!socket.blocked.load(Ordering::Relaxed));
    }

    /// Issue 22: a GSO batch over 65 507 bytes (10 × 8 952 with jumbo
    /// MTUs) used to fail whole with EMSGSIZE and count as sent; it now
    /// arrives, every segment, in sends that fit.
    #[tokio::test]
    async fn a_batch_larger_than_one_send_is_split() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let to = rx.local_addr().unwrap();
        let s = Runtime
            .wrap_udp_socket(UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let segments = s.max_transmit_segments().min(10);
        if segments < 8 {
            eprintln!("SKIPPED: no UDP GSO here ({segments} segments)");
            return;
        }
        let seg = 8952;
        let contents: Vec<u8> = (0..segments * seg).map(|i| (i / seg) as u8).collect();
        assert!(contents.len() > MAX_UDP_SEND);
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: &contents,
            segment_size: Some(seg),
            src_ip: None,
        };
        s.try_send(&t).unwrap();
        let mut buf = vec![0u8; 65536];
        for i in 0..segments {
            let n = rx.recv(&mut buf).expect("every segment arrives");
            assert_eq!(n, seg);
            assert!(
                buf[..n].iter().all(|b| *b == i as u8),
                "segment {i} in order"
            );
        }
    }

    /// What a person reads when the network is gone: the cause and what to
    /// check, never the raw `Os { code: 101, .. }` of quinn-udp's log line.
    #[test]
    fn send_failures_read_as_sentences() {
        let to: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let line = send_failure(&io::Error::from_raw_os_error(libc::ENETUNREACH), &to);
        assert!(line.contains("network is unreachable"), "{line}");
        assert!(!line.contains("Os {") && !line.contains("code"), "{line}");
        let other = send_failure(&io::Error::from_raw_os_error(libc::ENOBUFS), &to);
        assert!(
            other.starts_with("sending to 192.0.2.1:4433 failed: "),
            "{other}"
        );
    }
}
