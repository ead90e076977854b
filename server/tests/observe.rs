//! What the server tells its operator: Prometheus metrics, health and
//! readiness on the admin listener, and the access log.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::net::TcpStream;
use tunnel_server::Config;

async fn admin_get(admin: SocketAddr, path: &str) -> Raw {
    raw_exchange(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// The value of the sample `name{labels}` (exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_health_readiness_and_the_access_log() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = Config {
        access_log: Some(log.clone()),
        ..Default::default()
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = TestServer::listeners(false).with_admin(Some(any)).unwrap();
    let server = TestServer::start_on(config, listeners).await;
    let admin = server.admin.expect("admin listener");
    let mut client = TestClient::start(server.client_config(backend.addr, Some("metered")));
    let host = host_of(&client.online(1).await[0].url);

    for i in 0..5 {
        let tcp = TcpStream::connect(server.http).await.unwrap();
        try_get(tcp, &host, &format!("/bytes/{}", 100 + i), WAIT)
            .await
            .unwrap();
    }
    let nobody = raw_exchange(
        server.http,
        b"GET / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n",
    )
    .await;
    assert_eq!(nobody.status, 404);

    assert_eq!(admin_get(admin, "/healthz").await.status, 200);
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);
    assert_eq!(admin_get(admin, "/nope").await.status, 404);
    let m = admin_get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.head.to_ascii_lowercase().contains("openmetrics-text"),
        "{}",
        m.head
    );
    let text = String::from_utf8(m.body).unwrap();
    let name = host.split(':').next().unwrap();
    let requests = format!(r#"tunnel_server_requests_total{{tunnel="{name}",class="2xx"}}"#);
    assert_eq!(sample(&text, &requests), Some(5.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"tunnel_server_local_responses_total{status="404",code="tunnel-not-found"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "tunnel_server_sessions"), Some(1.0));
    assert_eq!(
        sample(&text, "tunnel_server_streams_opened_total"),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"tunnel_server_visitor_connections_total{listener="http"}"#
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(&text, "tunnel_server_request_duration_seconds_count"),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "tunnel_server_time_to_first_byte_seconds_count"),
        Some(5.0)
    );
    let out = sample(
        &text,
        &format!(r#"tunnel_server_bytes_total{{tunnel="{name}",direction="out"}}"#),
    );
    assert!(out.is_some_and(|b| b > 5.0 * 50.0), "{out:?}");
    let rtt = text
        .lines()
        .find(|l| l.starts_with("tunnel_server_client_rtt_seconds{"))
        .expect("a client RTT sample");
    let rtt: f64 = rtt.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rtt > 0.0 && rtt < 1.0, "rtt {rtt}");
    assert!(text.contains("tunnel_server_build_info{version="));
    assert!(text.trim_end().ends_with("# EOF"));

    // A tunnel that ends takes its labels with it (cardinality stays bounded).
    client.stop().await;
    let gone = loop {
        let t = String::from_utf8(admin_get(admin, "/metrics").await.body).unwrap();
        if sample(&t, "tunnel_server_sessions") == Some(0.0) {
            break t;
        }
        tokio::task::yield_now().await;
    };
    assert!(!gone.contains(&requests), "labels of an ended tunnel stay");

    server.stop().await;
    // Stopped: the writer has flushed every line.
    let lines = tokio::fs::read_to_string(&log).await.unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(
        lines[0].contains(&format!(" {name} 127.0.0.1:")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\"GET /bytes/100\" 200 "), "{}", lines[0]);
    assert!(lines[4].ends_with("ms"), "{}", lines[4]);
    backend.stop().await;
}

/// Issue 22, item 11: with --metrics-token, /metrics (tunnel names, client
/// addresses) needs the bearer token; health and readiness stay open.
#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = TestServer::listeners(false).with_admin(Some(any)).unwrap();
    let config = tunnel_server::Config {
        metrics_token: Some("scrape-me-0123456789".into()),
        ..Default::default()
    };
    let server = TestServer::start_on(config, listeners).await;
    let admin = server.admin.expect("admin listener");
    assert_eq!(admin_get(admin, "/metrics").await.status, 401);
    assert_eq!(admin_get(admin, "/healthz").await.status, 200);
    let m = raw_exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer scrape-me-0123456789\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(m.status, 200);
    assert!(String::from_utf8_lossy(&m.body).contains("tunnel_server_"));
    server.stop().await;
}
