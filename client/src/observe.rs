//! Request facts on the client, for the status screen, the inspector and
//! the client's metrics.
//!
//! The server parses HTTP and the client only splices, so the client reads
//! a *copy* of what it splices ([`Observer`], a `tunnel_lib::io::Tap`): each
//! chunk is shown to the observer as a `Bytes` reference before it is
//! written, and the observer follows the exchanges with a light request-head
//! reader of its own over httparse ([`parse_request`]: the facts, no
//! validation) and the server's sans-IO `ResponseHead` and `ChunkedDecoder`. Nothing waits on it: it never awaits, never fails a
//! stream, and a stream it cannot follow (bad framing from the app) is
//! simply no longer observed. ARCHITECTURE.md says why the facts are taken
//! here rather than sent by the server.
//!
//! Bounded: a head larger than [`MAX_HEAD`] stops the observation of its
//! stream, a body is kept up to [`BODY_CAP`] (the rest counted), and the
//! [`Monitor`] keeps the last [`RING`] exchanges.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};

use tunnel_lib::http1::{BodyKind, BodyParts, Framing, Limits, ResponseBody, ResponseHead};

mod monitor;
pub use monitor::{ClientMetrics, Counters, Monitor};

/// Body bytes kept per captured body; the rest are counted only.
pub const BODY_CAP: usize = 64 * 1024;
/// Exchanges the inspector keeps (newest replace oldest).
pub const RING: usize = 200;
/// Largest head the observer follows.
pub const MAX_HEAD: usize = 256 * 1024;
/// Request durations kept for the percentiles.
const DURATIONS: usize = 1024;
/// Seconds of per-second request counts (for the 1 and 5 minute rates).
const RATE_WINDOW: usize = 300;
/// Log lines kept for the status screen.
pub const LOG_LINES: usize = 50;

/// A captured body: the first [`BODY_CAP`] bytes, and the whole size.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub kept: Bytes,
    pub total: u64,
}

impl Capture {
    pub fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// One request and its response, as the local service saw them.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub id: u64,
    /// The tunnel's public name.
    pub tunnel: Arc<str>,
    /// The local service (`host:port`).
    pub local: Arc<str>,
    pub visitor: SocketAddr,
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    pub request_head: Bytes,
    pub request_body: Capture,
    /// 0: no response (the stream ended first).
    pub status: u16,
    pub response_head: Bytes,
    pub response_body: Capture,
    /// The response's trailer fields (`name: value` lines), if any.
    pub response_trailers: Bytes,
    /// How the visitor spoke: `HTTP/1.1`, or `HTTP/2` (the server says so
    /// with `Via: 2 tunnel`).
    pub protocol: &'static str,
    pub ttfb: Option<Duration>,
    pub duration: Duration,
    /// The exchange this one replayed.
    pub replay_of: Option<u64>,
}

/// Where a body's bytes are kept while it is read.
#[derive(Debug, Default)]
struct Keep {
    buf: Option<BytesMut>,
    total: u64,
}

