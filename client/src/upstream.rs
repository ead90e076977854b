//! Local services that speak https (`--expose https://localhost:8443`):
//! the client re-encrypts each exchange to them, verifying them against
//! the system's roots plus `--upstream-ca`, or not at all when the user
//! said `--upstream-insecure`. A connection to a local service is then
//! either plain TCP or TLS ([`LocalConn`]); the splice runs on both.

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
        h2: bool,
    ) -> Result<UpstreamTls, String> {
        let mut cfg = self.config().await?;
        if h2 {
            // HTTP/2 only (`--upstream h2`).
            let mut c = rustls::ClientConfig::clone(&cfg);
            c.alpn_protocols = vec![b"h2".to_vec()];
            cfg = Arc::new(c);
        }
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
            connector: tokio_rustls::TlsConnector::from(cfg),
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
) -> Result<LocalConn, String> {
    match tokio::time::timeout(limit, tls.connector.connect(tls.name.clone(), tcp)).await {
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
