//! The client's half of UDP tunnels: datagrams from the server are sent to
//! the local service from one local socket per flow (so its replies come
//! back to the right visitor), and what the service answers goes back as a
//! datagram of the same flow. One dispatcher task per connection and one
//! task per flow (bounded by `MAX_FLOWS`); never one per datagram. Past
//! `MAX_FLOWS` the idlest flow's socket is closed for the new one, so a
//! flood of visitor ports never takes the descriptors the client's other
//! tunnels need.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use tunnel_lib::proto::datagram::{self, HEADER};

/// Flows (each a local socket) per connection at once.
pub const MAX_FLOWS: usize = 1024;
/// By default a flow silent both ways for this long is closed.
pub(crate) const FLOW_IDLE: Duration = Duration::from_secs(60);
const BLOCK: usize = 64 * 1024;
/// How long a datagram may wait for room in a local socket's buffer.
const SEND_WAIT: Duration = Duration::from_millis(5);

struct Flow {
    sock: Arc<UdpSocket>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    /// Its task (what the service answers): aborted when the flow is
    /// given up, so the socket closes then.
    task: tokio::task::AbortHandle,
}

/// The flow that has been silent longest.
fn idlest<K: Copy>(flows: &HashMap<K, Flow>) -> Option<K> {
    flows
        .iter()
        .min_by_key(|(_, f)| f.last.load(Ordering::Relaxed))
        .map(|(k, _)| *k)
}

/// Relays the UDP tunnels of `conn` (tunnel id → local address) until the
/// connection ends or `stop`.
pub(crate) async fn dispatch(
    conn: quinn::Connection,
    locals: Arc<HashMap<u32, SocketAddr>>,
    idle: Duration,
    stop: CancellationToken,
) {
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let mut flows: HashMap<(u32, u32), Flow> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let idle = idle.max(Duration::from_millis(100));
    let mut sweep = tokio::time::interval(idle / 4);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            d = conn.read_datagram() => {
                let Ok(d) = d else { break };
                let Some((tunnel, flow, payload)) = datagram::decode(d) else { continue };
                let Some(local) = locals.get(&tunnel).copied() else { continue };
                let key = (tunnel, flow);
                if !flows.contains_key(&key) {
                    if flows.len() >= MAX_FLOWS {
                        if let Some(old) = idlest(&flows) {
                            debug!("udp: {MAX_FLOWS} flows open; the idlest gives way");
                            if let Some(f) = flows.remove(&old) {
                                f.task.abort();
                            }
                        }
                    }
                    let sock = match open(local).await {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            debug!("udp: cannot open a socket towards {local}: {e}");
                            continue;
                        }
                    };
                    let last = Arc::new(AtomicU64::new(now_ms()));
                    let task = tasks.spawn(back(conn.clone(), sock.clone(), tunnel, flow, last.clone(), epoch, idle));
                    flows.insert(key, Flow { sock, last, task });
                }
                if let Some(f) = flows.get(&key) {
                    f.last.store(now_ms(), Ordering::Relaxed);
                    // A new socket is not known writable until the reactor
                    // says so, and a full buffer may free up: a short bounded
                    // wait, then the datagram is dropped (UDP semantics).
                    if f.sock.try_send(&payload).is_err() {
                        let _ = tokio::time::timeout(SEND_WAIT, f.sock.send(&payload)).await;
                    }
                }
            }
            _ = sweep.tick() => {
                let now = now_ms();
                let limit = idle.as_millis() as u64;
                flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < limit);
                // Reap the flow tasks that ended.
                while tasks.try_join_next().is_some() {}
            }
            _ = stop.cancelled() => break,
        }
    }
    tasks.abort_all();
}

async fn open(local: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(tunnel_lib::quic::wildcard_for(local)).await?;
    s.connect(local).await?;
    Ok(s)
}

/// What the local service sends on one flow's socket, back to the server.
async fn back(
    conn: quinn::Connection,
    sock: Arc<UdpSocket>,
    tunnel: u32,
    flow: u32,
    last: Arc<AtomicU64>,
    epoch: Instant,
    limit: Duration,
) {
    let mut buf = BytesMut::new();
    let idle = tokio::time::sleep(limit);
    tokio::pin!(idle);
    loop {
        let max_payload = conn.max_datagram_size().unwrap_or(0).saturating_sub(HEADER);
        if buf.capacity() < HEADER + max_payload + 1 {
            buf = BytesMut::with_capacity(BLOCK.max(HEADER + max_payload + 1));
        }
        buf.clear();
        buf.put_bytes(0, HEADER);
        tokio::select! {
            r = sock.recv_buf(&mut buf) => {
                let Ok(n) = r else { return };
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                if n > max_payload {
                    debug!("udp: a {n}-byte reply is larger than the connection takes; dropped");
                    continue;
                }
                datagram::put_header(&mut buf[..HEADER], tunnel, flow);
                if conn.send_datagram(buf.split().freeze()).is_err() {
                    return;
                }
            }
            _ = &mut idle => {
                let since = (epoch.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
                if since >= limit.as_millis() as u64 {
                    return;
                }
                idle.as_mut().reset(Instant::now() + limit - Duration::from_millis(since));
            }
        }
    }
}
