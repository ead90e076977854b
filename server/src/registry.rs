//! Who serves which host.
//!
//! - `routes`: host → `Arc<Rule>`, an immutable snapshot in an `ArcSwap`.
//!   The request path loads it without a lock; registrations (rare) swap in
//!   a new map. Lookup is a hash probe on the normalised host; wildcard and
//!   custom-domain rules slot in as more keys (`*.example.com` probed by
//!   walking up the labels), never a linear scan.
//! - `sessions`: session id → `Arc<Session>` in a moka cache (lock-free
//!   reads; the rule points at the session by id so a dead session's rules
//!   fail fast instead of keeping the connection alive).
//! - `names`: live claims on subdomain labels, in a `DashMap` whose entry API
//!   makes "check and claim" atomic.
//! - `reserved`: names released by a session that ended, kept for the same
//!   owner for `name_grace` (a moka cache with that TTL), so a client that
//!   reconnects gets its URL back.
//!
//! Every method is synchronous and returns owned values: no guard can live
//! across an `.await`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use moka::sync::Cache;

use tunnel_lib::limits::MAX_SUBDOMAIN_LEN;
use tunnel_lib::proto::ErrorCode;

/// Who a name belongs to across reconnects: the token that registered it.
/// On a server without tokens (loopback development) everyone is the same
/// anonymous owner, so a restarted client can take its name back at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Token(usize),
    Anonymous,
}

/// One host rule: requests for `host` go to tunnel `tunnel_id` of session
/// `session_id`.
#[derive(Debug)]
pub struct Rule {
    pub host: Box<str>,
    pub session_id: u64,
    pub tunnel_id: u32,
}

/// One connected client.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub conn: quinn::Connection,
    pub owner: Owner,
    pub client_id: [u8; 16],
    pub remote: SocketAddr,
    /// Labels this session holds (only touched by synchronous methods).
    labels: Mutex<Vec<Box<str>>>,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    session_id: u64,
}

type RouteTable = HashMap<Box<str>, Arc<Rule>>;

pub struct Registry {
    domain: String,
    /// `http://` + `.domain` + `:port` pieces for URLs.
    url_suffix: String,
    routes: ArcSwap<RouteTable>,
    sessions: Cache<u64, Arc<Session>>,
    names: DashMap<Box<str>, Claim>,
    reserved: Cache<Box<str>, Owner>,
    /// client process id → its live session, to replace a stale session of
    /// the same client at once on reconnect.
    clients: DashMap<[u8; 16], u64>,
    next_session: AtomicU64,
    next_tunnel: AtomicU32,
    max_tunnels_per_session: usize,
}

/// A registration that failed, with the code and message the client sees.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// A registration that succeeded.
#[derive(Debug, Clone)]
pub struct Registered {
    pub tunnel_id: u32,
    pub hostname: String,
    pub url: String,
}

const ADJECTIVES: &[&str] = &[
    "quiet", "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively",
    "merry", "nimble", "proud", "silly", "witty", "zesty", "bold", "bright", "crisp", "swift",
    "sunny", "cosy", "clever", "plucky",
];
const NOUNS: &[&str] = &[
    "fox", "otter", "panda", "tiger", "eagle", "koala", "lynx", "moose", "newt", "owl", "quail",
    "raven", "seal", "whale", "yak", "zebra", "badger", "bison", "crane", "heron", "ibis", "lemur",
    "mole", "wren",
];

/// Validates a requested subdomain label (DNS label rules, lower-cased).
pub fn normalise_label(s: &str) -> Result<String, Refusal> {
    let l = s.to_ascii_lowercase();
    let ok = !l.is_empty()
        && l.len() <= MAX_SUBDOMAIN_LEN
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-');
    if ok {
        Ok(l)
    } else {
        Err(Refusal {
            code: ErrorCode::InvalidName,
            message: format!(
                "subdomain {s:?} is not valid: use 1-63 letters, digits or '-', not starting or ending with '-'"
            ),
        })
    }
}

/// Lower-cases a Host header value and strips its port and trailing dot.
/// `None` for something that cannot be a host we serve.
pub fn normalise_host(raw: &[u8]) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = if s.starts_with('[') {
        &s[..=s.find(']')?]
    } else {
        s.rsplit_once(':').map_or(s, |(h, _)| h)
    };
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(s.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(s))
    }
}

impl Registry {
    pub fn new(
        domain: &str,
        public_port: u16,
        name_grace: Duration,
        max_tunnels_per_session: usize,
    ) -> Registry {
        let port = if public_port == 80 {
            String::new()
        } else {
            format!(":{public_port}")
        };
        Registry {
            domain: domain.to_ascii_lowercase(),
            url_suffix: format!(".{}{}", domain.to_ascii_lowercase(), port),
            routes: ArcSwap::from_pointee(HashMap::new()),
            sessions: Cache::builder().build(),
            names: DashMap::new(),
            reserved: Cache::builder()
                .time_to_live(name_grace)
                .max_capacity(1_000_000)
                .build(),
            clients: DashMap::new(),
            next_session: AtomicU64::new(1),
            next_tunnel: AtomicU32::new(1),
            max_tunnels_per_session,
        }
    }

