//! Real apps' habits behind the tunnel: origins that close idle keep-alive
//! connections (Node, uvicorn and gunicorn do after 2 to 5 s), a request
//! that meets its connection closing, HTTP/1.0 answers and the origin's own
//! hop-by-hop fields. A scripted origin makes each case exact; a real Node
//! server and headless Chromium reloading a page show it as a user meets it.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An origin that answers `HTTP/1.1 200` with `"{connection}:{path}"`,
/// numbering its connections from 1; closes a connection after `idle` of
/// silence (saying so on `closed`); and, while `drop_next` is set, closes
/// the next connection that has already served a request when its next
/// request arrives, without answering (a keep-alive timer firing just as
/// the request came).
struct Origin {
    addr: std::net::SocketAddr,
    drop_next: Arc<AtomicBool>,
    closed: mpsc::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start(idle: Duration) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drop_next = Arc::new(AtomicBool::new(false));
        let (tx, closed) = mpsc::channel(64);
        let d = drop_next.clone();
        let task = tokio::spawn(async move {
            let count = AtomicUsize::new(0);
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                conns.spawn(serve(tcp, n, idle, d.clone(), tx.clone()));
            }
        });
        Origin {
            addr,
            drop_next,
            closed,
            task,
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    tcp: TcpStream,
    n: usize,
    idle: Duration,
    drop_next: Arc<AtomicBool>,
    closed: mpsc::Sender<usize>,
) {
    let mut rd = BufReader::new(tcp);
    let mut served = 0;
    loop {
        let mut line = String::new();
        match tokio::time::timeout(idle, rd.read_line(&mut line)).await {
            Err(_) => {
                // Idle past its keep-alive timeout: closed, as Node does.
                drop(rd);
                let _ = closed.send(n).await;
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        if served > 0 && drop_next.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut body = vec![0u8; length];
        rd.read_exact(&mut body).await.unwrap();
        let text = format!("{n}:{path}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if rd.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        served += 1;
    }
}

async fn exchange(tcp: &mut TcpStream, request: &str) -> Raw {
    tcp.write_all(request.as_bytes()).await.unwrap();
    read_raw_response(tcp).await
}

/// Waits until the server has seen `n` idle local connections closed by
/// the app (the counter is the readiness signal: the close travels from
/// the app through the client to the server).
async fn idle_closed(server: &TestServer, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.stats.local_idle_closed.get() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never saw the app close its idle connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Node closes an idle keep-alive connection after 5 s; the visitor's
/// connection to the edge stays open. The next request on it must reach a
/// fresh local connection, whatever its method: it used to get a 502.
#[tokio::test]
async fn a_request_after_the_app_closed_its_idle_connection_gets_a_new_one() {
    let mut origin = Origin::start(Duration::from_millis(200)).await;
    let (server, client) = rig(origin.addr, "t").await;
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let raw = exchange(&mut tcp, "GET /one HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert_eq!((raw.status, &raw.body[..]), (200, &b"1:/one"[..]));

    assert_eq!(origin.closed.recv().await, Some(1));
    idle_closed(&server, 1).await;
    // Not safe to send twice, so it must not meet the closed connection.
    let raw = exchange(
        &mut tcp,
        "POST /two HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(
        (raw.status, String::from_utf8_lossy(&raw.body).as_ref()),
        (200, "2:/two"),
        "{}",
        raw.head
    );
    assert_eq!(server.stats.local_retries.get(), 0);
    unrig(server, client).await;
}

/// The race the watch cannot win: the app closes the connection as the
/// request arrives. A GET is sent again on a fresh connection; a POST is
/// not, and the visitor's connection closes without an answer (as the
/// app's did), which browsers and curl retry by themselves; never a 502.
#[tokio::test]
async fn a_request_that_meets_its_connection_closing_is_retried_only_when_safe() {
    let origin = Origin::start(WAIT).await;
    let (server, client) = rig(origin.addr, "t").await;

    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let raw = exchange(&mut tcp, "GET /a HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert_eq!(&raw.body[..], b"1:/a");
    origin.drop_next.store(true, Ordering::SeqCst);
    tcp.write_all(b"POST /b HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(
        rest.is_empty(),
        "closed without an answer, got {:?}",
        String::from_utf8_lossy(&rest)
    );

    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let raw = exchange(&mut tcp, "GET /c HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert_eq!(&raw.body[..], b"2:/c");
    origin.drop_next.store(true, Ordering::SeqCst);
    let raw = exchange(&mut tcp, "GET /d HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert_eq!(
        (raw.status, String::from_utf8_lossy(&raw.body).as_ref()),
        (200, "3:/d"),
        "{}",
        raw.head
    );
    assert_eq!(server.stats.local_retries.get(), 1);
    // And the visitor's connection goes on.
    let raw = exchange(&mut tcp, "GET /e HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert_eq!(raw.status, 200);
    unrig(server, client).await;
}

/// Reads one chunked response: the head, and the body decoded.
async fn read_chunked(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the whole chunked response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = Vec::new();
    let mut rest = &buf[end..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 4 + size..];
    }
    (head, body)
}

/// An HTTP/1.0 origin (Python's `http.server`) and one that says
/// `Connection: keep-alive` and `Keep-Alive: timeout=5` (Node): visitors
/// get the tunnel's own HTTP/1.1, none of the origin's hop-by-hop fields,
/// and a close-delimited body re-framed as chunked, so their connection
/// survives the origin's close.
#[tokio::test]
async fn the_origins_version_and_hop_by_hop_fields_stay_on_its_own_hop() {
    let backend = RawBackend::start().await;
    let (server, client) = rig(backend.addr, "t").await;
    let mut tcp = TcpStream::connect(server.http).await.unwrap();

    let raw = exchange(&mut tcp, "GET /hop HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert!(raw.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", raw.head);
    for gone in [
        "Keep-Alive",
        "X-Hop",
        "Proxy-Connection",
        "Connection",
        "Upgrade",
    ] {
        assert!(
            !raw.head.contains(gone),
            "{gone} reached the visitor: {}",
            raw.head
        );
    }
    assert!(raw.head.contains("X-Kept: yes"), "{}", raw.head);
    assert_eq!(&raw.body[..], b"ok");

    tcp.write_all(b"GET /http10 HTTP/1.1\r\nHost: t.localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_chunked(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert!(!head.contains("Connection: close"), "{head}");
    assert_eq!(&body[..], b"hello from HTTP/1.0");

    // The same visitor connection goes on, over a new local connection.
    let raw = exchange(&mut tcp, "GET /fine HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
    assert_eq!(raw.status, 200);
    assert_eq!(backend.connections(), 2);

    // An HTTP/1.0 visitor gets the body as it came, and the close.
    let raw = raw_exchange(
        server.http,
        b"GET /http10 HTTP/1.0\r\nHost: t.localhost\r\n\r\n",
    )
    .await;
    assert!(raw.head.contains("Connection: close"), "{}", raw.head);
    assert_eq!(&raw.body[..], b"hello from HTTP/1.0");
    unrig(server, client).await;
    backend.stop().await;
}

/// A real Node `http` server: `node` on the PATH (CI installs it).
struct Node {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    addr: std::net::SocketAddr,
}

/// Serves `/` (a page with six module scripts) and `/m{i}.js`, closes idle
/// keep-alive connections after `keep_alive_ms` (Node's default is 5000),
/// and prints `open` and `closed` for each connection.
const NODE_APP: &str = r#"
const http = require('http');
const page = '<!doctype html><title>app</title><p id=s>loading</p>' +
  [0,1,2,3,4,5].map(i => `<script type=module src="/m${i}.js"></script>`).join('') +
  '<script type=module>addEventListener("load", () => { s.textContent = "loaded " + (window.n || 0) })</script>';
const server = http.createServer((req, res) => {
  if (req.url === '/') { res.setHeader('Content-Type', 'text/html'); return res.end(page); }
  const m = /^\/m(\d)\.js$/.exec(req.url);
  if (m) { res.setHeader('Content-Type', 'text/javascript'); return res.end('window.n = (window.n || 0) + 1;'); }
  res.end('node ' + req.method + ' ' + req.url);
});
server.keepAliveTimeout = Number(process.argv[1]);
server.on('connection', s => { console.log('open'); s.on('close', () => console.log('closed')); });
server.listen(0, '127.0.0.1', () => console.log('port ' + server.address().port));
"#;

impl Node {
    async fn start(keep_alive_ms: u64) -> Option<Node> {
        let mut child = tokio::process::Command::new("node")
            .args(["-e", NODE_APP, &keep_alive_ms.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("node started in time")
            .unwrap()
            .unwrap();
        let port: u16 = first.strip_prefix("port ").unwrap().parse().unwrap();
        Some(Node {
            child,
            lines,
            addr: ([127, 0, 0, 1], port).into(),
        })
    }

    /// Reads Node's lines until every connection it opened has closed.
    async fn all_closed(&mut self, open: &mut i64) -> u64 {
        let mut closed = 0;
        loop {
            if *open == 0 && closed > 0 {
                return closed;
            }
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("node closed its idle connections in time")
                .unwrap()
                .unwrap();
            match line.as_str() {
                "open" => *open += 1,
                "closed" => {
                    *open -= 1;
                    closed += 1;
                }
                _ => {}
            }
        }
    }
}

fn node_required() -> bool {
    let found = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found || std::env::var_os("TUNNEL_TEST_REQUIRE_UI").is_none(),
        "node is required here (TUNNEL_TEST_REQUIRE_UI is set)"
    );
    found
}

#[tokio::test]
async fn a_node_origin_idle_past_its_keep_alive_timeout_still_answers() {
    if !node_required() {
        eprintln!("SKIPPED: node is not installed");
        return;
    }
    let mut node = Node::start(300).await.unwrap();
    let (server, client) = rig(node.addr, "t").await;
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    let mut open = 0;
    for round in 1..=3u64 {
        let raw = exchange(&mut tcp, "GET /x HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await;
        assert_eq!((raw.status, &raw.body[..]), (200, &b"node GET /x"[..]));
        assert!(!raw.head.contains("Keep-Alive"), "{}", raw.head);
        node.all_closed(&mut open).await;
        idle_closed(&server, round).await;
    }
    let raw = exchange(
        &mut tcp,
        "POST /y HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 1\r\n\r\nz",
    )
    .await;
    assert_eq!((raw.status, &raw.body[..]), (200, &b"node POST /y"[..]));
    unrig(server, client).await;
    let _ = node.child.kill().await;
}

/// Vite's case: the page loaded, the app closed its idle connections, and
/// the browser reloads over its kept-open connections to the edge. Every
/// module must load again (some got 502 and the page stayed blank).
#[tokio::test]
async fn a_page_reloaded_after_the_origin_closed_its_idle_connections_loads_whole() {
    if !node_required() {
        eprintln!("SKIPPED: node is not installed");
        return;
    }
    let Some(mut browser) = support::cdp::Browser::launch(800, 600).await else {
        assert!(
            std::env::var_os("TUNNEL_TEST_REQUIRE_UI").is_none(),
            "chromium is required here (TUNNEL_TEST_REQUIRE_UI is set)"
        );
        eprintln!("SKIPPED: chromium is not installed");
        return;
    };
    let mut node = Node::start(500).await.unwrap();
    let (server, client) = rig(node.addr, "app").await;
    let url = format!("http://app.localhost:{}/", server.http.port());
    let mut open = 0;
    for round in 0..2 {
        if round == 0 {
            browser.goto(&url).await;
        } else {
            // Marked, so the old page is never taken for the reloaded one.
            browser
                .eval("document.title = 'old'; location.reload()")
                .await;
        }
        browser
            .until(
                "all six modules loaded",
                "document.title === 'app' && window.n === 6 && s.textContent === 'loaded 6'",
            )
            .await;
        node.all_closed(&mut open).await;
        // At least one close has travelled to the server; a request that
        // meets one still on its way is the retry's case.
        idle_closed(&server, 1).await;
    }
    browser.close().await;
    unrig(server, client).await;
    let _ = node.child.kill().await;
}
