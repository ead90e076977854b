//! The tunnel end to end: a hyper backend, a tunnel server and client, all
//! on 127.0.0.1 port 0, with real QUIC and TLS.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;
use tunnel_client::Status;

#[tokio::test]
async fn get_through_the_tunnel_with_forwarded_headers() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, None));
    let tunnels = client.online(1).await;
    let url = &tunnels[0].url;
    assert!(
        url.starts_with("http://") && url.contains(".localhost:"),
        "{url}"
    );
    let host = host_of(url);

    let mut v = visitor(server.http).await;
    let resp = v.send_request(get(&host, "/hello")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, "hello from app");

    // Host matching ignores case and port.
    let upper = host
        .to_ascii_uppercase()
        .replace(&format!(":{}", server.http.port()), "");
    let resp = v.send_request(get(&upper, "/headers")).await.unwrap();
    let text = body_text(resp).await;
    assert!(text.contains("x-forwarded-for: 127.0.0.1\n"), "{text}");
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(
        text.contains(&format!("x-forwarded-host: {upper}\n")),
        "{text}"
    );

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn twenty_requests_on_one_keep_alive_connection() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, Some("keepalive")));
    let host = host_of(&client.online(1).await[0].url);
    assert!(host.starts_with("keepalive.localhost"));

    let mut v = visitor(server.http).await;
    for i in 0..20 {
        let resp = v.send_request(get(&host, "/hello")).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(body_text(resp).await, "hello from app");
    }
    // One visitor connection is one stream is one local connection.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 20);

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

const BIG: usize = 50 * 1024 * 1024;

