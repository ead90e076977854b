//! Domain grants against the server's own names (issue 22, item 5): with
//! `--domain tunnel.example.test --allow-domain '*.example.test'`, a token
//! used to claim `*.tunnel.example.test` and the apex, then receive the
//! visitors of unregistered names, of names kept for another token and of
//! names reserved for a reconnecting client.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;

use support::*;

const A: &str = "token-a-0123456789abcdef";
const B: &str = "token-b-0123456789abcdef";

fn client(server: &TestServer, local: std::net::SocketAddr, name: &str, token: &str) -> TestClient {
    let mut cfg = server.client_config(local, Some(name));
    cfg.token = Some(token.into());
    TestClient::start(cfg)
}

async fn visit(server: &TestServer, host: &str) -> Raw {
    raw_exchange(
        server.http,
        format!("GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_grant_never_reaches_the_servers_own_names() {
    let server = TestServer::start_with(tunnel_server::Config {
        domain: "tunnel.example.test".into(),
        tokens: vec![A.into(), B.into()],
        allow_domains: vec![tunnel_server::config::parse_grant("*.example.test").unwrap()],
        ..Default::default()
    })
    .await;
    let alice = Backend::start("alice").await;
    let mallory = Backend::start("mallory").await;

    // Alice's names: one under the domain, one granted; both reserved for
    // her while she is away.
    let mut a = client(&server, alice.addr, "victim", A);
    a.online(1).await;
    a.stop().await;
    let mut a = client(&server, alice.addr, "app.example.test", A);
    a.online(1).await;
    a.stop().await;

    for claim in [
        "*.tunnel.example.test",
        "tunnel.example.test",
        "x.y.tunnel.example.test",
    ] {
        let err = client(&server, mallory.addr, claim, B)
            .finished()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--subdomain"), "{claim}: {err}");
    }
    let mut m = client(&server, mallory.addr, "*.example.test", B);
    m.online(1).await;
    assert_eq!(
        visit(&server, "shop.example.test").await.body,
        b"hello from mallory"
    );

    let before = mallory.requests.load(Ordering::SeqCst);
    for host in [
        "nobody.tunnel.example.test",
        "victim.tunnel.example.test",
        "app.example.test",
        "tunnel.example.test",
    ] {
        let r = visit(&server, host).await;
        assert_ne!(r.status, 200, "{host}: {r:?}");
    }
    assert_eq!(
        mallory.requests.load(Ordering::SeqCst),
        before,
        "the wildcard took none of them"
    );
    m.stop().await;
    server.stop().await;
    alice.stop().await;
    mallory.stop().await;
}
