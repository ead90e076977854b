//! UDP tunnels: a public UDP port per tunnel (from `--udp-ports`), its
//! datagrams relayed over QUIC DATAGRAM frames (`tunnel_lib::proto::datagram`),
//! one flow id per visitor address. One task per tunnel and one per session
//! (the dispatcher of datagrams from the client); never one per datagram.
//! Payloads are read in place behind the header and sent as `Bytes` slices.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tunnel_lib::proto::datagram::{self, HEADER};
use tunnel_lib::proto::TunnelKind;

use crate::registry::{Refusal, Registered, Session};
use crate::state::State;

/// Datagrams from the client waiting for a tunnel's task; past it they are
/// dropped (and counted), as a router would.
const QUEUE: usize = 1024;

/// Receive buffers are carved from blocks this large (one allocation per
/// few dozen datagrams, not one per datagram).
const BLOCK: usize = 64 * 1024;

/// How long a datagram may wait for room in the public socket's buffer.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Largest UDP payload.
const MAX_PAYLOAD: usize = 65_507;

fn bind(state: &State, port: u16) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(state.public_ip, port))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Claims a public UDP port, opens it, and starts relaying.
pub(crate) fn register(
    state: &Arc<State>,
    session: &Arc<Session>,
    remote_port: u16,
    soft: &CancellationToken,
) -> Result<Registered, Refusal> {
    let (r, socket) =
        state.claim_port(session, TunnelKind::Udp, remote_port, |p| bind(state, p))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let first = {
        let mut m = session.datagrams.lock().unwrap_or_else(|p| p.into_inner());
        let first = m.is_empty();
        m.insert(r.tunnel_id, tx);
        first
    };
    if first {
        state
            .visitor_tasks
            .spawn(dispatch(state.clone(), session.clone(), soft.clone()));
    }
    state.visitor_tasks.spawn(relay(
        state.clone(),
        session.clone(),
        socket,
        r.tunnel_id,
        rx,
        soft.clone(),
    ));
    Ok(r)
}

