//! A small HTTP/1 server (hyper) for the admin listener (`/metrics`,
//! `/healthz`, `/readyz`) and the client's inspector. Loopback by default,
//! never on the visitors' path.
//!
//! One task per connection, at most [`MAX_CONNECTIONS`] at once, all owned
//! by a `JoinSet` that is aborted when [`serve`] returns. A connection must
//! send its head within [`HEAD_TIMEOUT`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The response body every admin route returns.
pub type Body = BoxBody<Bytes, Infallible>;

/// Concurrent admin connections (a scraper, a few browser tabs).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A whole response.
pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", body)
}

/// The Prometheus text exposition content type.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `handler` on `listener` until `shutdown` completes; then stops
/// accepting and aborts the connections still open (a scrape in flight, an
/// inspector's event stream).
pub async fn serve<H, F>(listener: TcpListener, shutdown: impl Future<Output = ()>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    let mut backoff = crate::runtime::AcceptBackoff::default();
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok((tcp, _)) => { backoff.accepted(); tcp }
                Err(e) => {
                    tokio::time::sleep(backoff.failed("admin listener", &e)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Reads a request body of at most `limit` bytes (`None`: larger, or cut).
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    limited.collect().await.ok().map(|c| c.to_bytes())
}
