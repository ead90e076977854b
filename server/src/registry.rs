//! Who serves which host.
//!
//! - `routes`: host → `Arc<Rule>`, an immutable snapshot in an `ArcSwap`.
//!   The request path loads it without a lock; registrations (rare) swap in
//!   a new map. Lookup is a hash probe on the normalised host, then (only
//!   when wildcard rules exist) one probe per parent label in the wildcard
//!   map (`*.preview.example.com` is stored under `preview.example.com`),
//!   never a linear scan.
//! - `sessions`: session id → `Arc<Session>` in a moka cache (lock-free
//!   reads; the rule points at the session by id so a dead session's rules
//!   fail fast instead of keeping the connection alive).
//! - `names`: live claims on hosts, in a `DashMap` whose entry API makes
//!   "check and claim" atomic. Names under the server's domain need no
//!   grant; other hosts (custom domains, wildcard rules) need a
//!   [`DomainGrant`] for the token.
//! - `reserved`: names released by a session that ended, kept for the same
//!   owner for `name_grace` (a moka cache with that TTL), so a client that
//!   reconnects gets its URL back.
//!
//! Every method is synchronous and returns owned values: no guard can live
//! across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use moka::sync::Cache;

use tunnel_lib::http1::normalise_host;
use tunnel_lib::proto::{ErrorCode, TunnelKind};

mod labels;
mod names;
mod ports;
mod quota;
mod rights;
mod routes;
pub use labels::{normalise_hostname, normalise_label, normalise_name_rule, random_label};
pub use ports::port_key;
pub use quota::TokenLimits;
pub use rights::{DomainGrant, NameRule};
use routes::RouteTable;

/// A reserved host's client is away: it stopped, or it dropped and may be
/// on its way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    Left,
    Reconnecting,
}

/// Who a name belongs to across reconnects: the token that registered it.
/// On a server without tokens (loopback development) everyone is the same
/// anonymous owner, so a restarted client can take its name back at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Token(usize),
    Anonymous,
}

/// One host rule: requests for `host` go to tunnel `tunnel_id` of session
/// `session_id`. `host` is an exact name, or `*.parent` for a wildcard rule
/// (every name below `parent`).
#[derive(Debug)]
pub struct Rule {
    pub host: Box<str>,
    pub session_id: u64,
    pub tunnel_id: u32,
    pub kind: TunnelKind,
    /// The tunnel opted out of the plain listener's redirect to https.
    pub plain_http: bool,
    /// What the edge enforces and edits for this tunnel's visitors.
    pub policy: Option<Arc<crate::policy::EdgePolicy>>,
    /// This tunnel's counters (requests by class, bytes each way).
    pub metrics: tunnel_lib::metrics::TunnelMetrics,
}

/// One connected client.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub conn: quinn::Connection,
    pub owner: Owner,
    pub client_id: [u8; 16],
    pub remote: SocketAddr,
    /// Hosts this session holds (only touched by synchronous methods).
    hosts: Mutex<Vec<Box<str>>>,
    /// Cancelled when the session ends: its TCP tunnels stop accepting.
    pub ended: tokio_util::sync::CancellationToken,
    /// UDP tunnels' queues for datagrams from the client, by tunnel id.
    pub datagrams: Mutex<HashMap<u32, tokio::sync::mpsc::Sender<(u32, bytes::Bytes)>>>,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    session_id: u64,
}

/// How URLs are written: scheme and public port of each listener.
#[derive(Debug, Clone)]
pub struct Urls {
    /// `http` or `https` (with an https listener every HTTP URL is https).
    pub scheme: &'static str,
    /// The port in HTTP(S) URLs (omitted when it is the scheme's default).
    pub port: u16,
    /// The https listener's public port, for TLS tunnels.
    pub tls_port: Option<u16>,
}

pub struct Registry {
    domain: String,
    urls: Urls,
    routes: ArcSwap<RouteTable>,
    sessions: Cache<u64, Arc<Session>>,
    /// Live claims, by host.
    names: DashMap<Box<str>, Claim>,
    /// Released hosts, reserved for their owner for the grace period.
    reserved: Cache<Box<str>, Owner>,
    /// Reserved hosts whose client said goodbye (stopped on purpose):
    /// visitors are not held for them.
    left: Cache<Box<str>, ()>,
    /// client process id → its live session, to replace a stale session of
    /// the same client at once on reconnect.
    clients: DashMap<[u8; 16], u64>,
    grants: Vec<DomainGrant>,
    /// Told whenever claims or reservations change (the state file is
    /// rewritten then).
    changed: Arc<tokio::sync::Notify>,
    /// Woken (all waiters) whenever a host gets a route: visitors held for
    /// a reconnecting owner look again.
    returned: tokio::sync::Notify,
    next_session: AtomicU64,
    next_tunnel: AtomicU32,
    max_tunnels_per_session: usize,
    limits: TokenLimits,
    /// Names each token holds (claimed or reserved).
    held: Arc<quota::Held>,
    /// Names under the domain kept for one token each (`[[token]] names`).
    name_rules: Vec<NameRule>,
    metrics: Option<Arc<tunnel_lib::metrics::Tunnels>>,
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

/// What a client asks for.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Empty: pick a name. A label: `<label>.<domain>`. A name with a dot:
    /// that host (a custom domain or a wildcard rule), if granted.
    pub name: &'a str,
    pub kind: TunnelKind,
    pub plain_http: bool,
    /// Visitor policy and request edits (HTTP tunnels).
    pub policy: Option<Arc<crate::policy::EdgePolicy>>,
}

