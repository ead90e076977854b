//! The public HTTP edge: one task per visitor connection, two halves.
//!
//! The *request side* reads request heads (one deadline per head), routes
//! each by its own Host, and forwards a canonical head plus the body (by its
//! framing) on a QUIC stream to the tunnel's client: one stream per visitor
//! connection and tunnel, reused while consecutive requests go to the same
//! tunnel. The *response side* relays responses back in request order,
//! tracking their framing so pairing cannot slip, and writes the server's own
//! pages (404, 502, ...) in their turn.
//!
//! The halves talk through a bounded queue of pending exchanges (the
//! pipelining depth), and both run inside the one connection task.
//!
//! A rejected request never opens a stream: head errors, declared lengths
//! over the limit and bad chunked bytes that arrived with the head are
//! answered before anything goes upstream. A body that turns bad later is
//! aborted: the stream is reset (the local service sees an incomplete
//! request and a reset, never a complete request made of the bad bytes) and
//! the visitor gets the error page in its turn.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use tunnel_lib::http1::scan::Scan;
use tunnel_lib::http1::{
    BodyKind, ChunkStep, ChunkedDecoder, Forwarded, HeadError, HeadScanner, RequestHead,
    ResponseBody, ResponseHead,
};
use tunnel_lib::io::{read_lean, read_message, StreamError};
use tunnel_lib::limits::{FIRST_READ, IO_CHUNK, OPEN_STREAM_TIMEOUT};
use tunnel_lib::proto::{reset, Preface, Reply, ReplyCode, StreamKind};

use crate::registry::{normalise_host, Rule, Session};
use crate::respond::{self, ErrorPage};
use crate::State;

/// Requests forwarded but not yet answered, per visitor connection.
const MAX_PIPELINE: usize = 16;

/// Body bytes the server reads and drops (for a request it answers itself)
/// before it closes the connection instead.
const MAX_DISCARD: u64 = 1024 * 1024;

enum Pending {
    /// A page the server answers with itself.
    Local { page: Bytes, close: bool },
    /// A request forwarded upstream; its response comes from `recv` (a new
    /// stream when `Some`, else the current one).
    Upstream {
        recv: Option<RecvStream>,
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
    },
    /// The request side is done; the send half of the current stream is
    /// retired by the response side after the last response.
    End { send: Option<SendStream> },
}

pub(crate) async fn serve(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    soft: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // A connected visitor that has sent nothing yet costs only this small
    // future: the halves, queue and buffers are allocated once it speaks.
    let idle = state.config.timeouts.keep_alive_idle;
    // `peek`, not `readable()`: readiness may be reported before any byte
    // arrives (it is, right after accept).
    let mut probe = [0u8; 1];
    let spoke = tokio::select! {
        r = timeout(idle, tcp.peek(&mut probe)) => matches!(r, Ok(Ok(n)) if n > 0),
        _ = soft.cancelled() => false,
    };
    if spoke {
        Box::pin(serve_active(state, tcp, peer, soft)).await;
    }
}