impl Keep {
    fn new(capture: bool) -> Keep {
        Keep {
            buf: capture.then(BytesMut::new),
            total: 0,
        }
    }
    fn add(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if let Some(b) = &mut self.buf {
            let room = BODY_CAP.saturating_sub(b.len());
            b.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    fn done(self) -> Capture {
        Capture {
            kept: self.buf.map(BytesMut::freeze).unwrap_or_default(),
            total: self.total,
        }
    }
}

/// A request body to follow, if it has one.
fn request_body(kind: BodyKind, limits: &Limits) -> Option<BodyParts> {
    match kind {
        BodyKind::None | BodyKind::Length(0) => None,
        BodyKind::Length(n) => Some(BodyParts::new(Framing::Length(n), limits)),
        BodyKind::Chunked => Some(BodyParts::new(Framing::Chunked, limits)),
    }
}

/// Follows `data`: payload goes to `keep`. `Ok(Some((n, trailers)))`: the
/// body ended after `n` bytes of `data`; `Ok(None)`: all of it was body.
fn feed(body: &mut BodyParts, data: &Bytes, keep: &mut Keep) -> Result<Option<(usize, Bytes)>, ()> {
    let mut rest = data.clone();
    let got = body.take(&mut rest).map_err(|_| ())?;
    for d in &got.data {
        keep.add(d);
    }
    Ok(got.end.map(|trailers| (data.len() - rest.len(), trailers)))
}

/// What the observer needs of a request head. The server sends canonical,
/// validated heads, so following them takes httparse alone (the server's
/// strict `RequestHead::parse` would repeat its checks for nothing).
#[derive(Debug)]
struct Head {
    len: usize,
    method: String,
    path: String,
    body: BodyKind,
    upgrade: bool,
    /// The visitor spoke HTTP/2 (`Via: 2 …`).
    h2: bool,
}

/// Most header lines followed in a head (the server forwards at most 100).
const MAX_HEADERS: usize = 128;

/// `Ok(None)`: incomplete; `Err`: not a head this observer can follow.
fn parse_request(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        _ => return Err(()),
    };
    let mut body = BodyKind::None;
    let (mut upgrade, mut connection_upgrade, mut h2) = (false, false, false);
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).map_err(|_| ())?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body = BodyKind::Length(v.parse().map_err(|_| ())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if v.rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            {
                body = BodyKind::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if h.name.eq_ignore_ascii_case("via") {
            h2 |= v.starts_with("2 ");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= v
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        }
    }
    Ok(Some(Head {
        len,
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        body,
        upgrade: upgrade && connection_upgrade,
        h2,
    }))
}

/// An exchange being followed.
#[derive(Debug)]
struct Open {
    ex: Exchange,
    started: Instant,
    is_head: bool,
    request_keep: Keep,
    response_keep: Keep,
}

#[derive(Debug)]
enum Dir {
    Head,
    Body(BodyParts),
    /// After an upgrade (or an unframed response): not HTTP any more.
    Raw,
}

#[derive(Debug)]
struct Flow {
    monitor: Arc<Monitor>,
    tunnel: Arc<str>,
    local: Arc<str>,
    visitor: SocketAddr,
    metrics: Option<Arc<tunnel_lib::metrics::TunnelMetrics>>,
    limits: Limits,
    req_buf: BytesMut,
    req: Dir,
    /// The id of the request whose body `req` is reading.
    req_id: u64,
    resp_buf: BytesMut,
    resp: Dir,
    /// Requests not yet answered whole, oldest (the one being answered) first.
    open: VecDeque<Open>,
    lost: bool,
    replay_of: Option<u64>,
}

/// Follows the exchanges on one stream (see the module docs).
#[derive(Debug)]
pub struct Observer {
    flow: Mutex<Flow>,
}

impl tunnel_lib::io::Tap for Observer {
    fn toward_local(&self, chunk: &Bytes) {
        self.lock().request_bytes(chunk);
    }
    fn toward_visitor(&self, chunk: &Bytes) {
        self.lock().response_bytes(chunk);
    }
}

impl Observer {
    pub(crate) fn new(
        monitor: Arc<Monitor>,
        tunnel: Arc<str>,
        local: Arc<str>,
        visitor: SocketAddr,
        metrics: Option<Arc<tunnel_lib::metrics::TunnelMetrics>>,
    ) -> Observer {
        let limits = Limits {
            max_head: MAX_HEAD,
            max_headers: tunnel_lib::http1::MAX_HEADERS_CAP,
            max_target: MAX_HEAD,
            ..Limits::default()
        };
        Observer {
            flow: Mutex::new(Flow {
                monitor,
                tunnel,
                local,
                visitor,
                metrics,
                limits,
                req_buf: BytesMut::new(),
                req: Dir::Head,
                req_id: 0,
                resp_buf: BytesMut::new(),
                resp: Dir::Head,
                open: VecDeque::new(),
                lost: false,
                replay_of: None,
            }),
        }
    }

