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

use tunnel_lib::http1::host::wildcard_parents;
use tunnel_lib::http1::normalise_host;
use tunnel_lib::limits::MAX_SUBDOMAIN_LEN;
use tunnel_lib::proto::{ErrorCode, TunnelKind};

mod quota;
mod rights;
pub use quota::TokenLimits;
pub use rights::{DomainGrant, NameRule};

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

/// Host → rule. Wildcard rules are keyed by their parent in `wild`, so a
/// lookup is the exact probe plus one probe per parent label, and only
/// when wildcard rules exist.
#[derive(Default, Clone)]
struct RouteTable {
    exact: HashMap<Box<str>, Arc<Rule>>,
    wild: HashMap<Box<str>, Arc<Rule>>,
}

impl RouteTable {
    fn insert(&mut self, rule: Arc<Rule>) {
        match rule.host.strip_prefix("*.") {
            Some(parent) => self.wild.insert(parent.into(), rule),
            None => self.exact.insert(rule.host.clone(), rule),
        };
    }

    /// The rule for `host`: its exact rule, else the nearest wildcard rule
    /// above it unless `wild_ok` says the name is not a wildcard's to take.
    fn get(&self, host: &str, wild_ok: impl FnOnce() -> bool) -> Option<&Arc<Rule>> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        if self.wild.is_empty() || !wild_ok() {
            return None;
        }
        wildcard_parents(host).find_map(|p| self.wild.get(p))
    }
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

/// The registry key of a TCP or UDP tunnel's public port (`tcp:40022`,
/// `udp:40051`): claims, reservations and `names.json` treat it as a name.
pub fn port_key(kind: TunnelKind, port: u16) -> String {
    match kind {
        TunnelKind::Udp => format!("udp:{port}"),
        _ => format!("tcp:{port}"),
    }
}

fn proto_name(kind: TunnelKind) -> &'static str {
    if kind == TunnelKind::Udp {
        "UDP"
    } else {
        "TCP"
    }
}

/// Suffix alphabet: lowercase letters and digits without the ones read
/// alike (`l`/`1`, `o`/`0`): 32 symbols, 5 bits each.
const SUFFIX: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
const SUFFIX_LEN: usize = 7;

