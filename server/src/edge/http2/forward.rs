//! A forwarded HTTP/2 request: its body up the tunnel stream and the
//! local service's HTTP/1.1 answer back as HTTP/2, at once (the module
//! above routes it; this is [`Up::forward`]).

use std::future::poll_fn;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::Reason;
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode};
use quinn::VarInt;
use tokio::time::Instant;
use tracing::debug;

use tunnel_lib::h2x;
use tunnel_lib::http1::{
    encode::chunk_size_line, BodyKind, BodyParts, Framing, ResponseBody, ResponseHead,
};
use tunnel_lib::limits::IO_CHUNK;
use tunnel_lib::proto::{reset, StreamKind};

use super::super::Scheme;
use super::{answer, Conn};
use crate::registry::Rule;
use crate::respond;
use crate::state::State;
use crate::upstream;

/// A forwarded exchange.
pub(super) struct Up<'a> {
    pub(super) cx: &'a Conn,
    pub(super) rule: Arc<Rule>,
    pub(super) started: Instant,
    pub(super) line: Option<Box<str>>,
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
    pub(super) async fn forward(
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
            super::super::record(
                state,
                &self.rule,
                self.cx.peer,
                super::super::Exchanged {
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
