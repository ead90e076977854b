//! The server's Prometheus metrics (`--metrics ADDR`, `/metrics`), and the
//! admin listener's `/healthz` and `/readyz`.
//!
//! Counted where things happen, as atomics the hot path reaches without a
//! lookup: per tunnel in its `Rule` (`tunnel_lib::metrics`), the rest in
//! [`Metrics`]. Read at scrape time ([`Scrape`]): sessions and tunnels,
//! each client connection's QUIC path (RTT, congestion window, packets
//! lost), certificate expiry, UDP flows, the runtime's tasks.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use hyper::{Method, StatusCode};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry as Prom;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tunnel_lib::admin;
use tunnel_lib::metrics::{const_counter as counter, const_gauge as gauge};

use crate::certs::CertStore;
use crate::registry::Registry;
use crate::state::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// Where a visitor connection came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Http = 0,
    Https = 1,
    /// A TCP tunnel's own port.
    Tcp = 2,
}

const LISTENERS: [&str; 3] = ["http", "https", "tcp"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Page {
    status: u16,
    code: &'static str,
}

/// Counters the edge bumps (per tunnel ones live in the rules).
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Accepted and open, by `Listener` (made once: a connection bumps
    /// them without a label lookup).
    visitors: [(Counter, Gauge); 3],
    pages: Family<Page, Counter>,
    pub(crate) streams_opened: Counter,
    pub(crate) stream_failures: Counter,
    pub(crate) access_log_dropped: Counter,
    /// Visitor connections that spoke HTTP/2 (h2 or h2c).
    pub(crate) http2_connections: Counter,
    /// Forwarded exchanges by the visitor's protocol: HTTP/1.1, then
    /// HTTP/2 (made once: no label lookup per exchange).
    pub(crate) exchanges_by_protocol: [Counter; 2],
    pub(crate) tunnels: Arc<tunnel_lib::metrics::Tunnels>,
}

/// A visitor connection, counted open while this lives.
pub(crate) struct VisitorGuard(Gauge);

impl Drop for VisitorGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub(crate) fn register(prom: &mut Prom, stats: &crate::state::Stats) -> Metrics {
        let visitors_open = Family::<ListenerLabel, Gauge>::default();
        let by_protocol = Family::<ProtocolLabel, Counter>::default();
        let visitors_total = Family::<ListenerLabel, Counter>::default();
        let m = Metrics {
            visitors: LISTENERS.map(|listener| {
                let l = ListenerLabel { listener };
                (
                    visitors_total.get_or_create_owned(&l),
                    visitors_open.get_or_create_owned(&l),
                )
            }),
            pages: Family::default(),
            streams_opened: Counter::default(),
            stream_failures: Counter::default(),
            access_log_dropped: Counter::default(),
            http2_connections: Counter::default(),
            // The family holds the same counters the edge bumps.
            exchanges_by_protocol: ["http/1.1", "h2"]
                .map(|protocol| by_protocol.get_or_create_owned(&ProtocolLabel { protocol })),
            tunnels: tunnel_lib::metrics::Tunnels::register(prom),
        };
        prom.register(
            "visitor_connections_open",
            "Visitor connections open, by listener (http, https, tcp)",
            visitors_open,
        );
        prom.register(
            "visitor_connections",
            "Visitor connections accepted, by listener",
            visitors_total,
        );
        prom.register(
            "local_responses",
            "Responses the server wrote itself (404, 502, 429, redirects...), by status and code",
            m.pages.clone(),
        );
        prom.register(
            "http2_connections",
            "Visitor connections that spoke HTTP/2 (h2 by ALPN, or h2c with prior knowledge)",
            m.http2_connections.clone(),
        );
        prom.register(
            "visitor_exchanges",
            "Exchanges forwarded to clients, by the visitor's protocol (http/1.1, h2)",
            by_protocol,
        );
        prom.register(
            "streams_opened",
            "Data streams opened towards clients",
            m.streams_opened.clone(),
        );
        prom.register(
            "stream_open_failures",
            "Data streams that could not be opened (client gone, or no free stream in time)",
            m.stream_failures.clone(),
        );
        prom.register(
            "local_idle_closed",
            "Kept-alive local connections that the app closed while idle (the next request used a new one)",
            stats.local_idle_closed.clone(),
        );
        prom.register(
            "local_retries",
            "Requests sent again on a new local connection because the reused one closed before answering",
            stats.local_retries.clone(),
        );
        prom.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        m
    }

    /// Counts a visitor connection on `listener` as open until the guard drops.
    pub(crate) fn visitor(&self, listener: Listener) -> VisitorGuard {
        let (total, open) = &self.visitors[listener as usize];
        total.inc();
        open.inc();
        VisitorGuard(open.clone())
    }

    /// Counts a page the server answered with.
    pub(crate) fn page(&self, status: u16, code: &'static str) {
        self.pages.get_or_create(&Page { status, code }).inc();
    }
}