async fn serve_active(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    soft: CancellationToken,
) {
    let (rd, wr) = tcp.into_split();
    let (tx, rx) = mpsc::channel(MAX_PIPELINE);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let requests = RequestSide {
        state: state.clone(),
        rd,
        buf: BytesMut::new(),
        peer,
        tx: Queue(tx),
        up: None,
        in_flight: in_flight.clone(),
    }
    .run(soft);
    let responses = ResponseSide::new(state, wr, rx, in_flight).run();
    tokio::pin!(requests, responses);
    tokio::select! {
        // The response side decides when the connection ends (close after a
        // response, an upgrade relay finished, a write failed).
        _ = &mut responses => {}
        _ = &mut requests => responses.await,
    }
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

/// What the request side keeps of a routed head.
#[derive(Clone, Copy)]
struct Facts {
    body: BodyKind,
    keep_alive: bool,
    is_head: bool,
    upgrade_websocket: bool,
}

enum Action {
    /// The server answers with its own page.
    Answer(ErrorPage),
    /// The rendered head goes to the tunnel's client.
    Forward(Bytes, Arc<Rule>, Arc<Session>),
}

struct Upstream {
    rule: Arc<Rule>,
    send: SendStream,
}

struct RequestSide {
    state: Arc<State>,
    rd: OwnedReadHalf,
    /// Bytes read from the visitor and not yet consumed.
    buf: BytesMut,
    peer: SocketAddr,
    tx: Queue,
    up: Option<Upstream>,
    /// Exchanges forwarded upstream and not yet answered (shared with the
    /// response side).
    in_flight: Arc<AtomicUsize>,
}

// Returned once per request and moved straight into use: boxing the head
// would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(RequestHead),
    /// Idle timeout or shutdown between requests: close quietly.
    Idle,
    /// The visitor closed its connection (or it failed).
    Gone,
    Reject(ErrorPage),
}

/// The request side stops: the connection is done once the response side
/// has answered what is queued.
struct Stop;

impl RequestSide {
    async fn run(mut self, soft: CancellationToken) {
        loop {
            let head = match self.read_head(&soft).await {
                HeadRead::Head(h) => h,
                HeadRead::Idle => break,
                HeadRead::Gone => {
                    if self.in_flight.load(Ordering::Relaxed) > 0 {
                        // The visitor left with responses pending: cancel the
                        // local requests instead of waiting for them.
                        if let Some(mut up) = self.up.take() {
                            let _ = up.send.reset(VarInt::from_u32(reset::CANCELLED));
                        }
                    }
                    break;
                }
                HeadRead::Reject(page) => {
                    let _ = self
                        .tx
                        .push(Pending::Local {
                            page: page.render(true, false),
                            close: true,
                        })
                        .await;
                    break;
                }
            };
            // The head is consumed here, before any await: the connection's
            // future then holds a few facts and the rendered bytes, not the
            // parsed head (568 bytes, which an async fn would keep twice).
            let (facts, action) = self.route(head);
            let keep_alive = facts.keep_alive;
            let result = match action {
                Action::Answer(page) => self.answer_locally(facts, page).await,
                Action::Forward(fwd, rule, session) => {
                    self.forward(facts, fwd, rule, &session.conn).await
                }
            };
            if result.is_err() || !keep_alive {
                break;
            }
        }
        let send = self.up.take().map(|u| u.send);
        let _ = self.tx.push(Pending::End { send }).await;
    }

    /// Routes a head by its Host: the server's own page, or the forwarded
    /// head rendered for the tunnel.
    fn route(&self, head: RequestHead) -> (Facts, Action) {
        let facts = Facts {
            body: head.body,
            keep_alive: head.keep_alive,
            is_head: head.is_head(),
            upgrade_websocket: head.upgrade_websocket,
        };
        let action = match self.state.registry.route(head.host()) {
            None => Action::Answer(respond::not_found(&host_text(&head))),
            Some((rule, None)) => Action::Answer(respond::client_gone(&rule.host)),
            Some((rule, Some(session))) => {
                let mut fwd = BytesMut::new();
                head.write_forwarded(
                    &mut fwd,
                    &Forwarded {
                        client_ip: self.peer.ip(),
                        proto: "http",
                    },
                );
                Action::Forward(fwd.freeze(), rule, session)
            }
        };
        (facts, action)
    }

