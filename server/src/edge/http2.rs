//! HTTP/2 visitors: ALPN `h2` on the https listener, h2c with prior
//! knowledge on the plain one, served by the `h2` crate (no framing or
//! HPACK of ours).
//!
//! Each request becomes an HTTP/1.1 request on a tunnel stream of its own.
//! Its head is rendered as HTTP/1.1 and read back by the HTTP/1 edge's own
//! parser (the same limits), then routed, admitted and rewritten by the
//! same [`route`]: the pages, `X-Forwarded-*`, the visitor policy, metrics
//! ([`super::record`]) and the access log are written once for both
//! versions, and the client stays the byte splice it is (its pool keeps
//! the local connections). The local service's HTTP/1.1 response becomes
//! HTTP/2 headers and DATA; a chunked body's trailers become HTTP/2
//! trailers. Upload and download run at once (a streaming call both ways),
//! each bounded by flow control end to end: a DATA frame's window is given
//! back to the visitor only once its bytes are on the tunnel stream, and
//! a response chunk is read from the tunnel only once the visitor's window
//! took the last.
//!
//! Limits ([`builder`]): at most [`MAX_STREAMS`] streams at once (one task
//! each, owned by the connection's `JoinSet`), windows of [`STREAM_WINDOW`]
//! and [`CONNECTION_WINDOW`], a header list of the HTTP/1 head limit, and
//! the `h2` crate's counters against rapid reset (CVE-2023-44487) and
//! MadeYouReset (CVE-2025-8671); a connection's memory is bounded by its
//! windows and send buffers, whatever the bodies.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::Reason;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use quinn::VarInt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use tunnel_lib::h2x;
use tunnel_lib::http1::{
    encode::chunk_size_line, BodyKind, BodyParts, Framing, RequestReader, ResponseBody,
    ResponseHead,
};
use tunnel_lib::limits::{IO_CHUNK, OWNER_HOLD};
use tunnel_lib::proto::{reset, StreamKind};

use super::request::{route, Action, Front};
use super::Scheme;
use crate::registry::Rule;
use crate::respond::{self, ErrorPage};
use crate::state::State;
use crate::upstream;

/// What a prior-knowledge h2c client sends first (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one visitor connection may have open at once (RFC 9113 §6.5.2
/// recommends no fewer than 100).
pub(crate) const MAX_STREAMS: u32 = 100;
/// Each request body's receive window: what a visitor may send ahead of
/// the tunnel taking it.
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window, shared by its streams.
pub(crate) const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes buffered per stream before its writer waits.
const SEND_BUFFER: usize = 256 * 1024;
/// Streams a visitor may open and reset before the server accepted them
/// (rapid reset): past it, the connection is closed with ENHANCE_YOUR_CALM.
const PENDING_RESETS: usize = 20;
/// Streams the server may reset for a visitor's errors on one connection
/// (MadeYouReset provokes these): past it, the connection is closed.
const LOCAL_RESETS: usize = 100;

/// A stream whose first bytes were already read (the h2c preface, read to
/// tell it from HTTP/1): they are read again first.
pub(crate) struct Rewound<S> {
    pre: Bytes,
    io: S,
}

impl<S> Rewound<S> {
    pub(crate) fn new(pre: Bytes, io: S) -> Self {
        Rewound { pre, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let piece = self.pre.split_to(n);
            buf.put_slice(&piece);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The h2 server settings of a visitor connection.
fn builder(state: &State) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(state.config.http_limits.max_head as u32)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_RESETS));
    b
}

/// What each stream's task needs of its connection.
struct Conn {
    state: Arc<State>,
    peer: SocketAddr,
    scheme: Scheme,
    sni: Option<Box<str>>,
}