/// What is read at scrape time.
pub(crate) struct Scrape {
    pub(crate) registry: Arc<Registry>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) visitor_tasks: TaskTracker,
    pub(crate) certs: Option<Arc<CertStore>>,
    pub(crate) stopping: CancellationToken,
    /// Clients on the TCP transport.
    pub(crate) relay: Arc<tunnel_lib::quic::relay::Hub>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Client {
    session: String,
    remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertName {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
}

/// One gauge family: a value per label set.
fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let sessions = self.registry.sessions();
        gauge(
            &mut enc,
            "sessions",
            "Client sessions connected",
            sessions.len() as f64,
        )?;
        let relayed = sessions
            .iter()
            .filter(|s| tunnel_lib::quic::relay::is_relay_addr(&s.conn.remote_address()))
            .count();
        gauge(
            &mut enc,
            "sessions_over_tcp",
            "Client sessions on the TCP transport (QUIC inside TLS on the https port); the rest are on QUIC over UDP",
            relayed as f64,
        )?;
        gauge(
            &mut enc,
            "tcp_transport_links",
            "TLS links of clients on the TCP transport (a session, or a handshake on its way)",
            self.relay.linked() as f64,
        )?;
        gauge(
            &mut enc,
            "tcp_transport_dropped_packets",
            "QUIC packets dropped on a full queue of the TCP transport (QUIC resends them)",
            self.relay.dropped.load(Relaxed) as f64,
        )?;
        gauge(
            &mut enc,
            "host_rules",
            "Host rules (HTTP and TLS tunnels) registered",
            self.registry.route_count() as f64,
        )?;
        let client = |s: &crate::registry::Session| Client {
            session: s.id.to_string(),
            remote: s.remote.to_string(),
        };
        let paths: Vec<_> = sessions
            .iter()
            .map(|s| (client(s), s.conn.stats().path))
            .collect();
        let rows: Vec<_> = paths
            .iter()
            .map(|(c, p)| (c.clone(), p.rtt.as_secs_f64()))
            .collect();
        gauges(
            &mut enc,
            "client_rtt_seconds",
            "Each client connection's smoothed QUIC round-trip time",
            &rows,
        )?;
        let rows: Vec<_> = paths
            .iter()
            .map(|(c, p)| (c.clone(), p.cwnd as f64))
            .collect();
        gauges(
            &mut enc,
            "client_congestion_window_bytes",
            "Each client connection's congestion window",
            &rows,
        )?;
        let rows: Vec<_> = paths
            .iter()
            .map(|(c, p)| (c.clone(), p.lost_packets))
            .collect();
        counters(
            &mut enc,
            "client_lost_packets",
            "Packets lost on each client connection",
            &rows,
        )?;
        let rows: Vec<_> = paths
            .iter()
            .map(|(c, p)| (c.clone(), p.sent_packets))
            .collect();
        counters(
            &mut enc,
            "client_sent_packets",
            "Packets sent on each client connection",
            &rows,
        )?;
        if let Some(store) = &self.certs {
            let rows: Vec<_> = store
                .all_certs()
                .iter()
                .map(|c| {
                    let at = c
                        .not_after
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    let name = c.names.first().cloned().unwrap_or_default();
                    (CertName { name }, at)
                })
                .collect();
            gauges(
                &mut enc,
                "certificate_expiry_timestamp_seconds",
                "When each edge certificate expires (Unix time), by its first name",
                &rows,
            )?;
        }
        gauge(
            &mut enc,
            "udp_flows",
            "UDP flows alive",
            self.stats.udp_flows.load(Relaxed) as f64,
        )?;
        counter(
            &mut enc,
            "udp_oversize_dropped",
            "UDP datagrams larger than the client connection takes",
            self.stats.udp_oversize.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "udp_dropped",
            "UDP datagrams dropped (full queue or buffer)",
            self.stats.udp_dropped.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "udp_flows_evicted",
            "UDP flows given up for a newer one (the source's share or the tunnel's table was full)",
            self.stats.udp_evicted.load(Relaxed),
        )?;
        gauge(
            &mut enc,
            "visitor_tasks",
            "Visitor connection tasks alive",
            self.visitor_tasks.len() as f64,
        )?;
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let m = h.metrics();
            gauge(
                &mut enc,
                "runtime_tasks_alive",
                "Tasks alive in the async runtime",
                m.num_alive_tasks() as f64,
            )?;
            gauge(
                &mut enc,
                "runtime_global_queue_depth",
                "Tasks waiting in the runtime's global queue",
                m.global_queue_depth() as f64,
            )?;
        }
        gauge(
            &mut enc,
            "draining",
            "1 while the server drains for shutdown",
            f64::from(u8::from(self.stopping.is_cancelled())),
        )?;
        let info = prometheus_client::metrics::info::Info::new(Build {
            version: tunnel_lib::VERSION,
        });
        info.encode(enc.encode_descriptor(
            "build",
            "The running version",
            None,
            info.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The admin listener's routes.
pub(crate) async fn route(
    prom: Arc<Prom>,
    stopping: CancellationToken,
    token: Option<[u8; 32]>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<admin::Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return admin::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let authorized = || {
        token.is_none_or(|want| {
            let given = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map_or(&[][..], |v| v.as_bytes());
            use subtle::ConstantTimeEq;
            bool::from(tunnel_lib::auth::token_digest_bytes(given).ct_eq(&want))
        })
    };
    match req.uri().path() {
        "/metrics" if !authorized() => admin::text(
            StatusCode::UNAUTHORIZED,
            "/metrics needs the bearer token given to --metrics-token \
             (Authorization: Bearer TOKEN; Prometheus: authorization.credentials)\n",
        ),
        "/metrics" => {
            let body = tunnel_lib::metrics::encode(&prom);
            admin::full(StatusCode::OK, admin::METRICS_CONTENT_TYPE, body)
        }
        // Alive: the process answers.
        "/healthz" => admin::text(StatusCode::OK, "ok\n"),
        // Ready for visitors and clients: not draining.
        "/readyz" if stopping.is_cancelled() => {
            admin::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => admin::text(StatusCode::OK, "ready\n"),
        _ => admin::text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /metrics, /healthz and /readyz\n",
        ),
    }
}
