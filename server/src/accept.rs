//! Accepting: the one loop of every visitor listener, the http and https
//! listeners and each TCP tunnel's port (per-IP fairness before a task
//! exists, the backlog taken at shutdown), and the QUIC refusal while
//! draining.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::state::State;
use crate::{fairness, metrics};

/// Who owns a task and when it stops: the tracker it is spawned on, the
/// token that asks it to finish (stop taking work) and the one that cuts it.
#[derive(Clone)]
pub(crate) struct Tasks {
    pub(crate) tracker: TaskTracker,
    pub(crate) soft: CancellationToken,
    pub(crate) hard: CancellationToken,
}

/// Which entrance a listener is: its label in the metrics and the logs,
/// how a visitor over the per-IP limits is turned away, and whether the
/// kernel's backlog is taken when it stops.
pub(crate) struct Entrance {
    pub(crate) listener: metrics::Listener,
    /// For log lines: `visitors`, or a TCP tunnel's `tcp:PORT`.
    pub(crate) name: Box<str>,
    /// When it stops, take the connections the kernel completed already
    /// (the server's listeners at a drain); a TCP tunnel whose client has
    /// gone has nobody to give them to.
    pub(crate) drain_backlog: bool,
}

/// Accepts visitors on one TCP listener (the http and https listeners, or
/// a TCP tunnel's port) until `until` completes, and runs `serve` for each
/// on `tasks`. Generic over `serve` so each listener's task is exactly its
/// own future (a task that could be either would be as large as the
/// larger).
pub(crate) async fn accept_tcp<S, F>(
    state: Arc<State>,
    listener: TcpListener,
    entrance: Entrance,
    until: impl std::future::Future<Output = ()> + Send,
    tasks: Tasks,
    serve: S,
) where
    S: Fn(Arc<State>, TcpStream, SocketAddr, CancellationToken) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Tasks {
        tracker,
        soft,
        hard,
    } = tasks;
    let permits = state.visitor_permits.clone();
    let plain = entrance.listener == metrics::Listener::Http;
    let visitor = |tcp: TcpStream, peer: SocketAddr, permit| {
        // Per-IP fairness, before anything is spawned: a plain HTTP visitor
        // turned away reads a 429 (written without waiting); over TLS or a
        // TCP tunnel no page fits the protocol, so it is closed.
        let slot = match state.fairness.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(%peer, "visitor turned away: {why:?}");
                if plain {
                    let _ = tcp.try_write(&fairness::refusal_response(why));
                }
                return;
            }
        };
        let (state, hard, soft, serve) = (state.clone(), hard.clone(), soft.clone(), serve.clone());
        let open = state.metrics.visitor(entrance.listener);
        // The connection's future is made inside the task: made outside
        // and moved in, the task would hold it twice.
        tracker.spawn(async move {
            let _open = open;
            tokio::select! {
                _ = serve(state, tcp, peer, soft) => {}
                _ = hard.cancelled() => {}
            }
            drop(slot);
            drop(permit);
        });
    };
    tokio::pin!(until);
    let mut backoff = tunnel_lib::runtime::AcceptBackoff::default();
    loop {
        // A permit first: past the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = &mut until => break,
        };
        let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => { backoff.accepted(); x }
                Err(e) => {
                    let wait = backoff.failed(&entrance.name, &e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = &mut until => break,
                    }
                }
            },
            _ = &mut until => break,
        };
        visitor(tcp, peer, permit);
    }
    if !entrance.drain_backlog {
        return;
    }
    // Stopping. Closing the listener resets the connections the kernel has
    // already completed in its backlog: take those first (each gets
    // `FIRST_REQUEST_GRACE` for its first request, as the edge gives every
    // connection that has not spoken yet).
    let mut taken = 0usize;
    while let Ok(permit) = permits.clone().try_acquire_owned() {
        let ready = tokio::select! {
            biased;
            r = listener.accept() => r,
            _ = std::future::ready(()) => break,
        };
        let Ok((tcp, peer)) = ready else { break };
        visitor(tcp, peer, permit);
        taken += 1;
    }
    if taken > 0 {
        debug!("{taken} visitor connections taken from the backlog at shutdown");
    }
}

/// Refuses every incoming client connection until `stop`.
pub(crate) async fn refuse_clients(endpoint: quinn::Endpoint, stop: CancellationToken) {
    loop {
        tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i.refuse(),
                None => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}
