//! The https edge end to end: real TLS for visitors, certificates from a
//! real ACME CA (Debian's pebble, validating against the server's own
//! ports), operator files reloaded under open connections, TLS passthrough
//! to a local TLS server, and what bad ClientHellos get.

// #[tokio::test] expands to a block_on outside any runtime, and the tests
// read and write small files between steps: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::tls::{self, EchoTls, Made};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_server::acme::Challenge;
use tunnel_server::Config;

use support::acme::{acme_config, acme_server, public_client, DOMAIN};

#[tokio::test]
async fn acme_tls_alpn_https_end_to_end() {
    let (server, pebble) = acme_server(Challenge::TlsAlpn01, |_, _| {}).await;
    let acme = server.acme.clone().unwrap();
    // The server's own name first: QUIC clients verify it like a browser.
    server.wait_cert(DOMAIN).await;
    let root_pem = pebble.issuing_root().await;
    let root_file = pebble.dir.path().join("issuing-root.pem");
    std::fs::write(&root_file, &root_pem).unwrap();

    let backend = Backend::start("app").await;
    let mut client = TestClient::start(public_client(&server, backend.addr, "app", &root_file));
    let tunnels = client.online(1).await;
    let https = server.https.unwrap();
    assert_eq!(
        tunnels[0].url,
        format!("https://app.{DOMAIN}:{}", https.port())
    );
    // The URL line came once the certificate was there.
    let cert = server
        .certs
        .as_ref()
        .unwrap()
        .lookup(&format!("app.{DOMAIN}"))
        .unwrap();
    assert_eq!(cert.names, [format!("app.{DOMAIN}")]);
    assert_eq!(acme.orders(), 2, "the server's name and the tunnel's");

    // A visitor trusting only the CA's root gets the app, over https.
    let visitor = tls::visitor(&[&root_pem]);
    let host = format!("app.{DOMAIN}");
    let r = tls::get(https, &host, visitor.clone(), "/headers").await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");
    assert!(seen.contains(&format!("host: app.{DOMAIN}")), "{seen}");

    // The plain port sends visitors to https, path and query kept.
    let r = raw_exchange(
        server.http,
        format!("GET /hello?x=1 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 308, "{}", r.head);
    assert!(
        r.head.contains(&format!(
            "Location: https://{host}:{}/hello?x=1\r\n",
            https.port()
        )),
        "{}",
        r.head
    );

    // Another name on the same TLS session is misdirected, not served.
    let mut s = tls::connect(https, &host, visitor.clone()).await.unwrap();
    let r = tls::request(&mut s, &format!("GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n")).await;
    assert_eq!(r.status, 421, "{}", r.head);

    // A scanner's random names: no tunnel, no certificate → unrecognized_name,
    // and not one order.
    for i in 0..20 {
        let name = if i % 2 == 0 {
            format!("scan{i}-{}.{DOMAIN}", fastrand::u32(..))
        } else {
            format!("random{i}.example")
        };
        let e = tls::connect(https, &name, visitor.clone())
            .await
            .unwrap_err();
        assert_eq!(
            tls::alert_of(&e),
            Some(rustls::AlertDescription::UnrecognisedName),
            "{name}: {e}"
        );
    }
    assert_eq!(acme.orders(), 2, "scanners' names must not trigger orders");

    // No SNI (an IP address): the default certificate and the 404 page.
    let dev = std::fs::read_to_string(server.state_dir.path().join("cert.pem")).unwrap();
    let r = tls::get(https, "127.0.0.1", tls::visitor(&[&dev]), "/").await;
    assert_eq!(r.status, 404, "{}", r.head);

    // Cached with the key readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    let key = server
        .state_dir
        .path()
        .join(format!("acme/app.{DOMAIN}.key"));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    let account = server.state_dir.path().join("acme/account.json");
    assert_eq!(
        std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
        0o600
    );

    client.stop().await;
    // A restart with the same state directory orders nothing: the account
    // and the certificates come from the cache.
    let state = server.stop_keeping_state().await;
    let listeners = TestServer::listeners(true);
    let config = Config {
        domain: DOMAIN.into(),
        https: listeners.https.as_ref().map(|l| l.local_addr().unwrap()),
        acme: Some(acme_config(&pebble, Challenge::TlsAlpn01)),
        ..Config::default()
    };
    let again = TestServer::start_in(config, listeners, state).await;
    again.wait_cert(&host).await;
    let backend_client = TestClient::start(public_client(&again, backend.addr, "app", &root_file));
    let mut backend_client = backend_client;
    backend_client.online(1).await;
    assert_eq!(again.acme.as_ref().unwrap().orders(), 0);
    backend_client.stop().await;
    again.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn acme_http01_and_renewal_of_a_short_lived_certificate() {
    let (server, pebble) = acme_server(Challenge::Http01, |c, _| {
        // Renew once a certificate is 3 s old (pebble issues 5-year ones).
        c.acme.as_mut().unwrap().renew_after = Some(Duration::from_secs(3));
    })
    .await;
    let host = format!("app.{DOMAIN}");
    server.wait_cert(DOMAIN).await;
    let root_pem = pebble.issuing_root().await;
    let root_file = pebble.dir.path().join("issuing-root.pem");
    std::fs::write(&root_file, &root_pem).unwrap();
    let backend = Backend::start("app").await;
    let mut client = TestClient::start(public_client(&server, backend.addr, "app", &root_file));
    client.online(1).await;
    let first = server.wait_cert(&host).await;
    let https = server.https.unwrap();
    let visitor = tls::visitor(&[&root_pem]);
    let mut s = tls::connect(https, &host, visitor.clone()).await.unwrap();
    assert_eq!(
        tls::presented(&s),
        tunnel_lib::tls::fingerprint(&first.key.cert[0])
    );
    let r = tls::request(
        &mut s,
        &format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.body, b"hello from app");

    // Wait for the renewal: a different certificate for the same name.
    let store = server.certs.clone().unwrap();
    let mut changes = store.subscribe();
    let renewed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let c = store.lookup(&host).unwrap();
            if !Arc::ptr_eq(&c, &first) {
                return c;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("renewed within 60 s");
    assert!(renewed.not_before >= first.not_before);
    let s2 = tls::connect(https, &host, visitor.clone()).await.unwrap();
    assert_eq!(
        tls::presented(&s2),
        tunnel_lib::tls::fingerprint(&renewed.key.cert[0])
    );
    assert_ne!(tls::presented(&s2), tls::presented(&s));
    // The connection made before the renewal keeps working.
    let r = tls::request(
        &mut s,
        &format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.body, b"hello from app");
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn wildcard_through_the_dns_hook_needs_no_order_per_tunnel() {
    let (server, pebble) = acme_server(Challenge::TlsAlpn01, |c, p| {
        c.acme.as_mut().unwrap().dns_hook = Some(p.dns_hook().0);
    })
    .await;
    let wildcard = server.wait_cert(&format!("any.{DOMAIN}")).await;
    assert!(
        wildcard.names.contains(&format!("*.{DOMAIN}")),
        "{:?}",
        wildcard.names
    );
    let acme = server.acme.clone().unwrap();
    assert_eq!(acme.orders(), 1, "one order for DOMAIN and *.DOMAIN");
    let calls = std::fs::read_to_string(pebble.dns_hook().1).unwrap();
    let record = format!("_acme-challenge.{DOMAIN}");
    assert_eq!(
        calls.matches(&format!("set {record} ")).count(),
        2,
        "{calls}"
    );
    assert_eq!(
        calls.matches(&format!("clear {record} ")).count(),
        2,
        "{calls}"
    );

    let root_pem = pebble.issuing_root().await;
    let root_file = pebble.dir.path().join("issuing-root.pem");
    std::fs::write(&root_file, &root_pem).unwrap();
    let backend = Backend::start("wild").await;
    let mut client = TestClient::start(public_client(&server, backend.addr, "app", &root_file));
    client.online(1).await;
    assert_eq!(acme.orders(), 1, "the wildcard covers new tunnels");
    let r = tls::get(
        server.https.unwrap(),
        &format!("app.{DOMAIN}"),
        tls::visitor(&[&root_pem]),
        "/hello",
    )
    .await;
    assert_eq!(r.body, b"hello from wild");
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// A server for `edge.test` with the operator's certificate files (and
/// whatever `tweak` adds).
async fn file_server_with(
    dir: &std::path::Path,
    made: &Made,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let (cert, key) = made.write(dir, "edge");
    let listeners = TestServer::listeners(true);
    let mut config = Config {
        domain: "edge.test".into(),
        https: listeners.https.as_ref().map(|l| l.local_addr().unwrap()),
        edge_cert: Some(cert),
        edge_key: Some(key),
        ..Config::default()
    };
    config.timeouts.tls_handshake = Duration::from_millis(500);
    tweak(&mut config);
    TestServer::start_on(config, listeners).await
}

async fn file_server(dir: &std::path::Path, made: &Made) -> TestServer {
    file_server_with(dir, made, |_| {}).await
}

#[tokio::test]
async fn edge_files_reload_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let one = Made::new(&["*.edge.test", "edge.test"]);
    let two = Made::new(&["*.edge.test", "edge.test"]);
    let server = file_server(dir.path(), &one).await;
    let backend = Backend::start("files").await;
    let mut client = TestClient::start(server.client_config(backend.addr, Some("app")));
    let tunnels = client.online(1).await;
    let https = server.https.unwrap();
    assert_eq!(
        tunnels[0].url,
        format!("https://app.edge.test:{}", https.port())
    );
    let visitor = tls::visitor(&[&one.cert_pem, &two.cert_pem]);
    let get = "GET /hello HTTP/1.1\r\nHost: app.edge.test\r\n\r\n";
    let mut old = tls::connect(https, "app.edge.test", visitor.clone())
        .await
        .unwrap();
    assert_eq!(tls::presented(&old), one.fingerprint());
    assert_eq!(tls::request(&mut old, get).await.body, b"hello from files");

    // New files, then what SIGHUP does: new connections get the new
    // certificate, the open keep-alive connection goes on.
    let mut changes = server.certs.as_ref().unwrap().subscribe();
    two.write(dir.path(), "edge");
    server.reload.notify_one();
    tokio::time::timeout(WAIT, changes.changed())
        .await
        .unwrap()
        .unwrap();
    let fresh = tls::connect(https, "app.edge.test", visitor.clone())
        .await
        .unwrap();
    assert_eq!(tls::presented(&fresh), two.fingerprint());
    assert_eq!(tls::request(&mut old, get).await.body, b"hello from files");

    // A name with no tunnel and no certificate: unrecognized_name.
    let e = tls::connect(https, "nobody.example", visitor.clone())
        .await
        .unwrap_err();
    assert_eq!(
        tls::alert_of(&e),
        Some(rustls::AlertDescription::UnrecognisedName),
        "{e}"
    );
    // A name the wildcard covers but no tunnel serves: the 404 page.
    let r = tls::get(https, "gone.edge.test", visitor.clone(), "/").await;
    assert_eq!(r.status, 404);

    // A handshake that never completes is cut at the deadline (0.5 s here),
    // while others are served.
    let mut slow = tokio::net::TcpStream::connect(https).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = tls::get(https, "app.edge.test", visitor.clone(), "/hello").await;
    assert_eq!(r.body, b"hello from files");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "cut after {:?}",
        started.elapsed()
    );

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn tls_passthrough_shows_the_local_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Made::new(&["*.edge.test", "edge.test", "127.0.0.1"]);
    let server = file_server(dir.path(), &edge).await;
    let local = EchoTls::start("secure.edge.test").await;
    let mut cfg = server.client_config(local.addr, Some("secure"));
    cfg.tunnels[0].kind = tunnel_lib::proto::TunnelKind::Tls;
    let mut client = TestClient::start(cfg);
    let tunnels = client.online(1).await;
    let https = server.https.unwrap();
    assert_eq!(
        tunnels[0].url,
        format!("tls://secure.edge.test:{}", https.port())
    );

    // The visitor trusts only the local server's certificate, and gets it:
    // the tunnel server never holds the keys.
    let mut s = tls::connect(
        https,
        "secure.edge.test",
        tls::visitor(&[&local.made.cert_pem]),
    )
    .await
    .unwrap();
    assert_eq!(tls::presented(&s), local.made.fingerprint());
    for i in 0..50 {
        let msg = format!("ping {i} through the passthrough");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // Plain http for a passthrough name goes to https; HTTP/1 over a TLS
    // session without that SNI never reaches the local TLS server.
    let r = raw_exchange(
        server.http,
        b"GET / HTTP/1.1\r\nHost: secure.edge.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308, "{}", r.head);
    let mut nosni = tls::connect(https, "127.0.0.1", tls::visitor(&[&edge.cert_pem]))
        .await
        .unwrap();
    let r = tls::request(
        &mut nosni,
        "GET / HTTP/1.1\r\nHost: secure.edge.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 421, "{}", r.head);
    // The edge's own certificate is not what passthrough shows.
    let e = tls::connect(https, "secure.edge.test", tls::visitor(&[&edge.cert_pem])).await;
    assert!(e.is_err());
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn opt_out_of_the_redirect_and_opt_in_to_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Made::new(&["*.edge.test", "edge.test"]);
    let server = file_server_with(dir.path(), &edge, |c| {
        c.hsts = Some(Duration::from_secs(600))
    })
    .await;
    let backend = Backend::start("both").await;
    let mut plain_ok = server.client_config(backend.addr, Some("plain"));
    plain_ok.tunnels[0].plain_http = true;
    let mut a = TestClient::start(plain_ok);
    a.online(1).await;
    let mut b = TestClient::start(server.client_config(backend.addr, Some("strict")));
    b.online(1).await;

    // The opted-out tunnel serves plain http; the other one redirects.
    let r = raw_exchange(
        server.http,
        b"GET /hello HTTP/1.1\r\nHost: plain.edge.test\r\n\r\n",
    )
    .await;
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"hello from both"[..]),
        "{}",
        r.head
    );
    assert!(
        !r.head.contains("Strict-Transport-Security"),
        "no HSTS over plain http"
    );
    let r = raw_exchange(
        server.http,
        b"GET /hello HTTP/1.1\r\nHost: strict.edge.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308);
    // Only a token being validated is answered on the plain port (see the
    // HTTP-01 test); any other challenge path is an ordinary request.
    let r = raw_exchange(
        server.http,
        b"GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: strict.edge.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308);

    // HSTS on https responses, the app's own and the server's pages.
    let visitor = tls::visitor(&[&edge.cert_pem]);
    let r = tls::get(
        server.https.unwrap(),
        "strict.edge.test",
        visitor.clone(),
        "/hello",
    )
    .await;
    assert!(
        r.head
            .contains("Strict-Transport-Security: max-age=600\r\n"),
        "{}",
        r.head
    );
    assert_eq!(r.body, b"hello from both");
    a.stop().await;
    b.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn custom_domains_need_a_grant_and_wildcard_rules_route_every_name_below() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Made::new(&[
        "*.edge.test",
        "edge.test",
        "app.mycompany.test",
        "*.preview.mycompany.test",
    ]);
    let server = file_server_with(dir.path(), &edge, |c| {
        c.allow_domains = vec![
            tunnel_server::config::parse_grant("app.mycompany.test").unwrap(),
            tunnel_server::config::parse_grant("*.preview.mycompany.test").unwrap(),
        ]
    })
    .await;
    let custom = Backend::start("custom").await;
    let preview = Backend::start("preview").await;

    // Not granted: refused with a message that names the flag.
    let denied = TestClient::start(server.client_config(custom.addr, Some("other.mycompany.test")));
    let err = denied.finished().await.unwrap_err();
    assert!(err.to_string().contains("--allow-domain"), "{err}");

    let mut a = TestClient::start(server.client_config(custom.addr, Some("App.MyCompany.test")));
    let t = a.online(1).await;
    assert_eq!(t[0].hostname, "app.mycompany.test");
    let mut b =
        TestClient::start(server.client_config(preview.addr, Some("*.preview.mycompany.test")));
    let t = b.online(1).await;
    assert_eq!(t[0].hostname, "*.preview.mycompany.test");

    let visitor = tls::visitor(&[&edge.cert_pem]);
    let https = server.https.unwrap();
    let r = tls::get(https, "app.mycompany.test", visitor.clone(), "/hello").await;
    assert_eq!(r.body, b"hello from custom");
    for name in ["pr-1.preview.mycompany.test", "pr-2.preview.mycompany.test"] {
        let r = tls::get(https, name, visitor.clone(), "/headers").await;
        let seen = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
        assert!(seen.contains(&format!("host: {name}")), "{seen}");
    }
    // The rule covers names below it, not its parent.
    let r = raw_exchange(
        server.http,
        b"GET / HTTP/1.1\r\nHost: preview.mycompany.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404);
    a.stop().await;
    b.stop().await;
    server.stop().await;
    custom.stop().await;
    preview.stop().await;
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let one = Made::new(&["*.edge.test", "edge.test"]);
    let two = Made::new(&["*.edge.test", "edge.test"]);
    let server = file_server(dir.path(), &one).await;
    let mut changes = server.certs.as_ref().unwrap().subscribe();
    // A bad pair first (new certificate, old key): kept out, the old one stays.
    std::fs::write(dir.path().join("edge.crt"), &two.cert_pem).unwrap();
    let visitor = tls::visitor(&[&one.cert_pem, &two.cert_pem]);
    std::fs::write(dir.path().join("edge.key"), &two.key_pem).unwrap();
    tokio::time::timeout(WAIT, changes.changed())
        .await
        .unwrap()
        .unwrap();
    let s = tls::connect(server.https.unwrap(), "edge.test", visitor)
        .await
        .unwrap();
    assert_eq!(tls::presented(&s), two.fingerprint());
    server.stop().await;
}
