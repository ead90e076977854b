//! What QUIC presents once ACME has a certificate for the server's own
//! name, as an operator reads it: the server process says so, with the
//! fingerprint, and a client pinning that fingerprint gets in; a client
//! dialing the address still gets the self-signed certificate of the
//! `ready` line.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::bins::*;
use support::tls::{free_port, Pebble};
use support::*;

const DOMAIN: &str = "tunnel.test";

fn pinned(quic: std::net::SocketAddr, server: String, fp: &str) -> tunnel_client::Config {
    tunnel_client::Config {
        server,
        connect_to: vec![quic],
        server_fingerprint: Some(fp.to_owned()),
        tunnels: vec![tunnel_client::TunnelSpec {
            local: "127.0.0.1:9".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn the_server_says_which_certificate_quic_presents_after_acme() {
    let https = free_port();
    let pebble = Pebble::start(free_port(), https).await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = server_cmd(home.path());
    cmd.args(["--https", &format!("127.0.0.1:{https}"), "--domain", DOMAIN])
        .args([
            "--acme",
            "--acme-directory",
            &pebble.directory,
            "--acme-root",
        ])
        .arg(&pebble.tls_root);
    let mut server = Proc::spawn(&mut cmd);
    let ready = server.line().await;
    let (own, quic) = (field(&ready, "fingerprint="), field(&ready, "quic="));
    let quic: std::net::SocketAddr = quic.parse().unwrap();

    let line = server
        .log_until("QUIC now presents the CA's certificate")
        .await;
    let ca = line
        .split("(fingerprint ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no fingerprint in {line}"))
        .to_owned();
    assert!(ca.starts_with("sha256:") && ca != own, "{line}");
    assert!(line.contains("--server-fingerprint"), "{line}");

    // A client dialing the name and pinning what was printed gets in.
    let mut by_name = TestClient::start(pinned(quic, format!("{DOMAIN}:{}", quic.port()), &ca));
    by_name.online(1).await;
    // One dialing the address still meets the `ready` line's certificate.
    let mut by_address = TestClient::start(pinned(quic, quic.to_string(), &own));
    by_address.online(1).await;

    by_name.stop().await;
    by_address.stop().await;
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}
