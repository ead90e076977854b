//! Certificates for visitors' TLS, chosen per SNI by one resolver.
//!
//! - [`CertStore`] holds what the edge can present, in two `ArcSwap`
//!   snapshots: operator files (`--edge-cert`/`--edge-key`, reloaded on
//!   SIGHUP and when the files change) and certificates obtained by ACME.
//!   Each snapshot maps exact names and wildcard parents to a certificate,
//!   so a lookup is at most two hash probes per snapshot. ACME's
//!   TLS-ALPN-01 challenge certificates and HTTP-01 key authorizations
//!   live beside them while an order is being validated.
//! - [`EdgeResolver`] is the rustls `ResolvesServerCert` of the https
//!   listener: `acme-tls/1` ClientHellos get the challenge certificate,
//!   others the best certificate for their SNI, or the default one.
//! - [`QuicResolver`] serves the QUIC listener: the server's own public
//!   name gets a publicly trusted certificate when the store has one (so
//!   clients verify it against the webpki roots), everything else the
//!   server's own certificate (`--cert`, or the self-signed one clients pin).
//!
//! Every method is synchronous: no guard can cross an `.await`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use tunnel_lib::http1::host::wildcard_parents;
use tunnel_lib::tls::{CertPair, TlsError};

/// ALPN of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One certificate the edge can present.
#[derive(Debug)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// The DNS names it covers, as in its SAN (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Cert {
    /// Builds a certificate from a chain and key, reading names and validity
    /// from the leaf. The key is checked against the certificate.
    pub fn from_pair(pair: CertPair, what: &Path) -> Result<Cert, TlsError> {
        let leaf = pair
            .chain
            .first()
            .ok_or_else(|| TlsError::NoCertificate {
                path: what.to_owned(),
            })?
            .clone();
        let (names, not_before, not_after) = leaf_facts(&leaf).map_err(|e| {
            TlsError::Config(format!(
                "{}: cannot read the certificate: {e}",
                what.display()
            ))
        })?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&pair.key).map_err(|e| {
            TlsError::Config(format!("{}: unsupported private key: {e}", what.display()))
        })?;
        let key = CertifiedKey::new(pair.chain, signer);
        key.keys_match().map_err(|e| {
            TlsError::Config(format!(
                "{}: the certificate and the key do not belong together ({e}); pass the key of this certificate",
                what.display()
            ))
        })?;
        Ok(Cert {
            key: Arc::new(key),
            names,
            not_before,
            not_after,
        })
    }

    /// The moment two thirds of its lifetime have passed.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// DNS names, not-before and not-after of a leaf certificate.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    let (_, x509) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let names = match x509.subject_alternative_name().map_err(|e| e.to_string())? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let at = |t: i64| {
        if t >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let v = x509.validity();
    Ok((
        names,
        at(v.not_before.timestamp()),
        at(v.not_after.timestamp()),
    ))
}

/// Certificates by name: exact names, and wildcards by their parent
/// (`*.example.com` under `example.com`).
#[derive(Default)]
struct Table {
    exact: HashMap<Box<str>, Arc<Cert>>,
    wild: HashMap<Box<str>, Arc<Cert>>,
}

impl Table {
    fn insert(&mut self, cert: Arc<Cert>) {
        for n in &cert.names {
            match n.strip_prefix("*.") {
                Some(parent) => self.wild.insert(parent.into(), cert.clone()),
                None => self.exact.insert(n.as_str().into(), cert.clone()),
            };
        }
    }

    /// A TLS wildcard covers exactly one label (RFC 6125 §6.4.3).
    fn lookup(&self, name: &str) -> Option<&Arc<Cert>> {
        self.exact
            .get(name)
            .or_else(|| self.wild.get(wildcard_parents(name).next()?))
    }
}

/// What the edge can present. See the module documentation.
pub struct CertStore {
    files: ArcSwap<Table>,
    acme: ArcSwap<Table>,
    /// The certificate for ClientHellos without SNI (and names no
    /// certificate covers that still have a tunnel).
    default: ArcSwap<CertifiedKey>,
    /// Whether `default` came from `--edge-cert` (else the self-signed one).
    default_is_file: bool,
    /// TLS-ALPN-01 challenge certificates by name, while validating.
    alpn: DashMap<Box<str>, Arc<CertifiedKey>>,
    /// HTTP-01 key authorizations by token, while validating.
    http01: DashMap<Box<str>, String>,
    /// Bumped whenever a certificate is added or replaced.
    version: tokio::sync::watch::Sender<u64>,
}

