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
//! - `names` ([`names::Names`]): who holds each name, claimed by a live
//!   session or reserved for its owner for `name_grace` after it ended, so
//!   a client that reconnects gets its URL back. Pure (time is passed in),
//!   behind one mutex: "check and claim" is atomic.
//! - `rights` ([`Rights`]): which names a token may ask for: labels under
//!   the server's domain (unless kept for another token by a [`NameRule`]),
//!   other hosts by a [`DomainGrant`].
//! - `ports`: TCP and UDP tunnels' public ports, held like names.
//! - `sessions`: connected clients and what each may hold.
//! - [`Directory`]: what the edge asks (route, offline, owner's return),
//!   the seam a shared directory (a cluster) implements later.
//!
//! Every method is synchronous and returns owned values: no guard can live
//! across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use moka::sync::Cache;

use tunnel_lib::http1::normalise_host;
use tunnel_lib::proto::{ErrorCode, TunnelKind};

mod directory;
mod labels;
mod names;
mod ports;
mod quota;
mod rights;
mod routes;
mod sessions;
pub use directory::Directory;
pub use labels::{normalise_hostname, normalise_label, normalise_name_rule, random_label};
use names::Names;
pub use ports::port_key;
pub use quota::TokenLimits;
pub use rights::{DomainGrant, NameRule, Rights};
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
/// `session_id`, as its [`Target`] says. `host` is an exact name, or
/// `*.parent` for a wildcard rule (every name below `parent`).
#[derive(Debug)]
pub struct Rule {
    pub host: Box<str>,
    pub session_id: u64,
    pub tunnel_id: u32,
    pub target: Target,
    /// This tunnel's counters (requests by class, bytes each way).
    pub metrics: tunnel_lib::metrics::TunnelMetrics,
}

/// What a rule's visitors reach, and how the server treats them. HTTP and
/// TLS rules are in the route table, by host; a TCP tunnel's rule is held
/// by its port's accept loop. (UDP tunnels relay datagrams, not streams,
/// and have no rule.)
#[derive(Debug, Clone)]
pub enum Target {
    /// An HTTP tunnel: the edge parses each request.
    Http {
        /// The tunnel opted out of the plain listener's redirect to https.
        plain_http: bool,
        /// What the edge enforces and edits for this tunnel's visitors.
        policy: Option<Arc<crate::policy::EdgePolicy>>,
    },
    /// TLS passed through by SNI, untouched: the client's service holds
    /// the certificate.
    Tls,
    /// A public TCP port: bytes relayed both ways.
    Tcp,
}

impl Rule {
    pub fn kind(&self) -> TunnelKind {
        match self.target {
            Target::Http { .. } => TunnelKind::Http,
            Target::Tls => TunnelKind::Tls,
            Target::Tcp => TunnelKind::Tcp,
        }
    }

    /// The HTTP tunnel's visitor policy.
    pub fn policy(&self) -> Option<&crate::policy::EdgePolicy> {
        match &self.target {
            Target::Http { policy, .. } => policy.as_deref(),
            Target::Tls | Target::Tcp => None,
        }
    }

    /// Whether plain-http visitors are served (not redirected to https).
    pub fn plain_http(&self) -> bool {
        matches!(
            self.target,
            Target::Http {
                plain_http: true,
                ..
            }
        )
    }
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
    /// Who holds each name (claimed or reserved).
    names: Mutex<Names>,
    /// client process id → its live session, to replace a stale session of
    /// the same client at once on reconnect.
    clients: DashMap<[u8; 16], u64>,
    rights: Rights,
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

/// What a client asks for: a host rule (an HTTP or TLS tunnel).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Empty: pick a name. A label: `<label>.<domain>`. A name with a dot:
    /// that host (a custom domain or a wildcard rule), if granted.
    pub name: &'a str,
    pub target: Target,
}