/// One HTTP/2 visitor connection, from the preface to its close. Ends
/// with a GOAWAY once idle for the keep-alive time or when the server
/// stops (streams in flight finish first).
pub(crate) async fn serve<S>(
    state: Arc<State>,
    io: S,
    peer: SocketAddr,
    scheme: Scheme,
    sni: Option<Box<str>>,
    soft: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let t = state.config.timeouts.clone();
    let mut conn =
        match tokio::time::timeout(t.head, builder(&state).handshake::<_, Bytes>(io)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(%peer, "HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => return,
        };
    state.metrics.http2_connections.inc();
    let ctx = Arc::new(Conn {
        state,
        peer,
        scheme,
        sni,
    });
    let mut streams = tokio::task::JoinSet::new();
    let idle = tokio::time::sleep(t.keep_alive_idle);
    tokio::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    streams.spawn(exchange(ctx.clone(), req, respond));
                }
                Some(Err(e)) => {
                    debug!(%peer, "HTTP/2 connection ended: {e}");
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next() => {
                if streams.is_empty() {
                    idle.as_mut().reset(Instant::now() + t.keep_alive_idle);
                }
            }
            () = &mut idle, if streams.is_empty() => {
                if closing {
                    break;
                }
                conn.graceful_shutdown();
                closing = true;
                // The GOAWAY's round trip, then it is closed either way.
                idle.as_mut().reset(Instant::now() + tunnel_lib::limits::FIRST_REQUEST_GRACE);
            }
            () = soft.cancelled(), if !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
        }
    }
    // Dropping the set aborts what is left (the connection is gone).
    streams.shutdown().await;
}

/// One request: routed and answered by the server, or forwarded.
async fn exchange(cx: Arc<Conn>, req: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>) {
    let started = Instant::now();
    let state = &cx.state;
    let (parts, body) = req.into_parts();
    let rendered = match render_head(&parts, body.is_end_stream()) {
        Ok(r) => r,
        Err(page) => return answer(state, &mut respond, &page, false),
    };
    let mut buf = BytesMut::from(&rendered[..]);
    let head = match RequestReader::new().read(&mut buf, &state.config.http_limits) {
        Ok(Some(h)) => h,
        Ok(None) => {
            let page = respond::bad_request(400, "the request head could not be read");
            return answer(state, &mut respond, &page, false);
        }
        Err(e) => {
            let page = respond::bad_request(e.status(), &e.to_string());
            return answer(state, &mut respond, &page, false);
        }
    };
    let front = Front {
        state,
        peer: cx.peer,
        scheme: cx.scheme,
        sni: cx.sni.as_deref(),
    };
    let (facts, mut action) = route(&front, head, true);
    if let Action::AwaitOwner(head, host) = action {
        state.directory.owner_back(&host, OWNER_HOLD).await;
        action = route(&front, *head, false).1;
    }
    match action {
        Action::AwaitOwner(_, host) => answer(
            state,
            &mut respond,
            &respond::client_gone(&host),
            facts.is_head,
        ),
        Action::Answer(page) => answer(state, &mut respond, &page, facts.is_head),
        Action::Forward(fwd, rule, session, line) => {
            let max = state.config.max_body;
            if let (BodyKind::Length(n), Some(m)) = (facts.body, max) {
                if n > m {
                    return answer(state, &mut respond, &too_large(m), facts.is_head);
                }
            }
            let up = Up {
                cx: &cx,
                rule,
                started,
                line,
            };
            up.forward(&session.conn, fwd, facts.body, facts.is_head, body, respond)
                .await;
        }
    }
}

