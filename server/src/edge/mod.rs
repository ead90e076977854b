//! The public HTTP edge: one task per visitor connection, two halves, over
//! any visitor stream (plain TCP, or a TLS session from [`tls`]).
//!
//! The *request side* ([`request`]) reads request heads (one deadline per
//! head), routes each by its own Host, and forwards a canonical head plus
//! the body (by its framing) on a QUIC stream to the tunnel's client: one
//! stream per visitor connection and tunnel, reused while consecutive
//! requests go to the same tunnel. The *response side* ([`response`])
//! relays responses back in request order, tracking their framing so
//! pairing cannot slip, and writes the server's own pages (404, 502, ...)
//! in their turn. Opening a stream and reading the client's reply is
//! [`crate::upstream`].
//!
//! The halves talk through a bounded queue of pending exchanges (the
//! pipelining depth), and both run inside the one connection task, each
//! polled only when woken ([`halves`]).
//!
//! The scheme belongs to the listener ([`Scheme`]): it goes into
//! `X-Forwarded-Proto`, decides the plain listener's redirect to https and
//! HSTS. The halves are generic over the stream (`LeanRead` + `AsyncWrite`):
//! plain TCP keeps its lean reads (an idle connection holds no buffer), TLS
//! reads through its session.
//!
//! A rejected request never opens a stream: head errors, declared lengths
//! over the limit and bad chunked bytes that arrived with the head are
//! answered before anything goes upstream. A body that turns bad later is
//! aborted: the stream is reset (the local service sees an incomplete
//! request and a reset, never a complete request made of the bad bytes) and
//! the visitor gets the error page in its turn.

mod halves;
pub(crate) mod http2;
mod request;
mod response;
// #[tokio::test] expands to a block_on outside any runtime.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use tunnel_lib::io::LeanRead;
use tunnel_lib::limits::FIRST_REQUEST_GRACE;

use crate::registry::Rule;
use crate::respond::ErrorPage;
use crate::state::State;

use request::RequestSide;
use response::ResponseSide;

/// Requests forwarded but not yet answered, per visitor connection.
const MAX_PIPELINE: usize = 16;

/// Body bytes the server reads and drops (for a request it answers itself)
/// before it closes the connection instead.
const MAX_DISCARD: u64 = 1024 * 1024;

/// How visitors reached this listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

enum Pending {
    /// A page the server answers with itself.
    Local { page: Bytes, close: bool },
    /// A request forwarded upstream; its response comes from `recv` (a new
    /// stream when `Some`, else the current one).
    Upstream {
        recv: Option<RecvStream>,
        /// The forwarded head of a request that is safe to send again
        /// (idempotent, no body): if the reused local connection turns out
        /// closed before any byte of its response, it is retried once on a
        /// fresh stream.
        replay: Option<Bytes>,
        /// The visitor spoke HTTP/1.0: no chunked re-framing, and keep-alive
        /// must be said.
        http10: bool,
        /// With a new stream: the send half of the stream it replaces, for
        /// the response side to retire once that stream's last response is in.
        old_send: Option<SendStream>,
        rule: Arc<Rule>,
        head_request: bool,
        close: bool,
        /// For an upgrade request: told whether the upgrade happened.
        upgraded: Option<oneshot::Sender<bool>>,
        /// The request side gave up on this request's body: answer with this
        /// page (if nothing of the response was sent yet) and close; `None`:
        /// just close. Dropped unsent when the request went out whole.
        abort: oneshot::Receiver<Option<ErrorPage>>,
        /// When its head was read (for the duration and time to first byte).
        started: tokio::time::Instant,
        /// `METHOD target` for the access log (only with one).
        line: Option<Box<str>>,
    },
    /// The request side is done; the send half of the current stream is
    /// retired by the response side after the last response.
    End { send: Option<SendStream> },
}

