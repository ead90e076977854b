//! Test support: a real HTTP backend (hyper), a tunnel server and clients
//! on 127.0.0.1 port 0, and small raw-HTTP helpers. Readiness comes from the
//! client's status channel, never from sleeping.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tunnel_client::{Status, TunnelInfo, TunnelSpec};
use tunnel_server::{Config, Listeners, Registry, Server};

pub use tunnel_testkit::WAIT;

/// Deterministic test data: byte i is (i * 7 + i / 251) mod 256.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i.wrapping_mul(7).wrapping_add(i / 251)) as u8)
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A hyper backend that records what reaches it.
pub struct Backend {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
    /// `/stream` waits on this between its pieces; `/hang` signals it when
    /// its request is dropped.
    pub step: Arc<Notify>,
    /// Signalled when `/hang` has received its request.
    pub hung: Arc<Notify>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(tag: &'static str) -> Backend {
        Self::start_on(0, tag).await
    }

    /// On a given port of 127.0.0.1 (0: any).
    pub async fn start_on(port: u16, tag: &'static str) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let step = Arc::new(Notify::new());
        let hung = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let (c, r, s, h, st) = (
            connections.clone(),
            requests.clone(),
            step.clone(),
            hung.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = st.cancelled() => break,
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, s, h) = (r.clone(), s.clone(), h.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(tag, req, r.clone(), s.clone(), h.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
            conns.abort_all();
        });
        Backend {
            addr,
            connections,
            requests,
            step,
            hung,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).boxed()
}

async fn handle(
    tag: &'static str,
    req: Request<Incoming>,
    requests: Arc<AtomicUsize>,
    step: Arc<Notify>,
    hung: Arc<Notify>,
) -> Result<Response<BoxBody>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let resp = if path == "/hello" {
        Response::new(full(format!("hello from {tag}")))
    } else if path == "/headers" {
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Response::new(full(out))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap();
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let mut off = 0u64;
            while off < n {
                let len = (n - off).min(256 * 1024) as usize;
                if tx
                    .send(Ok(Frame::data(Bytes::from(pattern(off, len)))))
                    .await
                    .is_err()
                {
                    return;
                }
                off += len as u64;
            }
        });
        let body = tokio_stream_from(rx);
        let mut r = Response::new(BodyExt::boxed(body));
        r.headers_mut()
            .insert("content-length", n.to_string().parse().unwrap());
        r
    } else if path == "/upload" {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len() as u64;
                ctx.update(&data);
            }
        }
        Response::new(full(format!("{len} {}", hex(ctx.finish().as_ref()))))
    } else if path == "/hang" {
        // Never answers; tells the test when hyper drops it (the
        // connection went away).
        struct Dropped(Arc<Notify>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.notify_one();
            }
        }
        let _guard = Dropped(step.clone());
        hung.notify_one();
        std::future::pending::<()>().await;
        unreachable!()
    } else if path == "/stream" {
        // Three pieces; after each, wait for the test to say it saw it.
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for i in 0..3 {
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("piece-{i};")))))
                    .await
                    .is_err()
                {
                    return;
                }
                if i < 2 {
                    step.notified().await;
                }
            }
        });
        Response::new(BodyExt::boxed(tokio_stream_from(rx)))
    } else {
        let mut r = Response::new(full("no such path"));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        r
    };
    Ok(resp)
}

/// An mpsc receiver as a `Stream`, without pulling in a stream crate.
fn tokio_stream_from<T>(
    rx: mpsc::Receiver<T>,
) -> impl hyper::body::Body<Data = Bytes, Error = Infallible>
where
    T: Into<Result<Frame<Bytes>, Infallible>> + Send + 'static,
{
    struct RxBody<T>(mpsc::Receiver<T>);
    impl<T: Into<Result<Frame<Bytes>, Infallible>>> hyper::body::Body for RxBody<T> {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|o| o.map(Into::into))
        }
    }
    RxBody(rx)
}