    /// Marks what this observer records as a replay of exchange `id`.
    pub(crate) fn replaying(self, id: u64) -> Observer {
        self.lock().replay_of = Some(id);
        self
    }

    /// No exchange is waiting for (the rest of) its response.
    pub(crate) fn idle(&self) -> bool {
        self.lock().open.is_empty()
    }

    /// The id of the last request seen.
    pub(crate) fn last_id(&self) -> u64 {
        self.lock().req_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local service could not be reached: the requests seen so far
    /// are listed as answered by the server's `status` page (a 502 is an
    /// exchange the person at the screen wants to see, not only a count).
    pub(crate) fn answered_by_server(&self, status: u16) {
        let mut f = self.lock();
        while let Some(mut o) = f.open.pop_front() {
            o.ex.status = status;
            f.complete(o);
        }
    }

    /// The stream ended: a response running to the end is complete now; the
    /// others are recorded as they are (status 0: no response). Returns how
    /// many were still open.
    pub(crate) fn finish(&self) -> usize {
        let mut f = self.lock();
        let mut n = 0;
        while let Some(o) = f.open.pop_front() {
            n += 1;
            f.complete(o);
        }
        n
    }
}

impl Flow {
    fn request_bytes(&mut self, chunk: &Bytes) {
        let mut data = chunk.clone();
        while !self.lost && !data.is_empty() {
            match &mut self.req {
                Dir::Raw => return,
                Dir::Head => {
                    // Parsed where it lies unless a split head is pending.
                    let whole = if self.req_buf.is_empty() {
                        data.clone()
                    } else {
                        self.req_buf.extend_from_slice(&data);
                        self.req_buf.split().freeze()
                    };
                    let head = match parse_request(&whole) {
                        Ok(Some(h)) => h,
                        Ok(None) => {
                            self.req_buf.extend_from_slice(&whole);
                            return;
                        }
                        Err(()) => {
                            self.lost = true;
                            return;
                        }
                    };
                    let id = self.monitor.next_id();
                    let capture = self.monitor.capture;
                    let is_head = head.method == "HEAD";
                    self.open.push_back(Open {
                        ex: Exchange {
                            id,
                            tunnel: self.tunnel.clone(),
                            local: self.local.clone(),
                            visitor: self.visitor,
                            at: SystemTime::now(),
                            method: head.method,
                            path: head.path,
                            // A copy: a slice would pin the whole received chunk.
                            request_head: if capture {
                                Bytes::copy_from_slice(&whole[..head.len])
                            } else {
                                Bytes::new()
                            },
                            request_body: Capture::default(),
                            status: 0,
                            response_head: Bytes::new(),
                            response_body: Capture::default(),
                            response_trailers: Bytes::new(),
                            protocol: if head.h2 { "HTTP/2" } else { "HTTP/1.1" },
                            ttfb: None,
                            duration: Duration::ZERO,
                            replay_of: self.replay_of,
                        },
                        started: Instant::now(),
                        is_head,
                        request_keep: Keep::new(capture),
                        response_keep: Keep::new(capture),
                    });
                    self.req_id = id;
                    self.req = if head.upgrade {
                        Dir::Raw
                    } else {
                        match request_body(head.body, &self.limits) {
                            Some(b) => Dir::Body(b),
                            None => Dir::Head,
                        }
                    };
                    // The body's first bytes (or the next request) came with the head.
                    data = whole.slice(head.len..);
                }
                Dir::Body(body) => {
                    let id = self.req_id;
                    let mut scratch = Keep::default();
                    let keep = match self.open.iter_mut().rev().find(|o| o.ex.id == id) {
                        Some(o) => &mut o.request_keep,
                        // Already answered (an early response): only followed.
                        None => &mut scratch,
                    };
                    match feed(body, &data, keep) {
                        Ok(None) => return,
                        Ok(Some((n, _))) => {
                            data = data.slice(n..);
                            self.req = Dir::Head;
                        }
                        Err(()) => self.lost = true,
                    }
                }
            }
        }
    }

