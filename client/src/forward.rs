//! One data stream from the server ↔ one connection to the local service
//! (TCP, or TLS to a local https service).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use tunnel_lib::io::{read_message, splice_tapped, SpliceEnd};

use crate::observe::{Monitor, Observer};
use crate::target::{Gate, Target, Targets};
use crate::upstream::LocalConn;
use tunnel_lib::limits::PREFACE_TIMEOUT;
use tunnel_lib::proto::{reset, Preface, Reply, ReplyCode};

/// Counts a data stream as open while it lives.
struct OpenStream<'a>(&'a Monitor);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn handle(
    targets: Targets,
    monitor: Arc<Monitor>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    monitor.streams_total.fetch_add(1, Ordering::Relaxed);
    monitor.streams_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenStream(&monitor);
    let mut buf = BytesMut::new();
    let preface = match tokio::time::timeout(
        PREFACE_TIMEOUT,
        read_message(&mut recv, &mut buf, Preface::decode),
    )
    .await
    {
        Ok(Ok(Some(p))) => p,
        other => {
            debug!("bad stream preface: {other:?}");
            let _ = send.reset(VarInt::from_u32(reset::CANCELLED));
            return;
        }
    };
    let Some(target) = targets.get(&preface.tunnel_id) else {
        reply(
            &mut send,
            Reply::Failed {
                code: ReplyCode::UnknownTunnel,
                message: "unknown tunnel".into(),
            },
        )
        .await;
        return;
    };
    let gate = target.gate();
    let failed = || {
        if let Some(m) = &monitor.metrics {
            m.local_failures.inc();
        }
        // Listed on the screen and in the inspector with the server's 502.
        if target.http && monitor.observe {
            let o = observer(&monitor, target, preface.visitor);
            tunnel_lib::io::Tap::toward_local(&o, &buf.clone().freeze());
            o.answered_by_server(502);
        }
    };
    if let Gate::Open(left) = gate {
        failed();
        let message = format!(
            "{} failed its last connection attempts, so the tunnel answers at once for a while \
             (circuit open; the next try in {:.1} s)",
            target.local,
            left.as_secs_f64()
        );
        reply(
            &mut send,
            Reply::Failed {
                code: ReplyCode::CircuitOpen,
                message,
            },
        )
        .await;
        return;
    }
    // A local HTTP/2 service gets a pooled connection's stream; any other
    // a connection of its own. An https service chooses by ALPN on the
    // first connection; an upgrade always goes on HTTP/1.1.
    // (Only a target that may speak HTTP/2 looks at the request.)
    let dialled = match &target.h2 {
        Some(_) if upgrades(&buf) => dial_with(target, true).await.map(Local::Conn),
        Some(pool) if target.speaks_h2() => pool.sender(target).await.map(Local::H2),
        Some(pool) => match dial(target).await {
            Ok(c) if c.is_h2() => {
                target.set_speaks_h2();
                pool.adopt(target, c).await.map(Local::H2)
            }
            other => other.map(Local::Conn),
        },
        None => dial(target).await.map(Local::Conn),
    };
    let local = match dialled {
        Ok(t) => {
            if matches!(gate, Gate::Probe) {
                info!("{} answers again: circuit closed", target.local);
            }
            target.record(true);
            t
        }
        Err((code, message)) => {
            failed();
            warn!(visitor = %preface.visitor, "{message}: is the local service running?");
            if let Some(cool) = target.record(false) {
                warn!(
                    "{} keeps failing: answering 502 at once for {:.1} s (circuit open), then probing",
                    target.local,
                    cool.as_secs_f64()
                );
            }
            reply(&mut send, Reply::Failed { code, message }).await;
            return;
        }
    };
    let mut out = BytesMut::with_capacity(8);
    Reply::Connected.encode(&mut out);
    if send.write_chunk(out.freeze()).await.is_err() {
        return;
    }
    let observer =
        (target.http && monitor.observe).then(|| observer(&monitor, target, preface.visitor));
    let first = buf.freeze();
    let end = match local {
        Local::Conn(LocalConn::Tcp(tcp)) => {
            splice_tapped(tcp, &mut send, &mut recv, first, &observer)
                .await
                .map(|e| e.map(LocalConn::Tcp))
        }
        Local::Conn(LocalConn::Tls(tls)) => {
            splice_tapped(*tls, &mut send, &mut recv, first, &observer)
                .await
                .map(|e| e.map(|t| LocalConn::Tls(Box::new(t))))
        }
        Local::H2(sender) => {
            let scheme = if target.tls.is_some() {
                "https"
            } else {
                "http"
            };
            crate::h2local::serve(sender, scheme, &mut send, &mut recv, first, &observer).await;
            Ok(SpliceEnd::Closed)
        }
    };
    if let Some(o) = &observer {
        o.finish();
    }
    match end {
        Ok(SpliceEnd::Reusable(conn)) => target.put_idle(conn),
        Ok(SpliceEnd::Closed) => {}
        Err(e) => debug!(visitor = %preface.visitor, "stream ended: {e}"),
    }
}