/// A plain-TCP visitor connection.
pub(crate) async fn serve_tcp(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    soft: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // A connected visitor that has sent nothing yet costs only this small
    // future: the halves, queue and buffers are allocated once it speaks.
    let idle = state.config.timeouts.first_byte;
    // `peek`, not `readable()`: readiness may be reported before any byte
    // arrives (it is, right after accept).
    let mut probe = [0u8; 1];
    let spoke = tokio::select! {
        r = timeout(idle, tcp.peek(&mut probe)) => Some(matches!(r, Ok(Ok(n)) if n > 0)),
        _ = soft.cancelled() => None,
    };
    // Stopping before it spoke: it may have been accepted a moment ago.
    // (Sequential, so the two timeouts share the future's storage.)
    let spoke = match spoke {
        Some(s) => s,
        None => {
            matches!(timeout(FIRST_REQUEST_GRACE, tcp.peek(&mut probe)).await, Ok(Ok(n)) if n > 0)
        }
    };
    if !spoke {
        return;
    }
    // h2c with prior knowledge opens with `PRI * HTTP/2.0`: read until the
    // preface is whole or differs (HTTP/1 then goes on with those bytes).
    let mut buf = BytesMut::new();
    if probe[0] == http2::PREFACE[0] {
        let mut tcp = tcp;
        let deadline = tokio::time::Instant::now() + state.config.timeouts.head;
        while buf.len() < http2::PREFACE.len() && http2::PREFACE.starts_with(&buf) {
            match tokio::time::timeout_at(deadline, tcp.read_lean(&mut buf, 64)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        if buf.starts_with(http2::PREFACE) {
            let io = http2::Rewound::new(buf.freeze(), tcp);
            Box::pin(http2::serve(state, io, peer, Scheme::Http, None, soft)).await;
            return;
        }
        return serve_plain(state, tcp, buf, peer, soft).await;
    }
    serve_plain(state, tcp, buf, peer, soft).await;
}

/// A plain HTTP/1 visitor connection, `buf` holding what was read of it.
async fn serve_plain(
    state: Arc<State>,
    tcp: TcpStream,
    buf: BytesMut,
    peer: SocketAddr,
    soft: CancellationToken,
) {
    let (rd, wr) = tcp.into_split();
    Box::pin(serve_stream(
        state,
        rd,
        wr,
        buf,
        peer,
        Scheme::Http,
        None,
        soft,
    ))
    .await;
}

/// One visitor connection over any stream: `buf` holds bytes already read
/// from it; `sni` is the TLS server name the session was established for.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_stream<R, W>(
    state: Arc<State>,
    rd: R,
    wr: W,
    buf: BytesMut,
    peer: SocketAddr,
    scheme: Scheme,
    sni: Option<Box<str>>,
    soft: CancellationToken,
) where
    R: LeanRead,
    W: AsyncWrite + Unpin + Send,
{
    let (tx, rx) = mpsc::channel(MAX_PIPELINE);
    let link = Arc::new(Link::default());
    let requests = RequestSide {
        state: state.clone(),
        rd,
        buf,
        peer,
        scheme,
        sni,
        tx: Queue(tx),
        up: None,
        link: link.clone(),
    }
    .run(soft);
    let responses = ResponseSide::new(state, wr, rx, link, scheme, peer).run();
    // The response side decides when the connection ends (close after a
    // response, an upgrade relay finished, a write failed).
    halves::run(requests, responses).await;
}

/// How one forwarded exchange went, whatever the HTTP version.
pub(super) struct Exchanged {
    /// The visitor spoke HTTP/2.
    pub(super) h2: bool,
    pub(super) status: u16,
    pub(super) bytes_out: u64,
    pub(super) started: tokio::time::Instant,
    pub(super) first_byte: Option<tokio::time::Instant>,
}

/// Counts an exchange that just ended in the tunnel's and the server's
/// metrics, and logs it with an access log (`line`: `METHOD target`).
pub(super) fn record(
    state: &State,
    rule: &Rule,
    peer: SocketAddr,
    x: Exchanged,
    line: Option<Box<str>>,
) {
    let now = tokio::time::Instant::now();
    let duration = now - x.started;
    let ttfb = x.first_byte.map(|t| t - x.started);
    rule.metrics.request(x.status);
    rule.metrics.bytes_out.inc_by(x.bytes_out);
    state.metrics.exchanges_by_protocol[usize::from(x.h2)].inc();
    state.metrics.tunnels.observe(duration, ttfb);
    if let (Some(log), Some(request)) = (&state.access_log, line) {
        log.log(crate::access_log::Entry {
            at: std::time::SystemTime::now(),
            tunnel: rule.host.clone(),
            client: peer,
            request,
            status: x.status,
            bytes_out: x.bytes_out,
            duration,
        });
    }
}

/// What the two halves of a visitor connection share besides the queue.
#[derive(Default)]
struct Link {
    /// Exchanges forwarded upstream and not yet answered.
    in_flight: AtomicUsize,
    /// The current stream's local connection is done for (the app closed it
    /// while idle, sent bytes nobody asked for, or said it closes): the next
    /// request opens a new stream instead of reusing it. Set by the response
    /// side, taken by the request side.
    upstream_done: AtomicBool,
    /// Set while a request's bytes (or an upgraded relay) are going out on
    /// the request side's stream. If that side is dropped then (the response
    /// side ended first, or the hard shutdown), the stream is reset, never
    /// finished, so the local service sees a cut request, not a
    /// complete-looking one; and if the app answers and closes meanwhile,
    /// the visitor's connection closes too (its next request could not be
    /// found in the rest of the body).
    mid_body: AtomicBool,
}

/// The request side's end of the pending-exchange queue. Exchanges are boxed:
/// the queue's storage then costs a pointer per slot, not a whole exchange
/// (tokio allocates 32 slots per channel whatever its bound).
struct Queue(mpsc::Sender<Box<Pending>>);

impl Queue {
    async fn push(&self, p: Pending) -> Result<(), mpsc::error::SendError<Box<Pending>>> {
        self.0.send(Box::new(p)).await
    }
}