impl Registry {
    pub fn new(
        domain: &str,
        urls: Urls,
        name_grace: Duration,
        max_tunnels_per_session: usize,
        grants: Vec<DomainGrant>,
    ) -> Registry {
        let held = Arc::new(quota::Held::default());
        let release = held.clone();
        Registry {
            domain: domain.to_ascii_lowercase(),
            urls,
            routes: ArcSwap::from_pointee(RouteTable::default()),
            sessions: Cache::builder().build(),
            names: DashMap::new(),
            reserved: Cache::builder()
                .time_to_live(name_grace)
                .max_capacity(1_000_000)
                // A reservation that lapses, is evicted or is taken back
                // stops counting for its token (a claim counted it again).
                .eviction_listener(move |_, owner, cause| {
                    if cause != moka::notification::RemovalCause::Replaced {
                        release.sub(owner);
                    }
                })
                .build(),
            left: Cache::builder()
                .time_to_live(name_grace)
                .max_capacity(1_000_000)
                .build(),
            clients: DashMap::new(),
            grants,
            changed: Arc::new(tokio::sync::Notify::new()),
            returned: tokio::sync::Notify::new(),
            next_session: AtomicU64::new(1),
            next_tunnel: AtomicU32::new(1),
            max_tunnels_per_session,
            limits: TokenLimits::default(),
            held,
            name_rules: Vec::new(),
            metrics: None,
        }
    }

    /// What each token may hold (the defaults otherwise).
    pub fn with_token_limits(mut self, limits: TokenLimits) -> Registry {
        self.limits = limits;
        self
    }

    /// The token limits in force.
    pub fn token_limits(&self) -> TokenLimits {
        self.limits
    }

    /// Where the tunnels' counters are registered (none: detached).
    pub fn with_metrics(mut self, tunnels: Arc<tunnel_lib::metrics::Tunnels>) -> Registry {
        self.metrics = Some(tunnels);
        self
    }

    /// The counters of a new tunnel called `name`.
    pub fn tunnel_metrics(&self, name: &str) -> tunnel_lib::metrics::TunnelMetrics {
        match &self.metrics {
            Some(t) => t.tunnel(name),
            None => tunnel_lib::metrics::TunnelMetrics::detached(),
        }
    }

    /// How many host rules exist (one per HTTP, TLS tunnel).
    pub fn route_count(&self) -> usize {
        let t = self.routes.load();
        t.exact.len() + t.wild.len()
    }

    /// Names kept for some tokens (see [`NameRule`]).
    pub fn with_name_rules(mut self, rules: Vec<NameRule>) -> Registry {
        self.name_rules = rules;
        self
    }

    /// The hot path: the rule and live session for a Host header value (or
    /// an SNI name).
    pub fn route(&self, host: &[u8]) -> Option<(Arc<Rule>, Option<Arc<Session>>)> {
        let host = normalise_host(host)?;
        let rule = self.lookup(host.as_ref())?;
        let session = self.sessions.get(&rule.session_id);
        Some((rule, session))
    }

    /// Whether some tunnel serves `host` (normalised): ACME orders only for
    /// names that pass this.
    pub fn serves(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }

    /// The rule for a normalised host. A wildcard rule (a granted
    /// `*.example.com`) never takes a name under the server's domain (those
    /// are claimed by label, kept by name rules, or free), nor a name
    /// reserved for a reconnecting client: visitors of those are not
    /// another token's to receive.
    fn lookup(&self, host: &str) -> Option<Arc<Rule>> {
        let wild_ok = || !self.under_domain(host) && !self.reserved.contains_key(host);
        self.routes.load().get(host, wild_ok).cloned()
    }

