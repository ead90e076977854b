//! Accepting: the visitor listeners' loop (per-IP fairness before a task
//! exists, the backlog taken at shutdown) and the QUIC refusal while
//! draining.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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

/// Accepts visitors on one TCP listener and runs `serve` for each. Generic
/// over `serve` so each listener's task is exactly its own future (a task
/// that could be either would be as large as the larger).
pub(crate) async fn accept_tcp<S, F>(
    state: Arc<State>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    tasks: Tasks,
    serve: S,
    tls_edge: bool,
) where
    S: Fn(Arc<State>, TcpStream, SocketAddr, CancellationToken) -> F + Copy + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Tasks {
        tracker,
        soft: shutdown,
        hard,
    } = tasks;
    let visitor = |tcp: TcpStream, peer: SocketAddr, permit, soft: CancellationToken| {
        // Per-IP fairness, before anything is spawned: a plain visitor turned
        // away reads a 429 (written without waiting), a TLS one a close.
        let slot = match state.fairness.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(%peer, "visitor turned away: {why:?}");
                if !tls_edge {
                    let _ = tcp.try_write(&fairness::refusal_response(why));
                }
                return;
            }
        };
        let state = state.clone();
        let hard = hard.clone();
        let open = state.metrics.visitor(if tls_edge {
            metrics::Listener::Https
        } else {
            metrics::Listener::Http
        });
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
    let mut backoff = tunnel_lib::runtime::AcceptBackoff::default();
    loop {
        // A permit first: past the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => { backoff.accepted(); x }
                Err(e) => {
                    let wait = backoff.failed("visitors", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        visitor(tcp, peer, permit, shutdown.clone());
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
        visitor(tcp, peer, permit, shutdown.clone());
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