impl Registry {
    pub fn new(
        domain: &str,
        urls: Urls,
        name_grace: Duration,
        max_tunnels_per_session: usize,
        grants: Vec<DomainGrant>,
    ) -> Registry {
        let limits = TokenLimits::default();
        Registry {
            rights: Rights::new(domain, grants, Vec::new()),
            domain: domain.to_ascii_lowercase(),
            urls,
            routes: ArcSwap::from_pointee(RouteTable::default()),
            sessions: Cache::builder().build(),
            names: Mutex::new(Names::new(name_grace, limits.names)),
            clients: DashMap::new(),
            changed: Arc::new(tokio::sync::Notify::new()),
            returned: tokio::sync::Notify::new(),
            next_session: AtomicU64::new(1),
            next_tunnel: AtomicU32::new(1),
            max_tunnels_per_session,
            limits,
            metrics: None,
        }
    }

    /// What each token may hold (the defaults otherwise).
    pub fn with_token_limits(mut self, limits: TokenLimits) -> Registry {
        self.limits = limits;
        lock(&self.names).set_per_token(limits.names);
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
        self.rights.set_name_rules(rules);
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
        let wild_ok = || {
            !self.rights.under_domain(host)
                && lock(&self.names)
                    .reserved_for(host, Instant::now())
                    .is_none()
        };
        self.routes.load().get(host, wild_ok).cloned()
    }

    /// The server's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Registers a host rule (an HTTP or TLS tunnel) for `session`.
    pub fn register(&self, session: &Session, req: &Request<'_>) -> Result<Registered, Refusal> {
        self.check_tunnel_count(session)?;
        let kind = match req.target {
            Target::Http { .. } => TunnelKind::Http,
            Target::Tls => TunnelKind::Tls,
            Target::Tcp => {
                return Err(Refusal {
                    code: ErrorCode::InvalidName,
                    message: "a TCP tunnel has a port, not a host: register_port".into(),
                })
            }
        };
        if kind == TunnelKind::Tls && self.urls.tls_port.is_none() {
            return Err(Refusal {
                code: ErrorCode::LimitReached,
                message: "this server has no https listener, so it cannot pass TLS through; \
                          its operator must start tunnel-server with --https"
                    .into(),
            });
        }
        let host = if req.name.is_empty() {
            self.rights.may_pick_any(session.owner)?;
            self.claim_random(session)?
        } else {
            let host = self.rights.requested_host(session.owner, req.name)?;
            self.claim(&host, session)?;
            host
        };
        let tunnel_id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        let rule = Arc::new(Rule {
            host: host.as_str().into(),
            session_id: session.id,
            tunnel_id,
            target: req.target.clone(),
            metrics: self.tunnel_metrics(&host),
        });
        self.routes.rcu(|table| {
            let mut t = RouteTable::clone(table);
            t.insert(rule.clone());
            t
        });
        lock(&session.hosts).push(host.as_str().into());
        self.changed.notify_one();
        self.returned.notify_waiters();
        let url = self.url(&host, kind);
        Ok(Registered {
            tunnel_id,
            hostname: host,
            url,
        })
    }

    /// `session` claims `name` (a host, or a port's key).
    fn claim(&self, name: &str, session: &Session) -> Result<(), Refusal> {
        lock(&self.names).claim(name, session.id, session.owner, Instant::now())
    }

    /// A free random name under the domain, claimed for `session`.
    fn claim_random(&self, session: &Session) -> Result<String, Refusal> {
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

    /// Every name that is claimed or reserved, with its owner: what must
    /// survive a restart so that each name goes back to its owner only.
    pub fn held_names(&self) -> Vec<(String, Owner)> {
        lock(&self.names).held(Instant::now())
    }

    /// Reserves `names` for their owners for the grace period (after a
    /// restart, from the state file). A live claim is left alone.
    pub fn restore_names(&self, names: Vec<(String, Owner)>) {
        lock(&self.names).restore(names, Instant::now());
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

    /// Adds a rule for `label` pointing at `session_id` without a session
    /// or a name claim: for benchmarks of the lookup path only.
    #[doc(hidden)]
    pub fn add_static_route(&self, label: &str, session_id: u64, tunnel_id: u32) {
        let rule = Arc::new(Rule {
            host: format!("{label}.{}", self.domain).into(),
            session_id,
            tunnel_id,
            target: Target::Http {
                plain_http: false,
                policy: None,
            },
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
        let claimed = lock(&self.names).claimant(host);
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

// #[tokio::test] expands to a block_on outside any runtime.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;