/// The HTTP/1.1 head an HTTP/2 request stands for: the request line from
/// `:method` and `:path`, `Host` from `:authority`, the fields without the
/// connection-specific ones (RFC 9113 §8.2.2), cookies joined (§8.2.3),
/// and the body framed by its `content-length` or else chunked.
fn render_head(parts: &http::request::Parts, ends: bool) -> Result<Bytes, ErrorPage> {
    if parts.method == http::Method::CONNECT {
        return Err(respond::bad_request(
            405,
            "CONNECT is not served over HTTP/2 here (WebSocket uses HTTP/1.1)",
        ));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let host = match parts.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => parts
            .headers
            .get(http::header::HOST)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default(),
    };
    let mut out = BytesMut::with_capacity(256 + parts.headers.len() * 32);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(host);
    out.put_slice(b"\r\n");
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if h2x::is_connection_specific(name.as_str(), value.as_bytes()) {
            continue;
        }
        match name.as_str() {
            "host" => continue,
            "cookie" => {
                cookies.push(value.as_bytes());
                continue;
            }
            "content-length" => has_length = true,
            _ => {}
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    // The protocol it came in (RFC 9110 §7.6.3): the client's inspector
    // shows it.
    out.put_slice(b"via: 2 tunnel\r\n");
    if !cookies.is_empty() {
        out.put_slice(b"cookie: ");
        out.put_slice(&cookies.join(&b"; "[..]));
        out.put_slice(b"\r\n");
    }
    if !has_length && !ends {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(out.freeze())
}

/// A forwarded exchange.
struct Up<'a> {
    cx: &'a Conn,
    rule: Arc<Rule>,
    started: Instant,
    line: Option<Box<str>>,
}

/// How the download ended.
struct Down {
    status: u16,
    bytes_out: u64,
    first_byte: Option<Instant>,
    /// The whole response was read and the local connection stays open:
    /// the client may keep it for the next request.
    reusable: bool,
}

impl Up<'_> {
    async fn forward(
        mut self,
        conn: &quinn::Connection,
        fwd: Bytes,
        body: BodyKind,
        head_request: bool,
        upload: h2::RecvStream,
        mut respond: SendResponse<Bytes>,
    ) {
        let line = self.line.take();
        let state = &self.cx.state;
        let (mut send, mut recv) = match upstream::open(conn, &self.rule, &state.metrics).await {
            Ok(p) => p,
            Err(page) => return answer(state, &mut respond, &page, head_request),
        };
        let first = upstream::prefaced(StreamKind::Http1, &self.rule, self.cx.peer, &fwd);
        self.rule.metrics.bytes_in.inc_by(first.len() as u64);
        if send.write_chunk(first).await.is_err() {
            let page = respond::client_gone(&self.rule.host);
            return answer(state, &mut respond, &page, head_request);
        }
        let chunked = body == BodyKind::Chunked;
        let mut uploaded = None;
        let down = {
            let sending = self.upload(upload, &mut send, chunked);
            let receiving = self.download(&mut recv, respond, head_request);
            tokio::pin!(sending, receiving);
            loop {
                tokio::select! {
                    r = &mut sending, if uploaded.is_none() => uploaded = Some(r),
                    d = &mut receiving => break d,
                }
            }
        };
        // A response that ended before the request did (the app answered
        // early): the rest of the upload is dropped, and h2 ends the
        // visitor's stream with NO_ERROR (RFC 9113 §8.1).
        let reuse = uploaded == Some(true) && down.as_ref().is_some_and(|d| d.reusable);
        if reuse {
            let _ = send.reset(VarInt::from_u32(reset::REUSE));
            let _ = recv.stop(VarInt::from_u32(reset::REUSE));
        } else {
            // Cut: the local service sees a reset, not a complete request.
            let _ = send.reset(VarInt::from_u32(reset::CANCELLED));
            let _ = recv.stop(VarInt::from_u32(reset::CANCELLED));
        }
        if let Some(d) = down {
            super::record(
                state,
                &self.rule,
                self.cx.peer,
                super::Exchanged {
                    h2: true,
                    status: d.status,
                    bytes_out: d.bytes_out,
                    started: self.started,
                    first_byte: d.first_byte,
                },
                line,
            );
        }
    }

    /// The request body, DATA frames to the tunnel stream (chunked when it
    /// has no length, its trailers after the last chunk). Each frame's
    /// window is released once it is on the stream. Whether it all went;
    /// if not, the tunnel stream is reset at once (the local service sees
    /// a cut request, and its answer, if any, does not come).
    async fn upload(
        &self,
        body: h2::RecvStream,
        send: &mut quinn::SendStream,
        chunked: bool,
    ) -> bool {
        let ok = self.upload_body(body, send, chunked).await;
        if !ok {
            let _ = send.reset(VarInt::from_u32(reset::CANCELLED));
        }
        ok
    }

    async fn upload_body(
        &self,
        mut body: h2::RecvStream,
        send: &mut quinn::SendStream,
        chunked: bool,
    ) -> bool {
        let max = self.cx.state.config.max_body;
        let mut order = tunnel_lib::io::SendOrder::new();
        let mut total = 0u64;
        let write = |bytes: Bytes| {
            self.rule.metrics.bytes_in.inc_by(bytes.len() as u64);
            bytes
        };
        let idle = self.cx.state.config.timeouts.body_idle;
        // A body that stalls `body_idle` is abandoned, as over HTTP/1.
        loop {
            let data = match tokio::time::timeout(idle, body.data()).await {
                Ok(Some(Ok(d))) => d,
                Ok(None) => break,
                Ok(Some(Err(_))) | Err(_) => return false,
            };
            let n = data.len();
            total += n as u64;
            if max.is_some_and(|m| total > m) {
                debug!(host = %self.rule.host, "HTTP/2 request body over the limit: cut");
                return false;
            }
            if n == 0 {
                continue;
            }
            if chunked {
                let line = write(chunk_size_line(n));
                if order.write(send, line).await.is_err() {
                    return false;
                }
            }
            if order.write(send, write(data)).await.is_err() {
                return false;
            }
            if chunked
                && order
                    .write(send, write(Bytes::from_static(b"\r\n")))
                    .await
                    .is_err()
            {
                return false;
            }
            let _ = body.flow_control().release_capacity(n);
        }
        if chunked {
            let trailers = match tokio::time::timeout(idle, body.trailers()).await {
                Ok(Ok(t)) => t,
                _ => return false,
            };
            let end = h2x::last_chunk(trailers.as_ref());
            if order.write(send, write(end)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The local service's answer, from its HTTP/1.1 response to HTTP/2.
    /// `None`: the visitor reset the stream, or the response broke after
    /// its head went out (the visitor's stream is reset).
    async fn download(
        &self,
        recv: &mut quinn::RecvStream,
        mut respond: SendResponse<Bytes>,
        head_request: bool,
    ) -> Option<Down> {
        let state = &self.cx.state;
        let host = &self.rule.host;
        let reply = tokio::select! {
            r = upstream::read_reply(recv, host) => r,
            _ = poll_fn(|c| respond.poll_reset(c)) => return None,
        };
        let mut buf = match reply {
            Ok(rest) => BytesMut::from(&rest[..]),
            Err(page) => {
                answer(state, &mut respond, &page, head_request);
                return Some(Down {
                    status: page.status,
                    bytes_out: 0,
                    first_byte: None,
                    reusable: false,
                });
            }
        };
        let max_head = state.config.http_limits.max_head;
        let head = loop {
            match ResponseHead::parse(&buf, head_request, max_head) {
                Ok(Some(h)) if h.is_interim() => {
                    if h.status == 100 {
                        let _ = respond.send_informational(interim(100));
                    }
                    buf.advance(h.head_len);
                }
                Ok(Some(h)) => break h,
                Ok(None) => {
                    let more = tokio::select! {
                        r = recv.read_chunk(IO_CHUNK, true) => r,
                        _ = poll_fn(|c| respond.poll_reset(c)) => return None,
                    };
                    match more {
                        Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                        _ => return bad_gateway(state, respond, host, "no complete response"),
                    }
                }
                Err(e) => return bad_gateway(state, respond, host, &e.to_string()),
            }
        };
        if head.body == ResponseBody::Upgrade {
            return bad_gateway(state, respond, host, "a protocol switch (101)");
        }
        let head_bytes = buf.split_to(head.head_len).freeze();
        let response = self.response(&head_bytes, head.status, head.body)?;
        let ends = matches!(head.body, ResponseBody::None | ResponseBody::Length(0));
        let mut stream = respond.send_response(response, ends).ok()?;
        let mut down = Down {
            status: head.status,
            bytes_out: 0,
            first_byte: Some(Instant::now()),
            reusable: head.keep_alive,
        };
        if ends {
            // A bodiless answer: nothing may follow on the connection.
            down.reusable &= buf.is_empty();
            return Some(down);
        }
        let framing = match head.body {
            ResponseBody::Length(n) => Framing::Length(n),
            ResponseBody::Chunked => Framing::Chunked,
            _ => Framing::UntilClose,
        };
        let mut body = BodyParts::new(framing, &state.config.http_limits);
        let idle = state.config.timeouts.body_idle;
        let mut pending = buf.freeze();
        loop {
            // Frames out of what has arrived; then more from the tunnel.
            let Ok(parts) = body.take(&mut pending) else {
                stream.send_reset(Reason::INTERNAL_ERROR);
                return Some(Down {
                    reusable: false,
                    ..down
                });
            };
            for data in parts.data {
                down.bytes_out += data.len() as u64;
                if h2x::send_data(&mut stream, data, idle).await.is_err() {
                    return None;
                }
            }
            if let Some(lines) = parts.end {
                let trailers = h2x::fields(&lines);
                let sent = match trailers.is_empty() {
                    false => stream.send_trailers(trailers),
                    true => stream.send_data(Bytes::new(), true),
                };
                down.reusable &= pending.is_empty() && sent.is_ok();
                return Some(down);
            }
            let more = tokio::select! {
                r = recv.read_chunk(IO_CHUNK, true) => r,
                _ = poll_fn(|c| stream.poll_reset(c)) => return None,
            };
            match more {
                Ok(Some(c)) => pending = c.bytes,
                // The end of a body that runs until the close.
                Ok(None) if framing == Framing::UntilClose => {
                    let _ = stream.send_data(Bytes::new(), true);
                    down.reusable = false;
                    return Some(down);
                }
                _ => {
                    stream.send_reset(Reason::INTERNAL_ERROR);
                    return Some(Down {
                        reusable: false,
                        ..down
                    });
                }
            }
        }
    }

    /// The HTTP/2 response for a local HTTP/1.1 head: its status and
    /// fields, without those of its own hop, with the tunnel's response
    /// edits and HSTS.
    fn response(&self, head: &[u8], status: u16, body: ResponseBody) -> Option<Response<()>> {
        let mut storage = [httparse::EMPTY_HEADER; tunnel_lib::http1::MAX_HEADERS_CAP];
        let mut res = httparse::Response::new(&mut storage);
        res.parse(head).ok()?;
        let listed: Vec<String> = res
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| {
                String::from_utf8_lossy(h.value)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        let policy = self.rule.policy();
        let removed = |name: &str| {
            policy.is_some_and(|p| {
                p.response_remove
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(name))
            })
        };
        let mut headers = HeaderMap::with_capacity(res.headers.len() + 2);
        for h in res.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            let hop = h2x::is_connection_specific(&lower, h.value) || listed.contains(&lower);
            let framing = lower == "content-length" && body == ResponseBody::Chunked;
            if hop || framing || lower == "te" || removed(&lower) {
                continue;
            }
            h2x::append(&mut headers, &lower, h.value);
        }
        if let Some(p) = policy {
            for line in &p.response_add {
                headers.extend(h2x::fields(line.strip_suffix(b"\r\n").unwrap_or(line)));
            }
        }
        if let (Scheme::Https, Some(age)) = (self.cx.scheme, self.cx.state.config.hsts) {
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", age.as_secs())) {
                headers.insert(http::header::STRICT_TRANSPORT_SECURITY, v);
            }
        }
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).ok()?;
        *r.headers_mut() = headers;
        Some(r)
    }
}