/// A random name, `adjective-noun-xxxxxxx`: 24 × 24 × 32^7 ≈ 2^44
/// possibilities from the system's CSPRNG, so URLs cannot be enumerated
/// or predicted from ones seen before, and still read as words.
pub fn random_label() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2 + SUFFIX_LEN];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The OS generator failing is not a reason to refuse a tunnel.
        b.iter_mut().for_each(|x| *x = fastrand::u8(..));
    }
    let suffix: String = b[2..]
        .iter()
        .map(|x| SUFFIX[usize::from(x & 31)] as char)
        .collect();
    format!(
        "{}-{}-{suffix}",
        ADJECTIVES[usize::from(b[0]) % ADJECTIVES.len()],
        NOUNS[usize::from(b[1]) % NOUNS.len()],
    )
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= MAX_SUBDOMAIN_LEN
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Validates a requested subdomain label (DNS label rules, lower-cased).
pub fn normalise_label(s: &str) -> Result<String, Refusal> {
    let l = s.to_ascii_lowercase();
    if valid_label(&l) {
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

/// Validates a full host name (`app.example.com`, or `*.preview.example.com`
/// for a wildcard rule).
pub fn normalise_hostname(s: &str) -> Result<String, Refusal> {
    let h = s.trim_end_matches('.').to_ascii_lowercase();
    let body = h.strip_prefix("*.").unwrap_or(&h);
    let ok = h.len() <= 253 && body.contains('.') && body.split('.').all(valid_label);
    if ok {
        Ok(h)
    } else {
        Err(Refusal {
            code: ErrorCode::InvalidName,
            message: format!(
                "{s:?} is not a valid host name: use labels of letters, digits and '-' \
                 (app.example.com), or *.parent for a wildcard rule"
            ),
        })
    }
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

    /// Registers a TCP tunnel for `session` on port `requested` of `range`
    /// (0: any free one). `bind` opens the port once it is claimed (the claim
    /// is atomic, so two sessions never race for one port); a port that
    /// cannot be opened is released again. The port is held like a name:
    /// reserved for its owner when the session ends, across restarts too.
    pub fn register_port<L>(
        &self,
        session: &Session,
        kind: TunnelKind,
        requested: u16,
        (range, own): (&std::ops::RangeInclusive<u16>, bool),
        mut bind: impl FnMut(u16) -> std::io::Result<L>,
    ) -> Result<(Registered, L), Refusal> {
        let whose = if own { "this token's" } else { "this server's" };
        self.check_tunnel_count(session)?;
        let (first, last) = (*range.start(), *range.end());
        let (port, listener) = if requested != 0 {
            if !range.contains(&requested) {
                return Err(Refusal {
                    code: ErrorCode::InvalidName,
                    message: format!(
                        "port {requested} is outside {whose} {} ports {first}-{last}: ask for one \
                         inside them with --remote-port, or for none",
                        proto_name(kind)
                    ),
                });
            }
            (
                requested,
                self.claim_port(session, kind, requested, &mut bind)?,
            )
        } else {
            let n = u32::from(last - first) + 1;
            let start = fastrand::u32(..n);
            let mut found = None;
            for i in 0..n {
                let p = first + ((start + i) % n) as u16;
                let key = port_key(kind, p);
                if self.names.contains_key(key.as_str()) || self.reserved.contains_key(key.as_str())
                {
                    continue;
                }
                if let Ok(l) = self.claim_port(session, kind, p, &mut bind) {
                    found = Some((p, l));
                    break;
                }
            }
            found.ok_or_else(|| Refusal {
                code: ErrorCode::LimitReached,
                message: format!(
                    "every {} port in {whose} range ({first}-{last}) is taken; retry later",
                    proto_name(kind)
                ),
            })?
        };
        let key = port_key(kind, port);
        let tunnel_id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        lock(&session.hosts).push(key.as_str().into());
        self.left.invalidate(key.as_str());
        self.changed.notify_one();
        Ok((
            Registered {
                tunnel_id,
                url: self.url(&key, kind),
                hostname: key,
            },
            listener,
        ))
    }

    fn claim_port<L>(
        &self,
        session: &Session,
        kind: TunnelKind,
        port: u16,
        bind: &mut impl FnMut(u16) -> std::io::Result<L>,
    ) -> Result<L, Refusal> {
        let key = port_key(kind, port);
        let refused = |why: &str| Refusal {
            code: ErrorCode::NameTaken,
            message: format!("port {port} {why}; ask for another --remote-port, or for none"),
        };
        if self.names.contains_key(key.as_str()) {
            return Err(refused("is taken by another connected tunnel"));
        }
        if self
            .reserved
            .get(key.as_str())
            .is_some_and(|o| o != session.owner)
        {
            return Err(refused(
                "is reserved for the client that held it until recently",
            ));
        }
        self.claim(&key, session)
            .map_err(|_| refused("is taken by another connected tunnel"))?;
        bind(port).map_err(|e| {
            if self
                .names
                .remove_if(key.as_str(), |_, c| c.session_id == session.id)
                .is_some()
            {
                self.held.sub(session.owner);
            }
            refused(&format!("cannot be opened on this server ({e})"))
        })
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

    fn claim(&self, host: &str, session: &Session) -> Result<(), Refusal> {
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
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_words_and_a_suffix_and_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let l = random_label();
            let parts: Vec<&str> = l.split('-').collect();
            assert_eq!(parts.len(), 3, "{l}");
            assert!(
                ADJECTIVES.contains(&parts[0]) && NOUNS.contains(&parts[1]),
                "{l}"
            );
            assert_eq!(parts[2].len(), SUFFIX_LEN, "{l}");
            assert!(parts[2].bytes().all(|b| SUFFIX.contains(&b)), "{l}");
            assert!(normalise_label(&l).is_ok(), "{l}");
            assert!(seen.insert(l), "a name repeated within 20 000");
        }
        // 24 × 24 × 32^7 ≥ 2^40.
        let space = (ADJECTIVES.len() * NOUNS.len()) as f64 * 32f64.powi(SUFFIX_LEN as i32);
        assert!(space.log2() >= 40.0, "{}", space.log2());
    }

    #[test]
    fn labels_and_hostnames_validate() {
        assert_eq!(normalise_label("MyApp").unwrap(), "myapp");
        for bad in ["", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(normalise_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalise_hostname("App.Example.com.").unwrap(),
            "app.example.com"
        );
        assert_eq!(
            normalise_hostname("*.p.example.com").unwrap(),
            "*.p.example.com"
        );
        for bad in ["localhost", "a..b", "*.com", "a.*.b", "-a.b", "a_b.c"] {
            assert!(normalise_hostname(bad).is_err(), "{bad}");
        }
    }

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

    #[test]
    fn routes_probe_exact_then_wildcard_parents() {
        let mut t = RouteTable::default();
        let rule = |host: &str, id| {
            Arc::new(Rule {
                host: host.into(),
                session_id: id,
                tunnel_id: id as u32,
                kind: TunnelKind::Http,
                plain_http: false,
                policy: None,
                metrics: tunnel_lib::metrics::TunnelMetrics::detached(),
            })
        };
        t.insert(rule("*.preview.example.com", 1));
        t.insert(rule("a.preview.example.com", 2));
        t.insert(rule("*.example.com", 3));
        assert_eq!(
            t.get("a.preview.example.com", || true).unwrap().session_id,
            2
        );
        assert_eq!(
            t.get("b.preview.example.com", || true).unwrap().session_id,
            1
        );
        assert_eq!(
            t.get("x.y.preview.example.com", || true)
                .unwrap()
                .session_id,
            1
        );
        assert_eq!(t.get("other.example.com", || true).unwrap().session_id, 3);
        assert!(t.get("example.com", || true).is_none());
        assert!(t.get("example.org", || true).is_none());
    }
}
