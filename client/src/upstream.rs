//! Local services that speak https (`--expose https://localhost:8443`):
//! the client re-encrypts each exchange to them, verifying them against
//! the system's roots plus `--upstream-ca`, or not at all when the user
//! said `--upstream-insecure`. A connection to a local service is then
//! either plain TCP or TLS ([`LocalConn`]); the splice runs on both. ALPN
//! offers `h2` and `http/1.1`: a service that picks HTTP/2 is spoken to
//! through `h2local` (a gRPC server over TLS needs it), one that picks
//! HTTP/1.1 gets the splice; a WebSocket upgrade always goes on an
//! HTTP/1.1-only connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// A connection to a local service.
#[derive(Debug)]
pub(crate) enum LocalConn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl LocalConn {
    /// A TLS connection on which the service chose HTTP/2 (ALPN `h2`).
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, LocalConn::Tls(t) if t.get_ref().1.alpn_protocol() == Some(b"h2"))
    }

    /// Whether an idle pooled connection may serve again: still open and
    /// not sending unasked (a TLS record such as a session ticket is read
    /// by rustls and is neither).
    pub(crate) fn still_idle(&mut self) -> bool {
        use futures_util::FutureExt;
        let mut probe = [0u8; 1];
        let read = match self {
            LocalConn::Tcp(t) => t.read(&mut probe).now_or_never(),
            LocalConn::Tls(t) => t.read(&mut probe).now_or_never(),
        };
        read.is_none()
    }
}

/// How the client reaches one local https service: the TLS settings and
/// the name it verifies and sends as SNI.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    /// ALPN `http/1.1` only: for a request that upgrades (a WebSocket),
    /// which an HTTP/2 connection cannot carry.
    connector_h1: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    /// Said in errors: how the service is verified.
    insecure: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The client's TLS settings for local https services, made once (the
/// system's roots are read from disk: on a blocking thread) and shared.
#[derive(Clone, Default)]
pub struct UpstreamTrust {
    ca: Option<PathBuf>,
    insecure: bool,
    made: Arc<tokio::sync::OnceCell<Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("ca", &self.ca)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl UpstreamTrust {
    pub fn new(ca: Option<PathBuf>, insecure: bool) -> UpstreamTrust {
        UpstreamTrust {
            ca,
            insecure,
            made: Arc::default(),
        }
    }

    async fn config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let (ca, insecure) = (self.ca.clone(), self.insecure);
        self.made
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || make_config(ca, insecure))
                    .await
                    .map_err(|e| format!("loading the trust for local https services: {e}"))?
            })
            .await
            .cloned()
    }

    /// The TLS settings for the local service at `address` (`host:port`),
    /// verified as `name` (the host-header rule's host, else its own).
    pub(crate) async fn for_service(
        &self,
        address: &str,
        host_header: &str,
        h2_only: bool,
    ) -> Result<UpstreamTls, String> {
        let base = self.config().await?;
        let with = |alpn: &[&[u8]]| {
            let mut c = rustls::ClientConfig::clone(&base);
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            tokio_rustls::TlsConnector::from(Arc::new(c))
        };
        // The service picks: HTTP/2 when it speaks it, else HTTP/1.1
        // (`--upstream h2` offers HTTP/2 alone).
        let connector = if h2_only {
            with(&[b"h2"])
        } else {
            with(&[b"h2", b"http/1.1"])
        };
        let connector_h1 = with(&[b"http/1.1"]);
        let host = match host_header {
            "" | "rewrite" => address,
            h => h,
        };
        let host = crate::address::split_server(host)
            .map(|(h, _)| h.to_owned())
            .unwrap_or_else(|_| host.to_owned());
        let name = ServerName::try_from(host.clone()).map_err(|e| {
            format!("https://{address}: {host:?} is not a name TLS can verify: {e}")
        })?;
        Ok(UpstreamTls {
            connector,
            connector_h1,
            name,
            insecure: self.insecure,
        })
    }
}

/// Runs on a blocking thread (`UpstreamTrust::config`): it reads files.
#[allow(clippy::disallowed_methods)]
fn make_config(ca: Option<PathBuf>, insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = Vec::new();
    if !insecure {
        // The system's store (where mkcert and corporate CAs are
        // installed); what cannot be read is skipped.
        roots.extend(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &ca {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
            let certs = tunnel_lib::tls::parse_certs(&pem, path)
                .map_err(|e| format!("--upstream-ca: {e}"))?;
            roots.extend(certs);
        }
    }
    tunnel_lib::tls::upstream_client_crypto(roots, insecure)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Completes the TLS handshake with a local https service on `tcp`, within
/// `limit`. The error says what to do about an untrusted certificate.
pub(crate) async fn handshake(
    tcp: TcpStream,
    tls: &UpstreamTls,
    local: &str,
    limit: Duration,
    h1_only: bool,
) -> Result<LocalConn, String> {
    let connector = if h1_only {
        &tls.connector_h1
    } else {
        &tls.connector
    };
    match tokio::time::timeout(limit, connector.connect(tls.name.clone(), tcp)).await {
        Ok(Ok(s)) => Ok(LocalConn::Tls(Box::new(s))),
        Ok(Err(e)) => {
            let untrusted = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            Err(if untrusted && !tls.insecure {
                format!(
                    "the local https service {local} presented a certificate this client does not \
                     trust ({e}): pass --upstream-ca FILE (its CA or certificate, PEM) or \
                     --upstream-insecure (a local dev certificate, not verified)"
                )
            } else {
                format!("TLS with the local https service {local} failed: {e}")
            })
        }
        Err(_) => Err(format!(
            "the local https service {local} did not complete a TLS handshake within {limit:?}"
        )),
    }
}
