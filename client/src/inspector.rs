//! The inspector: the client's own web page (`--inspect ADDR`, default
//! `127.0.0.1:4040`) listing recent exchanges live, with their heads,
//! bodies and timing, and **Replay** (as captured, or edited) against the
//! local service.
//!
//! Everything it shows comes from the [`Monitor`]'s ring (bounded: the last
//! `observe::RING` exchanges, `observe::BODY_CAP` per body). Headers whose
//! names speak of tokens, secrets, keys, authorization or sessions, and
//! cookies, are masked unless the page asks for them (`?secrets=1`); a
//! replay sends the real values. Who may ask is [`access`]'s business.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lib::admin::{self, Body};

use crate::observe::{Capture, Exchange, Monitor, Observer};

/// How long a replay may take, connecting included.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest edited request accepted for a replay.
const MAX_EDIT: usize = 1024 * 1024;

const PAGE: &str = include_str!("inspector.html");

mod access;
pub use access::{Access, CSRF_HEADER};

/// Serves the inspector until `shutdown`, to the requests `access` lets in.
pub async fn serve(
    listener: tokio::net::TcpListener,
    access: Access,
    monitor: Arc<Monitor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let access = Arc::new(access);
    admin::serve(listener, shutdown, move |req| {
        let refused = access.check(req.method(), req.headers());
        let monitor = monitor.clone();
        async move {
            let mut r = match refused {
                Some(why) => {
                    let mut r = json_response(why.status(), &json!({ "error": why.message() }));
                    if why == access::Refusal::Credential {
                        r.headers_mut().insert(
                            hyper::header::WWW_AUTHENTICATE,
                            hyper::header::HeaderValue::from_static(
                                "Basic realm=\"tunnel-client inspector\", charset=\"UTF-8\"",
                            ),
                        );
                    }
                    r
                }
                None => route(monitor, req).await,
            };
            access::harden(r.headers_mut());
            r
        }
    })
    .await
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    admin::full(status, "application/json", v.to_string())
}

async fn route(monitor: Arc<Monitor>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let secrets = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "secrets=1"));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, [""]) => admin::full(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (Method::GET, ["api", "requests"]) => {
            let list: Vec<Value> = monitor
                .recent(crate::observe::RING)
                .iter()
                .map(|e| summary(e))
                .collect();
            json_response(StatusCode::OK, &Value::Array(list))
        }
        (Method::GET, ["api", "events"]) => events(&monitor),
        (Method::GET, ["api", "requests", id]) => {
            match id.parse().ok().and_then(|i| monitor.exchange(i)) {
                Some(e) => json_response(StatusCode::OK, &detail(&e, secrets)),
                None => not_found(),
            }
        }
        (Method::POST, ["api", "requests", id, "replay"]) => {
            let Some(ex) = id.parse().ok().and_then(|i| monitor.exchange(i)) else {
                return not_found();
            };
            let Some(edit) = admin::read_body(req, MAX_EDIT).await else {
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &json!({"error": format!("an edited request may be {MAX_EDIT} bytes at most")}),
                );
            };
            match replay(&monitor, &ex, &edit).await {
                Ok(new) => json_response(StatusCode::OK, &detail(&new, secrets)),
                Err(why) => json_response(StatusCode::BAD_GATEWAY, &json!({ "error": why })),
            }
        }
        _ => not_found(),
    }
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "no such exchange (the inspector keeps the most recent ones only)"}),
    )
}

/// Server-sent events: one `exchange` event per finished exchange.
fn events(monitor: &Monitor) -> Response<Body> {
    let rx = monitor.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let line = format!("event: exchange\ndata: {}\n\n", summary(&e));
                    return Some((Ok(hyper::body::Frame::data(Bytes::from(line))), rx));
                }
                // Fell behind: the page reloads the list on the next event.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    // A comment first, so the browser sees the stream open at once.
    let hello = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
            b": inspector\n\n",
        )))
    });
    let body = BodyExt::boxed(http_body_util::StreamBody::new(hello.chain(stream)));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn summary(e: &Exchange) -> Value {
    json!({
        "id": e.id,
        "tunnel": &*e.tunnel,
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "duration_ms": millis(e.duration),
        "at": e.at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "replay_of": e.replay_of,
        "size": e.response_body.total,
        "protocol": e.protocol,
    })
}

fn detail(e: &Exchange, secrets: bool) -> Value {
    let mut v = summary(e);
    let o = v.as_object_mut().expect("summary is an object");
    o.insert("local".into(), json!(&*e.local));
    o.insert("visitor".into(), json!(e.visitor.to_string()));
    o.insert("ttfb_ms".into(), json!(e.ttfb.map(millis)));
    o.insert(
        "request_head".into(),
        json!(head_text(&e.request_head, secrets)),
    );
    o.insert(
        "request_body".into(),
        body(&e.request_head, &e.request_body),
    );
    o.insert(
        "response_head".into(),
        json!(head_text(&e.response_head, secrets)),
    );
    o.insert(
        "response_body".into(),
        body(&e.response_head, &e.response_body),
    );
    o.insert(
        "response_trailers".into(),
        json!(head_text(&e.response_trailers, secrets)),
    );
    o.insert(
        "replayable".into(),
        json!(!e.request_body.truncated() && !e.request_head.is_empty()),
    );
    v
}