    fn response_bytes(&mut self, chunk: &Bytes) {
        let mut data = chunk.clone();
        while !self.lost && !data.is_empty() {
            match &mut self.resp {
                Dir::Raw => {
                    if let Some(o) = self.open.front_mut() {
                        o.response_keep.add(&data);
                    }
                    return;
                }
                Dir::Head => {
                    let whole = if self.resp_buf.is_empty() {
                        data.clone()
                    } else {
                        self.resp_buf.extend_from_slice(&data);
                        self.resp_buf.split().freeze()
                    };
                    let Some(front) = self.open.front_mut() else {
                        // Bytes before any request: not HTTP we can follow.
                        self.lost = true;
                        return;
                    };
                    let head = match ResponseHead::parse(&whole, front.is_head, MAX_HEAD) {
                        Ok(Some(h)) => h,
                        Ok(None) => {
                            self.resp_buf.extend_from_slice(&whole);
                            return;
                        }
                        Err(_) => {
                            self.lost = true;
                            return;
                        }
                    };
                    data = whole.slice(head.head_len..);
                    if head.is_interim() {
                        continue;
                    }
                    front.ex.status = head.status;
                    front.ex.ttfb = Some(front.started.elapsed());
                    if self.monitor.capture {
                        front.ex.response_head = Bytes::copy_from_slice(&whole[..head.head_len]);
                    }
                    self.resp = match head.body {
                        ResponseBody::None | ResponseBody::Length(0) => Dir::Head,
                        ResponseBody::Length(n) => {
                            Dir::Body(BodyParts::new(Framing::Length(n), &self.limits))
                        }
                        ResponseBody::Chunked => {
                            Dir::Body(BodyParts::new(Framing::Chunked, &self.limits))
                        }
                        ResponseBody::UntilClose => {
                            Dir::Body(BodyParts::new(Framing::UntilClose, &self.limits))
                        }
                        // Switched protocols: the exchange is the 101.
                        ResponseBody::Upgrade => Dir::Raw,
                    };
                    if !matches!(self.resp, Dir::Body(_)) {
                        if let Some(o) = self.open.pop_front() {
                            self.complete(o);
                        }
                    }
                }
                Dir::Body(body) => {
                    let Some(front) = self.open.front_mut() else {
                        self.lost = true;
                        return;
                    };
                    match feed(body, &data, &mut front.response_keep) {
                        Ok(None) => return,
                        Ok(Some((n, trailers))) => {
                            if self.monitor.capture {
                                front.ex.response_trailers = trailers;
                            }
                            data = data.slice(n..);
                            self.resp = Dir::Head;
                            if let Some(o) = self.open.pop_front() {
                                self.complete(o);
                            }
                        }
                        Err(()) => self.lost = true,
                    }
                }
            }
        }
    }

    fn complete(&mut self, o: Open) {
        let Open {
            mut ex,
            started,
            request_keep,
            response_keep,
            ..
        } = o;
        ex.duration = started.elapsed();
        ex.request_body = request_keep.done();
        ex.response_body = response_keep.done();
        if let Some(cm) = &self.monitor.metrics {
            cm.tunnels.observe(ex.duration, ex.ttfb);
        }
        if let Some(m) = &self.metrics {
            m.request(ex.status);
            m.bytes_in
                .inc_by(ex.request_body.total + ex.request_head.len() as u64);
            m.bytes_out
                .inc_by(ex.response_body.total + ex.response_head.len() as u64);
        }
        self.monitor.record(ex);
    }
}

#[cfg(test)]
mod tests;
