//! TCP tunnels: a public port per tunnel (from `--tcp-ports`), one QUIC
//! stream per visitor connection, raw bytes spliced both ways with
//! half-closes carried through.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use tunnel_lib::proto::{StreamKind, TunnelKind};

use crate::accept::{accept_tcp, Entrance, Tasks};
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
    let (r, listener) =
        state.claim_port(session, TunnelKind::Tcp, remote_port, |p| bind(state, p))?;
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

/// Accepts visitors on a TCP tunnel's port (`accept::accept_tcp`, as the
/// http and https listeners) until the session ends or the server stops;
/// one task, on the visitor tracker (the drain waits for it and for every
/// connection it started).
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
        host: key.as_str().into(),
        session_id: session.id,
        tunnel_id,
        target: Target::Tcp,
    });
    let entrance = Entrance {
        listener: crate::metrics::Listener::Tcp,
        name: key.into(),
        drain_backlog: false,
    };
    let (ended, stopping) = (session.ended.clone(), soft.clone());
    let until = async move {
        tokio::select! {
            _ = ended.cancelled() => {}
            _ = stopping.cancelled() => {}
        }
    };
    let tasks = Tasks {
        tracker: state.visitor_tasks.clone(),
        soft,
        hard: state.hard.clone(),
    };
    let conn = session.conn.clone();
    let one = move |state: Arc<State>, tcp: TcpStream, peer: SocketAddr, _soft| {
        let (rule, conn) = (rule.clone(), conn.clone());
        async move {
            tokio::select! {
                _ = relay(&rule, &conn, tcp, peer, &state.metrics) => {}
                // The client is gone: its visitors' connections close too,
                // even a half-closed one waiting on an idle visitor.
                _ = conn.closed() => {}
            }
        }
    };
    let tracker = state.visitor_tasks.clone();
    tracker.spawn(accept_tcp(state, listener, entrance, until, tasks, one));
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
