//! Local services that speak HTTP/2, gRPC servers above all: `--upstream
//! h2c` (prior knowledge on TCP), `--upstream h2` with an `https://` local
//! (TLS, ALPN `h2` alone), or an `https://` local that picks `h2` by ALPN.
//!
//! The tunnel stream carries HTTP/1.1 as for every HTTP tunnel: a head, a
//! body (chunked when it has no length) and its trailers. Here the client
//! reads it and speaks HTTP/2 to the service, the request's body and the
//! response's at once (a bidirectional call streams both ways), and writes
//! the answer back as HTTP/1.1 with its trailers (`grpc-status`) after
//! the last chunk; the server turns that into HTTP/2 for the visitor. A
//! reset travels both ways: a visitor's cancel resets the tunnel stream,
//! which drops the local stream (h2 sends RST_STREAM CANCEL); a local
//! reset resets the tunnel stream, and the server resets the visitor's.
//!
//! Each target keeps a bounded pool ([`MAX_CONNECTIONS`]) of connections:
//! a request takes one with a free stream, a new one is dialled only when
//! all are at their stream limit. Each connection's driver is a task on
//! the pool's own tracker, cancelled when the pool (its target) is dropped.

use std::future::poll_fn;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use h2::client::SendRequest;
use quinn::{RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tunnel_lib::h2x;
use tunnel_lib::http1::{BodyKind, BodyParts, Framing, Limits, RequestHead, RequestReader};
use tunnel_lib::io::Tap;
use tunnel_lib::limits::IO_CHUNK;
use tunnel_lib::proto::{reset, ReplyCode};

use crate::target::Target;
use crate::upstream::LocalConn;

/// HTTP/2 connections one target keeps at most.
pub(crate) const MAX_CONNECTIONS: usize = 4;

/// A body or window that stalls this long ends the call (as the server's
/// own `body_idle`).
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The connections to one local HTTP/2 service.
pub(crate) struct H2Pool {
    conns: Mutex<Vec<SendRequest<Bytes>>>,
    drivers: TaskTracker,
    stop: CancellationToken,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").finish_non_exhaustive()
    }
}

impl Drop for H2Pool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Default for H2Pool {
    fn default() -> Self {
        H2Pool {
            conns: Mutex::new(Vec::new()),
            drivers: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }
}

impl H2Pool {
    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<Bytes>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection with a free stream: a pooled one, else a new one while
    /// the pool has room, else the first to free a stream.
    pub(crate) async fn sender(
        &self,
        target: &Target,
    ) -> Result<SendRequest<Bytes>, (ReplyCode, String)> {
        let pooled: Vec<SendRequest<Bytes>> = self.conns().clone();
        let mut live = Vec::with_capacity(pooled.len());
        for s in pooled {
            match s.clone().ready().now_or_never() {
                Some(Ok(ready)) => return Ok(ready),
                // Gone: dropped from the pool below.
                Some(Err(_)) => {}
                None => live.push(s),
            }
        }
        *self.conns() = live.clone();
        if live.len() < MAX_CONNECTIONS {
            let s = self.dial(target).await?;
            self.conns().push(s.clone());
            return Ok(s);
        }
        live[0].clone().ready().await.map_err(|e| {
            (
                ReplyCode::Unreachable,
                format!("{}: HTTP/2: {e}", target.local),
            )
        })
    }

    /// Takes a connection on which the service chose HTTP/2 into the pool.
    pub(crate) async fn adopt(
        &self,
        target: &Target,
        conn: LocalConn,
    ) -> Result<SendRequest<Bytes>, (ReplyCode, String)> {
        let s = self.start(target, conn).await?;
        let mut conns = self.conns();
        if conns.len() < MAX_CONNECTIONS {
            conns.push(s.clone());
        }
        Ok(s)
    }

    async fn dial(&self, target: &Target) -> Result<SendRequest<Bytes>, (ReplyCode, String)> {
        let conn = crate::forward::dial_new(target).await?;
        self.start(target, conn).await
    }

    /// The HTTP/2 handshake on a connection, its driver started.
    async fn start(
        &self,
        target: &Target,
        conn: LocalConn,
    ) -> Result<SendRequest<Bytes>, (ReplyCode, String)> {
        let handshake = async {
            let mut b = h2::client::Builder::new();
            b.initial_window_size(256 * 1024)
                .initial_connection_window_size(1024 * 1024)
                .max_send_buffer_size(256 * 1024);
            match conn {
                LocalConn::Tcp(t) => b.handshake::<_, Bytes>(t).await.map(|(s, c)| {
                    self.drive(c);
                    s
                }),
                LocalConn::Tls(t) => b.handshake::<_, Bytes>(t).await.map(|(s, c)| {
                    self.drive(c);
                    s
                }),
            }
        };
        match tokio::time::timeout(target.policy.connect_timeout, handshake).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err((
                ReplyCode::Unreachable,
                format!(
                    "{} did not speak HTTP/2 ({e}); is it an HTTP/2 (gRPC) service? Without \
                     --upstream it is spoken to in HTTP/1.1",
                    target.local
                ),
            )),
            Err(_) => Err((
                ReplyCode::TimedOut,
                format!("{}: no HTTP/2 handshake in time", target.local),
            )),
        }
    }