/// A head as text, secret header values masked unless `secrets`.
pub(crate) fn head_text(head: &[u8], secrets: bool) -> String {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive("\r\n") {
        let masked = (!secrets)
            .then(|| line.split_once(':'))
            .flatten()
            .filter(|(name, _)| access::is_secret_header(name));
        match masked {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str(": ••• (masked: tick \"show secrets\")\r\n");
            }
            None => out.push_str(line),
        }
    }
    out
}

fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head).ok()?.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A body for display: JSON pretty-printed, text as is, binary as hex.
pub(crate) fn body(head: &[u8], c: &Capture) -> Value {
    let kind = header(head, "content-type").unwrap_or("");
    let base = |k: &str, shown: String| {
        json!({
            "kind": k,
            "shown": shown,
            "size": c.total,
            "kept": c.kept.len(),
            "truncated": c.truncated(),
        })
    };
    if c.total == 0 {
        return base("empty", String::new());
    }
    if c.kept.is_empty() {
        return base("uncaptured", String::new());
    }
    if kind.contains("json") && !c.truncated() {
        if let Ok(v) = serde_json::from_slice::<Value>(&c.kept) {
            let mut out = base("json", serde_json::to_string_pretty(&v).unwrap_or_default());
            // As sent, for "Replay with edits".
            out["raw"] = json!(String::from_utf8_lossy(&c.kept));
            return out;
        }
    }
    match std::str::from_utf8(&c.kept) {
        Ok(t) => base("text", t.to_owned()),
        Err(e) if c.truncated() && e.error_len().is_none() => {
            // Cut inside a character at the cap: still text.
            base(
                "text",
                String::from_utf8_lossy(&c.kept[..e.valid_up_to()]).into_owned(),
            )
        }
        Err(_) => {
            let mut hex = String::new();
            for (i, row) in c.kept.chunks(16).take(64).enumerate() {
                use std::fmt::Write;
                let _ = write!(hex, "{:08x} ", i * 16);
                for b in row {
                    let _ = write!(hex, " {b:02x}");
                }
                hex.push('\n');
            }
            base("binary", hex)
        }
    }
}

/// The bytes to send for a replay: as captured, or the edited text (its
/// body re-framed with a Content-Length).
fn replay_bytes(ex: &Exchange, edit: &[u8]) -> Result<Bytes, String> {
    if edit.iter().all(|b| b.is_ascii_whitespace()) {
        if ex.request_body.truncated() {
            return Err(format!(
                "the request body was {} bytes and only the first {} were kept, so it cannot be \
                 replayed as it was: use \"Replay with edits\" to send another body",
                ex.request_body.total,
                ex.request_body.kept.len()
            ));
        }
        // A chunked body was kept decoded: it goes with a Content-Length.
        if header(&ex.request_head, "transfer-encoding").is_some() {
            return reframe(&ex.request_head, &ex.request_body.kept);
        }
        let mut out = BytesMut::from(&ex.request_head[..]);
        out.extend_from_slice(&ex.request_body.kept);
        return Ok(out.freeze());
    }
    // Edited: the text as typed (LF line ends are fine), head then body.
    let text = String::from_utf8_lossy(edit).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let head = head.replace('\n', "\r\n") + "\r\n\r\n";
    reframe(head.as_bytes(), body.as_bytes())
}