/// Datagrams from the client, to their tunnel's task (one per session).
async fn dispatch(state: Arc<State>, session: Arc<Session>, soft: CancellationToken) {
    loop {
        let d = tokio::select! {
            d = session.conn.read_datagram() => match d { Ok(d) => d, Err(_) => return },
            _ = session.ended.cancelled() => return,
            _ = soft.cancelled() => return,
        };
        let Some((tunnel, flow, payload)) = datagram::decode(d) else {
            continue;
        };
        let sent = {
            let m = session.datagrams.lock().unwrap_or_else(|p| p.into_inner());
            m.get(&tunnel)
                .map(|tx| tx.try_send((flow, payload)).is_ok())
        };
        if sent == Some(false) {
            state.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Flow {
    addr: SocketAddr,
    last: Instant,
}

/// Flows one visitor source (an IP, an IPv6 /64) may hold in one tunnel;
/// a new one past it replaces that source's idlest flow, so one source
/// rotating its ports churns only its own flows.
pub const FLOWS_PER_SOURCE: usize = 64;

/// The flow to give up for a new one from `source`: that source's idlest
/// when it holds its share, else the idlest of all when the table is full.
fn evictee(
    flows: &HashMap<u32, Flow>,
    per_source: &HashMap<std::net::IpAddr, usize>,
    source: std::net::IpAddr,
    max_flows: usize,
) -> Option<u32> {
    let own = per_source.get(&source).copied().unwrap_or(0) >= FLOWS_PER_SOURCE;
    if !own && flows.len() < max_flows {
        return None;
    }
    flows
        .iter()
        .filter(|(_, f)| !own || crate::fairness::source_key(f.addr.ip()) == source)
        .min_by_key(|(_, f)| f.last)
        .map(|(id, _)| *id)
}

/// One UDP tunnel: visitors' datagrams to the client, the client's back to
/// the visitor of their flow; idle flows expire.
async fn relay(
    state: Arc<State>,
    session: Arc<Session>,
    socket: UdpSocket,
    tunnel_id: u32,
    mut from_client: mpsc::Receiver<(u32, Bytes)>,
    soft: CancellationToken,
) {
    let idle = state.config.udp_idle;
    let max_flows = state.config.max_udp_flows;
    let stats = &state.stats;
    let mut by_addr: HashMap<SocketAddr, u32> = HashMap::new();
    let mut flows: HashMap<u32, Flow> = HashMap::new();
    let mut per_source: HashMap<std::net::IpAddr, usize> = HashMap::new();
    let forget = |flows: &mut HashMap<u32, Flow>,
                  by_addr: &mut HashMap<SocketAddr, u32>,
                  per_source: &mut HashMap<std::net::IpAddr, usize>,
                  id: u32| {
        if let Some(f) = flows.remove(&id) {
            by_addr.remove(&f.addr);
            let key = crate::fairness::source_key(f.addr.ip());
            if let Some(n) = per_source.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    per_source.remove(&key);
                }
            }
            stats.udp_flows.fetch_sub(1, Ordering::Relaxed);
        }
    };
    let mut next_flow = 1u32;
    let mut sweep = tokio::time::interval((idle / 4).max(std::time::Duration::from_millis(100)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = BytesMut::new();
    loop {
        // The largest payload the connection takes now, and one byte more
        // to tell a larger datagram (then dropped, never fragmented).
        let max_payload = session
            .conn
            .max_datagram_size()
            .unwrap_or(0)
            .saturating_sub(HEADER);
        let room = (max_payload + 1).min(MAX_PAYLOAD);
        if buf.capacity() < HEADER + room {
            buf = BytesMut::with_capacity(BLOCK.max(HEADER + room));
        }
        buf.clear();
        buf.put_bytes(0, HEADER);
        tokio::select! {
            // Into the block's spare room (at least `room`): a larger
            // datagram is seen as larger, and dropped.
            r = socket.recv_buf_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let now = Instant::now();
                let flow = match by_addr.get(&from) {
                    Some(f) => *f,
                    None => {
                        let source = crate::fairness::source_key(from.ip());
                        if let Some(old) = evictee(&flows, &per_source, source, max_flows) {
                            forget(&mut flows, &mut by_addr, &mut per_source, old);
                            stats.udp_evicted.fetch_add(1, Ordering::Relaxed);
                        }
                        let f = next_flow;
                        next_flow = next_flow.checked_add(1).unwrap_or(1);
                        by_addr.insert(from, f);
                        flows.insert(f, Flow { addr: from, last: now });
                        *per_source.entry(source).or_insert(0) += 1;
                        stats.udp_flows.fetch_add(1, Ordering::Relaxed);
                        f
                    }
                };
                if let Some(f) = flows.get_mut(&flow) {
                    f.last = now;
                }
                if n > max_payload {
                    stats.udp_oversize.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                datagram::put_header(&mut buf[..HEADER], tunnel_id, flow);
                // The rest of the block stays in `buf` for the next one.
                let d = buf.split().freeze();
                if session.conn.send_datagram(d).is_err() {
                    stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            d = from_client.recv() => {
                let Some((flow, payload)) = d else { break };
                if let Some(f) = flows.get_mut(&flow) {
                    f.last = Instant::now();
                    if socket.try_send_to(&payload, f.addr).is_err()
                        && tokio::time::timeout(SEND_WAIT, socket.send_to(&payload, f.addr)).await.is_err()
                    {
                        stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let expired: Vec<u32> = flows
                    .iter()
                    .filter(|(_, f)| now.duration_since(f.last) >= idle)
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    forget(&mut flows, &mut by_addr, &mut per_source, id);
                }
            }
            _ = session.ended.cancelled() => break,
            _ = soft.cancelled() => break,
        }
    }
    stats.udp_flows.fetch_sub(flows.len(), Ordering::Relaxed);
}