    /// Runs a connection's I/O until it ends or the pool goes.
    fn drive<T>(&self, conn: h2::client::Connection<T, Bytes>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let stop = self.stop.clone();
        self.drivers.spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("local HTTP/2 connection ended: {e}");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Where the HTTP/1.1 requests come from: a tunnel stream, or the
/// inspector's replay.
pub(crate) trait Source: Send {
    /// The next bytes; `None` at the end (or when the server handed the
    /// stream back with `REUSE`).
    fn next(&mut self) -> impl std::future::Future<Output = Result<Option<Bytes>, String>> + Send;
    /// Stops reading: the exchange was cut.
    fn stop(&mut self);
}

/// Where the HTTP/1.1 responses go.
pub(crate) trait Sink: Send {
    fn put(&mut self, bytes: Bytes)
        -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Resets: the exchange was cut.
    fn reset(&mut self);
}

impl Source for RecvStream {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        match self.read_chunk(IO_CHUNK, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(quinn::ReadError::Reset(code)) if code == VarInt::from_u32(reset::REUSE) => {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }
    fn stop(&mut self) {
        let _ = RecvStream::stop(self, VarInt::from_u32(reset::CANCELLED));
    }
}

impl Sink for SendStream {
    async fn put(&mut self, bytes: Bytes) -> Result<(), String> {
        self.write_chunk(bytes).await.map_err(|e| e.to_string())
    }
    fn reset(&mut self) {
        let _ = SendStream::reset(self, VarInt::from_u32(reset::LOCAL_RESET));
    }
}

/// Serves the HTTP/1.1 requests of one tunnel stream (one, or several in
/// a row on a kept-alive stream) over HTTP/2 to the local service. Each
/// request's bytes are shown to `tap` as they came, each response as it
/// goes back.
pub(crate) async fn serve<T: Tap>(
    mut sender: SendRequest<Bytes>,
    scheme: &str,
    send: &mut impl Sink,
    recv: &mut impl Source,
    first: Bytes,
    tap: &T,
) {
    let limits = Limits::default();
    // What came with the stream's preface is the first request's start.
    if !first.is_empty() {
        tap.toward_local(&first);
    }
    let mut buf = BytesMut::from(&first[..]);
    loop {
        let head = match read_head(recv, &mut buf, &limits, tap).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("request for a local HTTP/2 service: {e}");
                return cut(send, recv);
            }
        };
        let framing = match head.body {
            BodyKind::None => Framing::None,
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked => Framing::Chunked,
        };
        let is_head = head.is_head();
        if head.upgrade_websocket {
            // Not on an HTTP/2 connection; the first request of a stream
            // that upgrades goes on HTTP/1.1 (`forward::upgrades`).
            tracing::debug!("an upgrade after other requests on one stream: not over HTTP/2");
            return cut(send, recv);
        }
        let Some(request) = request(&head, scheme) else {
            return cut(send, recv);
        };
        sender = match sender.ready().await {
            Ok(s) => s,
            Err(_) => return cut(send, recv),
        };
        let Ok((response, body_tx)) = sender.send_request(request, framing == Framing::None) else {
            return cut(send, recv);
        };
        let rest = buf.split().freeze();
        let mut uploaded = None;
        let down = {
            let up = upload(recv, rest, framing, body_tx, &limits, tap);
            let down = download(response, send, is_head, tap);
            tokio::pin!(up, down);
            loop {
                tokio::select! {
                    r = &mut up, if uploaded.is_none() => uploaded = Some(r),
                    d = &mut down => break d,
                }
            }
        };
        match (down, uploaded) {
            // Both whole: the stream may carry the next request.
            (Ok(()), Some(Ok(rest))) => buf.extend_from_slice(&rest),
            // The answer is whole but the request was not (the service
            // answered early): this stream is done.
            (Ok(()), _) => return,
            (Err(e), _) => {
                tracing::debug!("local HTTP/2 exchange cut: {e}");
                return cut(send, recv);
            }
        }
    }
}

/// Resets both directions of the tunnel stream (the visitor then sees its
/// stream reset too).
fn cut(send: &mut impl Sink, recv: &mut impl Source) {
    send.reset();
    recv.stop();
}

/// The next request head on the stream; `None` when the stream ended (or
/// the server handed it back with `REUSE`) between requests.
async fn read_head<T: Tap>(
    recv: &mut impl Source,
    buf: &mut BytesMut,
    limits: &Limits,
    tap: &T,
) -> Result<Option<RequestHead>, String> {
    let mut reader = RequestReader::new();
    loop {
        if !buf.is_empty() {
            if let Some(h) = reader.read(buf, limits).map_err(|e| e.to_string())? {
                return Ok(Some(h));
            }
        }
        match recv.next().await? {
            Some(c) => {
                tap.toward_local(&c);
                buf.extend_from_slice(&c);
            }
            None if buf.is_empty() => return Ok(None),
            None => return Err("the stream ended inside a request head".into()),
        }
    }
}

/// The HTTP/2 request for an HTTP/1.1 head: `:authority` from `Host`, the
/// fields of its own hop left out.
fn request(head: &RequestHead, scheme: &str) -> Option<http::Request<()>> {
    let host = std::str::from_utf8(head.host()).ok()?;
    let target = std::str::from_utf8(head.target()).ok()?;
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(host)
        .path_and_query(target)
        .build()
        .ok()?;
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::from_bytes(head.method()).ok()?;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    for (name, value) in head.headers() {
        let name = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
        if name == "host"
            || name == "content-length"
            || name == "te"
            || h2x::is_connection_specific(&name, value)
        {
            continue;
        }
        h2x::append(headers, &name, value);
    }
    // This end takes trailers (they go back after the last chunk): said as
    // gRPC servers require, since HTTP/1.1 dropped `TE` as one hop's.
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    *req.version_mut() = http::Version::HTTP_2;
    Some(req)
}

/// The request body from the tunnel stream to the local stream, its
/// trailers last. What followed the body (a next request) is returned.
async fn upload<T: Tap>(
    recv: &mut impl Source,
    mut pending: Bytes,
    framing: Framing,
    mut tx: h2::SendStream<Bytes>,
    limits: &Limits,
    tap: &T,
) -> Result<Bytes, String> {
    if framing == Framing::None {
        return Ok(pending);
    }
    let mut parts = BodyParts::new(framing, limits);
    loop {
        let got = parts.take(&mut pending).map_err(|e| e.to_string())?;
        for data in got.data {
            h2x::send_data(&mut tx, data, IDLE)
                .await
                .map_err(|_| "the local service stopped taking the request body".to_owned())?;
        }
        if let Some(lines) = got.end {
            let trailers = h2x::fields(&lines);
            let sent = match trailers.is_empty() {
                true => tx.send_data(Bytes::new(), true),
                false => tx.send_trailers(trailers),
            };
            sent.map_err(|e| e.to_string())?;
            return Ok(pending);
        }
        match tokio::time::timeout(IDLE, recv.next()).await {
            Ok(Ok(Some(c))) => {
                tap.toward_local(&c);
                pending = c;
            }
            Ok(Ok(None)) => return Err("the request body was cut".into()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the request body stalled".into()),
        }
    }
}

/// The local HTTP/2 response back on the tunnel stream as HTTP/1.1: its
/// head, its DATA as chunks (each frame's window given back once it is on
/// the stream), its trailers after the last chunk.
async fn download<T: Tap>(
    response: h2::client::ResponseFuture,
    send: &mut impl Sink,
    head_request: bool,
    tap: &T,
) -> Result<(), String> {
    let response = response.await.map_err(|e| e.to_string())?;
    let (parts, mut body) = response.into_parts();
    let ends = body.is_end_stream();
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH {
            // Kept only where the body is not re-chunked.
            if !ends {
                continue;
            }
            has_length = true;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    let bodiless = head_request || matches!(parts.status.as_u16(), 100..=199 | 204 | 304);
    if !ends {
        head.put_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_length && !bodiless {
        head.put_slice(b"content-length: 0\r\n");
    }
    head.put_slice(b"\r\n");
    let head = head.freeze();
    tap.toward_visitor(&head);
    send.put(head).await?;
    if ends {
        return Ok(());
    }
    loop {
        let data = tokio::time::timeout(IDLE, poll_fn(|c| body.poll_data(c)))
            .await
            .map_err(|_| "the local response stalled".to_owned())?;
        match data {
            Some(Ok(d)) => {
                let n = d.len();
                if n == 0 {
                    continue;
                }
                let mut chunk = BytesMut::with_capacity(n + 16);
                chunk.put_slice(&tunnel_lib::http1::encode::chunk_size_line(n));
                let framed = [chunk.freeze(), d, Bytes::from_static(b"\r\n")];
                for piece in framed {
                    tap.toward_visitor(&piece);
                    send.put(piece).await?;
                }
                let _ = body.flow_control().release_capacity(n);
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    let end = h2x::last_chunk(trailers.as_ref());
    tap.toward_visitor(&end);
    send.put(end).await?;
    Ok(())
}
