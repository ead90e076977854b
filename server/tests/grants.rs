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

/// Issue 22, item 6: one token reserved 80 000 names by reconnecting with
/// random ones. Now a token holds `max_names_per_token` names (in use or
/// reserved); its own reserved names stay its to take back.
#[tokio::test]
async fn a_token_holds_a_bounded_number_of_names() {
    let mut config = tunnel_server::Config {
        tokens: vec![A.into(), B.into()],
        ..Default::default()
    };
    config.token_limits.names = 3;
    let server = TestServer::start_with(config).await;
    let app = Backend::start("app").await;
    let random = |token: &str| {
        let mut cfg = server.client_config(app.addr, None);
        cfg.token = Some(token.into());
        TestClient::start(cfg)
    };
    let mut kept = client(&server, app.addr, "kept", A);
    kept.online(1).await;
    kept.stop().await;
    for _ in 0..2 {
        let mut c = random(A);
        c.online(1).await;
        c.stop().await;
    }
    let err = random(A).finished().await.unwrap_err();
    assert!(err.to_string().contains("max_names_per_token"), "{err}");
    // Its own reservation comes back; another token is not affected.
    let mut again = client(&server, app.addr, "kept", A);
    again.online(1).await;
    let mut other = random(B);
    other.online(1).await;
    again.stop().await;
    other.stop().await;
    server.stop().await;
    app.stop().await;
}

/// Issue 22, item 6: the tunnels of one token's clients, together.
#[tokio::test]
async fn a_token_exposes_a_bounded_number_of_tunnels() {
    let mut config = tunnel_server::Config {
        tokens: vec![A.into()],
        ..Default::default()
    };
    config.token_limits.tunnels = 2;
    let server = TestServer::start_with(config).await;
    let app = Backend::start("app").await;
    let mut one = client(&server, app.addr, "one", A);
    one.online(1).await;
    let mut two = client(&server, app.addr, "two", A);
    two.online(1).await;
    let err = client(&server, app.addr, "three", A)
        .finished()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_tunnels_per_token"), "{err}");
    one.stop().await;
    two.stop().await;
    server.stop().await;
    app.stop().await;
}
