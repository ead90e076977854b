//! Certificates and server verification. One crypto provider: ring.
//!
//! The client always verifies the server, in one of three ways
//! ([`ServerTrust`]): the webpki roots (a real certificate), a trust file
//! (`--server-cert`: a self-signed certificate or a private CA, with the
//! host name checked), or a pinned SHA-256 fingerprint of the server's
//! certificate (`--server-fingerprint`, and the dev certificate the client
//! finds on the same machine). There is no "accept anything" mode for the
//! server; a local https service may be taken unverified, when the user
//! says so (`upstream_client_crypto`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;

use crate::paths::{DEV_CERT_FILE, DEV_KEY_FILE};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check the state directory's permissions or pass --state-dir")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate; pass a PEM file (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("invalid fingerprint {0:?}: expected 64 hex digits of a SHA-256, optionally prefixed sha256: and with colons")]
    BadFingerprint(String),
    #[error("generating the dev certificate failed: {0}")]
    Generate(String),
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

/// The one crypto provider of the project: ring, with AES-128-GCM ahead of
/// AES-256-GCM.
///
/// ring lists AES-256 first, and a client's order decides, so every tunnel
/// connection sealed each packet with 14 AES rounds instead of 10: AES-GCM
/// is about a seventh of a bulk transfer's CPU (BENCHMARKS.md, issue 12,
/// levers 6 and 9). AES-128-GCM is TLS 1.3's mandatory suite (RFC 8446
/// §9.1) and the first choice of Go's TLS stack on AES hardware (ngrok,
/// cloudflared, frp); the other suites stay, in ring's order, behind it.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| !is_aes128_gcm(s.suite()));
    Arc::new(p)
}

fn is_aes128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct CertPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    crate::auth::token_digest_bytes(cert.as_ref())
}

/// `sha256:` and 64 lower-case hex digits.
pub fn fingerprint_string(fp: &[u8; 32]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in fp {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Accepts `sha256:ab12…`, `AB:12:…` or plain hex.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(TlsError::BadFingerprint(s.to_owned()));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| TlsError::BadFingerprint(s.to_owned()))?;
    }
    Ok(out)
}

/// Parses PEM certificates.
pub fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a PEM certificate file (async).
pub async fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    parse_certs(&pem, path)
}

/// Reads a certificate chain and key from PEM files (async).
pub async fn load_pair(cert: &Path, key: &Path) -> Result<CertPair, TlsError> {
    let chain = read_certs(cert).await?;
    let pem = tokio::fs::read(key)
        .await
        .map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?;
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        path: key.to_owned(),
    })?;
    Ok(CertPair { chain, key })
}

/// The dev certificate in `dir`: loaded if present, otherwise generated
/// (self-signed for `names`) and written with the key readable by the owner
/// only. Returns whether it was generated now.
pub async fn load_or_generate_dev(
    dir: &Path,
    names: Vec<String>,
) -> Result<(CertPair, bool), TlsError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    if tokio::fs::try_exists(&cert_path).await.unwrap_or(false)
        && tokio::fs::try_exists(&key_path).await.unwrap_or(false)
    {
        return Ok((load_pair(&cert_path, &key_path).await?, false));
    }
    // Key generation is CPU work: off the runtime's workers.
    let generated = tokio::task::spawn_blocking(move || rcgen::generate_simple_self_signed(names))
        .await
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert_pem = generated.cert.pem();
    let key_pem = generated.signing_key.serialize_pem();
    crate::paths::create_private_dir(dir)
        .await
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
    write_atomic(&key_path, key_pem.as_bytes(), 0o600).await?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644).await?;
    let pair = CertPair {
        chain: vec![generated.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into()),
    };
    Ok((pair, true))
}

/// [`crate::paths::write_atomic`], with the error the caller reports.
async fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::paths::write_atomic(path, data, mode)
        .await
        .map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
}

/// How the client verifies the server.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// The webpki root store (Mozilla's roots): real certificates.
    WebPki,
    /// Trust anchors from a file: a self-signed server certificate or a
    /// private CA. The host name is checked.
    Roots(Vec<CertificateDer<'static>>),
    /// The server's certificate must have one of these SHA-256 fingerprints.
    /// The handshake signature is still verified; the host name is not.
    Pinned(Vec<[u8; 32]>),
}