/// `head` with its framing headers replaced by a Content-Length for `body`.
fn reframe(head: &[u8], body: &[u8]) -> Result<Bytes, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let first = lines.next().ok_or("the request is empty")?;
    let mut parts = first.split(' ');
    let (Some(_method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "{first:?} is not a request line (METHOD /path HTTP/1.1)"
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "{version:?}: only HTTP/1.x requests can be replayed"
        ));
    }
    let mut out = String::with_capacity(head.len() + 32);
    out.push_str(first);
    out.push_str("\r\n");
    for l in lines {
        let name = l.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        if !l.contains(':') {
            return Err(format!("{l:?} is not a header line (Name: value)"));
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut b = BytesMut::from(out.as_bytes());
    b.extend_from_slice(body);
    Ok(b.freeze())
}

/// Sends a captured (or edited) request to the local service again and
/// records the new exchange (marked as a replay of `ex`).
pub(crate) async fn replay(
    monitor: &Arc<Monitor>,
    ex: &Exchange,
    edit: &[u8],
) -> Result<Arc<Exchange>, String> {
    let request = replay_bytes(ex, edit)?;
    let observer = Observer::new(
        monitor.clone(),
        ex.tunnel.clone(),
        ex.local.clone(),
        ex.visitor,
        None,
    )
    .replaying(ex.id);
    use tunnel_lib::io::Tap;
    observer.toward_local(&request);
    if observer.idle() {
        return Err(
            "the request could not be read back as HTTP/1.1: check the request line and headers"
                .into(),
        );
    }
    let id = observer.last_id();
    let go = async {
        // Through the tunnel's own dialer when it is connected (TLS to a
        // local https service, the pool), else straight to the address.
        let targets = monitor.targets.load_full();
        let target = targets.as_ref().and_then(|t| {
            t.values()
                .find(|t| *t.local_name == *ex.local && *t.name == *ex.tunnel)
        });
        let conn = match target {
            // A local HTTP/2 service: the request goes as HTTP/2 on its
            // pool, as a visitor's would.
            Some(t) if t.speaks_h2() && t.h2.is_some() => {
                let pool = t.h2.as_ref().expect("checked");
                let sender = pool.sender(t).await.map_err(|(_, m)| m)?;
                let scheme = if t.tls.is_some() { "https" } else { "http" };
                let mut answer = ToObserver(&observer);
                let mut asked = Once(Some(request.clone()));
                crate::h2local::serve(sender, scheme, &mut answer, &mut asked, Bytes::new(), &())
                    .await;
                return Ok(());
            }
            Some(t) => crate::forward::dial(t).await.map_err(|(_, m)| m)?,
            None => crate::upstream::LocalConn::Tcp(
                tokio::net::TcpStream::connect(&*ex.local)
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot connect to {}: {e}; is the local service running?",
                            ex.local
                        )
                    })?,
            ),
        };
        match conn {
            crate::upstream::LocalConn::Tcp(mut t) => {
                exchange(&mut t, &request, &observer, &ex.local).await
            }
            crate::upstream::LocalConn::Tls(mut t) => {
                exchange(&mut *t, &request, &observer, &ex.local).await
            }
        }
    };
    let outcome = tokio::time::timeout(REPLAY_TIMEOUT, go).await;
    observer.finish();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(format!(
                "{} did not answer within {REPLAY_TIMEOUT:?}",
                ex.local
            ))
        }
    }
    monitor
        .exchange(id)
        .ok_or_else(|| "the replay finished but was not recorded".to_owned())
}

/// A replayed request, given once.
struct Once(Option<Bytes>);

impl crate::h2local::Source for Once {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        Ok(self.0.take())
    }
    fn stop(&mut self) {}
}

/// A replay's answer, shown to its observer.
struct ToObserver<'a>(&'a Observer);

impl crate::h2local::Sink for ToObserver<'_> {
    async fn put(&mut self, bytes: Bytes) -> Result<(), String> {
        use tunnel_lib::io::Tap;
        self.0.toward_visitor(&bytes);
        Ok(())
    }
    fn reset(&mut self) {}
}

/// Sends `request` on `conn` and shows the answer to `observer` until it
/// is whole (or the service closes).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
    request: &[u8],
    observer: &Observer,
    local: &str,
) -> Result<(), String> {
    use tunnel_lib::io::Tap;
    conn.write_all(request)
        .await
        .map_err(|e| format!("sending to {local}: {e}"))?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        buf.reserve(16 * 1024);
        let n = conn
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("reading from {local}: {e}"))?;
        if n == 0 {
            break;
        }
        observer.toward_visitor(&buf.split().freeze());
        if observer.idle() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_unless_asked() {
        let head =
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer hunter2\r\ncookie: s=1\r\n\r\n";
        let masked = head_text(head, false);
        assert!(
            !masked.contains("hunter2") && !masked.contains("s=1"),
            "{masked}"
        );
        assert!(masked.contains("Host: a"));
        assert!(head_text(head, true).contains("hunter2"));
    }

    #[test]
    fn an_edited_request_is_reframed() {
        let b = reframe(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\n",
            b"hi",
        )
        .unwrap();
        assert_eq!(
            &b[..],
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        );
        assert!(reframe(b"nonsense\r\n\r\n", b"").is_err());
    }

    #[test]
    fn bodies_are_shown_by_kind() {
        let c = |b: &'static [u8]| Capture {
            kept: Bytes::from_static(b),
            total: b.len() as u64,
        };
        let json_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n";
        assert_eq!(body(json_head, &c(br#"{"a":1}"#))["kind"], "json");
        assert_eq!(
            body(json_head, &c(br#"{"a":1}"#))["shown"],
            "{\n  \"a\": 1\n}"
        );
        assert_eq!(body(b"", &c(b"plain"))["kind"], "text");
        assert_eq!(body(b"", &c(&[0xff, 0, 1]))["kind"], "binary");
    }
}
