//! Issue 26, part 3: a local service that only speaks https (a dev server
//! with `--https`, puma-ssl, ASP.NET): `tunnel-client --expose
//! https://localhost:PORT` re-encrypts each exchange to it. Real
//! processes: the server, the client and a Python https origin with a
//! self-signed certificate, which reports the SNI and Host it got.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::bins::*;
use support::tls::Made;
use support::*;

/// A Python https origin for `localhost` with its own self-signed
/// certificate: answers every GET with `sni=…;host=…;path=…`. Returns it,
/// its port and the certificate's file.
async fn https_origin(dir: &std::path::Path) -> (Proc, u16, std::path::PathBuf) {
    let (cert, key) = Made::new(&["localhost"]).write(dir, "origin");
    const SCRIPT: &str = r#"
import http.server, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
seen = {}
def sni(sock, name, _ctx):
    seen[id(sock)] = name
ctx.sni_callback = sni
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("sni=%s;host=%s;path=%s" % (seen.get(id(self.connection)), self.headers["Host"], self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut p = Proc::spawn(
        tokio::process::Command::new("python3")
            .args(["-u", "-c", SCRIPT])
            .arg(&cert)
            .arg(&key),
    );
    let port = p.line().await.trim().parse().unwrap();
    (p, port, cert)
}

/// `tunnel-client http https://localhost:PORT` with `extra` flags; its URL
/// line's host.
async fn client(home: &std::path::Path, quic: &str, port: u16, extra: &[&str]) -> (Proc, String) {
    let mut c = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", quic])
            .args(["http", &format!("https://localhost:{port}")])
            .args(extra)
            .env("HOME", home)
            .env("TUNNEL_STATE_DIR", home),
    );
    let url = c.line().await;
    let host = host_of(url.split(" -> ").next().unwrap());
    assert!(
        url.contains(&format!("-> https://localhost:{port}")),
        "{url}"
    );
    (c, host)
}

#[tokio::test]
async fn a_local_https_service_is_refused_untrusted_and_served_with_its_ca_or_insecure() {
    let home = tempfile::tempdir().unwrap();
    let (server, http, quic) = ready_server(&mut server_cmd(home.path())).await;
    let (origin, port, cert) = https_origin(home.path()).await;
    let http: std::net::SocketAddr = http.parse().unwrap();

    // Not trusted: the visitor gets a 502 page naming both ways out, and
    // the client's log says which certificate and what to pass.
    let (mut untrusted, host) = client(home.path(), &quic, port, &[]).await;
    let mut v = visitor(http).await;
    let r = v.send_request(get(&host, "/x")).await.unwrap();
    assert_eq!(r.status(), 502);
    let page = body_text(r).await;
    assert!(
        page.contains("--upstream-ca") && page.contains("--upstream-insecure"),
        "{page}"
    );
    let said = untrusted.log_until("does not trust").await;
    assert!(
        said.contains("--upstream-ca FILE") && said.contains("--upstream-insecure"),
        "{said}"
    );

    // With its certificate as the CA: served, the SNI and the Host are the
    // local name.
    let ca = cert.to_str().unwrap();
    let (trusted, host) = client(home.path(), &quic, port, &["--upstream-ca", ca]).await;
    // (A 502 page ends its connection.)
    let mut v = visitor(http).await;
    for path in ["/a", "/b"] {
        let r = v.send_request(get(&host, path)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            body_text(r).await,
            format!("sni=localhost;host=localhost:{port};path={path}")
        );
    }

    // Unverified, as asked; a host-header rule is sent as the Host and the
    // SNI both.
    let (insecure, host) = client(
        home.path(),
        &quic,
        port,
        &["--upstream-insecure", "--host-header", "app.localhost"],
    )
    .await;
    let r = v.send_request(get(&host, "/c")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        body_text(r).await,
        "sni=app.localhost;host=app.localhost;path=/c"
    );

    for p in [untrusted, trusted, insecure, origin, server] {
        let _ = p.terminate().await;
    }
}

/// An https service that speaks HTTP/2 and HTTP/1.1 (Node's
/// `http2.createSecureServer` with `allowHTTP1`, as Vite's https dev server
/// is): with no `--upstream`, ALPN picks HTTP/2 for requests (Node sees
/// `2.0`), and a WebSocket upgrade still goes through on an HTTP/1.1
/// connection (Node's `upgrade`, then raw bytes both ways).
#[tokio::test]
async fn an_https_service_that_picks_h2_by_alpn_still_takes_upgrades() {
    let home = tempfile::tempdir().unwrap();
    let (cert, key) = Made::new(&["localhost"]).write(home.path(), "h2origin");
    const SCRIPT: &str = r#"
const http2 = require('http2'); const fs = require('fs');
const s = http2.createSecureServer({allowHTTP1: true, key: fs.readFileSync(process.argv[2]),
                                    cert: fs.readFileSync(process.argv[1])},
  (req, res) => res.end('version=' + req.httpVersion + ' path=' + req.url));
s.on('upgrade', (req, socket) => {
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
  socket.pipe(socket);
});
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
"#;
    let mut origin = Proc::spawn(
        tokio::process::Command::new("node")
            .args(["-e", SCRIPT])
            .arg(&cert)
            .arg(&key),
    );
    let port: u16 = origin.line().await.trim().parse().unwrap();
    let (server, http, quic) = ready_server(&mut server_cmd(home.path())).await;
    let (client, host) = client(home.path(), &quic, port, &["--upstream-insecure"]).await;
    let http: std::net::SocketAddr = http.parse().unwrap();
    let mut v = visitor(http).await;
    for path in ["/a", "/b"] {
        let r = v.send_request(get(&host, path)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(body_text(r).await, format!("version=2.0 path={path}"));
    }
    // A WebSocket upgrade: 101, then bytes echoed both ways.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    tcp.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The 101's head (no body follows a 101: read to its blank line).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut b))
            .await
            .expect("the 101 in time")
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(b"echo me").await.unwrap();
    let mut got = [0u8; 7];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&got, b"echo me");
    for p in [client, origin, server] {
        let _ = p.terminate().await;
    }
}