/// rustls client configuration for `trust`, TLS 1.3 only (QUIC).
pub fn client_crypto(trust: &ServerTrust) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cfg = match trust {
        ServerTrust::WebPki => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| TlsError::Config(format!("trust file certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::Pinned(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pins: Some(pins.clone()),
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(cfg)
}

/// A TLS client trusting the webpki roots, TLS 1.2 or 1.3: for a proxy
/// reached over https (`--proxy https://…`).
pub fn webpki_client_crypto() -> Result<rustls::ClientConfig, TlsError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How the client verifies a local https service (`--expose
/// https://…`): against `roots` (the system's and `--upstream-ca`'s), or
/// not at all when the user said `--upstream-insecure` (a local dev
/// certificate; the handshake's signature is still checked). TLS 1.2 or
/// 1.3 (dev servers speak both), ALPN `http/1.1`.
pub fn upstream_client_crypto(
    roots: Vec<CertificateDer<'static>>,
    insecure: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pins: None,
                provider,
            }))
            .with_no_client_auth()
    } else {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(roots);
        builder.with_root_certificates(store).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The outer TLS of the TCP transport (`quic::relay`, whose ALPN is
/// `alpn`): it only gets QUIC
/// packets through networks that pass nothing but TLS on TCP. Any
/// certificate is taken (its signature of the handshake still checked):
/// the server is authenticated inside, by QUIC's own TLS with `--server-*`
/// trust, and nothing but already-encrypted QUIC packets crosses this
/// layer.
pub fn relay_client_crypto(alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            pins: None,
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// rustls server configuration, TLS 1.3 only (QUIC).
pub fn server_crypto(pair: CertPair) -> Result<rustls::ServerConfig, TlsError> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(pair.chain, pair.key)
        .map_err(|e| TlsError::Config(format!("certificate and key do not fit together: {e}")))
}

/// Accepts exactly the pinned certificates (`None`: any, for the TCP
/// transport's outer layer); signatures are verified with the provider's
/// algorithms, so the server must hold the private key.
#[derive(Debug)]
struct PinnedVerifier {
    pins: Option<Vec<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        let Some(pins) = &self.pins else {
            return Ok(ServerCertVerified::assertion());
        };
        if pins.iter().any(|p| p == &fp) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate ({}) is not the pinned one; if the server's certificate changed, \
                 pass its new fingerprint with --server-fingerprint or its file with --server-cert",
                fingerprint_string(&fp)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel handshake, client and server as the binaries build them,
    /// run in memory: the suite both ends settle on.
    #[test]
    fn tunnel_sessions_negotiate_aes_128_gcm() {
        let g = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_string()])
            .expect("certificate");
        let pair = CertPair {
            chain: vec![g.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into()),
        };
        let fp = fingerprint(&pair.chain[0]);
        let server = Arc::new(server_crypto(pair).expect("server config"));
        let client =
            Arc::new(client_crypto(&ServerTrust::Pinned(vec![fp])).expect("client config"));
        let name = rustls::pki_types::ServerName::try_from("tunnel.test").expect("name");
        let mut c = rustls::ClientConnection::new(client, name).expect("client");
        let mut s = rustls::ServerConnection::new(server).expect("server");
        let mut wire = Vec::new();
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            wire.clear();
            c.write_tls(&mut wire).expect("client writes");
            s.read_tls(&mut &wire[..]).expect("server reads");
            s.process_new_packets().expect("server accepts");
            wire.clear();
            s.write_tls(&mut wire).expect("server writes");
            c.read_tls(&mut &wire[..]).expect("client reads");
            c.process_new_packets().expect("client accepts");
        }
        assert!(
            !c.is_handshaking() && !s.is_handshaking(),
            "handshake finished"
        );
        let want = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
        assert_eq!(c.negotiated_cipher_suite().map(|s| s.suite()), Some(want));
        assert_eq!(s.negotiated_cipher_suite().map(|s| s.suite()), Some(want));
        // The other suites are still offered, behind it.
        let offered: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert!(offered.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(offered.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