#[tokio::test]
async fn fifty_mib_download_and_upload_are_intact() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, None));
    let host = host_of(&client.online(1).await[0].url);
    let expected = pattern(0, BIG);
    let want = sha256_hex(&expected);

    // Download, hashed as it streams.
    let mut v = visitor(server.http).await;
    let resp = v
        .send_request(get(&host, &format!("/bytes/{BIG}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            len += d.len();
            ctx.update(&d);
        }
    }
    assert_eq!(len, BIG);
    assert_eq!(hex(ctx.finish().as_ref()), want);

    // Upload (Content-Length), on the same connection.
    let resp = v
        .send_request(post(&host, "/upload", Bytes::from(expected)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_text(resp).await, format!("{BIG} {want}"));

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn chunked_upload_is_reframed_and_intact() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, None));
    let host = host_of(&client.online(1).await[0].url);

    let mut req =
        format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    let mut all = Vec::new();
    for (i, size) in [1usize, 10, 4096, 70_000, 3].into_iter().enumerate() {
        let data = pattern(i as u64 * 1000, size);
        req.extend_from_slice(format!("{size:X};ext=1\r\n").as_bytes());
        req.extend_from_slice(&data);
        req.extend_from_slice(b"\r\n");
        all.extend_from_slice(&data);
    }
    req.extend_from_slice(b"0\r\nX-Trailer: dropped\r\n\r\n");
    let raw = raw_exchange(server.http, &req).await;
    assert_eq!(raw.status, 200, "{}", raw.head);
    assert_eq!(
        String::from_utf8(raw.body).unwrap(),
        format!("{} {}", all.len(), sha256_hex(&all))
    );

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn streamed_response_arrives_in_pieces() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, None));
    let host = host_of(&client.online(1).await[0].url);

    let mut v = visitor(server.http).await;
    let resp = v.send_request(get(&host, "/stream")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The backend writes piece n+1 only after we have seen piece n: a tunnel
    // that held the response until its end would stall here.
    let mut seen = String::new();
    for i in 0..3 {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("piece arrived")
            .unwrap()
            .unwrap();
        let data = frame.into_data().unwrap();
        seen.push_str(std::str::from_utf8(&data).unwrap());
        assert!(seen.ends_with(&format!("piece-{i};")), "{seen}");
        backend.step.notify_one();
    }
    assert_eq!(seen, "piece-0;piece-1;piece-2;");

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn unknown_host_gets_404_naming_it() {
    let server = TestServer::start().await;
    let raw = raw_exchange(
        server.http,
        b"GET / HTTP/1.1\r\nHost: Nobody-Here.localhost:8000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 404);
    assert!(
        raw.head.contains("X-Tunnel-Error: tunnel-not-found"),
        "{}",
        raw.head
    );
    assert!(String::from_utf8_lossy(&raw.body).contains("nobody-here.localhost"));
    server.stop().await;
}

#[tokio::test]
async fn app_down_gets_502_saying_it_refused() {
    // A port with nothing listening.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(closed, None));
    let host = host_of(&client.online(1).await[0].url);
    let raw = raw_exchange(
        server.http,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw.status, 502);
    assert!(
        raw.head.contains("X-Tunnel-Error: local-refused"),
        "{}",
        raw.head
    );
    let body = String::from_utf8_lossy(&raw.body);
    assert!(body.contains("refused the connection"), "{body}");
    // Issue 22, item 12: the client's local address and OS error are not
    // shown to public visitors.
    let port = closed.port().to_string();
    assert!(!body.contains(&port), "{body}");
    assert!(!body.to_ascii_lowercase().contains("os error"), "{body}");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_token_is_rejected_without_retrying() {
    let server = TestServer::start_with(tunnel_server::Config {
        tokens: vec!["right".into()],
        ..Default::default()
    })
    .await;
    let backend = Backend::start("app").await;
    let mut cfg = server.client_config(backend.addr, None);
    cfg.token = Some("wrong".into());
    let client = TestClient::start(cfg);
    let res = tokio::time::timeout(WAIT, client.task)
        .await
        .expect("client gave up by itself")
        .unwrap();
    let err = res.expect_err("a wrong token is fatal");
    assert!(
        matches!(err, tunnel_client::ClientError::Unauthorized(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("rejected the token"), "{err}");

    // And the right one works.
    let mut cfg = server.client_config(backend.addr, None);
    cfg.token = Some("right".into());
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn client_comes_back_with_the_same_url_after_a_drop() {
    let backend = Backend::start("app").await;
    let server = TestServer::start_with(tunnel_server::Config {
        tokens: vec!["t".into()],
        ..Default::default()
    })
    .await;
    let mut cfg = server.client_config(backend.addr, None);
    cfg.token = Some("t".into());
    let mut client = TestClient::start(cfg);
    let first = client.online(1).await;
    let host = host_of(&first[0].url);
    let hostname = first[0].hostname.clone();

    assert!(server
        .registry
        .disconnect_host(&hostname, "test drops the client"));
    // The route is gone at once, but the name is held for its owner: a
    // visitor arriving now waits for the client to come back (OWNER_HOLD)
    // instead of reading a 404...
    let raw = raw_exchange(
        server.http,
        format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(raw.body, b"hello from app");
    // ...and the client reconnects and gets the same URL back.
    let second = client.online(2).await;
    assert_eq!(second[0].url, first[0].url);
    let mut v = visitor(server.http).await;
    let resp = v.send_request(get(&host, "/hello")).await.unwrap();
    assert_eq!(body_text(resp).await, "hello from app");

    // Someone else cannot take a name held by a live session.
    let mut other = server.client_config(backend.addr, Some(hostname.split('.').next().unwrap()));
    other.token = Some("t".into());
    let intruder = TestClient::start(other);
    let res = tokio::time::timeout(WAIT, intruder.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(res, Err(tunnel_client::ClientError::NameTaken(_))),
        "{res:?}"
    );

    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn two_clients_each_get_only_their_own_traffic() {
    let a = Backend::start("A").await;
    let b = Backend::start("B").await;
    let server = TestServer::start().await;
    let mut ca = TestClient::start(server.client_config(a.addr, Some("alpha")));
    let mut cb = TestClient::start(server.client_config(b.addr, Some("beta")));
    let ha = host_of(&ca.online(1).await[0].url);
    let hb = host_of(&cb.online(1).await[0].url);

    let mut v = visitor(server.http).await;
    for i in 0..10 {
        let (host, want) = if i % 3 == 0 {
            (&hb, "hello from B")
        } else {
            (&ha, "hello from A")
        };
        // One visitor connection, requests alternating between tunnels.
        let resp = v.send_request(get(host, "/hello")).await.unwrap();
        assert_eq!(body_text(resp).await, want, "request {i}");
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), 6);
    assert_eq!(b.requests.load(Ordering::SeqCst), 4);
    assert!(!matches!(*ca.status.borrow(), Status::Reconnecting { .. }));

    ca.stop().await;
    cb.stop().await;
    server.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_visitor_who_leaves_cancels_the_local_request() {
    let backend = Backend::start("app").await;
    let (server, client) = rig(backend.addr, "t").await;
    let mut tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"GET /hang HTTP/1.1\r\nHost: t.localhost\r\n\r\n")
        .await
        .unwrap();
    // Wait until the request reached the app, then leave.
    tokio::time::timeout(WAIT, backend.hung.notified())
        .await
        .expect("the request reached the app");
    drop(tcp);
    // The stream is reset, the client closes the local connection, and the
    // app's handler is dropped.
    tokio::time::timeout(WAIT, backend.step.notified())
        .await
        .expect("the local request was cancelled");
    unrig(server, client).await;
    backend.stop().await;
}

/// Issue 9, client addresses: every resolved address is tried, the next
/// one 250 ms after the last (RFC 8305), so an address that swallows
/// packets (an IPv6 route that goes nowhere, say) does not keep the client
/// offline.
#[tokio::test]
async fn a_dead_first_address_does_not_keep_the_client_offline() {
    let backend = Backend::start("second").await;
    let server = TestServer::start().await;
    // A UDP port that takes datagrams and never answers.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = server.client_config(backend.addr, Some("second"));
    cfg.server = format!("localhost:{}", server.quic.port());
    cfg.connect_to = vec![blackhole.local_addr().unwrap(), server.quic];
    let started = std::time::Instant::now();
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "online after {:?}: the second address waited for the first's timeout",
        started.elapsed()
    );
    let mut visitor = visitor(server.http).await;
    let resp = visitor
        .send_request(get("second.localhost", "/hello"))
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, "hello from second");
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// Issue 9, names survive a restart: after the server stops and starts
/// again on the same state directory, another token cannot take a name
/// during the grace, and its owner gets it back.
#[tokio::test]
async fn a_restarted_server_keeps_each_name_for_its_owner() {
    let backend = Backend::start("kept").await;
    let tokens = || vec!["alice".into(), "bob".into()];
    let server = TestServer::start_with(tunnel_server::Config {
        tokens: tokens(),
        ..Default::default()
    })
    .await;
    let mut cfg = server.client_config(backend.addr, Some("kept"));
    cfg.token = Some("alice".into());
    let mut alice = TestClient::start(cfg);
    alice.online(1).await;
    alice.stop().await;
    let state = server.stop_keeping_state().await;
    let names = std::fs::read_to_string(state.path().join("names.json")).unwrap();
    assert!(
        names.contains("kept.localhost") && !names.contains("alice"),
        "{names}"
    );

    let again = TestServer::start_in(
        tunnel_server::Config {
            tokens: tokens(),
            ..Default::default()
        },
        TestServer::listeners(false),
        state,
    )
    .await;
    let mut cfg = again.client_config(backend.addr, Some("kept"));
    cfg.token = Some("bob".into());
    let res = TestClient::start(cfg).finished().await;
    assert!(
        matches!(&res, Err(tunnel_client::ClientError::NameTaken(m)) if m.contains("reserved")),
        "{res:?}"
    );
    let mut cfg = again.client_config(backend.addr, Some("kept"));
    cfg.token = Some("alice".into());
    let mut alice = TestClient::start(cfg);
    let t = alice.online(1).await;
    assert_eq!(t[0].hostname, "kept.localhost");
    alice.stop().await;
    again.stop().await;
    backend.stop().await;
}

/// Issue 9, a drain that loses nothing: at shutdown a response in flight
/// runs to its end (the session stays open until visitors drained), the
/// client hears GoingAway and starts reconnecting at once, and `run()`
/// returns by itself afterwards.
#[tokio::test]
async fn shutdown_lets_a_response_in_flight_finish() {
    let backend = Backend::start("drain").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, Some("drain")));
    client.online(1).await;
    let mut v = visitor(server.http).await;
    let resp = v
        .send_request(get("drain.localhost", "/stream"))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut seen = String::new();
    seen.push_str(std::str::from_utf8(&piece(&mut body).await.unwrap()).unwrap());

    // SIGTERM in the middle of the response.
    server.shutdown.cancel();
    // The client is told and reconnects right away (make-before-break).
    tokio::time::timeout(
        WAIT,
        client
            .status
            .wait_for(|s| matches!(s, tunnel_client::Status::Reconnecting { reason, .. } if reason.contains("going away"))),
    )
    .await
    .expect("told GoingAway")
    .unwrap();
    // The response is still served, to its end.
    for _ in 0..2 {
        backend.step.notify_one();
        seen.push_str(std::str::from_utf8(&piece(&mut body).await.unwrap()).unwrap());
    }
    assert_eq!(seen, "piece-0;piece-1;piece-2;");
    assert!(piece(&mut body).await.is_none(), "the body ended cleanly");
    drop(v);
    tokio::time::timeout(WAIT, server.task)
        .await
        .expect("run() returned after the drain")
        .unwrap();
    client.stop().await;
    backend.stop().await;
}

/// The next data frame of a response body, `None` at its end.
async fn piece(body: &mut hyper::body::Incoming) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    let frame = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("piece arrived");
    frame.map(|f| f.unwrap().into_data().unwrap())
}

/// Issue 9, local service health: after consecutive failed dials the
/// tunnel answers 502 at once (circuit open), then one visitor probes; once
/// the app is back, the circuit closes.
#[tokio::test]
async fn a_failing_local_service_opens_the_circuit_and_a_probe_closes_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = TestServer::start().await;
    let mut cfg = server.client_config(([127, 0, 0, 1], port).into(), Some("flaky"));
    cfg.local = tunnel_client::LocalPolicy {
        breaker_after: 2,
        breaker_cooldown: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let mut client = TestClient::start(cfg);
    client.online(1).await;
    let ask = || {
        raw_exchange(
            server.http,
            b"GET /hello HTTP/1.1\r\nHost: flaky.localhost\r\n\r\n",
        )
    };
    for _ in 0..2 {
        let r = ask().await;
        assert_eq!(r.status, 502);
        assert!(
            String::from_utf8_lossy(&r.body).contains("refused"),
            "{r:?}"
        );
    }
    let r = ask().await;
    assert_eq!(r.status, 502);
    assert!(
        String::from_utf8_lossy(&r.body).contains("circuit open"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // The app comes back on its port; after the cool-down (200 ms, a timer
    // of the test's own choosing) the next visitor's dial probes it, and
    // the circuit closes.
    let backend = Backend::start_on(port, "back").await;
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let ok = ask().await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, b"hello from back");
    assert_eq!(ask().await.status, 200);
    client.stop().await;
    server.stop().await;
    backend.stop().await;
}

/// Issue 9, drain under load: a second server takes over from the first
/// (a rolling restart behind one name with two addresses). Steady load of
/// new visitor connections and long downloads run across the first one's
/// SIGTERM: no request fails and every body is intact. The load tries the
/// first server's address, then the second's, as a resolver's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    rolling_restart(false).await;
}

/// Issue 25: the same over the TCP transport (each server's https port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_over_tcp_fails_no_request() {
    rolling_restart(true).await;
}

async fn rolling_restart(tcp: bool) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let backend = Backend::start("app").await;
    let la = TestServer::listeners(tcp);
    let lb = TestServer::listeners(tcp);
    let edges = Arc::new([la.http.local_addr().unwrap(), lb.http.local_addr().unwrap()]);
    let b_quic = lb.quic.local_addr().unwrap();
    let https = |l: &tunnel_server::Listeners| l.https.as_ref().map(|h| h.local_addr().unwrap());
    let (a_https, b_https) = (https(&la), https(&lb));
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) =
        support::tls::Made::new(&["localhost", "*.localhost"]).write(certs.path(), "edge");
    // One test address makes all the load: no per-IP limits here.
    let config = |https: Option<std::net::SocketAddr>| tunnel_server::Config {
        max_visitors_per_ip: 0,
        visitor_rate_per_ip: 0,
        https,
        edge_cert: https.map(|_| cert.clone()),
        edge_key: https.map(|_| key.clone()),
        ..Default::default()
    };
    let first = TestServer::start_on(config(a_https), la).await;
    let mut cfg = first.client_config(backend.addr, None);
    cfg.connect_to = vec![first.quic, b_quic];
    if tcp {
        cfg.transport = tunnel_client::Transport::Tcp;
        cfg.tcp_connect_to = vec![a_https.unwrap(), b_https.unwrap()];
        // Plain-http visitors, as the QUIC run has (no redirect to https).
        cfg.tunnels[0].plain_http = true;
    }
    let mut client = TestClient::start(cfg);
    let host = host_of(&client.online(1).await[0].url);

    // Steady load: workers, each a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (edges, host, stop, ok) = (edges.clone(), host.clone(), stop.clone(), ok.clone());
        let progress = progress.clone();
        load.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match hello_via(&edges[..], &host).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        progress.notify_waiters();
                    }
                    Err(e) => failures.push(e),
                }
            }
            failures
        });
    }
    // Long downloads, read slowly, in flight across the SIGTERM.
    const N: usize = 24 << 20;
    let mut downloads = tokio::task::JoinSet::new();
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    for _ in 0..3 {
        let (edge, host, started) = (edges[0], host.clone(), started.clone());
        downloads.spawn(async move {
            let mut v = visitor(edge).await;
            let resp = v
                .send_request(get(&host, &format!("/bytes/{N}")))
                .await
                .map_err(|e| e.to_string())?;
            let mut body = resp.into_body();
            let mut got = Vec::with_capacity(N);
            let mut said = false;
            while let Some(f) = body.frame().await {
                let f = f.map_err(|e| format!("after {} bytes: {e:?}", got.len()))?;
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
                if !said && got.len() >= 1 << 20 {
                    said = true;
                    started.add_permits(1);
                }
                // About 3 s for the whole body.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if got.len() != N || got != pattern(0, N) {
                return Err(format!("body of {} bytes differs", got.len()));
            }
            Ok::<(), String>(())
        });
    }
    let _ = tokio::time::timeout(WAIT, started.acquire_many(3))
        .await
        .expect("the downloads started");
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "the load runs");

    // SIGTERM to the first; the second starts with the same state (its
    // certificate, reset key and names), as a redeploy would.
    let sigterm = std::time::Instant::now();
    first.shutdown.cancel();
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(first.state_dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let second = TestServer::start_in(config(b_https), lb, dir).await;
    client.online(2).await;
    let moved = sigterm.elapsed();
    // Load keeps flowing through the second server for a while.
    let at_move = ok.load(Ordering::Relaxed);
    tokio::time::timeout(WAIT, async {
        loop {
            let served = progress.notified();
            tokio::pin!(served);
            served.as_mut().enable();
            if ok.load(Ordering::Relaxed) >= at_move + 200 {
                break;
            }
            served.await;
        }
    })
    .await
    .expect("the second server serves the load");
    while let Some(d) = downloads.join_next().await {
        if let Err(e) = d.unwrap() {
            panic!(
                "a download failed {:?} after SIGTERM: {e}",
                sigterm.elapsed()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(f) = load.join_next().await {
        failures.extend(f.unwrap());
    }
    let drained = tokio::time::timeout(WAIT, first.task).await;
    assert!(drained.is_ok(), "the first server finished its drain");
    let total = ok.load(Ordering::Relaxed) + failures.len();
    eprintln!(
        "{} {total} requests ({before} before SIGTERM), {} failed; the client was on the second server {moved:?} \
         after SIGTERM; the first drained in {:?}",
        if tcp { "TCP transport:" } else { "QUIC:" },
        failures.len(),
        sigterm.elapsed()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    client.stop().await;
    second.stop().await;
    backend.stop().await;
}

/// GET /hello on a new connection to the first edge that accepts one.
async fn hello_via(edges: &[std::net::SocketAddr], host: &str) -> Result<(), String> {
    let mut last = String::new();
    for &edge in edges {
        let tcp = match tokio::net::TcpStream::connect(edge).await {
            Ok(t) => t,
            Err(e) => {
                last = format!("{edge}: {e}");
                continue;
            }
        };
        return match try_get(tcp, host, "/hello", WAIT).await {
            Ok(b) if b == "hello from app" => Ok(()),
            Ok(b) => Err(format!("{edge}: body {:?}", String::from_utf8_lossy(&b))),
            Err(e) => Err(format!("{edge}: {e}")),
        };
    }
    Err(last)
}

/// A client that stops on purpose is not waited for: its visitors read at
/// once that it is offline (the name stays reserved for it).
#[tokio::test]
async fn a_client_that_stopped_is_reported_offline_at_once() {
    let backend = Backend::start("app").await;
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(backend.addr, None));
    let host = host_of(&client.online(1).await[0].url);
    client.stop().await;
    let asked = std::time::Instant::now();
    let raw = raw_exchange(
        server.http,
        format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await;
    let took = asked.elapsed();
    assert_eq!(raw.status, 502, "{raw:?}");
    assert!(String::from_utf8_lossy(&raw.body).contains("offline"));
    assert!(
        took < std::time::Duration::from_secs(2),
        "held {took:?} for a client that left"
    );
    server.stop().await;
    backend.stop().await;
}

/// Issue 10, `[[token]] names`: names kept for one token: only it may claim
/// them, and it claims only those.
#[tokio::test]
async fn names_kept_for_a_token_are_its_own() {
    let backend = Backend::start("app").await;
    let server = TestServer::start_with(tunnel_server::Config {
        tokens: vec!["alice".into(), "bob".into()],
        token_names: vec![tunnel_server::registry::NameRule {
            token: 0,
            pattern: "alice-*".into(),
        }],
        ..Default::default()
    })
    .await;
    let as_token = |token: &str, name: Option<&str>| {
        let mut cfg = server.client_config(backend.addr, name);
        cfg.token = Some(token.into());
        cfg
    };
    let mut alice = TestClient::start(as_token("alice", Some("alice-web")));
    assert!(alice.online(1).await[0].hostname.starts_with("alice-web."));
    let res = TestClient::start(as_token("bob", Some("alice-x")))
        .finished()
        .await;
    assert!(
        format!("{res:?}").contains("kept for another token"),
        "{res:?}"
    );
    let res = TestClient::start(as_token("alice", Some("other")))
        .finished()
        .await;
    assert!(
        format!("{res:?}").contains("may claim only these names: alice-*"),
        "{res:?}"
    );
    let res = TestClient::start(as_token("alice", None)).finished().await;
    assert!(format!("{res:?}").contains("pass --subdomain"), "{res:?}");
    let mut bob = TestClient::start(as_token("bob", None));
    bob.online(1).await;
    alice.stop().await;
    bob.stop().await;
    server.stop().await;
    backend.stop().await;
}