fn observer(monitor: &Arc<Monitor>, target: &Target, visitor: SocketAddr) -> Observer {
    Observer::new(
        monitor.clone(),
        target.name.clone(),
        target.local_name.clone(),
        visitor,
        target.metrics.clone(),
    )
}

async fn reply(send: &mut SendStream, r: Reply) {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    if send.write_chunk(out.freeze()).await.is_ok() {
        let _ = send.finish();
    }
}

/// What a stream is forwarded over.
enum Local {
    Conn(LocalConn),
    /// A stream of a pooled HTTP/2 connection (`h2local`).
    H2(h2::client::SendRequest<bytes::Bytes>),
}

/// A connection to the tunnel's local service: an idle one from the pool,
/// else a new one.
pub(crate) async fn dial(target: &Target) -> Result<LocalConn, (ReplyCode, String)> {
    if let Some(conn) = target.take_idle() {
        return Ok(conn);
    }
    dial_new(target).await
}

/// Whether the first request on a stream (its head at the front of `buf`)
/// asks to upgrade (a WebSocket): it needs an HTTP/1.1 connection.
fn upgrades(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade")),
        _ => false,
    }
}

/// A new connection to the tunnel's local service: TCP, then TLS for a
/// local https service.
pub(crate) async fn dial_new(target: &Target) -> Result<LocalConn, (ReplyCode, String)> {
    dial_with(target, false).await
}

/// [`dial_new`]; `h1_only`: TLS offers HTTP/1.1 alone.
async fn dial_with(target: &Target, h1_only: bool) -> Result<LocalConn, (ReplyCode, String)> {
    let tcp = dial_tcp(target).await?;
    match &target.tls {
        None => Ok(LocalConn::Tcp(tcp)),
        Some(tls) => {
            let limit = target.policy.connect_timeout;
            crate::upstream::handshake(tcp, tls, &target.local, limit, h1_only)
                .await
                .map_err(|m| (ReplyCode::TlsFailed, m))
        }
    }
}

async fn dial_tcp(target: &Target) -> Result<TcpStream, (ReplyCode, String)> {
    let mut last = (
        ReplyCode::Unreachable,
        format!("{} did not resolve to any address", target.local),
    );
    let first = target.preferred.load(Ordering::Relaxed);
    let n = target.addrs.len();
    for i in (0..n).map(|k| (first + k) % n) {
        let addr = &target.addrs[i];
        let limit = target.policy.connect_timeout;
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                if i != first {
                    target.preferred.store(i, Ordering::Relaxed);
                }
                return Ok(tcp);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = (
                    ReplyCode::Refused,
                    format!("connection refused by {} ({addr})", target.local),
                );
            }
            Ok(Err(e)) => {
                last = (
                    ReplyCode::Unreachable,
                    format!("cannot connect to {} ({addr}): {e}", target.local),
                )
            }
            Err(_) => {
                last = (
                    ReplyCode::TimedOut,
                    format!(
                        "connecting to {} ({addr}) timed out after {limit:?}",
                        target.local
                    ),
                )
            }
        }
    }
    Err(last)
}
