//! The response side of a visitor connection: relay responses in request
//! order by their framing, and write the server's own pages in their turn.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use tunnel_lib::http1::encode::{with_header_edits, CONNECTION_CLOSE};
use tunnel_lib::http1::{relay_head, ResponseBody, ResponseHead};
use tunnel_lib::limits::IO_CHUNK;
use tunnel_lib::proto::{reset, StreamKind};

use super::{Link, Pending, Scheme};

mod body;
use crate::registry::Rule;
use crate::respond::{self, ErrorPage};
use crate::state::State;
use crate::upstream;

pub(super) struct ResponseSide<W> {
    state: Arc<State>,
    wr: W,
    /// `Strict-Transport-Security` line added to final responses (https
    /// listener, when the operator opted in).
    hsts: Option<Bytes>,
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
    /// Whether the current stream has carried a whole response: a request
    /// after that went over a reused local connection.
    served: bool,
    /// Shared with the request side (see [`Link`]).
    link: Arc<Link>,
    peer: std::net::SocketAddr,
    /// The current exchange: its final status (0 until known), when its
    /// first byte reached the visitor, and the bytes sent.
    status: u16,
    first_byte: Option<tokio::time::Instant>,
    bytes_out: u64,
}

impl<W: AsyncWrite + Unpin + Send> ResponseSide<W> {
    pub(super) fn new(
        state: Arc<State>,
        wr: W,
        rx: mpsc::Receiver<Box<Pending>>,
        link: Arc<Link>,
        scheme: Scheme,
        peer: std::net::SocketAddr,
    ) -> Self {
        let hsts = match (scheme, state.config.hsts) {
            (Scheme::Https, Some(age)) => Some(Bytes::from(format!(
                "Strict-Transport-Security: max-age={}\r\n",
                age.as_secs()
            ))),
            _ => None,
        };
        ResponseSide {
            state,
            wr,
            hsts,
            rx,
            recv: None,
            pending: VecDeque::new(),
            out: Vec::new(),
            failed: None,
            sent_any: false,
            reusable: false,
            served: false,
            link,
            peer,
            status: 0,
            first_byte: None,
            bytes_out: 0,
        }
    }

    /// Counts the exchange that just ended (and logs it, with an access log).
    fn record(&mut self, rule: &Rule, started: tokio::time::Instant, line: Option<Box<str>>) {
        super::record(
            &self.state,
            rule,
            self.peer,
            super::Exchanged {
                h2: false,
                status: self.status,
                bytes_out: self.bytes_out,
                started,
                first_byte: self.first_byte,
            },
            line,
        );
    }