    /// The hot path: the rule and live session for a Host header value.
    pub fn route(&self, host: &[u8]) -> Option<(Arc<Rule>, Option<Arc<Session>>)> {
        let host = normalise_host(host)?;
        let rule = self.routes.load().get(host.as_ref())?.clone();
        let session = self.sessions.get(&rule.session_id);
        Some((rule, session))
    }

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
    ) -> (Arc<Session>, Option<Arc<Session>>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            conn,
            owner,
            client_id,
            remote,
            labels: Mutex::new(Vec::new()),
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
        (session, stale)
    }

    /// Registers a tunnel for `session`: `requested` empty means "pick a
    /// name".
    pub fn register(&self, session: &Session, requested: &str) -> Result<Registered, Refusal> {
        if lock(&session.labels).len() >= self.max_tunnels_per_session {
            return Err(Refusal {
                code: ErrorCode::LimitReached,
                message: format!(
                    "a client may expose at most {} tunnels",
                    self.max_tunnels_per_session
                ),
            });
        }
        let label = if requested.is_empty() {
            self.claim_random(session)?
        } else {
            let label = normalise_label(requested)?;
            self.claim(&label, session)?;
            label
        };
        let host: Box<str> = format!("{label}.{}", self.domain).into();
        let tunnel_id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        let rule = Arc::new(Rule {
            host: host.clone(),
            session_id: session.id,
            tunnel_id,
        });
        self.routes.rcu(|table| {
            let mut t = RouteTable::clone(table);
            t.insert(host.clone(), rule.clone());
            t
        });
        lock(&session.labels).push(label.clone().into());
        Ok(Registered {
            tunnel_id,
            hostname: host.to_string(),
            url: format!("http://{label}{}", self.url_suffix),
        })
    }

    fn claim_random(&self, session: &Session) -> Result<String, Refusal> {
        for _ in 0..32 {
            let label = format!(
                "{}-{}-{}",
                ADJECTIVES[fastrand::usize(..ADJECTIVES.len())],
                NOUNS[fastrand::usize(..NOUNS.len())],
                fastrand::u32(10..100)
            );
            if self.claim(&label, session).is_ok() {
                return Ok(label);
            }
        }
        // The word space is crowded: fall back to a longer random suffix.
        let label = format!("t-{:016x}", fastrand::u64(..));
        self.claim(&label, session)?;
        Ok(label)
    }

    fn claim(&self, label: &str, session: &Session) -> Result<(), Refusal> {
        use dashmap::mapref::entry::Entry;
        match self.names.entry(label.into()) {
            Entry::Occupied(e) if e.get().session_id == session.id => Err(Refusal {
                code: ErrorCode::NameTaken,
                message: format!("this client already exposes {label:?}"),
            }),
            Entry::Occupied(_) => Err(Refusal {
                code: ErrorCode::NameTaken,
                message: format!(
                    "subdomain {label:?} is taken by another connected client; pick another --subdomain \
                     or stop the other client"
                ),
            }),
            Entry::Vacant(e) => {
                if let Some(owner) = self.reserved.get(label) {
                    if owner != session.owner {
                        return Err(Refusal {
                            code: ErrorCode::NameTaken,
                            message: format!(
                                "subdomain {label:?} is reserved for the client that held it until recently; \
                                 pick another --subdomain or retry later"
                            ),
                        });
                    }
                }
                e.insert(Claim { session_id: session.id });
                self.reserved.invalidate(label);
                Ok(())
            }
        }
    }

    /// Removes a session and its routes; its names stay reserved for its
    /// owner for the grace period. Idempotent.
    pub fn end_session(&self, session: &Session) {
        let labels = std::mem::take(&mut *lock(&session.labels));
        for label in &labels {
            // Reserve first, then release: no window in which another owner
            // could claim the name.
            self.reserved.insert(label.clone(), session.owner);
            self.names
                .remove_if(label, |_, c| c.session_id == session.id);
        }
        if !labels.is_empty() {
            self.routes.rcu(|table| {
                let mut t = RouteTable::clone(table);
                t.retain(|_, r| r.session_id != session.id);
                t
            });
        }
        self.clients
            .remove_if(&session.client_id, |_, id| *id == session.id);
        self.sessions.invalidate(&session.id);
    }

    /// Live sessions (for shutdown and operator actions).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|(_, s)| s).collect()
    }

    /// Adds a rule for `label` pointing at `session_id` without a session
    /// or a name claim: for benchmarks of the lookup path only.
    #[doc(hidden)]
    pub fn add_static_route(&self, label: &str, session_id: u64, tunnel_id: u32) {
        let host: Box<str> = format!("{label}.{}", self.domain).into();
        let rule = Arc::new(Rule {
            host: host.clone(),
            session_id,
            tunnel_id,
        });
        self.routes.rcu(|table| {
            let mut t = RouteTable::clone(table);
            t.insert(host.clone(), rule.clone());
            t
        });
    }

    /// The session serving `host`, if any.
    pub fn session_for(&self, host: &str) -> Option<Arc<Session>> {
        self.route(host.as_bytes()).and_then(|(_, s)| s)
    }
}

impl Registry {
    /// Operator action: closes the connection of the client serving `host`
    /// (it will reconnect and get its name back). Returns whether one was.
    pub fn disconnect_host(&self, host: &str, reason: &str) -> bool {
        match self.session_for(host) {
            Some(s) => {
                s.conn.close(
                    quinn::VarInt::from_u32(tunnel_lib::proto::close::DISCONNECTED),
                    reason.as_bytes(),
                );
                self.end_session(&s);
                true
            }
            None => false,
        }
    }
}

/// The labels mutex guards a plain Vec in synchronous code only; a poisoned
/// lock still holds a valid Vec.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalise() {
        assert_eq!(
            normalise_host(b"App.Localhost:8000").as_deref(),
            Some("app.localhost")
        );
        assert_eq!(
            normalise_host(b"app.localhost.").as_deref(),
            Some("app.localhost")
        );
        assert_eq!(normalise_host(b"[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalise_host(b"").as_deref(), None);
    }

    #[test]
    fn labels_validate() {
        assert_eq!(normalise_label("MyApp").unwrap(), "myapp");
        for bad in ["", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(normalise_label(bad).is_err(), "{bad}");
        }
    }
}
