//! What the data path shares: the state every visitor connection, client
//! session and tunnel reads (routing, certificates, limits, counters).
//! Built once by [`crate::Server::bind`]; nothing here starts a task.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::Acme;
use crate::certs::CertStore;
use crate::config::Config;
use crate::registry::{Directory, Registry};
use crate::{access_log, fairness, metrics};

/// What the https listener needs: the certificates and its TLS settings.
pub(crate) struct EdgeTls {
    pub(crate) store: Arc<CertStore>,
    pub(crate) edge: Arc<rustls::ServerConfig>,
}

/// Shared by every task of the server.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    /// The same registry, as the edge asks it: routes and offline hosts.
    pub(crate) directory: Arc<dyn Directory>,
    /// SHA-256 digests of the accepted tokens.
    pub(crate) tokens: Arc<[[u8; 32]]>,
    /// With an https listener: its certificates and TLS configuration.
    pub(crate) tls: Option<Arc<EdgeTls>>,
    /// The https port written in redirects (`None`: no https listener).
    pub(crate) https_port: Option<u16>,
    /// Certificates on demand for registered hosts.
    pub(crate) acme: Option<Acme>,
    /// Per-IP limits on visitor connections.
    pub(crate) fairness: fairness::Fairness,
    /// Cancelled once visitor connections have drained at shutdown: the
    /// client sessions close then, not before.
    pub(crate) drained: CancellationToken,
    /// Every visitor connection (HTTP, HTTPS, TCP tunnels) and each TCP
    /// tunnel's accept loop: the drain waits for these.
    pub(crate) visitor_tasks: TaskTracker,
    /// Cuts visitor connections at the end of the drain.
    pub(crate) hard: CancellationToken,
    /// `--max-visitors`, shared by every listener.
    pub(crate) visitor_permits: Arc<Semaphore>,
    /// Where TCP tunnels' public ports are opened: the `--http` address.
    pub(crate) public_ip: std::net::IpAddr,
    /// Counters (for metrics and tests).
    pub(crate) stats: Arc<Stats>,
    /// What the edge counts (Prometheus).
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// `--access-log`.
    pub(crate) access_log: Option<access_log::AccessLog>,
    /// Clients over the TCP transport: their QUIC packets, relayed to the
    /// endpoint (`edge::tls` links them).
    pub(crate) relay: Arc<tunnel_lib::quic::relay::Hub>,
    /// The links' tasks: they outlive the drain of visitors (sessions run
    /// over them) and stop after the endpoint is idle.
    pub(crate) links: Links,
}

/// Links one source address (an IPv6 /64) may hold: a whole office's
/// clients behind one NAT fit; one host cannot take every slot.
pub(crate) const LINKS_PER_SOURCE: usize = 64;

/// The relayed clients' links: owned, bounded (in all and per source),
/// stopped last.
pub(crate) struct Links {
    pub(crate) tracker: TaskTracker,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) per_source: fairness::Fairness,
    pub(crate) stop: CancellationToken,
}

impl Links {
    /// Room for `capacity` links: every client and every pending handshake.
    pub(crate) fn new(capacity: usize) -> Links {
        Links {
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(capacity)),
            per_source: fairness::Fairness::new(LINKS_PER_SOURCE, 0),
            stop: CancellationToken::new(),
        }
    }
}

/// What the server counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// UDP datagrams larger than the client connection takes (dropped).
    pub udp_oversize: std::sync::atomic::AtomicU64,
    /// UDP datagrams dropped otherwise (flow limit, full queue or buffer).
    pub udp_dropped: std::sync::atomic::AtomicU64,
    /// UDP flows alive.
    pub udp_flows: std::sync::atomic::AtomicUsize,
    /// UDP flows given up for a newer one (the source's share, or the
    /// tunnel's table, was full).
    pub udp_evicted: std::sync::atomic::AtomicU64,
    /// Kept-alive local connections the app closed (or spoke on unasked)
    /// while idle between requests: the next request took a new stream.
    pub local_idle_closed: prometheus_client::metrics::counter::Counter,
    /// Requests sent again on a fresh stream because the reused local
    /// connection closed before any byte of the response.
    pub local_retries: prometheus_client::metrics::counter::Counter,
    /// Client connections refused before their hello: over the pending
    /// budget of their source address or of the server.
    pub handshakes_refused: prometheus_client::metrics::counter::Counter,
}

impl State {
    /// Claims a public port for a TCP or UDP tunnel of `session`: `requested`
    /// (0: any) from the range its token may use, opened with `bind`.
    pub(crate) fn claim_port<L>(
        &self,
        session: &crate::registry::Session,
        kind: tunnel_lib::proto::TunnelKind,
        requested: u16,
        bind: impl FnMut(u16) -> std::io::Result<L>,
    ) -> Result<(crate::registry::Registered, L), crate::registry::Refusal> {
        let (range, own) = self
            .config
            .port_range(session.owner, kind)
            .map_err(|message| crate::registry::Refusal {
                code: tunnel_lib::proto::ErrorCode::LimitReached,
                message,
            })?;
        self.registry
            .register_port(session, kind, requested, (&range, own), bind)
    }

    /// The https URL of a plain request (for the 308).
    pub(crate) fn https_url(&self, head: &tunnel_lib::http1::RequestHead) -> String {
        let host = tunnel_lib::http1::normalise_host(head.host()).unwrap_or_default();
        let port = match self.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let target = head.target();
        let path = if target.starts_with(b"/") {
            String::from_utf8_lossy(target).into_owned()
        } else {
            // Absolute form (already checked against Host): keep its path.
            let s = String::from_utf8_lossy(target);
            let after_scheme = s.split_once("://").map_or("", |(_, r)| r);
            match after_scheme.find('/') {
                Some(i) => after_scheme[i..].to_owned(),
                None => "/".to_owned(),
            }
        };
        format!("https://{host}{port}{path}")
    }
}

#[cfg(test)]
impl State {
    /// The state of a server with `config`, no listener bound and no task
    /// started: what the edge's unit tests drive a connection against.
    pub(crate) fn for_tests(config: Config) -> Arc<State> {
        let mut prom = prometheus_client::registry::Registry::default();
        let stats: Arc<Stats> = Arc::default();
        let metrics = Arc::new(metrics::Metrics::register(&mut prom, &stats));
        let urls = crate::registry::Urls {
            scheme: "http",
            port: config.http.port(),
            tls_port: None,
        };
        let registry = Arc::new(Registry::new(
            &config.domain,
            urls,
            config.name_grace,
            config.max_tunnels_per_client,
            config.allow_domains.clone(),
        ));
        Arc::new(State {
            directory: registry.clone(),
            fairness: fairness::Fairness::new(
                config.max_visitors_per_ip,
                config.visitor_rate_per_ip,
            ),
            visitor_permits: Arc::new(Semaphore::new(config.max_visitors)),
            public_ip: config.http.ip(),
            registry,
            tokens: Arc::new([]),
            tls: None,
            https_port: None,
            acme: None,
            drained: CancellationToken::new(),
            visitor_tasks: TaskTracker::new(),
            hard: CancellationToken::new(),
            stats,
            metrics,
            access_log: None,
            relay: tunnel_lib::quic::relay::Hub::new(),
            links: Links::new(config.max_clients + crate::session::MAX_PENDING),
            config,
        })
    }
}