    /// Reads the next head: an idle timeout until its first byte, then one
    /// deadline for the whole head.
    async fn read_head(&mut self, soft: &CancellationToken) -> HeadRead {
        let limits = &self.state.config.http_limits;
        let t = &self.state.config.timeouts;
        let mut scanner = HeadScanner::new();
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + t.head);
                match scanner.scan(&self.buf, limits) {
                    Ok(Scan::Complete(n)) => {
                        let raw = self.buf.split_to(n).freeze();
                        return match RequestHead::parse(raw, limits) {
                            Ok(h) => HeadRead::Head(h),
                            Err(e) => HeadRead::Reject(reject_page(&e)),
                        };
                    }
                    Ok(Scan::SkipEmptyLines(n)) => {
                        let _ = self.buf.split_to(n);
                        scanner = HeadScanner::new();
                        continue;
                    }
                    Ok(Scan::Partial) => {}
                    Err(e) => return HeadRead::Reject(reject_page(&e)),
                }
            }
            let read = read_lean(&self.rd, &mut self.buf, FIRST_READ);
            let n = match deadline {
                Some(d) => match timeout_at(d, read).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => return HeadRead::Gone,
                    Err(_) => {
                        debug!(peer = %self.peer, "408: request head not complete within {:?}", t.head);
                        return HeadRead::Reject(respond::bad_request(
                            408,
                            "the request head did not arrive in time",
                        ));
                    }
                },
                None => tokio::select! {
                                        r = timeout(t.keep_alive_idle, read) => match r {
                        Ok(Ok(n)) => n,
                        Ok(Err(_)) => return HeadRead::Gone,
                        Err(_) => return HeadRead::Idle,
                    },
                    _ = soft.cancelled() => return HeadRead::Idle,
                },
            };
            if n == 0 {
                return HeadRead::Gone;
            }
        }
    }

    /// Answers a request with the server's own page, skipping its body.
    async fn answer_locally(&mut self, head: Facts, page: ErrorPage) -> Result<(), Stop> {
        let discardable = match head.body {
            BodyKind::None => true,
            BodyKind::Length(n) => n <= MAX_DISCARD,
            BodyKind::Chunked => false,
        };
        let close = !head.keep_alive || !discardable;
        let rendered = page.render(close, head.is_head);
        self.tx
            .push(Pending::Local {
                page: rendered,
                close,
            })
            .await
            .map_err(|_| Stop)?;
        if close {
            return Err(Stop);
        }
        if let BodyKind::Length(mut n) = head.body {
            while n > 0 {
                if self.buf.is_empty() {
                    self.read_more().await.map_err(|_| Stop)?;
                }
                let take = (self.buf.len() as u64).min(n) as usize;
                let _ = self.buf.split_to(take);
                n -= take as u64;
            }
        }
        Ok(())
    }

    /// Rejects a request before anything of it went upstream.
    async fn reject(&mut self, page: ErrorPage, head: Facts) -> Result<(), Stop> {
        let _ = self
            .tx
            .push(Pending::Local {
                page: page.render(true, head.is_head),
                close: true,
            })
            .await;
        Err(Stop)
    }

    /// Reads more visitor bytes into `buf`, within the body idle timeout.
    /// `Err(None)`: the visitor went away or stalled (nothing to answer).
    async fn read_more(&mut self) -> Result<(), Option<ErrorPage>> {
        match timeout(
            self.state.config.timeouts.body_idle,
            read_lean(&self.rd, &mut self.buf, IO_CHUNK),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => Ok(()),
            _ => Err(None),
        }
    }

    /// What can be judged before anything is forwarded: the declared length
    /// against the body limit, and the chunked bytes that arrived with the
    /// head.
    fn precheck_body(&self, head: Facts) -> Result<(), ErrorPage> {
        let cfg = &self.state.config;
        match head.body {
            BodyKind::Length(n) if cfg.max_body.is_some_and(|m| n > m) => {
                Err(too_large(cfg.max_body))
            }
            BodyKind::Chunked => {
                let limits = &cfg.http_limits;
                let mut dec = ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer);
                let mut data = 0u64;
                let mut rest: &[u8] = &self.buf;
                while !rest.is_empty() && !dec.is_done() {
                    let n = match dec.step(rest) {
                        Ok(ChunkStep::Data(n)) => {
                            data += n as u64;
                            n
                        }
                        Ok(ChunkStep::Framing(n)) | Ok(ChunkStep::Done(n)) => n,
                        Err(e) => return Err(bad_body(e)),
                    };
                    if n == 0 {
                        break;
                    }
                    rest = &rest[n..];
                }
                match cfg.max_body {
                    Some(m) if data > m => Err(too_large(cfg.max_body)),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Forwards one request: `fwd` is its rendered head.
    async fn forward(
        &mut self,
        head: Facts,
        fwd: Bytes,
        rule: Arc<Rule>,
        conn: &quinn::Connection,
    ) -> Result<(), Stop> {
        if let Err(page) = self.precheck_body(head) {
            return self.reject(page, head).await;
        }
        let mut out = fwd;
        let reuse = self
            .up
            .as_ref()
            .is_some_and(|u| Arc::ptr_eq(&u.rule, &rule));
        let mut new_recv = None;
        let mut old_send = None;
        if !reuse {
            old_send = self.up.take().map(|u| u.send);
            match timeout(OPEN_STREAM_TIMEOUT, conn.open_bi()).await {
                Ok(Ok((send, recv))) => {
                    // A new stream starts with its preface, in the same chunk.
                    let mut first = BytesMut::with_capacity(64 + out.len());
                    Preface {
                        kind: StreamKind::Http1,
                        tunnel_id: rule.tunnel_id,
                        visitor: self.peer,
                    }
                    .encode(&mut first);
                    first.extend_from_slice(&out);
                    out = first.freeze();
                    self.up = Some(Upstream {
                        rule: rule.clone(),
                        send,
                    });
                    new_recv = Some(recv);
                }
                Ok(Err(e)) => {
                    debug!(host = %rule.host, "cannot open a stream to the client: {e}");
                    return self
                        .answer_locally(head, respond::client_gone(&rule.host))
                        .await;
                }
                Err(_) => {
                    info!(host = %rule.host, "503: no free stream towards the client within {OPEN_STREAM_TIMEOUT:?}");
                    return self
                        .answer_locally(head, respond::client_busy(&rule.host))
                        .await;
                }
            }
        }
        let (upgraded_tx, upgraded_rx) = match head.upgrade_websocket {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let (abort_tx, abort_rx) = oneshot::channel();
        let pending = Pending::Upstream {
            recv: new_recv,
            old_send,
            rule,
            head_request: head.is_head,
            close: !head.keep_alive,
            upgraded: upgraded_tx,
            abort: abort_rx,
        };
        // Queued before the body is sent: the response side must be reading
        // for `Expect: 100-continue` to work.
        self.tx.push(pending).await.map_err(|_| Stop)?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = match self.up.as_mut() {
            Some(up) => match up.send.write_chunk(out).await {
                Ok(()) => match head.body {
                    BodyKind::None => Ok(()),
                    BodyKind::Length(n) => self.forward_length(n).await,
                    BodyKind::Chunked => self.forward_chunked().await,
                },
                Err(_) => Err(None),
            },
            None => Err(None),
        };
        if let Err(page) = sent {
            // Tell the response side first, then cut the stream.
            let _ = abort_tx.send(page);
            if let Some(mut up) = self.up.take() {
                let _ = up.send.reset(VarInt::from_u32(reset::CANCELLED));
            }
            return Err(Stop);
        }
        drop(abort_tx);
        if let Some(rx) = upgraded_rx {
            // No further request is read until the upgrade is decided; a
            // refused upgrade leaves the connection in HTTP mode.
            if rx.await.unwrap_or(false) {
                self.relay_upgraded().await;
                return Err(Stop);
            }
        }
        Ok(())
    }

    async fn write_upstream(&mut self, chunk: Bytes) -> Result<(), Option<ErrorPage>> {
        let up = self.up.as_mut().ok_or(None)?;
        up.send.write_chunk(chunk).await.map_err(|_| None)
    }

    async fn forward_length(&mut self, mut n: u64) -> Result<(), Option<ErrorPage>> {
        while n > 0 {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            let chunk = self.buf.split_to(take).freeze();
            n -= take as u64;
            self.write_upstream(chunk).await?;
        }
        Ok(())
    }

    /// Decodes the visitor's chunked body and re-encodes it canonically
    /// (sizes in hex, no extensions, trailers dropped).
    async fn forward_chunked(&mut self) -> Result<(), Option<ErrorPage>> {
        let limits = &self.state.config.http_limits;
        let max_body = self.state.config.max_body;
        let mut dec = ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer);
        let mut total = 0u64;
        loop {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            match dec.step(&self.buf) {
                Ok(ChunkStep::Data(0)) | Ok(ChunkStep::Framing(0)) => self.read_more().await?,
                Ok(ChunkStep::Data(n)) => {
                    total += n as u64;
                    if max_body.is_some_and(|m| total > m) {
                        return Err(Some(too_large(max_body)));
                    }
                    let data = self.buf.split_to(n).freeze();
                    let mut size_line = BytesMut::with_capacity(20);
                    let _ = write!(size_line, "{n:x}\r\n");
                    let mut pieces = [size_line.freeze(), data, Bytes::from_static(b"\r\n")];
                    let up = self.up.as_mut().ok_or(None)?;
                    up.send
                        .write_all_chunks(&mut pieces)
                        .await
                        .map_err(|_| None)?;
                }
                Ok(ChunkStep::Framing(n)) => {
                    let _ = self.buf.split_to(n);
                }
                Ok(ChunkStep::Done(n)) => {
                    let _ = self.buf.split_to(n);
                    return self.write_upstream(Bytes::from_static(b"0\r\n\r\n")).await;
                }
                Err(e) => {
                    debug!(peer = %self.peer, "400: bad chunked body: {e}");
                    return Err(Some(bad_body(e)));
                }
            }
        }
    }

    /// After a 101: visitor bytes go upstream raw until either side closes.
    async fn relay_upgraded(&mut self) {
        let Some(up) = self.up.as_mut() else { return };
        if !self.buf.is_empty()
            && up
                .send
                .write_chunk(self.buf.split().freeze())
                .await
                .is_err()
        {
            return;
        }
        let _ = tunnel_lib::io::tcp_to_quic(&self.rd, &mut up.send).await;
        // Raw mode: the FIN above is the half-close; nothing to retire.
        self.up = None;
    }
}

fn host_text(head: &RequestHead) -> String {
    match normalise_host(head.host()) {
        Some(h) => h.into_owned(),
        None => String::from_utf8_lossy(head.host()).into_owned(),
    }
}

fn reject_page(e: &HeadError) -> ErrorPage {
    respond::bad_request(e.status(), &e.to_string())
}

fn bad_body(e: tunnel_lib::http1::ChunkError) -> ErrorPage {
    respond::bad_request(400, &format!("malformed request body: {e}"))
}

/// A response head with `Connection: close` added before its final CRLF.
fn with_connection_close(head: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(head.len() + 19);
    out.put_slice(&head[..head.len() - 2]);
    out.put_slice(b"Connection: close\r\n\r\n");
    out.freeze()
}

fn too_large(max: Option<u64>) -> ErrorPage {
    respond::bad_request(
        413,
        &format!(
            "the request body is larger than this server accepts ({} bytes)",
            max.unwrap_or(0)
        ),
    )
}

struct ResponseSide {
    state: Arc<State>,
    wr: OwnedWriteHalf,
    rx: mpsc::Receiver<Box<Pending>>,
    recv: Option<RecvStream>,
    /// Chunks read from `recv` and not yet relayed (a response's end may
    /// fall inside a chunk: the rest waits here for the next response).
    pending: VecDeque<Bytes>,
    /// What goes to the visitor with the next `writev`.
    out: Vec<Bytes>,
    /// The current stream could not be served: every request on it gets this.
    failed: Option<ErrorPage>,
    /// Whether any byte of the current response reached the visitor.
    sent_any: bool,
    /// Whether the current stream's local connection is at a clean HTTP
    /// boundary (last response complete and keep-alive): it can be reused.
    reusable: bool,
    /// See `RequestSide::in_flight`.
    in_flight: Arc<AtomicUsize>,
}

impl ResponseSide {
    fn new(
        state: Arc<State>,
        wr: OwnedWriteHalf,
        rx: mpsc::Receiver<Box<Pending>>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        ResponseSide {
            state,
            wr,
            rx,
            recv: None,
            pending: VecDeque::new(),
            out: Vec::new(),
            failed: None,
            sent_any: false,
            reusable: false,
            in_flight,
        }
    }

    /// Ends the current stream: with `REUSE` on both directions when its
    /// local connection is at a clean boundary, else a plain finish/stop.
    fn retire(&mut self, send: Option<SendStream>) {
        let reuse = self.reusable && self.pending.is_empty() && self.failed.is_none();
        let code = VarInt::from_u32(if reuse { reset::REUSE } else { 0 });
        if let Some(mut recv) = self.recv.take() {
            let _ = recv.stop(code);
        }
        if let Some(mut send) = send {
            if reuse {
                let _ = send.reset(code);
            } else {
                let _ = send.finish();
            }
        }
        self.reusable = false;
    }
}

enum After {
    KeepAlive,
    Close,
}

/// Why relaying one response failed.
enum RelayError {
    /// Before anything reached the visitor: a 502 page can still be sent.
    NothingSent(String),
    /// Mid-response: only closing is left.
    Broken,
}

impl ResponseSide {
    async fn run(mut self) {
        while let Some(item) = self.rx.recv().await {
            let after = match *item {
                Pending::Local { page, close } => match self.wr.write_all(&page).await {
                    Err(_) => return,
                    Ok(()) if close => After::Close,
                    Ok(()) => After::KeepAlive,
                },
                Pending::End { send } => {
                    self.retire(send);
                    After::KeepAlive
                }
                Pending::Upstream {
                    recv,
                    old_send,
                    rule,
                    head_request,
                    close,
                    upgraded,
                    abort,
                } => {
                    self.sent_any = false;
                    if recv.is_some() {
                        self.retire(old_send);
                    }
                    let abort = async move {
                        match abort.await {
                            Ok(page) => page,
                            // The request went out whole: nothing to abort.
                            Err(_) => std::future::pending().await,
                        }
                    };
                    let outcome = tokio::select! {
                        biased;
                        page = abort => Err(page),
                        r = self.exchange(recv, &rule.host, head_request, close, upgraded) => Ok(r),
                    };
                    self.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match outcome {
                        Err(page) => {
                            if let (Some(page), false) = (page, self.sent_any) {
                                let _ = self.wr.write_all(&page.render(true, head_request)).await;
                            }
                            After::Close
                        }
                        Ok(Ok(_)) if close => {
                            // The visitor asked to close: its request side
                            // ends right away; retire the stream with it.
                            if let Some(Pending::End { send }) = self.rx.recv().await.map(|b| *b) {
                                self.retire(send);
                            }
                            After::Close
                        }
                        Ok(Ok(after)) => after,
                        Ok(Err(RelayError::NothingSent(why))) => {
                            info!(host = %rule.host, "502: {why}");
                            let page = respond::local_failed(&rule.host, &why);
                            let _ = self.wr.write_all(&page.render(true, head_request)).await;
                            After::Close
                        }
                        Ok(Err(RelayError::Broken)) => After::Close,
                    }
                }
            };
            if let After::Close = after {
                break;
            }
        }
        let _ = self.wr.shutdown().await;
    }

    /// One upstream exchange: the stream's reply (when it is new), then the
    /// response.
    async fn exchange(
        &mut self,
        recv: Option<RecvStream>,
        host: &str,
        head_request: bool,
        close: bool,
        upgraded: Option<oneshot::Sender<bool>>,
    ) -> Result<After, RelayError> {
        self.reusable = false;
        if let Some(r) = recv {
            self.recv = Some(r);
            self.pending.clear();
            self.failed = self.read_reply(host).await;
        }
        if let Some(page) = &self.failed {
            let _ = self.wr.write_all(&page.render(true, head_request)).await;
            return Ok(After::Close);
        }
        self.out.clear();
        self.relay(head_request, close, upgraded).await
    }

    /// Reads the client's reply on a new stream: `None` if the local service
    /// was reached, else the page every request on this stream gets.
    async fn read_reply(&mut self, host: &str) -> Option<ErrorPage> {
        let recv = self.recv.as_mut()?;
        let mut buf = BytesMut::new();
        let reply = timeout(
            Duration::from_secs(30),
            read_message(recv, &mut buf, Reply::decode),
        )
        .await;
        match reply {
            Ok(Ok(Some(Reply::Connected))) => {
                if !buf.is_empty() {
                    self.pending.push_back(buf.freeze());
                }
                None
            }
            Ok(Ok(Some(Reply::Failed { code, message }))) => {
                info!(%host, "502: {message}");
                Some(match code {
                    ReplyCode::Refused => respond::local_refused(host, &message),
                    _ => respond::local_failed(host, &message),
                })
            }
            Ok(Ok(None)) | Ok(Err(StreamError::Truncated)) => {
                info!(%host, "502: the tunnel client closed the stream without answering");
                Some(respond::client_gone(host))
            }
            Ok(Err(e)) => {
                info!(%host, "502: tunnel stream failed: {e}");
                Some(respond::client_gone(host))
            }
            Err(_) => {
                info!(%host, "504: the tunnel client did not answer in time");
                Some(ErrorPage::new(
                    504,
                    "tunnel-timeout",
                    "The tunnel did not answer",
                    format!(
                        "The tunnel client for <code>{}</code> did not answer in time.",
                        respond::escape(host)
                    ),
                ))
            }
        }
    }

    /// Makes sure `pending` holds bytes. `Ok(false)` at the stream's end.
    async fn fill(&mut self) -> Result<bool, String> {
        if !self.pending.is_empty() {
            return Ok(true);
        }
        let recv = self.recv.as_mut().ok_or("no stream")?;
        let mut got = Vec::new();
        std::mem::swap(&mut got, &mut self.out);
        let before = got.len();
        let r = tunnel_lib::io::read_batch(recv, &mut got).await;
        self.pending.extend(got.drain(before..));
        std::mem::swap(&mut got, &mut self.out);
        r.map_err(|e| format!("tunnel stream failed: {e}"))
    }

    /// Sends what is batched in `out` with one `writev`.
    async fn flush(&mut self) -> Result<(), RelayError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.sent_any = true;
        tunnel_lib::io::write_all_bufs(&mut self.wr, &mut self.out)
            .await
            .map_err(|_| RelayError::Broken)
    }

    fn fail(&self, why: String) -> RelayError {
        if self.sent_any {
            RelayError::Broken
        } else {
            RelayError::NothingSent(why)
        }
    }

    /// Takes the next response head off `pending` (parsed in place when it
    /// arrived in one chunk, the common case).
    async fn next_head(&mut self, head_request: bool) -> Result<(ResponseHead, Bytes), RelayError> {
        let max_head = self.state.config.http_limits.max_head;
        let mut acc: Option<BytesMut> = None;
        loop {
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(self
                        .fail("the local service closed the connection without a response".into()))
                }
                Err(e) => return Err(self.fail(e)),
            }
            let Some(chunk) = self.pending.pop_front() else {
                continue;
            };
            let mut data = match acc.take() {
                None => chunk,
                Some(mut a) => {
                    a.extend_from_slice(&chunk);
                    a.freeze()
                }
            };
            match ResponseHead::parse(&data, head_request, max_head) {
                Ok(Some(h)) => {
                    let rest = data.split_off(h.head_len);
                    if !rest.is_empty() {
                        self.pending.push_front(rest);
                    }
                    return Ok((h, data));
                }
                Ok(None) => acc = Some(BytesMut::from(&data[..])),
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }

    /// Relays one response (and any interim 1xx before it). The head goes
    /// out in the same `writev` as the body bytes that came with it.
    async fn relay(
        &mut self,
        head_request: bool,
        close: bool,
        upgraded: Option<oneshot::Sender<bool>>,
    ) -> Result<After, RelayError> {
        loop {
            let (head, head_bytes) = self.next_head(head_request).await?;
            if close && head.keep_alive && !head.is_interim() {
                // The visitor asked to close and we will; the local service
                // keeps its connection (reusable), so say it ourselves
                // (RFC 9112 §9.6).
                self.out.push(with_connection_close(&head_bytes));
            } else {
                self.out.push(head_bytes);
            }
            if head.is_interim() {
                self.flush().await?;
                continue;
            }
            let result = match head.body {
                ResponseBody::None => self.flush().await,
                ResponseBody::Length(n) => self.relay_length(n).await,
                ResponseBody::Chunked => self.relay_chunked().await,
                ResponseBody::UntilClose => {
                    self.relay_to_end().await?;
                    return Ok(After::Close);
                }
                ResponseBody::Upgrade => {
                    if let Some(tx) = upgraded {
                        self.flush().await?;
                        let _ = tx.send(true);
                        self.relay_to_end().await?;
                    }
                    return Ok(After::Close);
                }
            };
            if let Some(tx) = upgraded {
                let _ = tx.send(false);
            }
            result?;
            self.reusable = head.keep_alive;
            return Ok(if head.keep_alive {
                After::KeepAlive
            } else {
                After::Close
            });
        }
    }

    async fn relay_length(&mut self, mut n: u64) -> Result<(), RelayError> {
        loop {
            while n > 0 {
                let Some(mut chunk) = self.pending.pop_front() else {
                    break;
                };
                if chunk.len() as u64 > n {
                    self.pending.push_front(chunk.split_off(n as usize));
                }
                n -= chunk.len() as u64;
                self.out.push(chunk);
            }
            self.flush().await?;
            if n == 0 {
                return Ok(());
            }
            if !matches!(self.fill().await, Ok(true)) {
                return Err(RelayError::Broken);
            }
        }
    }

    /// Relays chunked bytes as they are, using the decoder only to find
    /// where the body ends.
    async fn relay_chunked(&mut self) -> Result<(), RelayError> {
        let limits = &self.state.config.http_limits;
        let mut dec = ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer);
        loop {
            while let Some(mut chunk) = self.pending.pop_front() {
                let mut used = 0;
                while used < chunk.len() && !dec.is_done() {
                    match dec.step(&chunk[used..]) {
                        Ok(ChunkStep::Data(k))
                        | Ok(ChunkStep::Framing(k))
                        | Ok(ChunkStep::Done(k)) => used += k,
                        Err(e) => {
                            debug!("local service sent bad chunked framing: {e}");
                            return Err(RelayError::Broken);
                        }
                    }
                }
                if dec.is_done() {
                    if used < chunk.len() {
                        self.pending.push_front(chunk.split_off(used));
                    }
                    self.out.push(chunk);
                    return self.flush().await;
                }
                self.out.push(chunk);
            }
            // Everything received so far is relayed: an event reaches the
            // visitor as soon as the app wrote it.
            self.flush().await?;
            if !matches!(self.fill().await, Ok(true)) {
                return Err(RelayError::Broken);
            }
        }
    }

    async fn relay_to_end(&mut self) -> Result<(), RelayError> {
        loop {
            self.out.extend(self.pending.drain(..));
            self.flush().await?;
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(_) => return Err(RelayError::Broken),
            }
        }
    }
}
