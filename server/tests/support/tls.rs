//! TLS for tests: a rustls visitor, certificates made with rcgen, a local
//! TLS echo server (the app behind a passthrough tunnel), and a real ACME
//! CA: Debian's pebble with pebble-challtestsrv as its DNS, started on
//! 127.0.0.1 with ports the test picks, ready when they say so.

// Test setup writes and reads a few small files (certificates, configs)
// before the code under test runs on them: blocking calls are fine here.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{read_raw_response, Raw, WAIT};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate made here: its PEM files and DER.
pub struct Made {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Made {
    pub fn new(names: &[&str]) -> Made {
        let g = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        Made {
            cert_pem: g.cert.pem(),
            key_pem: g.signing_key.serialize_pem(),
            der: g.cert.der().clone(),
        }
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    /// Writes `name.crt` and `name.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        tunnel_lib::tls::fingerprint(&self.der)
    }
}

/// A visitor's TLS configuration trusting the certificates in `pems`.
pub fn visitor(pems: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        use rustls::pki_types::pem::PemObject;
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Each connection shows the certificate it gets (a resumed session
    // would report the old one).
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// A TLS connection to `addr` for `sni` (an IP address sends no SNI).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
}

/// The alert the server sent, if the handshake failed with one.
pub fn alert_of(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

/// The SHA-256 of the certificate the server presented.
pub fn presented(s: &TlsStream<TcpStream>) -> [u8; 32] {
    let certs = s.get_ref().1.peer_certificates().unwrap();
    tunnel_lib::tls::fingerprint(&certs[0])
}

/// One request on an open TLS connection.
pub async fn request(s: &mut TlsStream<TcpStream>, raw: &str) -> Raw {
    s.write_all(raw.as_bytes()).await.unwrap();
    read_raw_response(s).await
}

/// `GET path` for `host` on a new TLS connection.
pub async fn get(addr: SocketAddr, host: &str, cfg: Arc<rustls::ClientConfig>, path: &str) -> Raw {
    let mut s = connect(addr, host, cfg).await.unwrap();
    request(
        &mut s,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A local TLS server that echoes what it receives (the app behind a
/// passthrough tunnel).
pub struct EchoTls {
    pub addr: SocketAddr,
    pub made: Made,
    stop: CancellationToken,
}

impl EchoTls {
    pub async fn start(name: &str) -> EchoTls {
        let made = Made::new(&[name]);
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.der.clone()], made.key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let st = stop.clone();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let tcp = tokio::select! {
                    a = listener.accept() => a.unwrap().0,
                    _ = st.cancelled() => break,
                };
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoTls { addr, made, stop }
    }
}

impl Drop for EchoTls {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub use tunnel_testkit::net::free_port;

/// Starts `cmd` and waits for a line containing `ready` on its stdout; the
/// rest of its output is drained (and echoed to the test's stderr) so it
/// never blocks on a full pipe.
async fn start_until(mut cmd: Command, ready: &str, what: &str) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {what}: {e}; install it with `apt-get install pebble` (.ci/run does)")
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            eprintln!("[{what}] {l}");
            if l.contains(ready) {
                return;
            }
        }
        panic!("{what} exited before it was ready");
    })
    .await
    .unwrap_or_else(|_| panic!("{what} not ready in time"));
    let what = what.to_owned();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("[{what}] {l}");
        }
    });
    child
}

/// A real ACME CA on 127.0.0.1: pebble, validating challenges against the
/// tunnel server's own ports, and pebble-challtestsrv answering its DNS
/// (every name → 127.0.0.1, TXT records set through its management API).
pub struct Pebble {
    pub directory: String,
    /// The CA's own TLS certificate (for `--acme-root`).
    pub tls_root: PathBuf,
    /// pebble's management interface (roots).
    pub mgmt: SocketAddr,
    /// pebble-challtestsrv's management interface (TXT records).
    pub dns_mgmt: SocketAddr,
    pub dir: tempfile::TempDir,
    _pebble: Child,
    _dns: Child,
}

impl Pebble {
    /// `http_port` and `tls_port`: where the CA validates HTTP-01 and
    /// TLS-ALPN-01 challenges (the tunnel server's listeners).
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let made = Made::new(&["localhost", "127.0.0.1"]);
        let (cert, key) = made.write(dir.path(), "pebble");
        let (listen, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, config.to_string()).unwrap();

        let mut c = Command::new("pebble-challtestsrv");
        c.args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let dns_child = start_until(c, "Starting management server", "challtestsrv").await;

        let mut p = Command::new("pebble");
        p.arg("-config")
            .arg(&cfg_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}"), "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = start_until(p, "ACME directory available", "pebble").await;
        Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            tls_root: cert,
            mgmt: ([127, 0, 0, 1], mgmt).into(),
            dns_mgmt: ([127, 0, 0, 1], dns_mgmt).into(),
            dir,
            _pebble: pebble,
            _dns: dns_child,
        }
    }

    /// The root that signs the certificates this CA issues (PEM).
    pub async fn issuing_root(&self) -> String {
        let pem = std::fs::read_to_string(&self.tls_root).unwrap();
        let raw = get(self.mgmt, "localhost", visitor(&[&pem]), "/roots/0").await;
        assert_eq!(raw.status, 200, "{}", raw.head);
        String::from_utf8(raw.body).unwrap()
    }

    /// A DNS hook for `--acme-dns-hook`: records each call in `calls.log`
    /// and publishes or removes the TXT record through challtestsrv.
    pub fn dns_hook(&self) -> (PathBuf, PathBuf) {
        let log = self.dir.path().join("calls.log");
        let hook = self.dir.path().join("dns-hook");
        let script = format!(
            r#"#!/usr/bin/env python3
import json, sys, urllib.request
action, name, value = sys.argv[1:4]
with open({log:?}, "a") as f:
    f.write(f"{{action}} {{name}} {{value}}\n")
path = {{"set": "/set-txt", "clear": "/clear-txt"}}[action]
body = {{"host": name + "."}}
if action == "set":
    body["value"] = value
req = urllib.request.Request("http://{mgmt}" + path, data=json.dumps(body).encode(), method="POST")
urllib.request.urlopen(req, timeout=10).read()
"#,
            log = log.display().to_string(),
            mgmt = self.dns_mgmt,
        );
        std::fs::write(&hook, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        (hook, log)
    }
}