    /// The server's domain.
    pub fn domain(&self) -> &str {
        &self.domain
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

    fn check_tunnel_count(&self, session: &Session) -> Result<(), Refusal> {
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

    /// Registers a tunnel for `session`.
    pub fn register(&self, session: &Session, req: &Request<'_>) -> Result<Registered, Refusal> {
        self.check_tunnel_count(session)?;
        if req.kind == TunnelKind::Tls && self.urls.tls_port.is_none() {
            return Err(Refusal {
                code: ErrorCode::LimitReached,
                message: "this server has no https listener, so it cannot pass TLS through; \
                          its operator must start tunnel-server with --https"
                    .into(),
            });
        }
        let host = if req.name.is_empty() {
            // A token with names of its own asks for one of them.
            if let Owner::Token(i) = session.owner {
                let own: Vec<&str> = self
                    .name_rules
                    .iter()
                    .filter(|r| r.token == i)
                    .map(|r| r.pattern.as_str())
                    .collect();
                if !own.is_empty() {
                    return Err(Refusal {
                        code: ErrorCode::InvalidName,
                        message: format!(
                            "this token claims its names by name: pass --subdomain with one of {}",
                            own.join(", ")
                        ),
                    });
                }
            }
            self.claim_random(session)?
        } else {
            let host = self.requested_host(session, req.name)?;
            self.claim(&host, session)?;
            host
        };
        let tunnel_id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        let rule = Arc::new(Rule {
            host: host.as_str().into(),
            session_id: session.id,
            tunnel_id,
            kind: req.kind,
            plain_http: req.plain_http,
            policy: req.policy.clone(),
            metrics: self.tunnel_metrics(&host),
        });
        self.routes.rcu(|table| {
            let mut t = RouteTable::clone(table);
            t.insert(rule.clone());
            t
        });
        lock(&session.hosts).push(host.as_str().into());
        self.left.invalidate(host.as_str());
        self.changed.notify_one();
        self.returned.notify_waiters();
        let url = self.url(&host, req.kind);
        Ok(Registered {
            tunnel_id,
            hostname: host,
            url,
        })
    }

    /// The public URL of a tunnel host.
    pub fn url(&self, host: &str, kind: TunnelKind) -> String {
        match kind {
            TunnelKind::Tls => {
                let port = self.urls.tls_port.unwrap_or(443);
                format!("tls://{host}:{port}")
            }
            TunnelKind::Tcp | TunnelKind::Udp => {
                let (proto, port) = host.split_once(':').unwrap_or(("tcp", host));
                format!("{proto}://{}:{port}", self.domain)
            }
            TunnelKind::Http => {
                let default = if self.urls.scheme == "https" { 443 } else { 80 };
                if self.urls.port == default {
                    format!("{}://{host}", self.urls.scheme)
                } else {
                    format!("{}://{host}:{}", self.urls.scheme, self.urls.port)
                }
            }
        }
    }

    /// Notified when claims or reservations change.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Live sessions (for shutdown and operator actions).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|(_, s)| s).collect()
    }

    /// Adds a rule for `label` pointing at `session_id` without a session
    /// or a name claim: for benchmarks of the lookup path only.
    #[doc(hidden)]
    pub fn add_static_route(&self, label: &str, session_id: u64, tunnel_id: u32) {
        let rule = Arc::new(Rule {
            host: format!("{label}.{}", self.domain).into(),
            session_id,
            tunnel_id,
            kind: TunnelKind::Http,
            plain_http: false,
            policy: None,
            metrics: tunnel_lib::metrics::TunnelMetrics::detached(),
        });
        self.routes.rcu(|table| {
            let mut t = RouteTable::clone(table);
            t.insert(rule.clone());
            t
        });
    }

    /// The session serving `host`, if any.
    pub fn session_for(&self, host: &str) -> Option<Arc<Session>> {
        // A claim (any name, `tcp:PORT` and `udp:PORT` too), else a route
        // (a host under a wildcard rule).
        let claimed = self.names.get(host).map(|c| c.session_id);
        match claimed {
            Some(id) => self.sessions.get(&id),
            None => self.route(host.as_bytes()).and_then(|(_, s)| s),
        }
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

/// The hosts mutex guards a plain Vec in synchronous code only; a poisoned
/// lock still holds a valid Vec.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_names_below_and_exact() {
        let any = DomainGrant {
            token: None,
            pattern: "*.example.com".into(),
        };
        assert!(any.allows(Owner::Token(0), "app.example.com"));
        assert!(any.allows(Owner::Token(3), "*.preview.example.com"));
        assert!(!any.allows(Owner::Token(0), "example.com"));
        assert!(!any.allows(Owner::Token(0), "badexample.com"));
        let one = DomainGrant {
            token: Some(1),
            pattern: "app.mycompany.com".into(),
        };
        assert!(one.allows(Owner::Token(1), "app.mycompany.com"));
        assert!(!one.allows(Owner::Token(0), "app.mycompany.com"));
        assert!(!one.allows(Owner::Anonymous, "app.mycompany.com"));
        assert!(!one.allows(Owner::Token(1), "x.app.mycompany.com"));
    }
}