    /// Writes one of the server's pages in place of a response.
    async fn write_page(&mut self, page: &ErrorPage, head_request: bool) {
        self.status = page.status;
        self.state.metrics.page(page.status, page.code);
        let _ = self.wr.write_all(&page.render(true, head_request)).await;
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
    /// The local connection closed (or was cut) before any byte of the
    /// response: on a reused one, the request may be sent again.
    Closed(String),
    /// Mid-response: only closing is left.
    Broken,
}

impl<W: AsyncWrite + Unpin + Send> ResponseSide<W> {
    pub(super) async fn run(mut self) {
        while let Some(item) = self.next_item().await {
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
                    replay,
                    http10,
                    old_send,
                    rule,
                    head_request,
                    close,
                    upgraded,
                    abort,
                    started,
                    line,
                } => {
                    self.sent_any = false;
                    self.status = 0;
                    self.first_byte = None;
                    self.bytes_out = 0;
                    if recv.is_some() {
                        self.retire(old_send);
                    }
                    let reused = recv.is_none() && self.served;
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
                        r = self.exchange(recv, &rule, head_request, close, http10, upgraded) => Ok(r),
                    };
                    let outcome = match outcome {
                        // The app closed the reused connection under the
                        // request (its keep-alive timer fired as the request
                        // came): what nginx, HAProxy and Pingora do.
                        Ok(Err(RelayError::Closed(_))) if reused => {
                            self.pending.clear();
                            self.reusable = false;
                            self.link.upstream_done.store(true, Ordering::Relaxed);
                            Ok(match replay {
                                Some(head) => {
                                    self.retry(&rule, head, head_request, close, http10).await
                                }
                                // Not safe to send again: close the visitor's
                                // connection as the app closed ours, without
                                // an answer, so the browser retries it itself.
                                None => Err(RelayError::Broken),
                            })
                        }
                        o => o,
                    };
                    if matches!(outcome, Ok(Ok(_))) {
                        self.served = true;
                    }
                    self.link.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let after = match outcome {
                        Err(page) => {
                            if let (Some(page), false) = (page, self.sent_any) {
                                self.write_page(&page, head_request).await;
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
                        Ok(Err(RelayError::NothingSent(why) | RelayError::Closed(why))) => {
                            info!(host = %rule.host, "502: {why}");
                            let page = respond::local_failed(&rule.host, &why);
                            self.write_page(&page, head_request).await;
                            After::Close
                        }
                        Ok(Err(RelayError::Broken)) => After::Close,
                    };
                    self.record(&rule, started, line);
                    after
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
        rule: &Rule,
        head_request: bool,
        close: bool,
        http10: bool,
        upgraded: Option<oneshot::Sender<bool>>,
    ) -> Result<After, RelayError> {
        self.reusable = false;
        if let Some(r) = recv {
            self.recv = Some(r);
            self.served = false;
            self.pending.clear();
            self.failed = self.read_reply(&rule.host).await;
        }
        if let Some(page) = self.failed.take() {
            self.write_page(&page, head_request).await;
            // Kept: every request still queued on this stream gets it too.
            self.failed = Some(page);
            return Ok(After::Close);
        }
        self.out.clear();
        self.relay(head_request, close, http10, upgraded, rule.policy())
            .await
    }

    /// Waits for the next exchange. Meanwhile an idle local connection kept
    /// for reuse is watched: if the app closes it (Node, uvicorn and
    /// gunicorn close idle keep-alive connections after 2 to 5 s) or sends
    /// bytes nobody asked for (a 408 before closing), it is done for, and
    /// the next request opens a new stream instead of meeting a closed one.
    async fn next_item(&mut self) -> Option<Box<Pending>> {
        if let (true, true, Some(recv)) = (self.reusable, self.pending.is_empty(), &mut self.recv) {
            tokio::select! {
                biased;
                item = self.rx.recv() => return item,
                // Cancel-safe: a chunk is either returned or left in the stream.
                _ = recv.read_chunk(IO_CHUNK, true) => {
                    self.reusable = false;
                    self.link.upstream_done.store(true, Ordering::Relaxed);
                    self.state.stats.local_idle_closed.inc();
                }
            }
        }
        self.rx.recv().await
    }

    /// Sends a request again on a new stream (its local connection is a new
    /// or a checked pooled one) after the reused one closed under it. The
    /// stream is retired once the response is in; the dead one stays current
    /// for any request queued on it behind this one.
    async fn retry(
        &mut self,
        rule: &Rule,
        head: Bytes,
        head_request: bool,
        close: bool,
        http10: bool,
    ) -> Result<After, RelayError> {
        self.state.stats.local_retries.inc();
        let gone = || RelayError::NothingSent("the tunnel's client is gone".into());
        // Routed again: the client may have reconnected since, or be
        // handing its tunnels to a new connection right now (a move between
        // transports): then its return is waited for, as for a new request.
        let directory = &self.state.directory;
        if directory.route(rule.host.as_bytes()).is_none()
            && directory.offline(&rule.host) == Some(crate::registry::Offline::Reconnecting)
        {
            directory
                .owner_back(&rule.host, tunnel_lib::limits::OWNER_HOLD)
                .await;
        }
        let Some((rule, Some(session))) = directory.route(rule.host.as_bytes()) else {
            return Err(gone());
        };
        let (mut send, recv) = upstream::open(&session.conn, &rule, &self.state.metrics)
            .await
            .map_err(|_| gone())?;
        let first = upstream::prefaced(StreamKind::Http1, &rule, self.peer, &head);
        if send.write_chunk(first).await.is_err() {
            return Err(gone());
        }
        let dead = self.recv.replace(recv);
        let result = match self.read_reply(&rule.host).await {
            Some(page) => {
                self.write_page(&page, head_request).await;
                Ok(After::Close)
            }
            None => {
                self.out.clear();
                self.relay(head_request, close, http10, None, rule.policy())
                    .await
            }
        };
        self.retire(Some(send));
        self.pending.clear();
        self.recv = dead;
        result
    }

    /// Reads the client's reply on a new stream: `None` if the local service
    /// was reached, else the page every request on this stream gets.
    async fn read_reply(&mut self, host: &str) -> Option<ErrorPage> {
        let recv = self.recv.as_mut()?;
        match upstream::read_reply(recv, host).await {
            Ok(rest) => {
                if !rest.is_empty() {
                    self.pending.push_back(rest);
                }
                None
            }
            Err(page) => Some(page),
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
        if !self.sent_any {
            self.first_byte = Some(tokio::time::Instant::now());
        }
        self.bytes_out += self.out.iter().map(|b| b.len() as u64).sum::<u64>();
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

    /// The stream ended or failed while a response head was awaited.
    /// `partial`: part of a head had arrived.
    fn closed(&self, why: String, partial: bool) -> RelayError {
        match (self.sent_any, partial) {
            (false, false) => RelayError::Closed(why),
            _ => self.fail(why),
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
                    let why = "the local service closed the connection without a response";
                    return Err(self.closed(why.into(), acc.is_some()));
                }
                Err(e) => return Err(self.closed(e, acc.is_some())),
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
        http10: bool,
        upgraded: Option<oneshot::Sender<bool>>,
        policy: Option<&crate::policy::EdgePolicy>,
    ) -> Result<After, RelayError> {
        loop {
            let (head, head_bytes) = self.next_head(head_request).await?;
            // A body that runs to the close is re-framed as chunked for an
            // HTTP/1.1 visitor, whose connection then outlives the local one.
            // The app closes while the request's body is still going out:
            // the visitor's connection closes too (see `Link::sending`).
            let cut = !head.keep_alive
                && !head.is_interim()
                && self.link.mid_body.load(Ordering::Relaxed);
            let rechunk = head.body == ResponseBody::UntilClose && !http10 && !head.has_te && !cut;
            let out = {
                let last = !head.is_interim();
                let mut lines: smallvec::SmallVec<[&[u8]; 4]> = smallvec::SmallVec::new();
                let mut remove: &[Box<str>] = &[];
                if let (Some(p), true) = (policy, last) {
                    lines.extend(p.response_add.iter().map(|l| &l[..]));
                    remove = &p.response_remove;
                }
                if last && head.status != 101 {
                    // The visitor's connection is ours to describe (RFC 9112
                    // §9.6): the local service's own `Connection` is dropped.
                    if close || cut || (head.body == ResponseBody::UntilClose && !rechunk) {
                        lines.push(CONNECTION_CLOSE);
                    } else if http10 {
                        lines.push(b"Connection: keep-alive\r\n");
                    }
                }
                if rechunk {
                    lines.push(b"Transfer-Encoding: chunked\r\n");
                }
                if let (Some(h), true) = (&self.hsts, last) {
                    lines.push(&h[..]);
                }
                if head.own_hop {
                    relay_head(&head_bytes, head.status, remove, &lines)
                } else if lines.is_empty() && remove.is_empty() {
                    head_bytes
                } else {
                    with_header_edits(&head_bytes, remove, &lines)
                }
            };
            self.out.push(out);
            if !head.is_interim() {
                self.status = head.status;
            }
            if head.is_interim() {
                self.flush().await?;
                continue;
            }
            let result = match head.body {
                ResponseBody::None => self.flush().await,
                ResponseBody::Length(n) => self.relay_length(n).await,
                ResponseBody::Chunked => self.relay_chunked().await,
                ResponseBody::UntilClose if rechunk => self.relay_to_end_chunked().await,
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
            if !head.keep_alive {
                // The local service closes its side; the visitor keeps its own.
                self.link.upstream_done.store(true, Ordering::Relaxed);
            }
            return Ok(if cut { After::Close } else { After::KeepAlive });
        }
    }
}
