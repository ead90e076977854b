//! The registry with real sessions (a QUIC connection on loopback each):
//! registration of names and ports, the end of a session, the replacement
//! of a stale one. The names room's own rules are tested in
//! `names_tests.rs`, on a clock driven by hand.

use std::sync::Arc;

use super::*;

const GRACE: Duration = Duration::from_secs(300);

/// A connected QUIC connection on loopback (both endpoints kept alive by
/// the returned guard).
async fn connection() -> (quinn::Connection, (quinn::Endpoint, quinn::Endpoint)) {
    use tunnel_lib::quic::{
        client_config, client_endpoint, server_config, server_endpoint, Tuning,
    };
    use tunnel_lib::tls::{fingerprint, CertPair, ServerTrust};
    let g = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_string()]).unwrap();
    let pair = CertPair {
        chain: vec![g.cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into()),
    };
    let fp = fingerprint(&pair.chain[0]);
    let t = Tuning::default();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = server_endpoint(socket, server_config(pair, &t).unwrap(), b"k", &t, None).unwrap();
    let addr = server.local_addr().unwrap();
    let client = client_endpoint(addr, &t).unwrap();
    let cfg = client_config(&ServerTrust::Pinned(vec![fp]), &t).unwrap();
    let connecting = client.connect_with(cfg, addr, "tunnel.test").unwrap();
    let (_, accepted) = tokio::join!(connecting, async { server.accept().await.unwrap().await });
    (accepted.unwrap(), (server, client))
}

fn registry() -> Registry {
    let urls = Urls {
        scheme: "http",
        port: 80,
        tls_port: None,
    };
    let grant = DomainGrant {
        token: Some(0),
        pattern: "*.alice.example".into(),
    };
    Registry::new("tunnel.test", urls, GRACE, 4, vec![grant])
}

struct Client {
    session: Arc<Session>,
    _conn: (quinn::Endpoint, quinn::Endpoint),
}

async fn client(r: &Registry, owner: Owner, id: u8) -> Client {
    let (conn, guard) = connection().await;
    let remote = conn.remote_address();
    let (session, stale) = r.add_session(conn, owner, [id; 16], remote).unwrap();
    assert!(stale.is_none());
    Client {
        session,
        _conn: guard,
    }
}

fn http(name: &str) -> Request<'_> {
    Request {
        name,
        target: Target::Http {
            plain_http: false,
            policy: None,
        },
    }
}

#[tokio::test]
async fn a_name_is_routed_then_reserved_for_its_owner_when_the_session_ends() {
    let r = registry();
    let alice = client(&r, Owner::Token(0), 1).await;
    let got = r.register(&alice.session, &http("app")).unwrap();
    assert_eq!(got.hostname, "app.tunnel.test");
    assert_eq!(got.url, "http://app.tunnel.test");
    let (rule, session) = r.route(b"APP.tunnel.test:80").unwrap();
    assert_eq!(
        (rule.session_id, session.unwrap().id),
        (alice.session.id, alice.session.id)
    );

    let bob = client(&r, Owner::Token(1), 2).await;
    let e = r.register(&bob.session, &http("app")).unwrap_err();
    assert_eq!(e.code, ErrorCode::NameTaken);

    r.end_session(&alice.session);
    assert!(
        r.route(b"app.tunnel.test").is_none(),
        "the route went with the session"
    );
    assert!(alice.session.ended.is_cancelled());
    assert_eq!(
        Directory::offline(&r, "app.tunnel.test"),
        Some(Offline::Reconnecting)
    );
    assert!(
        r.register(&bob.session, &http("app")).is_err(),
        "reserved for alice"
    );
    assert_eq!(
        r.held_names(),
        [("app.tunnel.test".to_string(), Owner::Token(0))]
    );

    let back = client(&r, Owner::Token(0), 3).await;
    r.register(&back.session, &http("app")).unwrap();
    assert_eq!(
        r.route(b"app.tunnel.test").unwrap().0.session_id,
        back.session.id
    );
    // Ending an ended session changes nothing.
    r.end_session(&alice.session);
    assert!(r.route(b"app.tunnel.test").is_some());
}

#[tokio::test]
async fn a_reconnecting_client_replaces_its_stale_session() {
    let r = registry();
    let first = client(&r, Owner::Token(0), 7).await;
    r.register(&first.session, &http("api")).unwrap();
    let (conn, _guard) = connection().await;
    let remote = conn.remote_address();
    let (second, stale) = r
        .add_session(conn, Owner::Token(0), [7; 16], remote)
        .unwrap();
    assert_eq!(stale.map(|s| s.id), Some(first.session.id));
    assert!(first.session.ended.is_cancelled());
    // Its name waits for it, not for anyone else.
    r.register(&second, &http("api")).unwrap();
}

#[tokio::test]
async fn hosts_outside_the_domain_need_a_grant_and_wildcards_yield_to_reservations() {
    let r = registry();
    let alice = client(&r, Owner::Token(0), 1).await;
    let bob = client(&r, Owner::Token(1), 2).await;
    r.register(&alice.session, &http("*.alice.example"))
        .unwrap();
    let e = r
        .register(&bob.session, &http("x.alice.example"))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidName);
    assert!(e.message.contains("--allow-domain"), "{}", e.message);
    assert_eq!(
        r.route(b"deep.name.alice.example").unwrap().0.host.as_ref(),
        "*.alice.example"
    );
    // A name alice reserved stays hers, not the wildcard's.
    let exact = client(&r, Owner::Token(0), 3).await;
    r.register(&exact.session, &http("one.alice.example"))
        .unwrap();
    r.end_session(&exact.session);
    assert!(r.route(b"one.alice.example").is_none());
}

