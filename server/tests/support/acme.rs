//! An ACME server set-up shared by the certificate tests: a fresh pebble
//! on the test server's own ports, and clients that trust its root.

use tunnel_server::acme::{AcmeConfig, Challenge};
use tunnel_server::Config;

use super::tls::Pebble;
use super::TestServer;

pub const DOMAIN: &str = "tunnel.test";

pub fn acme_config(p: &Pebble, challenge: Challenge) -> AcmeConfig {
    AcmeConfig {
        directory: p.directory.clone(),
        email: Some("ops@tunnel.test".into()),
        root: Some(p.tls_root.clone()),
        challenge,
        dns_hook: None,
        renew_after: None,
        order_window: None,
    }
}

/// A server for `DOMAIN` with ACME from a fresh pebble on its ports.
pub async fn acme_server(
    challenge: Challenge,
    tweak: impl FnOnce(&mut Config, &Pebble),
) -> (TestServer, Pebble) {
    let listeners = TestServer::listeners(true);
    let http = listeners.http.local_addr().unwrap();
    let https = listeners.https.as_ref().unwrap().local_addr().unwrap();
    let pebble = Pebble::start(http.port(), https.port()).await;
    let mut config = Config {
        domain: DOMAIN.into(),
        https: Some(https),
        acme: Some(acme_config(&pebble, challenge)),
        ..Config::default()
    };
    tweak(&mut config, &pebble);
    (TestServer::start_on(config, listeners).await, pebble)
}

/// A client of `server` that verifies the server's public certificate for
/// `DOMAIN` against `root` (no fingerprint, no dev certificate).
pub fn public_client(
    server: &TestServer,
    local: std::net::SocketAddr,
    name: &str,
    root: &std::path::Path,
) -> tunnel_client::Config {
    let mut c = server.client_config(local, Some(name));
    c.server = format!("{DOMAIN}:{}", server.quic.port());
    c.connect_to = vec![server.quic];
    c.server_cert = Some(root.to_owned());
    c.dev_state_dir = None;
    c
}
