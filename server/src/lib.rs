//! tunnel-server: accepts QUIC connections from tunnel clients and public
//! HTTP from visitors, and routes each request by its Host to the client
//! that registered it.
//!
//! # Layout
//! - [`config`]: configuration, defaults and validation.
//! - [`registry`]: host rules (`ArcSwap` snapshot of `Arc<Rule>`), sessions
//!   (moka), name claims (DashMap) and reservations (moka with a TTL).
//! - `session`: one client connection: hello, auth, registrations.
//! - `edge`: one visitor connection: request side and response side.
//! - [`respond`]: the pages the server writes itself.
//!
//! [`run`] (or [`Server::bind`] + [`Server::run`]) is what `main` calls and
//! what tests call: it takes bound listeners and a shutdown token and
//! returns only after every task it started has ended.

#![forbid(unsafe_code)]

pub mod config;
mod edge;
pub mod registry;
pub mod respond;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use tunnel_lib::limits::SHUTDOWN_GRACE;
use tunnel_lib::proto::close;
use tunnel_lib::tls::{fingerprint, fingerprint_string, TlsError};

pub use config::{Config, ConfigError, Timeouts};
pub use registry::Registry;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}; is another server running there? pick another with {flag}")]
    Bind {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// The sockets the server serves on, bound before [`run`] so that tests can
/// bind port 0 and read the ports back.
pub struct Listeners {
    pub http: TcpListener,
    pub quic: std::net::UdpSocket,
}

impl Listeners {
    /// Binds both (the HTTP listener with a large backlog). Call inside a
    /// tokio runtime.
    pub fn bind(http: SocketAddr, quic: SocketAddr) -> Result<Listeners, ServerError> {
        let http_l = tunnel_lib::io::listen_tcp(http).map_err(|source| ServerError::Bind {
            what: "public HTTP",
            flag: "--http",
            addr: http,
            source,
        })?;
        let (quic_s, granted) =
            tunnel_lib::quic::udp_socket(quic).map_err(|source| ServerError::Bind {
                what: "QUIC",
                flag: "--quic",
                addr: quic,
                source,
            })?;
        tunnel_lib::quic::warn_small_buffer(granted);
        Ok(Listeners {
            http: http_l,
            quic: quic_s,
        })
    }
}

/// Shared by every task of the server.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    /// SHA-256 digests of the accepted tokens.
    pub(crate) tokens: Vec<[u8; 32]>,
}

/// A bound, configured server, not yet running.
pub struct Server {
    state: Arc<State>,
    http: TcpListener,
    endpoint: quinn::Endpoint,
    http_addr: SocketAddr,
    quic_addr: SocketAddr,
    fingerprint: String,
    cert_path: Option<PathBuf>,
}

impl Server {
    /// Validates the configuration, loads or creates the certificate and
    /// sets up the QUIC endpoint.
    pub async fn bind(config: Config, listeners: Listeners) -> Result<Server, ServerError> {
        let http_addr = listeners.http.local_addr().map_err(ServerError::Endpoint)?;
        let quic_addr = listeners.quic.local_addr().map_err(ServerError::Endpoint)?;
        config.validate(http_addr, quic_addr)?;
        let (pair, cert_path) = match (&config.cert, &config.key) {
            (Some(c), Some(k)) => (tunnel_lib::tls::load_pair(c, k).await?, Some(c.clone())),
            _ => {
                let dir = match &config.state_dir {
                    Some(d) => d.clone(),
                    None => {
                        tunnel_lib::paths::default_state_dir().ok_or(ConfigError::NoStateDir)?
                    }
                };
                let mut names = vec![config.domain.clone(), "localhost".to_owned()];
                for ip in [quic_addr.ip().to_string(), "127.0.0.1".into(), "::1".into()] {
                    if !names.contains(&ip) {
                        names.push(ip);
                    }
                }
                let (pair, generated) = tunnel_lib::tls::load_or_generate_dev(&dir, names).await?;
                let path = dir.join(tunnel_lib::paths::DEV_CERT_FILE);
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
        let quic_cfg = tunnel_lib::quic::server_config(pair)?;
        let endpoint = tunnel_lib::quic::server_endpoint(listeners.quic, quic_cfg)
            .map_err(ServerError::Endpoint)?;
        let public_port = config.public_port.unwrap_or(http_addr.port());
        let registry = Arc::new(Registry::new(
            &config.domain,
            public_port,
            config.name_grace,
            config.max_tunnels_per_client,
        ));
        let tokens = config
            .tokens
            .iter()
            .map(|t| tunnel_lib::auth::token_digest(t))
            .collect();
        Ok(Server {
            state: Arc::new(State {
                config,
                registry,
                tokens,
            }),
            http: listeners.http,
            endpoint,
            http_addr,
            quic_addr,
            fingerprint: fp,
            cert_path,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }
    /// `sha256:…` of the certificate clients see.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// The certificate file (the dev one, or `--cert`).
    pub fn cert_path(&self) -> Option<&std::path::Path> {
        self.cert_path.as_deref()
    }
    /// The registry, for operator actions (and tests).
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, tells
    /// clients it is going away, gives in-flight work [`SHUTDOWN_GRACE`] and
    /// returns once every task has ended.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let tracker = TaskTracker::new();
        // Visitor connections stop taking new requests at `shutdown` and are
        // cut at `hard` (after the grace period).
        let hard = CancellationToken::new();
        let visitors = Arc::new(Semaphore::new(self.state.config.max_visitors));
        let clients = Arc::new(Semaphore::new(self.state.config.max_clients));

        let http_loop = accept_http(
            self.state.clone(),
            self.http,
            visitors,
            tracker.clone(),
            shutdown.clone(),
            hard.clone(),
        );
        let quic_loop = accept_quic(
            self.state.clone(),
            self.endpoint.clone(),
            clients,
            tracker.clone(),
            shutdown.clone(),
        );
        tokio::join!(http_loop, quic_loop);

        // Draining.
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!("in-flight work did not finish within {SHUTDOWN_GRACE:?}; cutting it");
            hard.cancel();
            for s in self.state.registry.sessions() {
                s.conn.close(
                    quinn::VarInt::from_u32(close::GOING_AWAY),
                    b"server shutting down; reconnect later",
                );
            }
            tracker.wait().await;
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(close::GOING_AWAY),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
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

async fn accept_http(
    state: Arc<State>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    hard: CancellationToken,
) {
    loop {
        // A permit first: past the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    error!("accept failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        let soft = shutdown.clone();
        let hard = hard.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = edge::serve(state, tcp, peer, soft) => {}
                _ = hard.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn accept_quic(
    state: Arc<State>,
    endpoint: quinn::Endpoint,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(remote = %incoming.remote_address(), "refusing client: at --max-clients");
            incoming.refuse();
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            session::serve(state, incoming, shutdown).await;
            drop(permit);
        });
    }
}