#[tokio::test]
async fn ports_are_claimed_in_range_released_when_they_cannot_open_and_kept_for_their_owner() {
    let r = registry();
    let alice = client(&r, Owner::Token(0), 1).await;
    let bob = client(&r, Owner::Token(1), 2).await;
    let range = 40000..=40001;
    let ok = |_p: u16| Ok::<(), std::io::Error>(());

    let e = r
        .register_port(&alice.session, TunnelKind::Tcp, 39999, (&range, false), ok)
        .unwrap_err();
    assert!(
        e.message
            .contains("outside this server's TCP ports 40000-40001"),
        "{}",
        e.message
    );

    let (got, ()) = r
        .register_port(&alice.session, TunnelKind::Tcp, 40000, (&range, false), ok)
        .unwrap();
    assert_eq!(
        (got.hostname.as_str(), got.url.as_str()),
        ("tcp:40000", "tcp://tunnel.test:40000")
    );
    let e = r
        .register_port(&bob.session, TunnelKind::Tcp, 40000, (&range, true), ok)
        .unwrap_err();
    assert!(
        e.message.contains("taken by another connected tunnel"),
        "{}",
        e.message
    );

    // A port the system will not open is given back at once.
    let busy = |_p: u16| Err::<(), _>(std::io::Error::from(std::io::ErrorKind::AddrInUse));
    let e = r
        .register_port(&bob.session, TunnelKind::Tcp, 40001, (&range, false), busy)
        .unwrap_err();
    assert!(e.message.contains("cannot be opened"), "{}", e.message);
    let (any, ()) = r
        .register_port(&bob.session, TunnelKind::Tcp, 0, (&range, false), ok)
        .unwrap();
    assert_eq!(any.hostname, "tcp:40001", "the only free one");
    let e = r
        .register_port(&bob.session, TunnelKind::Tcp, 0, (&range, false), ok)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached);

    // The same number is another port for UDP.
    r.register_port(&bob.session, TunnelKind::Udp, 40000, (&range, false), ok)
        .unwrap();

    r.end_session(&alice.session);
    let carol = client(&r, Owner::Token(2), 3).await;
    let e = r
        .register_port(&carol.session, TunnelKind::Tcp, 40000, (&range, false), ok)
        .unwrap_err();
    assert!(
        e.message.contains("reserved for the client"),
        "{}",
        e.message
    );
    let again = client(&r, Owner::Token(0), 4).await;
    r.register_port(&again.session, TunnelKind::Tcp, 40000, (&range, false), ok)
        .unwrap();
}

#[tokio::test]
async fn one_session_exposes_at_most_its_share() {
    let r = registry();
    let alice = client(&r, Owner::Anonymous, 1).await;
    for _ in 0..4 {
        r.register(&alice.session, &http("")).unwrap();
    }
    let e = r.register(&alice.session, &http("")).unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached);
    assert!(e.message.contains("at most 4 tunnels"), "{}", e.message);
    assert_eq!(r.route_count(), 4);
}

#[test]
fn grants_match_names_below_and_exact() {
    let any = DomainGrant {
        token: None,
        pattern: "*.example.com".into(),
    };
    assert!(any.allows(Owner::Token(0), "app.example.com"));
    assert!(any.allows(Owner::Token(3), "*.preview.example.com"));
    assert!(!any.allows(Owner::Token(0), "example.com"));
    assert!(!any.allows(Owner::Token(0), "badexample.com"));
    let one = DomainGrant {
        token: Some(1),
        pattern: "app.mycompany.com".into(),
    };
    assert!(one.allows(Owner::Token(1), "app.mycompany.com"));
    assert!(!one.allows(Owner::Token(0), "app.mycompany.com"));
    assert!(!one.allows(Owner::Anonymous, "app.mycompany.com"));
    assert!(!one.allows(Owner::Token(1), "x.app.mycompany.com"));
}

#[test]
fn rights_decide_which_host_a_name_means() {
    let rules = vec![
        NameRule {
            token: 0,
            pattern: "alice-*".into(),
        },
        NameRule {
            token: 1,
            pattern: "api".into(),
        },
    ];
    let rights = Rights::new("Tunnel.Test", Vec::new(), rules);
    let a = Owner::Token(0);
    assert_eq!(
        rights.requested_host(a, "alice-web").unwrap(),
        "alice-web.tunnel.test"
    );
    assert_eq!(
        rights.requested_host(a, "ALICE-X.tunnel.test").unwrap(),
        "alice-x.tunnel.test"
    );
    let e = rights.requested_host(a, "api").unwrap_err();
    assert!(
        e.message.contains("kept for another token"),
        "{}",
        e.message
    );
    let e = rights.requested_host(a, "web").unwrap_err();
    assert!(
        e.message.contains("only these names: alice-*"),
        "{}",
        e.message
    );
    assert!(
        rights.requested_host(Owner::Token(2), "web").is_ok(),
        "no rules of its own"
    );
    let e = rights
        .requested_host(Owner::Token(2), "*.tunnel.test")
        .unwrap_err();
    assert!(e.message.contains("server's own domain"), "{}", e.message);
    assert!(rights.requested_host(Owner::Token(2), "bad_label").is_err());
    assert!(
        rights.may_pick_any(a).is_err(),
        "alice asks for her names by name"
    );
    assert!(rights.may_pick_any(Owner::Anonymous).is_ok());
    assert!(rights.under_domain("tunnel.test") && rights.under_domain("x.tunnel.test"));
    assert!(!rights.under_domain("xtunnel.test"));
}