impl CertStore {
    /// `files`: the operator's certificate (also the default); `fallback`:
    /// the server's own (self-signed) certificate, the default without files.
    pub fn new(files: Option<Cert>, fallback: Arc<CertifiedKey>) -> CertStore {
        let mut t = Table::default();
        let default_is_file = files.is_some();
        let default = match files {
            Some(c) => {
                let c = Arc::new(c);
                t.insert(c.clone());
                c.key.clone()
            }
            None => fallback,
        };
        CertStore {
            files: ArcSwap::from_pointee(t),
            acme: ArcSwap::from_pointee(Table::default()),
            default: ArcSwap::new(default),
            default_is_file,
            alpn: DashMap::new(),
            http01: DashMap::new(),
            version: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Tells of every added or replaced certificate (for operators' tooling
    /// and tests: no polling).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// The certificate for `name` (normalised), if one covers it. ACME's
    /// exact certificates come first, then the files, then wildcards.
    pub fn lookup(&self, name: &str) -> Option<Arc<Cert>> {
        let acme = self.acme.load();
        let files = self.files.load();
        acme.exact
            .get(name)
            .or_else(|| files.exact.get(name))
            .or_else(|| acme.lookup(name))
            .or_else(|| files.lookup(name))
            .cloned()
    }

    pub fn covers(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    pub fn default_key(&self) -> Arc<CertifiedKey> {
        self.default.load_full()
    }

    /// Replaces the operator's certificate (a reload): connections keep the
    /// certificate they were established with; new ones get the new one.
    pub fn set_files(&self, cert: Cert) {
        let cert = Arc::new(cert);
        let mut t = Table::default();
        t.insert(cert.clone());
        self.files.store(Arc::new(t));
        if self.default_is_file {
            self.default.store(cert.key.clone());
        }
        self.changed();
    }

    /// Adds (or replaces) a certificate obtained by ACME.
    pub fn add_acme(&self, cert: Arc<Cert>) {
        self.acme.rcu(|old| {
            let mut t = Table::default();
            for c in old.exact.values().chain(old.wild.values()) {
                if !c.names.iter().any(|n| cert.names.contains(n)) {
                    t.insert(c.clone());
                }
            }
            t.insert(cert.clone());
            t
        });
        self.changed();
    }

    /// Every ACME certificate, once each (for renewal).
    pub fn acme_certs(&self) -> Vec<Arc<Cert>> {
        Self::distinct(&[&self.acme.load()])
    }

    /// Every certificate the edge holds (ACME and the operator's files),
    /// once each: for the expiry metric.
    pub fn all_certs(&self) -> Vec<Arc<Cert>> {
        Self::distinct(&[&self.acme.load(), &self.files.load()])
    }

    fn distinct(tables: &[&Table]) -> Vec<Arc<Cert>> {
        let mut out: Vec<Arc<Cert>> = Vec::new();
        for c in tables
            .iter()
            .flat_map(|t| t.exact.values().chain(t.wild.values()))
        {
            if !out.iter().any(|o| Arc::ptr_eq(o, c)) {
                out.push(c.clone());
            }
        }
        out
    }

    pub fn set_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.alpn.insert(name.into(), key);
    }
    pub fn clear_alpn_challenge(&self, name: &str) {
        self.alpn.remove(name);
    }
    pub fn set_http01(&self, token: &str, key_authorization: String) {
        self.http01.insert(token.into(), key_authorization);
    }
    pub fn clear_http01(&self, token: &str) {
        self.http01.remove(token);
    }
    /// The key authorization for an HTTP-01 token being validated.
    pub fn http01_response(&self, token: &str) -> Option<String> {
        self.http01.get(token).map(|v| v.value().clone())
    }
}

/// The https listener's certificate choice.
#[derive(Clone)]
pub struct EdgeResolver(pub Arc<CertStore>);

impl std::fmt::Debug for EdgeResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeResolver")
    }
}

impl ResolvesServerCert for EdgeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let acme = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the challenge certificate answers a validation.
            return self.0.alpn.get(name?.as_str()).map(|k| k.value().clone());
        }
        match name.and_then(|n| self.0.lookup(&n)) {
            Some(c) => Some(c.key.clone()),
            None => Some(self.0.default_key()),
        }
    }
}

