//! One data stream from the server ↔ one TCP connection to the local service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use tunnel_lib::io::{read_message, splice, SpliceEnd};
use tunnel_lib::limits::{LOCAL_CONNECT_TIMEOUT, LOCAL_POOL_IDLE, LOCAL_POOL_MAX, PREFACE_TIMEOUT};
use tunnel_lib::proto::{reset, Preface, Reply, ReplyCode};

/// Where one tunnel forwards to: the addresses `local` resolved to when the
/// tunnel was registered (so no DNS per connection), tried in order.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) local: String,
    pub(crate) addrs: Vec<SocketAddr>,
    /// Index of the address that answered last: tried first next time
    /// (`localhost` resolves to `::1` first, while many apps listen on
    /// 127.0.0.1 only).
    pub(crate) preferred: AtomicUsize,
    /// Idle local connections handed back at a clean HTTP boundary (the
    /// server said `REUSE`), newest last. Touched only in synchronous code.
    pub(crate) idle: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Target {
    pub(crate) fn new(local: String, addrs: Vec<SocketAddr>) -> Target {
        Target {
            local,
            addrs,
            preferred: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A recently idle connection that is still open, if any.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((tcp, since)) = idle.pop() {
            if since.elapsed() > LOCAL_POOL_IDLE {
                // Older ones are older still.
                idle.clear();
                return None;
            }
            // Closed by the app while idle (EOF), or sending unasked: drop it.
            let mut probe = [0u8; 1];
            if let Err(e) = tcp.try_read(&mut probe) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Some(tcp);
                }
            }
        }
        None
    }

    fn put_idle(&self, tcp: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < LOCAL_POOL_MAX {
            idle.push((tcp, Instant::now()));
        }
    }
}

pub(crate) type Targets = Arc<HashMap<u32, Target>>;

pub(crate) async fn handle(targets: Targets, mut send: SendStream, mut recv: RecvStream) {
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
    let tcp = match dial(target).await {
        Ok(t) => t,
        Err((code, message)) => {
            warn!(visitor = %preface.visitor, "{message}: is the local service running?");
            reply(&mut send, Reply::Failed { code, message }).await;
            return;
        }
    };
    let mut out = BytesMut::with_capacity(8);
    Reply::Connected.encode(&mut out);
    if send.write_chunk(out.freeze()).await.is_err() {
        return;
    }
    match splice(tcp, &mut send, &mut recv, buf.freeze()).await {
        Ok(SpliceEnd::Reusable(tcp)) => target.put_idle(tcp),
        Ok(SpliceEnd::Closed) => {}
        Err(e) => debug!(visitor = %preface.visitor, "stream ended: {e}"),
    }
}

async fn reply(send: &mut SendStream, r: Reply) {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    if send.write_chunk(out.freeze()).await.is_ok() {
        let _ = send.finish();
    }
}

async fn dial(target: &Target) -> Result<TcpStream, (ReplyCode, String)> {
    if let Some(tcp) = target.take_idle() {
        return Ok(tcp);
    }
    let mut last = (
        ReplyCode::Unreachable,
        format!("{} did not resolve to any address", target.local),
    );
    let first = target.preferred.load(Ordering::Relaxed);
    let n = target.addrs.len();
    for i in (0..n).map(|k| (first + k) % n) {
        let addr = &target.addrs[i];
        match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
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
                        "connecting to {} ({addr}) timed out after {LOCAL_CONNECT_TIMEOUT:?}",
                        target.local
                    ),
                )
            }
        }
    }
    Err(last)
}
