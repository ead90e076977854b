//! Visitor policy of HTTP tunnels, enforced by the server before a stream
//! is opened: basic auth, address lists, a per-IP rate, and the request
//! edits the local app sees (Host rewrite, headers added and removed).

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;

use support::*;
use tunnel_lib::proto::Policy;

async fn with_policy(policy: Policy) -> (Backend, TestServer, TestClient, String) {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut cfg = server.client_config(backend.addr, None);
    cfg.tunnels[0].policy = policy;
    let mut client = TestClient::start(cfg);
    let host = host_of(&client.online(1).await[0].url);
    (backend, server, client, host)
}

async fn get_with(server: &TestServer, host: &str, path: &str, extra: &str) -> Raw {
    raw_exchange(
        server.http,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn basic_auth_answers_401_until_the_password_is_right() {
    let (backend, server, client, host) = with_policy(Policy {
        basic_auth: vec!["ann:open sesame".into()],
        ..Default::default()
    })
    .await;
    let r = get_with(&server, &host, "/hello", "").await;
    assert_eq!(r.status, 401);
    assert!(
        r.head.contains("WWW-Authenticate: Basic realm=\"tunnel\""),
        "{}",
        r.head
    );
    // "ann:wrong" and "ann:open sesame" in base64.
    let r = get_with(
        &server,
        &host,
        "/hello",
        "Authorization: Basic YW5uOndyb25n\r\n",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
    let r = get_with(
        &server,
        &host,
        "/hello",
        "Authorization: Basic YW5uOm9wZW4gc2VzYW1l\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello from app");
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn address_lists_decide_who_gets_in() {
    // The visitor is 127.0.0.1.
    for (allow, deny, status) in [
        (vec!["10.0.0.0/8"], vec![], 403),
        (vec!["127.0.0.0/8"], vec!["127.0.0.1"], 403),
        (vec!["127.0.0.1"], vec!["10.0.0.0/8"], 200),
        (vec![], vec!["127.0.0.0/8"], 403),
    ] {
        let (backend, server, client, host) = with_policy(Policy {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
        let r = get_with(&server, &host, "/hello", "").await;
        assert_eq!(r.status, status, "allow {allow:?} deny {deny:?}");
        if status == 403 {
            assert!(
                r.head.contains("X-Tunnel-Error: address-denied"),
                "{}",
                r.head
            );
            assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
        }
        client.stop().await;
        server.stop().await;
        backend.stop().await;
    }
}

#[tokio::test]
async fn past_the_burst_a_visitor_gets_429_with_retry_after() {
    let (backend, server, client, host) = with_policy(Policy {
        rate_per_ip: 5,
        ..Default::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get_with(&server, &host, "/hello", "").await.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=12).contains(&ok), "{statuses:?}");
    let r = get_with(&server, &host, "/hello", "").await;
    assert_eq!(r.status, 429);
    assert!(r.head.contains("Retry-After: 1"), "{}", r.head);
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn the_app_sees_the_rewritten_host_and_the_header_edits() {
    let (backend, server, client, host) = with_policy(Policy {
        host_header: "rewrite".into(),
        add_request_headers: vec![("X-Env".into(), "preview".into())],
        remove_request_headers: vec!["Cookie".into()],
        ..Default::default()
    })
    .await;
    let r = get_with(
        &server,
        &host,
        "/headers",
        "Cookie: session=1\r\nAccept: */*\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = String::from_utf8_lossy(&r.body).to_lowercase();
    assert!(
        seen.contains(&format!("host: {}\n", backend.addr)),
        "the local address as Host: {seen}"
    );
    assert!(
        seen.contains(&format!("x-forwarded-host: {}\n", host.to_lowercase())),
        "{seen}"
    );
    assert!(seen.contains("x-env: preview\n"), "{seen}");
    assert!(!seen.contains("cookie"), "{seen}");
    assert!(seen.contains("accept: */*\n"), "{seen}");
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn response_headers_are_added_and_removed() {
    let (backend, server, client, host) = with_policy(Policy {
        add_response_headers: vec![("X-Robots-Tag".into(), "noindex".into())],
        remove_response_headers: vec!["Date".into()],
        ..Default::default()
    })
    .await;
    let r = get_with(&server, &host, "/hello", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello from app");
    let head = r.head.to_lowercase();
    assert!(head.contains("x-robots-tag: noindex\r\n"), "{head}");
    assert!(!head.contains("\r\ndate:"), "{head}");
    assert!(
        head.contains("content-length: 14\r\n"),
        "framing kept: {head}"
    );
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn a_bad_policy_is_refused_with_the_flag_named() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut cfg = server.client_config(backend.addr, None);
    cfg.tunnels[0].policy = Policy {
        allow: vec!["10.0.0.0/99".into()],
        ..Default::default()
    };
    let res = TestClient::start(cfg).finished().await;
    let msg = format!("{res:?}");
    assert!(msg.contains("--allow \\\"10.0.0.0/99\\\""), "{msg}");
    server.stop().await;
    backend.stop().await;
}
