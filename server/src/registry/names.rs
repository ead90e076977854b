//! Claims and reservations: a name is claimed atomically by a live session
//! and, when the session ends, reserved for its owner for the grace period
//! (visitors of a dropped client wait for its return).

use std::time::Duration;

use tunnel_lib::proto::ErrorCode;

use super::*;

impl Registry {
    pub(super) fn claim_random(&self, session: &Session) -> Result<String, Refusal> {
        for _ in 0..8 {
            let host = format!("{}.{}", random_label(), self.domain);
            match self.claim(&host, session) {
                Ok(()) => return Ok(host),
                Err(r) if r.code == ErrorCode::LimitReached => return Err(r),
                Err(_) => {}
            }
        }
        Err(Refusal {
            code: ErrorCode::LimitReached,
            message: "could not pick a free random name; retry, or ask for one with --subdomain"
                .into(),
        })
    }

    pub(super) fn claim(&self, host: &str, session: &Session) -> Result<(), Refusal> {
        use dashmap::mapref::entry::Entry;
        match self.names.entry(host.into()) {
            Entry::Occupied(e) if e.get().session_id == session.id => Err(Refusal {
                code: ErrorCode::NameTaken,
                message: format!("this client already exposes {host:?}"),
            }),
            Entry::Occupied(_) => Err(Refusal {
                code: ErrorCode::NameTaken,
                message: format!(
                    "{host:?} is taken by another connected client; pick another --subdomain \
                     or stop the other client"
                ),
            }),
            Entry::Vacant(e) => {
                let reserved = self.reserved.get(host);
                if reserved.is_none() {
                    self.within_names(session.owner)?;
                }
                if let Some(owner) = reserved {
                    if owner != session.owner {
                        return Err(Refusal {
                            code: ErrorCode::NameTaken,
                            message: format!(
                                "{host:?} is reserved for the client that held it until recently; \
                                 pick another --subdomain or retry later"
                            ),
                        });
                    }
                }
                e.insert(Claim {
                    session_id: session.id,
                });
                // Counted as a claim; its reservation (if any) stops
                // counting as it is invalidated.
                self.held.add(session.owner);
                self.reserved.invalidate(host);
                Ok(())
            }
        }
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
        for host in &hosts {
            if left {
                self.left.insert(host.clone(), ());
            }
            // Reserve first, then release: no window in which another owner
            // could claim the name.
            self.reserved.insert(host.clone(), session.owner);
            self.names
                .remove_if(host, |_, c| c.session_id == session.id);
        }
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

    /// Every host that is claimed or reserved, with its owner: what must
    /// survive a restart so that each name goes back to its owner only.
    pub fn held_names(&self) -> Vec<(String, Owner)> {
        let mut out: Vec<(String, Owner)> = self
            .reserved
            .iter()
            .map(|(h, o)| (h.to_string(), o))
            .collect();
        for e in self.names.iter() {
            if let Some(s) = self.sessions.get(&e.value().session_id) {
                out.push((e.key().to_string(), s.owner));
            }
        }
        out
    }

    /// Reserves `names` for their owners for the grace period (after a
    /// restart, from the state file). A live claim is left alone.
    pub fn restore_names(&self, names: Vec<(String, Owner)>) {
        for (host, owner) in names {
            if !self.names.contains_key(host.as_str()) && !self.reserved.contains_key(host.as_str())
            {
                self.held.add(owner);
                self.reserved.insert(host.into(), owner);
            }
        }
    }

    /// Whether `host` (normalised) has no route but is reserved for an
    /// owner who may be reconnecting.
    pub fn awaits_owner(&self, host: &str) -> bool {
        self.offline(host) == Some(Offline::Reconnecting)
    }

    /// Why a host without a route has none, if it is reserved for its owner.
    pub fn offline(&self, host: &str) -> Option<Offline> {
        if self.lookup(host).is_some() || !self.reserved.contains_key(host) {
            return None;
        }
        Some(if self.left.contains_key(host) {
            Offline::Left
        } else {
            Offline::Reconnecting
        })
    }

    /// Waits until `host` has a route again or `limit` passes, while it
    /// [awaits its owner](Self::awaits_owner). No lock is held.
    pub async fn owner_back(&self, host: &str, limit: Duration) {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            // Armed before the check: a registration in between still wakes it.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if !self.awaits_owner(host) {
                return;
            }
            tokio::select! {
                _ = returned => {}
                _ = &mut deadline => return,
            }
        }
    }
}