/// A running tunnel server.
pub struct TestServer {
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub registry: Arc<Registry>,
    pub state_dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub https: Option<SocketAddr>,
    /// What SIGHUP notifies in the binary.
    pub reload: Arc<Notify>,
    pub certs: Option<Arc<tunnel_server::certs::CertStore>>,
    pub acme: Option<tunnel_server::acme::Acme>,
    pub stats: Arc<tunnel_server::Stats>,
    /// The admin listener (`/metrics`), when the listeners had one.
    pub admin: Option<SocketAddr>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listeners = Self::listeners(config.https.is_some());
        Self::start_on(config, listeners).await
    }

    /// Listeners on 127.0.0.1 port 0 (with an https one if asked), bound
    /// before the server so a test can hand their ports to another program.
    pub fn listeners(https: bool) -> Listeners {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Listeners::bind(any, any, https.then_some(any)).unwrap()
    }

    pub async fn start_on(config: Config, listeners: Listeners) -> TestServer {
        Self::start_in(config, listeners, tempfile::tempdir().unwrap()).await
    }

    /// With a given state directory (a restart keeps it).
    pub async fn start_in(
        mut config: Config,
        listeners: Listeners,
        state_dir: tempfile::TempDir,
    ) -> TestServer {
        config.state_dir = Some(state_dir.path().to_owned());
        let server = Server::bind(config, listeners).await.unwrap();
        let (http, quic, registry) = (server.http_addr(), server.quic_addr(), server.registry());
        let https = server.https_addr();
        let reload = server.reload_handle();
        let (certs, acme) = (server.cert_store(), server.acme());
        let stats = server.stats();
        let admin = server.admin_addr();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { server.run(s).await.unwrap() });
        TestServer {
            http,
            https,
            quic,
            registry,
            state_dir,
            reload,
            certs,
            acme,
            stats,
            admin,
            shutdown,
            task,
        }
    }

    pub fn client_config(
        &self,
        local: SocketAddr,
        subdomain: Option<&str>,
    ) -> tunnel_client::Config {
        tunnel_client::Config {
            server: self.quic.to_string(),
            tunnels: vec![TunnelSpec {
                local: local.to_string(),
                subdomain: subdomain.map(Into::into),
                ..Default::default()
            }],
            // The client finds the dev certificate by itself, as on a laptop.
            dev_state_dir: Some(self.state_dir.path().to_owned()),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            ..Default::default()
        }
    }

    pub async fn stop(self) {
        self.stop_keeping_state().await;
    }

    /// Stops the server and hands back its state directory.
    pub async fn stop_keeping_state(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server run() returned")
            .unwrap();
        self.state_dir
    }

    /// Waits until a certificate covers `name` (no polling: the store says
    /// when it changes).
    pub async fn wait_cert(&self, name: &str) -> Arc<tunnel_server::certs::Cert> {
        let store = self.certs.clone().expect("an https server");
        let mut changes = store.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                if let Some(c) = store.lookup(name) {
                    return c;
                }
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no certificate for {name} within 60 s"))
    }
}

/// A running tunnel client.
pub struct TestClient {
    pub status: watch::Receiver<Status>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), tunnel_client::ClientError>>,
}

impl TestClient {
    pub fn start(config: tunnel_client::Config) -> TestClient {
        let (tx, status) = watch::channel(Status::Connecting);
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { tunnel_client::run(config, s, tx).await });
        TestClient {
            status,
            shutdown,
            task,
        }
    }

    /// Waits until online with a generation of at least `generation`.
    pub async fn online(&mut self, generation: u64) -> Vec<TunnelInfo> {
        let st = tokio::time::timeout(
            WAIT,
            self.status.wait_for(
                |s| matches!(s, Status::Online { generation: g, .. } if *g >= generation),
            ),
        )
        .await
        .expect("client came online")
        .expect("client still running")
        .clone();
        match st {
            Status::Online { tunnels, .. } => tunnels,
            _ => unreachable!(),
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client run() returned")
            .unwrap()
            .unwrap();
    }

    /// Waits for the client to end by itself (a fatal error).
    pub async fn finished(self) -> Result<(), tunnel_client::ClientError> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client run() returned by itself")
            .unwrap()
    }
}

/// Host part of a tunnel URL (`http://name.localhost:port` → `name.localhost:port`).
pub fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

