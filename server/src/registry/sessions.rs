//! Connected clients: adding one (and replacing its stale self), what one
//! session and one token may expose, and ending one (its names reserved,
//! its routes withdrawn).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tunnel_lib::proto::ErrorCode;

use super::{lock, Owner, Refusal, Registry, RouteTable, Session};

impl Registry {
    /// Adds a connected, authenticated client. If the same client process
    /// still has a session (it reconnected before the server noticed the old
    /// connection die), that one is ended and returned so the caller can
    /// close its connection.
    pub fn add_session(
        &self,
        conn: quinn::Connection,
        owner: Owner,
        client_id: [u8; 16],
        remote: SocketAddr,
    ) -> Result<(Arc<Session>, Option<Arc<Session>>), usize> {
        let max = self.limits.sessions;
        if max > 0 && owner != Owner::Anonymous {
            // Its own earlier connection is about to be replaced: not counted.
            let others = self
                .sessions
                .iter()
                .filter(|(_, s)| s.owner == owner && s.client_id != client_id)
                .take(max)
                .count();
            if others >= max {
                return Err(max);
            }
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            conn,
            owner,
            client_id,
            remote,
            hosts: Mutex::new(Vec::new()),
            ended: tokio_util::sync::CancellationToken::new(),
            datagrams: Mutex::new(HashMap::new()),
        });
        self.sessions.insert(id, session.clone());
        let previous = self
            .clients
            .insert(client_id, id)
            .and_then(|old| self.sessions.get(&old));
        let stale = previous.filter(|old| old.owner == owner);
        if let Some(old) = &stale {
            self.end_session(old);
        }
        Ok((session, stale))
    }

    pub(super) fn check_tunnel_count(&self, session: &Session) -> Result<(), Refusal> {
        if lock(&session.hosts).len() >= self.max_tunnels_per_session {
            return Err(Refusal {
                code: ErrorCode::LimitReached,
                message: format!(
                    "a client may expose at most {} tunnels",
                    self.max_tunnels_per_session
                ),
            });
        }
        let max = self.limits.tunnels;
        if max > 0 && session.owner != Owner::Anonymous {
            let tunnels: usize = self
                .sessions
                .iter()
                .filter(|(_, s)| s.owner == session.owner)
                .map(|(_, s)| lock(&s.hosts).len())
                .sum();
            if tunnels >= max {
                return Err(Refusal {
                    code: ErrorCode::LimitReached,
                    message: format!(
                        "this token's clients expose {max} tunnels together, the most the server \
                         allows (max_tunnels_per_token): close some, or ask the operator"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Removes a session and its routes; its names stay reserved for its
    /// owner for the grace period. Idempotent.
    pub fn end_session(&self, session: &Session) {
        self.end_session_as(session, false);
    }

    /// [`end_session`](Self::end_session), saying whether the client left
    /// on purpose (then visitors are told at once that it is offline
    /// instead of being held for its return).
    pub fn end_session_as(&self, session: &Session, left: bool) {
        session.ended.cancel();
        let hosts = std::mem::take(&mut *lock(&session.hosts));
        // Reserved before the routes go: no window in which another owner
        // could claim a name.
        lock(&self.names).end(hosts.iter().map(|h| &**h), session.id, left, Instant::now());
        if !hosts.is_empty() {
            self.routes.rcu(|table| {
                let mut t = RouteTable::clone(table);
                t.exact.retain(|_, r| r.session_id != session.id);
                t.wild.retain(|_, r| r.session_id != session.id);
                t
            });
        }
        self.clients
            .remove_if(&session.client_id, |_, id| *id == session.id);
        self.sessions.invalidate(&session.id);
        if !hosts.is_empty() {
            self.changed.notify_one();
        }
    }

    /// Live sessions (for shutdown and operator actions).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|(_, s)| s).collect()
    }
}
