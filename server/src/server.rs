//! The composition: [`Server::bind`] builds the shared [`crate::state::State`]
//! from a [`crate::Config`] and bound [`crate::Listeners`]; [`Server::run`]
//! starts the accept loops, workers and watchers, and drains them at shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use tunnel_lib::limits::SHUTDOWN_GRACE;
use tunnel_lib::proto::close;
use tunnel_lib::tls::{fingerprint, fingerprint_string, TlsError};

use crate::accept::{accept_tcp, refuse_clients, Entrance, Tasks};
use crate::access_log;
use crate::acme::Acme;
use crate::certs::{CertFiles, CertStore, EdgeResolver, QuicResolver};
use crate::config::{Config, ConfigError};
use crate::listeners::{Listeners, ServerError};
use crate::registry::{self, Registry};
use crate::state::Stats;
use crate::state::{EdgeTls, State};
use crate::{acme, certs, edge, fairness, metrics, names_file, session};

/// A bound, configured server, not yet running.
pub struct Server {
    state: Arc<State>,
    http: TcpListener,
    https: Option<TcpListener>,
    admin: Option<TcpListener>,
    /// Every metric, encoded at each scrape.
    prom: Arc<prometheus_client::registry::Registry>,
    /// Cancelled when the drain begins (`/readyz` answers 503 from then).
    stopping: CancellationToken,
    endpoint: quinn::Endpoint,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    quic_addr: SocketAddr,
    fingerprint: String,
    cert_path: Option<PathBuf>,
    state_dir: PathBuf,
    /// Notified to reload the operator's certificate files (SIGHUP).
    reload: Arc<Notify>,
    /// The operator's certificate files, as they were when loaded.
    watched: Option<(CertFiles, certs::Stamp)>,
    acme_worker: Option<acme::Worker>,
}

