//! The whole path in one process, with an allocation counter:
//! `cargo bench -p tunnel-benches --bench path`.
//!
//! A backend, `tunnel-server` and `tunnel-client` run on one current-thread
//! runtime on the benchmark's thread, so divan's `AllocProfiler` counts every
//! allocation any of them makes. Each benchmark sends requests one at a time
//! on a keep-alive connection, to the backend directly and through the
//! tunnel: the difference of the two `alloc` rows is what the tunnel
//! allocates per request (server + client). The times are single-request
//! latencies on one thread, not throughput: the load harness measures that.

use std::net::SocketAddr;

use divan::{AllocProfiler, Bencher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

/// Backend, server and client on one runtime, and a visitor connection.
struct Path {
    rt: Runtime,
    visitor: TcpStream,
    host: String,
    buf: Vec<u8>,
    stop: CancellationToken,
    _state: tempfile::TempDir,
}

impl Path {
    // The benchmark thread drives the runtime: this is the benchmark's
    // main(), not async code.
    #[allow(clippy::disallowed_methods)]
    fn start(through_tunnel: bool) -> Path {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let (visitor, host) = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let local = listener.local_addr().unwrap();
            tokio::spawn(tunnel_testkit::backend::backend(listener, stop.clone()));
            if !through_tunnel {
                return (TcpStream::connect(local).await.unwrap(), "direct".into());
            }
            let config = tunnel_server::Config {
                state_dir: Some(state.path().to_owned()),
                max_visitors_per_ip: 0,
                visitor_rate_per_ip: 0,
                ..Default::default()
            };
            let listeners = tunnel_server::Listeners::bind(
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
                None,
            )
            .unwrap();
            let server = tunnel_server::Server::bind(config, listeners)
                .await
                .unwrap();
            let (http, quic): (SocketAddr, SocketAddr) = (server.http_addr(), server.quic_addr());
            tokio::spawn(server.run(stop.clone()));
            let (tx, mut status) = watch::channel(tunnel_client::Status::Connecting);
            let config = tunnel_client::Config {
                server: quic.to_string(),
                tunnels: vec![tunnel_client::TunnelSpec {
                    local: local.to_string(),
                    subdomain: Some("bench".into()),
                    ..Default::default()
                }],
                dev_state_dir: Some(state.path().to_owned()),
                ..Default::default()
            };
            tokio::spawn(tunnel_client::run(config, stop.clone(), tx));
            let online = status
                .wait_for(|s| matches!(s, tunnel_client::Status::Online { .. }))
                .await
                .expect("the client came online")
                .clone();
            let tunnel_client::Status::Online { tunnels, .. } = online else {
                unreachable!()
            };
            (
                TcpStream::connect(http).await.unwrap(),
                tunnels[0].hostname.clone(),
            )
        });
        Path {
            rt,
            visitor,
            host,
            buf: vec![0; 64 * 1024],
            stop,
            _state: state,
        }
    }

    /// One request and its whole response; returns the body length.
    #[allow(clippy::disallowed_methods)]
    fn get(&mut self, path: &str) -> usize {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        let Path {
            rt, visitor, buf, ..
        } = self;
        rt.block_on(async {
            visitor.write_all(req.as_bytes()).await.unwrap();
            let mut have = 0;
            let (head_end, length) = loop {
                let n = visitor.read(&mut buf[have..]).await.unwrap();
                assert!(n > 0, "the connection closed mid-response");
                have += n;
                if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&buf[..end])
                        .unwrap()
                        .to_ascii_lowercase();
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                    let length: usize = head
                        .split("content-length:")
                        .nth(1)
                        .and_then(|v| v.lines().next())
                        .map(|v| v.trim().parse().unwrap())
                        .expect("a content-length");
                    break (end + 4, length);
                }
            };
            let mut body = have - head_end;
            while body < length {
                let n = visitor.read(&mut buf[..]).await.unwrap();
                assert!(n > 0, "the connection closed mid-body");
                body += n;
            }
            assert_eq!(body, length, "nothing beyond the response");
            length
        })
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        // Dropping the runtime then drops every task it still holds.
        self.stop.cancel();
    }
}

#[divan::bench(args = ["direct", "tunnel"])]
fn request_100b(bencher: Bencher, via: &str) {
    let mut path = Path::start(via == "tunnel");
    for _ in 0..200 {
        path.get("/100");
    }
    bencher.bench_local(|| path.get("/100"));
}

#[divan::bench(args = ["direct", "tunnel"], sample_count = 20, sample_size = 1)]
fn request_1mib(bencher: Bencher, via: &str) {
    let mut path = Path::start(via == "tunnel");
    for _ in 0..5 {
        path.get("/1m");
    }
    bencher.bench_local(|| path.get("/1m"));
}
