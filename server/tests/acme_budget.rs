//! One token cannot spend the certificate budget of everyone (issue 22,
//! item 7), against a real ACME CA (pebble): a token's names start at most
//! `acme_orders_per_token_per_hour` orders, another token's are not
//! affected, and a name that got the default certificate meanwhile is
//! ordered again by the server itself once the budget allows.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use support::acme::{acme_server, public_client, DOMAIN};
use support::*;
use tunnel_server::acme::Challenge;

const A: &str = "token-a-0123456789abcdef";
const B: &str = "token-b-0123456789abcdef";

#[tokio::test]
async fn a_tokens_order_budget_is_its_own_and_refused_names_are_retried() {
    let (server, pebble) = acme_server(Challenge::TlsAlpn01, |c, _| {
        c.tokens = vec![A.into(), B.into()];
        c.token_limits.acme_orders_per_hour = 1;
        // The budget's window, shortened so the retry comes within the test.
        c.acme.as_mut().unwrap().order_window = Some(Duration::from_secs(4));
    })
    .await;
    server.wait_cert(DOMAIN).await;
    let root_pem = pebble.issuing_root().await;
    let root_file = pebble.dir.path().join("issuing-root.pem");
    tokio::fs::write(&root_file, &root_pem).await.unwrap();
    let app = Backend::start("app").await;
    let start = |name: &str, token: &str| {
        let mut cfg = public_client(&server, app.addr, name, &root_file);
        cfg.token = Some(token.into());
        TestClient::start(cfg)
    };
    let store = server.certs.clone().unwrap();

    let mut one = start("one", A);
    one.online(1).await;
    assert!(store.lookup(&format!("one.{DOMAIN}")).is_some());
    // Over A's budget: online at once, with the default certificate.
    let mut two = start("two", A);
    two.online(1).await;
    assert!(
        store.lookup(&format!("two.{DOMAIN}")).is_none(),
        "the second name of the token waits for the budget"
    );
    // Another token orders at once.
    let mut three = start("three", B);
    three.online(1).await;
    assert!(store.lookup(&format!("three.{DOMAIN}")).is_some());
    // Nobody registers "two" again: the server orders it by itself.
    let cert = server.wait_cert(&format!("two.{DOMAIN}")).await;
    assert_eq!(cert.names, [format!("two.{DOMAIN}")]);

    for c in [one, two, three] {
        c.stop().await;
    }
    server.stop().await;
    app.stop().await;
}

/// `--acme` without a DNS hook says at start what per-name certificates
/// cost: every name in the public CT logs, and the CA's weekly limit.
#[tokio::test]
async fn acme_without_a_wildcard_warns_at_start() {
    let home = tempfile::tempdir().unwrap();
    let (mut server, _, _) = support::bins::ready_server(
        support::bins::server_cmd(home.path())
            .args(["--https", "127.0.0.1:0", "--acme"])
            // Nothing answers there: the account waits, the server runs.
            .args(["--acme-directory", "https://127.0.0.1:9/directory"]),
    )
    .await;
    let line = server.log_until("certificate transparency").await;
    assert!(line.contains("--acme-dns-hook"), "{line}");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}