impl Server {
    /// Validates the configuration, loads or creates the certificate and
    /// sets up the QUIC endpoint.
    pub async fn bind(config: Config, listeners: Listeners) -> Result<Server, ServerError> {
        let http_addr = listeners.http.local_addr().map_err(ServerError::Endpoint)?;
        let quic_addr = listeners.quic.local_addr().map_err(ServerError::Endpoint)?;
        let https_addr = match &listeners.https {
            Some(l) => Some(l.local_addr().map_err(ServerError::Endpoint)?),
            None => None,
        };
        config.validate(http_addr, quic_addr, https_addr)?;
        let state_dir = match &config.state_dir {
            Some(d) => d.clone(),
            None => tunnel_lib::paths::default_state_dir().ok_or(ConfigError::NoStateDir)?,
        };
        let (pair, cert_path) = match (&config.cert, &config.key) {
            (Some(c), Some(k)) => (tunnel_lib::tls::load_pair(c, k).await?, Some(c.clone())),
            _ => {
                let mut names = vec![
                    config.domain.clone(),
                    format!("*.{}", config.domain),
                    "localhost".to_owned(),
                ];
                for ip in [quic_addr.ip().to_string(), "127.0.0.1".into(), "::1".into()] {
                    if !names.contains(&ip) {
                        names.push(ip);
                    }
                }
                let (pair, generated) =
                    tunnel_lib::tls::load_or_generate_dev(&state_dir, names).await?;
                let path = state_dir.join(tunnel_lib::paths::DEV_CERT_FILE);
                if generated {
                    info!("generated a self-signed certificate at {}", path.display());
                }
                (pair, Some(path))
            }
        };
        let fp = pair
            .chain
            .first()
            .map(|c| fingerprint_string(&fingerprint(c)))
            .unwrap_or_default();
        let own = certs::certified(&pair)?;

        // The https edge: operator files and/or ACME, the own certificate as
        // the default.
        let mut watched = None;
        let tls = match https_addr {
            None => None,
            Some(_) => {
                let files = match (&config.edge_cert, &config.edge_key) {
                    (Some(c), Some(k)) => {
                        let files = CertFiles {
                            cert: c.clone(),
                            key: k.clone(),
                        };
                        let (stamp, cert) = files.load().await;
                        let cert = cert.map_err(|e| {
                            TlsError::Config(format!("--edge-cert/--edge-key: {e}"))
                        })?;
                        watched = Some((files, stamp));
                        Some(cert)
                    }
                    _ => None,
                };
                let store = Arc::new(CertStore::new(files, own.clone()));
                let mut edge =
                    rustls::ServerConfig::builder_with_provider(tunnel_lib::tls::provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| TlsError::Config(e.to_string()))?
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(EdgeResolver(store.clone())));
                edge.alpn_protocols = edge::tls::alpn_protocols();
                Some(Arc::new(EdgeTls {
                    store,
                    edge: Arc::new(edge),
                }))
            }
        };
        let quic_cfg = tunnel_lib::quic::server_config_with(
            Arc::new(QuicResolver {
                own,
                store: tls.as_ref().map(|t| t.store.clone()),
                public_name: config.domain.to_ascii_lowercase(),
            }),
            &config.tuning,
        )?;
        let reset_secret =
            tunnel_lib::paths::load_or_create_secret(&state_dir, tunnel_lib::paths::RESET_KEY_FILE)
                .await
                .map_err(|source| {
                    ServerError::Config(ConfigError::StateDir {
                        path: state_dir.join(tunnel_lib::paths::RESET_KEY_FILE),
                        source,
                    })
                })?;
        let relay = tunnel_lib::quic::relay::Hub::new();
        let endpoint = tunnel_lib::quic::server_endpoint(
            listeners.quic,
            quic_cfg,
            &reset_secret,
            &config.tuning,
            Some(relay.clone()),
        )
        .map_err(ServerError::Endpoint)?;
        let https_public = https_addr.map(|a| config.public_https_port.unwrap_or(a.port()));
        let urls = match https_public {
            Some(p) => registry::Urls {
                scheme: "https",
                port: p,
                tls_port: Some(p),
            },
            None => registry::Urls {
                scheme: "http",
                port: config.public_port.unwrap_or(http_addr.port()),
                tls_port: None,
            },
        };
        let mut prom = prometheus_client::registry::Registry::with_prefix("tunnel_server");
        let stats: Arc<Stats> = Arc::default();
        let metrics = Arc::new(metrics::Metrics::register(&mut prom, &stats));
        let registry = Arc::new(
            Registry::new(
                &config.domain,
                urls,
                config.name_grace,
                config.max_tunnels_per_client,
                config.allow_domains.clone(),
            )
            .with_name_rules(config.token_names.clone())
            .with_token_limits(config.token_limits)
            .with_metrics(metrics.tunnels.clone()),
        );
        let access_log = match &config.access_log {
            Some(path) => Some(
                access_log::AccessLog::open(
                    path,
                    config.log_format,
                    metrics.access_log_dropped.clone(),
                )
                .await
                .map_err(|source| ServerError::AccessLog {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let tokens: Arc<[[u8; 32]]> = config
            .tokens
            .iter()
            .map(|t| tunnel_lib::auth::token_digest(t.expose()))
            .collect();
        names_file::restore(&state_dir, &registry, &tokens).await;
        let (acme, acme_worker) = match (&config.acme, &tls) {
            (Some(cfg), Some(t)) => {
                if cfg.dns_hook.is_none() && !t.store.covers(&format!("any-name.{}", config.domain))
                {
                    warn!(
                        "--acme without --acme-dns-hook orders one certificate per tunnel name: \
                         every name, random ones too, is published in public certificate \
                         transparency logs, and Let's Encrypt issues at most 50 certificates per \
                         domain a week. For a team, give a wildcard for *.{}: --acme-dns-hook \
                         PROGRAM (DNS-01), or --edge-cert/--edge-key (deploy/VPS.md)",
                        config.domain
                    );
                }
                let (a, mut w) =
                    Acme::new(cfg.clone(), &state_dir, t.store.clone(), registry.clone());
                w.load_cache().await;
                (Some(a), Some(w))
            }
            _ => (None, None),
        };
        let fairness =
            fairness::Fairness::new(config.max_visitors_per_ip, config.visitor_rate_per_ip);
        let visitor_permits = Arc::new(Semaphore::new(config.max_visitors));
        let visitor_tasks = TaskTracker::new();
        let stopping = CancellationToken::new();
        prom.register_collector(Box::new(metrics::Scrape {
            registry: registry.clone(),
            stats: stats.clone(),
            visitor_tasks: visitor_tasks.clone(),
            certs: tls.as_ref().map(|t| t.store.clone()),
            stopping: stopping.clone(),
            relay: relay.clone(),
        }));
        let config_max_clients = config.max_clients;
        Ok(Server {
            state: Arc::new(State {
                visitor_tasks,
                hard: CancellationToken::new(),
                visitor_permits,
                public_ip: http_addr.ip(),
                stats,
                metrics,
                access_log,
                config,
                directory: registry.clone(),
                registry,
                tokens,
                tls,
                https_port: https_public,
                acme,
                fairness,
                drained: CancellationToken::new(),
                relay,
                links: crate::state::Links::new(config_max_clients + session::MAX_PENDING),
            }),
            http: listeners.http,
            https: listeners.https,
            admin: listeners.admin,
            prom: Arc::new(prom),
            stopping,
            endpoint,
            http_addr,
            https_addr,
            quic_addr,
            fingerprint: fp,
            cert_path,
            state_dir,
            reload: Arc::new(Notify::new()),
            watched,
            acme_worker,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }
    /// The https listener's address, if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }
    /// Notify it to reload the operator's certificate files (what SIGHUP
    /// does in `main`); they are also reloaded when they change.
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }
    /// The certificates visitors see (with an https listener).
    pub fn cert_store(&self) -> Option<Arc<CertStore>> {
        self.state.tls.as_ref().map(|t| t.store.clone())
    }
    /// The ACME handle (orders placed so far), with `--acme`.
    pub fn acme(&self) -> Option<Acme> {
        self.state.acme.clone()
    }
    /// Where the server keeps its state (certificates, ACME account).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }
    /// `sha256:…` of the server's own certificate (self-signed or
    /// `--cert`): what QUIC presents to clients that dial an address, and
    /// the https default.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// When QUIC presents a CA's certificate to clients that dial the
    /// server's own name (ACME issued one, on this start or an earlier one):
    /// what to tell the person connecting clients.
    pub fn quic_ca_note(&self) -> Option<String> {
        let store = &self.state.tls.as_ref()?.store;
        let domain = self.state.registry.domain();
        let cert = store.lookup(domain)?;
        cert.names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(domain))
            .then(|| certs::quic_note(&cert, domain))
    }
    /// The certificate file (the dev one, or `--cert`).
    pub fn cert_path(&self) -> Option<&std::path::Path> {
        self.cert_path.as_deref()
    }
    /// The server's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats.clone()
    }
    /// The registry, for operator actions (and tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }
    /// The admin listener's address (`--metrics`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
    /// The metrics as a scrape would read them.
    pub fn metrics_text(&self) -> String {
        tunnel_lib::metrics::encode(&self.prom)
    }

    /// [`Server::serve`], with the admin listener (if any) up for all of it,
    /// the drain included.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let admin_done = CancellationToken::new();
        let admin = self.admin.take().map(|l| {
            let prom = self.prom.clone();
            let stopping = self.stopping.clone();
            let token = self
                .state
                .config
                .metrics_token
                .as_ref()
                .map(|t| tunnel_lib::auth::token_digest(&format!("Bearer {}", t.expose())));
            if let Ok(a) = l.local_addr() {
                if !a.ip().is_loopback() && token.is_none() {
                    warn!(
                        "--metrics {a} is reachable from other machines and /metrics lists every \
                         tunnel name (random ones too) and each client's address: bind it to \
                         127.0.0.1, firewall it, or set --metrics-token (TUNNEL_METRICS_TOKEN)"
                    );
                }
            }
            tunnel_lib::admin::serve(l, admin_done.clone().cancelled_owned(), move |req| {
                metrics::route(prom.clone(), stopping.clone(), token, req)
            })
        });
        let admin = async {
            if let Some(a) = admin {
                a.await
            }
        };
        let state = self.state.clone();
        let body = async {
            let r = self.serve(shutdown).await;
            if let Some(log) = &state.access_log {
                log.close().await;
            }
            admin_done.cancel();
            r
        };
        let ((), r) = tokio::join!(admin, body);
        r
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, tells
    /// clients it is going away, lets in-flight exchanges finish (for up to
    /// `Config::drain_timeout`), closes the sessions and returns once every
    /// task has ended.
    async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let tracker = TaskTracker::new();
        // Visitor connections stop taking new requests at `shutdown` and are
        // cut at `hard` (after the grace period).
        let hard = self.state.hard.clone();
        let clients = Arc::new(Semaphore::new(self.state.config.max_clients));

        // Visitor connections have their own tracker: the drain waits for
        // them before the client sessions are closed.
        let visitor_tasks = self.state.visitor_tasks.clone();
        let tasks = Tasks {
            tracker: visitor_tasks.clone(),
            soft: shutdown.clone(),
            hard: hard.clone(),
        };
        let entrance = |listener| Entrance {
            listener,
            name: "visitors".into(),
            drain_backlog: true,
        };
        let http_loop = accept_tcp(
            self.state.clone(),
            self.http,
            entrance(metrics::Listener::Http),
            shutdown.clone().cancelled_owned(),
            tasks.clone(),
            edge::serve_tcp,
        );
        let https_loop = async {
            if let Some(l) = self.https {
                accept_tcp(
                    self.state.clone(),
                    l,
                    entrance(metrics::Listener::Https),
                    shutdown.clone().cancelled_owned(),
                    tasks.clone(),
                    edge::tls::serve,
                )
                .await;
            }
        };
        if let (Some(t), Some((files, stamp))) = (&self.state.tls, self.watched) {
            tracker.spawn(watch_cert_files(
                t.store.clone(),
                files,
                stamp,
                self.reload.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(w) = self.acme_worker {
            tracker.spawn(w.run(shutdown.clone()));
        }
        let names_path = self.state_dir.join(names_file::NAMES_FILE);
        tracker.spawn(names_file::keep(
            self.state.registry.clone(),
            names_path.clone(),
            self.state.tokens.clone(),
            shutdown.clone(),
        ));
        let quic_loop = session::accept(
            self.state.clone(),
            self.endpoint.clone(),
            clients,
            tracker.clone(),
            shutdown.clone(),
        );
        tokio::join!(http_loop, https_loop, quic_loop);
        self.stopping.cancel();

        // Draining: no new visitors or clients; visitor connections finish
        // what they are relaying (no new requests), for up to the drain
        // timeout; sessions stay open meanwhile (the clients were told
        // GoingAway and are connecting elsewhere or again).
        // New clients are refused meanwhile (at once, not left to time
        // out): a client told GoingAway tries its next address.
        let refusing = CancellationToken::new();
        let refuse = refuse_clients(self.endpoint.clone(), refusing.clone());
        let drain_then_close = async {
            let drain = self.state.config.drain_timeout;
            visitor_tasks.close();
            if tokio::time::timeout(drain, visitor_tasks.wait())
                .await
                .is_err()
            {
                warn!(
                    "in-flight exchanges did not finish within --drain-timeout {drain:?}; cutting them"
                );
                hard.cancel();
                visitor_tasks.wait().await;
            }
            self.state.drained.cancel();
            tracker.close();
            if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
                .await
                .is_err()
            {
                warn!("client sessions did not end within {SHUTDOWN_GRACE:?}; closing them");
                for s in self.state.registry.sessions() {
                    s.conn.close(
                        quinn::VarInt::from_u32(close::GOING_AWAY),
                        b"server shutting down; reconnect later",
                    );
                }
                tracker.wait().await;
            }
            refusing.cancel();
        };
        tokio::join!(refuse, drain_then_close);
        // Every session has ended (its names are reservations now).
        names_file::write(&self.state.registry, &names_path, &self.state.tokens).await;
        self.endpoint.close(
            quinn::VarInt::from_u32(close::GOING_AWAY),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
        // The closes went out over the TCP links too: now they end.
        let links = &self.state.links;
        links.stop.cancel();
        links.tracker.close();
        links.tracker.wait().await;
        info!("server stopped");
        Ok(())
    }
}

/// Binds nothing itself: serves `listeners` with `config` until `shutdown`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::bind(config, listeners).await?.run(shutdown).await
}

/// Reloads the operator's certificate on `reload` (SIGHUP) and when either
/// file's modification time changes. A bad file keeps the old certificate.
pub(crate) async fn watch_cert_files(
    store: Arc<CertStore>,
    files: CertFiles,
    mut stamp: certs::Stamp,
    reload: Arc<Notify>,
    shutdown: CancellationToken,
) {
    const POLL: std::time::Duration = std::time::Duration::from_secs(2);
    loop {
        let asked = tokio::select! {
            _ = reload.notified() => true,
            _ = tokio::time::sleep(POLL) => false,
            _ = shutdown.cancelled() => return,
        };
        if !asked && files.stamp().await == stamp {
            continue;
        }
        let (now, cert) = files.load().await;
        stamp = now;
        match cert {
            Ok(c) => {
                info!(names = ?c.names, "reloaded the certificate from {}", files.cert.display());
                store.set_files(c);
            }
            Err(e) => {
                warn!("--edge-cert/--edge-key reload failed, keeping the current certificate: {e}")
            }
        }
    }
}
