//! The request side of a visitor connection: read heads, route them, and
//! forward canonical heads and re-framed bodies upstream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{SendStream, VarInt};
use tokio::sync::oneshot;
use tokio::time::{timeout, timeout_at, Duration, Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::debug;

use tunnel_lib::http1::{BodyKind, ChunkedDecoder, HeadError, RequestHead, RequestReader};
use tunnel_lib::io::LeanRead;
use tunnel_lib::limits::{FIRST_READ, IO_CHUNK};
use tunnel_lib::limits::{FIRST_REQUEST_GRACE, OWNER_HOLD};
use tunnel_lib::proto::{reset, StreamKind};

use super::{Pending, Queue, Scheme, MAX_DISCARD};

mod body;
mod route;
use crate::registry::{Rule, Session};
use crate::respond::{self, ErrorPage};
use crate::state::State;
use crate::upstream;
pub(super) use route::{route, Front};

/// What the request side keeps of a routed head.
#[derive(Clone, Copy)]
pub(super) struct Facts {
    pub(super) body: BodyKind,
    keep_alive: bool,
    pub(super) is_head: bool,
    upgrade_websocket: bool,
    /// Safe to send again (RFC 9110 §9.2.2) and bodiless.
    replayable: bool,
    http10: bool,
}

pub(super) enum Action {
    /// The server answers with its own page.
    Answer(ErrorPage),
    /// The rendered head goes to the tunnel's client (with `METHOD target`
    /// for the access log, when there is one).
    Forward(Bytes, Arc<Rule>, Arc<Session>, Option<Box<str>>),
    /// The host is reserved for a client that is reconnecting: route again
    /// once it is back (or `OWNER_HOLD` has passed). Boxed: rare, and the
    /// head must not widen every connection's future.
    AwaitOwner(Box<RequestHead>, Box<str>),
}

pub(super) struct Upstream {
    rule: Arc<Rule>,
    send: SendStream,
    /// A large upload yields to other visitors' requests (`io::SendOrder`).
    order: tunnel_lib::io::SendOrder,
}

impl Upstream {
    /// Writes a chunk towards the local service, counted as the tunnel's.
    async fn write_counted(&mut self, chunk: Bytes) -> Result<(), quinn::WriteError> {
        self.rule.metrics.bytes_in.inc_by(chunk.len() as u64);
        self.order.write(&mut self.send, chunk).await
    }
}

pub(super) struct RequestSide<R> {
    pub(super) state: Arc<State>,
    pub(super) rd: R,
    /// Bytes read from the visitor and not yet consumed.
    pub(super) buf: BytesMut,
    pub(super) peer: SocketAddr,
    /// The listener's scheme: `X-Forwarded-Proto`, and whether plain
    /// requests are redirected to https.
    pub(super) scheme: Scheme,
    /// The TLS server name: a request for another host on this session is
    /// misdirected (421), never served under the other name's certificate.
    pub(super) sni: Option<Box<str>>,
    pub(super) tx: Queue,
    pub(super) up: Option<Upstream>,
    /// What it shares with the response side: exchanges in flight, whether
    /// the current stream's local connection is done for, and `mid_body`.
    pub(super) link: Arc<super::Link>,
}

impl<R> RequestSide<R> {
    fn set_mid_body(&self, on: bool) {
        self.link.mid_body.store(on, Ordering::Relaxed);
    }
}

impl<R> Drop for RequestSide<R> {
    fn drop(&mut self) {
        if self.link.mid_body.load(Ordering::Relaxed) {
            if let Some(up) = self.up.as_mut() {
                let _ = up.send.reset(VarInt::from_u32(reset::CANCELLED));
            }
        }
    }
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

/// What a connection waits on between requests, made once per connection:
/// the keep-alive idle timer and the server's stop signal. Armed per request
/// they cost a timer-wheel insert and removal and a waiter registration and
/// removal on every request (BENCHMARKS.md, issue 12, lever 10); held here,
/// the timer is re-armed only when it fires (lazily, from the time the
/// current wait began) and the waiter stays registered.
struct BetweenRequests<'a, 't> {
    idle: Duration,
    timer: Pin<&'a mut Sleep>,
    stop: Pin<&'a mut WaitForCancellationFuture<'t>>,
}

impl BetweenRequests<'_, '_> {
    /// Waits for the first bytes of the next request: `None` once the
    /// connection has been idle for `idle`, or the server is stopping (plus
    /// `FIRST_REQUEST_GRACE` for a connection that has not carried a request
    /// yet: it may have been accepted a moment before the signal, its
    /// request still on the way).
    async fn wait<F: Future>(&mut self, read: F, first: bool) -> Option<F::Output> {
        let due = Instant::now() + self.idle;
        let mut read = std::pin::pin!(read);
        loop {
            tokio::select! {
                // Bytes already here are a request: served, stopping or not.
                biased;
                r = &mut read => return Some(r),
                () = self.timer.as_mut() => {
                    // Set for an earlier wait: re-armed for this one.
                    if Instant::now() >= due {
                        return None;
                    }
                    self.timer.as_mut().reset(due);
                }
                () = self.stop.as_mut() => {
                    return match first {
                        true => timeout(FIRST_REQUEST_GRACE, read).await.ok(),
                        false => None,
                    };
                }
            }
        }
    }
}

/// The request side stops: the connection is done once the response side
/// has answered what is queued.
struct Stop;

impl<R: LeanRead> RequestSide<R> {
    pub(super) async fn run(mut self, soft: CancellationToken) {
        let idle = self.state.config.timeouts.keep_alive_idle;
        let timer = tokio::time::sleep(idle);
        let stop = soft.cancelled();
        tokio::pin!(timer, stop);
        let mut between = BetweenRequests { idle, timer, stop };
        let mut first = true;
        loop {
            let head = match self.read_head(&mut between, first).await {
                HeadRead::Head(h) => h,
                HeadRead::Idle => break,
                HeadRead::Gone => {
                    if self.link.in_flight.load(Ordering::Relaxed) > 0 {
                        // The visitor left with responses pending: cancel the
                        // local requests instead of waiting for them.
                        if let Some(mut up) = self.up.take() {
                            let _ = up.send.reset(VarInt::from_u32(reset::CANCELLED));
                        }
                    }
                    break;
                }
                HeadRead::Reject(page) => {
                    self.state.metrics.page(page.status, page.code);
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
            first = false;
            let (mut facts, mut action) = route(&self.front(), head, true);
            if let Action::AwaitOwner(head, host) = action {
                let directory = self.state.directory.clone();
                tokio::select! {
                    _ = directory.owner_back(&host, OWNER_HOLD) => {}
                    _ = soft.cancelled() => {}
                }
                (facts, action) = route(&self.front(), *head, false);
            }
            let keep_alive = facts.keep_alive;
            let result = match action {
                // (`route` holds once only; a second hold answers.)
                Action::AwaitOwner(_, host) => {
                    self.answer_locally(facts, respond::client_gone(&host))
                        .await
                }
                Action::Answer(page) => self.answer_locally(facts, page).await,
                Action::Forward(fwd, rule, session, line) => {
                    self.forward(facts, fwd, rule, &session.conn, line).await
                }
            };
            if result.is_err() || !keep_alive {
                break;
            }
        }
        let send = self.up.take().map(|u| u.send);
        let _ = self.tx.push(Pending::End { send }).await;
    }

    /// What routing needs of this connection.
    fn front(&self) -> Front<'_> {
        Front {
            state: &self.state,
            peer: self.peer,
            scheme: self.scheme,
            sni: self.sni.as_deref(),
        }
    }

    /// Reads the next head: an idle timeout until its first byte, then one
    /// deadline for the whole head. Once the server is stopping, a
    /// connection between requests is done; one that has not sent its first
    /// request yet gets `FIRST_REQUEST_GRACE` to send it.
    async fn read_head(&mut self, between: &mut BetweenRequests<'_, '_>, first: bool) -> HeadRead {
        let limits = &self.state.config.http_limits;
        let t = &self.state.config.timeouts;
        let mut reader = RequestReader::new();
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + t.head);
                match reader.read(&mut self.buf, limits) {
                    Ok(Some(h)) => return HeadRead::Head(h),
                    Ok(None) => {}
                    Err(e) => return HeadRead::Reject(reject_page(&e)),
                }
            }
            let read = self.rd.read_lean(&mut self.buf, FIRST_READ);
            let n = match deadline {
                None => match between.wait(read, first).await {
                    Some(Ok(n)) => n,
                    Some(Err(_)) => return HeadRead::Gone,
                    None => return HeadRead::Idle,
                },
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
        self.state.metrics.page(page.status, page.code);
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
        self.state.metrics.page(page.status, page.code);
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
            self.rd.read_lean(&mut self.buf, IO_CHUNK),
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
                let seen = dec.advance(&self.buf).map_err(bad_body)?;
                match cfg.max_body {
                    Some(m) if seen.data > m => Err(too_large(cfg.max_body)),
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
        line: Option<Box<str>>,
    ) -> Result<(), Stop> {
        let started = Instant::now();
        if let Err(page) = self.precheck_body(head) {
            return self.reject(page, head).await;
        }
        let mut out = fwd;
        // Taken whatever the outcome: a new stream starts with a clean slate.
        let done = self.link.upstream_done.swap(false, Ordering::Relaxed);
        let reuse = !done
            && self
                .up
                .as_ref()
                .is_some_and(|u| Arc::ptr_eq(&u.rule, &rule));
        // Only a reused stream's local connection can have been closed under
        // the request (a fresh one failing is the app's answer: a 502).
        let replay = (reuse && head.replayable).then(|| out.clone());
        let mut new_recv = None;
        let mut old_send = None;
        if !reuse {
            old_send = self.up.take().map(|u| u.send);
            match upstream::open(conn, &rule, &self.state.metrics).await {
                Ok((send, recv)) => {
                    // A new stream starts with its preface, in the same chunk.
                    out = upstream::prefaced(StreamKind::Http1, &rule, self.peer, &out);
                    self.up = Some(Upstream {
                        rule: rule.clone(),
                        send,
                        order: tunnel_lib::io::SendOrder::new(),
                    });
                    new_recv = Some(recv);
                }
                Err(page) => return self.answer_locally(head, page).await,
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
            replay,
            http10: head.http10,
            old_send,
            rule,
            head_request: head.is_head,
            close: !head.keep_alive,
            upgraded: upgraded_tx,
            abort: abort_rx,
            started,
            line,
        };
        // Queued before the body is sent: the response side must be reading
        // for `Expect: 100-continue` to work.
        self.tx.push(pending).await.map_err(|_| Stop)?;
        self.link.in_flight.fetch_add(1, Ordering::Relaxed);
        self.set_mid_body(true);
        let sent = match self.up.as_mut() {
            Some(up) => match up.write_counted(out).await {
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
        self.set_mid_body(false);
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
}

fn reject_page(e: &HeadError) -> ErrorPage {
    respond::bad_request(e.status(), &e.to_string())
}

fn bad_body(e: tunnel_lib::http1::ChunkError) -> ErrorPage {
    respond::bad_request(400, &format!("malformed request body: {e}"))
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