fn interim(status: u16) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::CONTINUE);
    r
}

/// The server's own page as an HTTP/2 response.
fn answer(state: &State, respond: &mut SendResponse<Bytes>, page: &ErrorPage, head: bool) {
    state.metrics.page(page.status, page.code);
    let (body, content_type) = page.body();
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(page.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if page.text.is_none() {
        h.insert("x-tunnel-error", HeaderValue::from_static(page.code));
    }
    if let Some((name, value)) = page.header.as_deref() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    let empty = head || body.is_empty();
    if let Ok(mut s) = respond.send_response(r, empty) {
        if !empty {
            // A page is small: within the stream's initial window.
            let _ = s.send_data(Bytes::from(body), true);
        }
    }
}

/// The local service's response could not be relayed: a 502 page.
fn bad_gateway(
    state: &State,
    mut respond: SendResponse<Bytes>,
    host: &str,
    what: &str,
) -> Option<Down> {
    debug!(%host, "502 over HTTP/2: the local service sent {what}");
    let page = respond::local_failed(
        host,
        "the local service sent a response the tunnel cannot relay",
    );
    answer(state, &mut respond, &page, false);
    Some(Down {
        status: 502,
        bytes_out: 0,
        first_byte: None,
        reusable: false,
    })
}

fn too_large(max: u64) -> ErrorPage {
    respond::bad_request(
        413,
        &format!("the request body is larger than this server accepts ({max} bytes)"),
    )
}