/// A hyper HTTP/1 connection to the server's public listener.
pub async fn visitor(http: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(http).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET on a connection already made, read whole within `within`: the
/// body of a 200, or why not (never panics: fault tests count failures).
pub async fn try_get(
    tcp: TcpStream,
    host: &str,
    path: &str,
    within: Duration,
) -> Result<Bytes, String> {
    let go = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = send
            .send_request(get(host, path))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != 200 {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
    };
    tokio::time::timeout(within, go)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

pub fn get(host: &str, path: &str) -> Request<BoxBody> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(full(Bytes::new()))
        .unwrap()
}

pub fn post(host: &str, path: &str, body: Bytes) -> Request<BoxBody> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("host", host)
        .body(full(body))
        .unwrap()
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

/// A raw response: status, head text, body.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Sends raw bytes and reads one response framed by Content-Length (or to
/// EOF when it has none).
pub async fn raw_exchange(http: SocketAddr, request: &[u8]) -> Raw {
    let mut tcp = TcpStream::connect(http).await.unwrap();
    tcp.write_all(request).await.unwrap();
    read_raw_response(&mut tcp).await
}

pub async fn read_raw_response<S: tokio::io::AsyncRead + Unpin>(tcp: &mut S) -> Raw {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head[9..12].parse().unwrap();
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    let mut body = buf[head_end..].to_vec();
    match len {
        Some(len) => {
            while body.len() < len {
                let mut chunk = vec![0u8; 65536];
                let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "closed mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            tokio::time::timeout(WAIT, tcp.read_to_end(&mut body))
                .await
                .unwrap()
                .unwrap();
        }
    }
    Raw { status, head, body }
}

/// A backend that answers from a script of raw bytes and records, per
/// connection, every byte it receives.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The scripted answer for a request head.
fn script(head: &str) -> &'static [u8] {
    let path = head.split(' ').nth(1).unwrap_or("");
    match path {
        "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "/304" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        "/malformed" => b"HTTP/1.1 2OO Fine\r\nContent-Length: 2\r\n\r\nok",
        "/bad-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "/early-close" => b"",
        "/closing" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        // Node's keep-alive fields, a field its Connection names, and others
        // of the origin's hop.
        "/hop" => {
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              X-Hop: 1\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\
              Content-Length: 2\r\n\r\nok"
        }
        // Python's http.server: HTTP/1.0, the body ends with the connection.
        "/http10" => b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\n\r\nhello from HTTP/1.0",
        "/chunked" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "/continue" => {
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
        }
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let stop = CancellationToken::new();
        let (rec, st) = (received.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (mut tcp, _) = tokio::select! {
                    a = listener.accept() => a.unwrap(),
                    _ = st.cancelled() => break,
                };
                let idx = {
                    let mut r = rec.lock().unwrap();
                    r.push(Vec::new());
                    r.len() - 1
                };
                let rec = rec.clone();
                conns.spawn(async move {
                    let mut pending = Vec::new();
                    let mut chunk = [0u8; 16384];
                    loop {
                        let n = match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        rec.lock().unwrap()[idx].extend_from_slice(&chunk[..n]);
                        pending.extend_from_slice(&chunk[..n]);
                        // Answer each complete bodiless head in turn.
                        while let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&pending[..p]).into_owned();
                            pending.drain(..p + 4);
                            let answer = script(&head);
                            if answer.is_empty() {
                                return;
                            }
                            if tcp.write_all(answer).await.is_err()
                                || answer.starts_with(b"HTTP/1.0")
                            {
                                return;
                            }
                        }
                    }
                });
            }
            conns.abort_all();
        });
        RawBackend {
            addr,
            received,
            stop,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn all_received(&self) -> Vec<u8> {
        self.received.lock().unwrap().concat()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Reads until the peer closes (or WAIT passes, which fails the test).
pub async fn expect_close(tcp: &mut TcpStream) {
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("connection closed in time");
    // A reset after the response counts as closed too.
    let _ = r;
}

/// A WebSocket echo backend (tokio-tungstenite): echoes every text and
/// binary message; closes when the peer closes.
pub async fn ws_echo_backend() -> (SocketAddr, JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    (addr, task)
}

/// A tunnel server and one client exposing `local` under `subdomain`,
/// online: the setup most tests share.
pub async fn rig(local: SocketAddr, subdomain: &str) -> (TestServer, TestClient) {
    let server = TestServer::start().await;
    let mut client = TestClient::start(server.client_config(local, Some(subdomain)));
    client.online(1).await;
    (server, client)
}

/// Stops what [`rig`] started, client first; both must end by themselves.
pub async fn unrig(server: TestServer, client: TestClient) {
    client.stop().await;
    server.stop().await;
}

/// Writes `requests` (pipelined) on one connection and reads until the
/// server closes it.
pub async fn pipeline(http: SocketAddr, requests: &[u8]) -> String {
    let mut tcp = TcpStream::connect(http).await.unwrap();
    tcp.write_all(requests).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut all))
        .await
        .expect("the server closed in time")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// The status codes of every response in `text`, in order.
pub fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

pub mod acme;
pub mod bins;
pub mod cdp;
pub mod fault;
pub mod proxy;
pub mod tls;
