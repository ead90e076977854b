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
