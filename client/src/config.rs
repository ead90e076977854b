//! What the client is asked to do: its tunnels and how it connects. Built
//! by `settings::resolve` from flags and the config file, or by a test.

use std::path::PathBuf;
use std::time::Duration;

use tunnel_lib::proto::TunnelKind;

use crate::target::LocalPolicy;
use crate::udp;

pub use crate::address::split_server;

/// Which transport carries the client's QUIC connection (`transport.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC first, TLS over TCP after a head start; the first one up wins.
    #[default]
    Auto,
    /// UDP only.
    Quic,
    /// TLS over TCP only (through networks that drop UDP).
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Transport::Auto),
            "quic" => Ok(Transport::Quic),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!("{other:?}: expected auto, quic or tcp")),
        }
    }
}

/// What a local HTTP service speaks (`--upstream`, config `upstream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// HTTP/1.1 (the bytes are spliced as they come).
    #[default]
    Http1,
    /// HTTP/2 without TLS, prior knowledge (a gRPC server's usual port).
    H2c,
    /// HTTP/2 over TLS (an `https://` local, ALPN `h2`).
    H2,
}

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "http1" | "http/1.1" => Ok(Upstream::Http1),
            "h2c" => Ok(Upstream::H2c),
            "h2" => Ok(Upstream::H2),
            other => Err(format!("{other:?}: expected http1, h2c or h2")),
        }
    }
}

/// One tunnel to expose.
#[derive(Debug, Clone, Default)]
pub struct TunnelSpec {
    /// `host:port` of the local service, or `https://host:port` for one
    /// that speaks TLS (the client re-encrypts to it).
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
    /// What the local service speaks (HTTP tunnels).
    pub upstream: Upstream,
}

impl TunnelSpec {
    /// The `host:port` the client dials.
    pub fn address(&self) -> &str {
        self.local.strip_prefix("https://").unwrap_or(&self.local)
    }

    /// The local service speaks https.
    pub fn https(&self) -> bool {
        self.local.starts_with("https://")
    }
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
    /// QUIC over UDP, TLS over TCP, or `auto` (both, the first up wins).
    pub transport: Transport,
    /// Where the TCP transport dials (the server's https port); `None`:
    /// `server`'s host and port.
    pub server_tcp: Option<String>,
    /// The TCP transport goes through this proxy.
    pub proxy: Option<crate::proxy::Proxy>,
    /// Dial these for the TCP transport instead of resolving its host, in
    /// turn (as `connect_to` for QUIC).
    pub tcp_connect_to: Vec<std::net::SocketAddr>,
    /// On TLS over TCP by `auto`'s choice, how often QUIC is tried again.
    pub quic_retry: Duration,
    /// How local https services are verified (`--upstream-ca`,
    /// `--upstream-insecure`); made once, kept across reconnects.
    pub upstream: crate::upstream::UpstreamTrust,
}

impl Config {
    /// The TCP transport's `host:port`.
    pub fn tcp_server(&self) -> String {
        if let Some(t) = &self.server_tcp {
            return t.clone();
        }
        match split_server(&self.server) {
            Ok((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
            Ok((host, port)) => format!("{host}:{port}"),
            Err(_) => self.server.clone(),
        }
    }
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
            transport: Transport::default(),
            server_tcp: None,
            proxy: None,
            tcp_connect_to: Vec::new(),
            quic_retry: Duration::from_secs(300),
            upstream: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_port_is_on_443_for_both_transports() {
        assert_eq!(split_server("t.example").unwrap(), ("t.example", 443));
        assert_eq!(split_server("t.example:4433").unwrap(), ("t.example", 4433));
        assert_eq!(split_server("[::1]:7").unwrap(), ("::1", 7));
        assert_eq!(split_server("[::1]").unwrap(), ("::1", 443));
        for bad in ["", ":1", "a:b", "::1", "[::1", "[::1]x", "a b:1"] {
            assert!(split_server(bad).is_err(), "{bad:?}");
        }
        let c = |server: &str, tcp: Option<&str>| Config {
            server: server.into(),
            server_tcp: tcp.map(Into::into),
            ..Config::default()
        };
        assert_eq!(c("t.example", None).tcp_server(), "t.example:443");
        assert_eq!(c("t.example:4433", None).tcp_server(), "t.example:4433");
        assert_eq!(c("[::1]:9", None).tcp_server(), "[::1]:9");
        assert_eq!(
            c("t.example:4433", Some("t.example:8443")).tcp_server(),
            "t.example:8443"
        );
    }
}
