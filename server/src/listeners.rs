//! The sockets a server is given (bound by `main` or a test) and the
//! errors of starting one.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::config::ConfigError;
use tunnel_lib::tls::TlsError;

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
    #[error("cannot open the access log {path}: {source}; check --access-log (a writable file, or - for stdout)")]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The sockets the server serves on, bound before [`run`] so that tests can
/// bind port 0 and read the ports back.
pub struct Listeners {
    pub http: TcpListener,
    pub quic: std::net::UdpSocket,
    pub https: Option<TcpListener>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds them all (the TCP listeners with a large backlog). Call inside
    /// a tokio runtime.
    pub fn bind(
        http: SocketAddr,
        quic: SocketAddr,
        https: Option<SocketAddr>,
    ) -> Result<Listeners, ServerError> {
        let tcp = |addr, what, flag| {
            tunnel_lib::io::listen_tcp(addr).map_err(|source| ServerError::Bind {
                what,
                flag,
                addr,
                source,
            })
        };
        let http_l = tcp(http, "public HTTP", "--http")?;
        let https_l = match https {
            Some(a) => Some(tcp(a, "public HTTPS", "--https")?),
            None => None,
        };
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
            https: https_l,
            admin: None,
        })
    }

    /// Also binds the admin listener (`--metrics ADDR`).
    pub fn with_admin(mut self, addr: Option<SocketAddr>) -> Result<Listeners, ServerError> {
        if let Some(addr) = addr {
            let l = tunnel_lib::io::listen_tcp(addr).map_err(|source| ServerError::Bind {
                what: "admin (metrics)",
                flag: "--metrics",
                addr,
                source,
            })?;
            self.admin = Some(l);
        }
        Ok(self)
    }
}
