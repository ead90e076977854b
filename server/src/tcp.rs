//! TCP tunnels: a public port per tunnel (from `--tcp-ports`), one QUIC
//! stream per visitor connection, raw bytes spliced both ways with
//! half-closes carried through.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use tunnel_lib::proto::{StreamKind, TunnelKind};

use crate::registry::{Refusal, Registered, Rule, Session, Target};
use crate::state::State;
use crate::upstream;

/// Opens `port` on the public address (called by the registry once the
/// port is claimed). Synchronous: a bind does not wait.
pub(crate) fn bind(state: &State, port: u16) -> std::io::Result<TcpListener> {
    tunnel_lib::io::listen_tcp(SocketAddr::new(state.public_ip, port))
}

/// Claims a public port for a TCP tunnel, opens it and starts accepting.
pub(crate) fn register(
    state: &Arc<State>,
    session: &Arc<Session>,
    remote_port: u16,
    shutdown: &CancellationToken,
) -> Result<Registered, Refusal> {
    let (range, own) = state
        .config
        .port_range(session.owner, TunnelKind::Tcp)
        .map_err(|message| Refusal {
            code: tunnel_lib::proto::ErrorCode::LimitReached,
            message,
        })?;
    let (r, listener) = state.registry.register_port(
        session,
        TunnelKind::Tcp,
        remote_port,
        (&range, own),
        |p| bind(state, p),
    )?;
    serve(
        state.clone(),
        session.clone(),
        listener,
        r.hostname.clone(),
        r.tunnel_id,
        shutdown.clone(),
    );
    Ok(r)
}

/// Accepts visitors on a TCP tunnel's port until the session ends or the
/// server stops; one task, on the visitor tracker (the drain waits for it
/// and for every connection it started).
pub(crate) fn serve(
    state: Arc<State>,
    session: Arc<Session>,
    listener: TcpListener,
    key: String,
    tunnel_id: u32,
    soft: CancellationToken,
) {
    let rule = Arc::new(Rule {
        metrics: state.registry.tunnel_metrics(&key),
        host: key.into(),
        session_id: session.id,
        tunnel_id,
        target: Target::Tcp,
    });
    let tracker = state.visitor_tasks.clone();
    tracker.spawn(accept_loop(state, session, listener, rule, soft));
}

async fn accept_loop(
    state: Arc<State>,
    session: Arc<Session>,
    listener: TcpListener,
    rule: Arc<Rule>,
    soft: CancellationToken,
) {
    let mut backoff = tunnel_lib::runtime::AcceptBackoff::default();
    loop {
        let permit = tokio::select! {
            p = state.visitor_permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = session.ended.cancelled() => return,
            _ = soft.cancelled() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => { backoff.accepted(); x }
                Err(e) => {
                    let wait = backoff.failed(&rule.host, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = session.ended.cancelled() => return,
                        _ = soft.cancelled() => return,
                    }
                }
            },
            _ = session.ended.cancelled() => return,
            _ = soft.cancelled() => return,
        };
        // Per-IP fairness as on the HTTP edge (a refused one is closed: no
        // page can be written into someone else's protocol).
        let Ok(slot) = state.fairness.admit(peer.ip()) else {
            continue;
        };
        let (rule, conn, hard) = (rule.clone(), session.conn.clone(), state.hard.clone());
        let metrics = state.metrics.clone();
        let open = state.metrics.visitor(crate::metrics::Listener::Tcp);
        state.visitor_tasks.spawn(async move {
            let _open = open;
            tokio::select! {
                _ = relay(&rule, &conn, tcp, peer, &metrics) => {}
                // The client is gone: its visitors' connections close too,
                // even a half-closed one waiting on an idle visitor.
                _ = conn.closed() => {}
                _ = hard.cancelled() => {}
            }
            drop(slot);
            drop(permit);
        });
    }
}

/// One visitor connection: a stream to the client, its preface, the
/// client's reply (the local service was reached), then raw bytes.
async fn relay(
    rule: &Rule,
    conn: &quinn::Connection,
    tcp: TcpStream,
    peer: SocketAddr,
    metrics: &crate::metrics::Metrics,
) {
    let _ = tcp.set_nodelay(true);
    let Ok((mut send, mut recv)) = upstream::open(conn, rule, metrics).await else {
        return;
    };
    let first = upstream::prefaced(StreamKind::Tcp, rule, peer, &[]);
    if send.write_chunk(first).await.is_err() {
        return;
    }
    let rest = match upstream::read_reply(&mut recv, &rule.host).await {
        Ok(rest) => rest,
        // The local service is down: the visitor's connection is closed.
        Err(_) => return,
    };
    if let Err(e) = tunnel_lib::io::splice(tcp, &mut send, &mut recv, rest).await {
        debug!(host = %rule.host, "tcp connection ended: {e}");
    }
}
