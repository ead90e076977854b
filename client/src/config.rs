//! What the client is asked to do: its tunnels and how it connects. Built
//! by `settings::resolve` from flags and the config file, or by a test.

use std::path::PathBuf;
use std::time::Duration;

use tunnel_lib::proto::TunnelKind;

use crate::target::LocalPolicy;
use crate::udp;

/// One tunnel to expose.
#[derive(Debug, Clone, Default)]
pub struct TunnelSpec {
    /// `host:port` of the local service.
    pub local: String,
    /// Requested subdomain (or full host name); `None` lets the server
    /// pick one.
    pub subdomain: Option<String>,
    pub kind: TunnelKind,
    /// Serve plain-http visitors too (no redirect to https).
    pub plain_http: bool,
    /// A TCP tunnel's public port to ask for (0: any from the server's
    /// range). After the first registration the port given is asked again.
    pub remote_port: u16,
    /// What the server enforces on visitors (HTTP tunnels).
    pub policy: tunnel_lib::proto::Policy,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the server's QUIC listener.
    pub server: String,
    pub token: Option<tunnel_lib::auth::Secret>,
    pub tunnels: Vec<TunnelSpec>,
    /// Connect to these addresses instead of resolving `server`'s host
    /// (whose name is still the one verified), like curl's `--resolve`.
    /// Empty: resolve. Every address is tried, the families interleaved.
    pub connect_to: Vec<std::net::SocketAddr>,
    /// Trust this certificate file (self-signed server or private CA).
    pub server_cert: Option<PathBuf>,
    /// Pin the server certificate's SHA-256.
    pub server_fingerprint: Option<String>,
    /// Where a dev server on this machine keeps its certificate
    /// (default: `tunnel_lib::paths::default_state_dir()`).
    pub dev_state_dir: Option<PathBuf>,
    /// Dial timeout and circuit breaker for the local services.
    pub local: LocalPolicy,
    /// First reconnect delay ceiling and the cap.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A UDP flow silent both ways this long has its local socket closed.
    pub udp_idle: Duration,
    /// Give up (`ClientError::Unreachable`) after this long without a
    /// connection; `None`: keep trying for ever (the default, as ngrok's
    /// agent and frpc do).
    pub give_up_after: Option<Duration>,
    /// The benchmark levers (QUIC windows, congestion control).
    pub tuning: tunnel_lib::tuning::Tuning,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: "localhost:4433".into(),
            token: None,
            tunnels: Vec::new(),
            connect_to: Vec::new(),
            server_cert: None,
            server_fingerprint: None,
            dev_state_dir: None,
            local: LocalPolicy::default(),
            backoff_base: Duration::from_millis(250),
            // After a long outage a client still tries every 5 s on
            // average: back soon after the server is, at one small
            // packet per attempt.
            backoff_cap: Duration::from_secs(10),
            udp_idle: udp::FLOW_IDLE,
            give_up_after: None,
            tuning: Default::default(),
        }
    }
}
