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

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use tunnel_lib::h2x;
use tunnel_lib::http1::{BodyKind, RequestReader};
use tunnel_lib::limits::OWNER_HOLD;

mod forward;

use super::request::{route, Action, Front};
use super::Scheme;
use crate::respond::{self, ErrorPage};
use crate::state::State;
use forward::Up;

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

fn too_large(max: u64) -> ErrorPage {
    respond::bad_request(
        413,
        &format!("the request body is larger than this server accepts ({max} bytes)"),
    )
}