/// The QUIC listener's certificate choice.
pub struct QuicResolver {
    pub own: Arc<CertifiedKey>,
    pub store: Option<Arc<CertStore>>,
    /// The server's public name (`--domain`).
    pub public_name: String,
}

impl std::fmt::Debug for QuicResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuicResolver")
    }
}

impl ResolvesServerCert for QuicResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let (Some(store), Some(name)) = (&self.store, hello.server_name()) {
            if name.eq_ignore_ascii_case(&self.public_name) {
                if let Some(c) = store.lookup(&self.public_name) {
                    return Some(c.key.clone());
                }
            }
        }
        Some(self.own.clone())
    }
}

/// What a person connecting clients needs to know once QUIC presents a
/// CA's certificate for the server's own name (ACME issued or renewed it):
/// its fingerprint changed, and a client that pinned the self-signed one
/// is refused.
pub fn quic_note(cert: &Cert, domain: &str) -> String {
    let fp = cert
        .key
        .cert
        .first()
        .map(|c| tunnel_lib::tls::fingerprint_string(&tunnel_lib::tls::fingerprint(c)))
        .unwrap_or_default();
    format!(
        "QUIC now presents the CA's certificate to clients that dial {domain} (fingerprint {fp}): \
         they verify it against the system's roots (a private CA: --server-cert with its root), \
         so drop --server-fingerprint; a client that must pin uses {fp}, which changes at every renewal"
    )
}

/// The operator's certificate files, and how to tell that they changed.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Modification times of the two files (`None` where unreadable).
pub type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl CertFiles {
    /// The certificate, and the files' modification times taken before
    /// reading them (a change during the read is seen the next time).
    pub async fn load(&self) -> (Stamp, Result<Cert, TlsError>) {
        let stamp = self.stamp().await;
        let cert = match tunnel_lib::tls::load_pair(&self.cert, &self.key).await {
            Ok(pair) => Cert::from_pair(pair, &self.cert),
            Err(e) => Err(e),
        };
        (stamp, cert)
    }

    /// Modification times of both files (`None` where unreadable).
    pub async fn stamp(&self) -> Stamp {
        let m = |p: PathBuf| async move {
            tokio::fs::metadata(p)
                .await
                .ok()
                .and_then(|m| m.modified().ok())
        };
        (m(self.cert.clone()).await, m(self.key.clone()).await)
    }
}

/// A signing key from a certificate pair, for the QUIC resolver.
pub fn certified(pair: &CertPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let signer = rustls::crypto::ring::sign::any_supported_type(&pair.key)
        .map_err(|e| TlsError::Config(format!("unsupported private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(pair.chain.clone(), signer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Cert {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let g = rcgen::generate_simple_self_signed(names).unwrap();
        let pair = CertPair {
            chain: vec![g.cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into()),
        };
        Cert::from_pair(pair, Path::new("test")).unwrap()
    }

    #[test]
    fn lookup_exact_then_one_label_wildcard() {
        let fallback = cert(&["localhost"]).key;
        let store = CertStore::new(Some(cert(&["*.example.com", "example.com"])), fallback);
        assert!(store.covers("a.example.com"));
        assert!(store.covers("example.com"));
        assert!(
            !store.covers("a.b.example.com"),
            "a wildcard covers one label"
        );
        assert!(!store.covers("example.org"));
        let exact = Arc::new(cert(&["a.example.com"]));
        store.add_acme(exact.clone());
        assert!(Arc::ptr_eq(&store.lookup("a.example.com").unwrap(), &exact));
        assert_eq!(store.acme_certs().len(), 1);
        // A renewal replaces the old certificate for its names.
        store.add_acme(Arc::new(cert(&["a.example.com"])));
        assert_eq!(store.acme_certs().len(), 1);
    }

    #[test]
    fn names_and_lifetime_come_from_the_leaf() {
        let c = cert(&["x.test", "*.y.test"]);
        assert_eq!(c.names, ["x.test", "*.y.test"]);
        assert!(c.not_after > c.not_before);
        assert!(c.renew_at() > c.not_before && c.renew_at() < c.not_after);
    }
}
