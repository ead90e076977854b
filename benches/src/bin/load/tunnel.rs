//! A tunnel under test: the backends (nginx, the built-in one), the server
//! and client processes on a link (loopback or a namespace), and idle
//! connections held open against it.

use super::*;
use tunnel_testkit::ready::Ready;

/// A certificate for the https scenarios (`edge.crt`, `edge.key` in `dir`).
pub(crate) fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let g = rcgen::generate_simple_self_signed(vec![
        "*.localhost".to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ])
    .unwrap();
    let (c, k) = (dir.join("edge.crt"), dir.join("edge.key"));
    std::fs::write(&c, g.cert.pem()).unwrap();
    std::fs::write(&k, g.signing_key.serialize_pem()).unwrap();
    (c, k)
}

/// nginx with a config written here: 100-byte and 1 MiB responses, on a
/// plain port and a TLS port.
pub(crate) fn start_nginx(dir: &Path) -> (Proc, u16, u16) {
    start_nginx_on(dir, &Link::loopback(0))
}

/// As [`start_nginx`], on the client's side of `link` (inside its network
/// namespace, listening on every address there), with a sparse 1 GiB file
/// at `/1g` as well.
pub(crate) fn start_nginx_on(dir: &Path, link: &Link) -> (Proc, u16, u16) {
    let port = free_port();
    let tls_port = free_port();
    std::fs::write(dir.join("1m.bin"), vec![b'x'; 1024 * 1024]).unwrap();
    std::fs::File::create(dir.join("1g.bin"))
        .and_then(|f| f.set_len(1 << 30))
        .unwrap();
    let listen = if link.wrap.is_empty() {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 120s;\n\
         client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
         server {{\n    listen {listen}:{port} backlog=4096;\n    listen {listen}:{tls_port} ssl http2 backlog=4096;\n\
         ssl_certificate {d}/edge.crt; ssl_certificate_key {d}/edge.key;\n    root {d};\n\
         location = /100 {{ default_type text/plain; return 200 \"{body}\"; }}\n\
         location = /1m {{ default_type application/octet-stream; try_files /1m.bin =404; }}\n\
         location = /1g {{ default_type application/octet-stream; try_files /1g.bin =404; }}\n  }}\n}}\n",
        d = dir.display(),
        body = "x".repeat(100),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = link
        .command(Path::new("nginx"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    wait_addr(SocketAddr::new(link.client_ip, port));
    wait_addr(SocketAddr::new(link.client_ip, tls_port));
    (Proc(child), port, tls_port)
}

/// The fallback backend (`tunnel_testkit::backend::backend`) on its own thread and
/// current-thread runtime.
pub(crate) fn start_builtin() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // This thread's only job: the harness's main() is not async.
        #[allow(clippy::disallowed_methods)]
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tunnel_testkit::backend::backend(listener, tokio_util::sync::CancellationToken::new())
                .await
        });
    });
    wait_port(port);
    port
}

/// How the tunnel's client side reaches the server side: on loopback, or
/// from a network namespace across a veth (`peers::Netns`).
pub(crate) struct Link {
    /// The server's address as the client dials it.
    pub(crate) server_ip: std::net::IpAddr,
    /// The client side's own address, as the server side reaches it (the
    /// direct path to a backend there).
    pub(crate) client_ip: std::net::IpAddr,
    /// The backend as the client side reaches it.
    pub(crate) backend: SocketAddr,
    /// A prefix for client-side processes (`ip netns exec NS`).
    pub(crate) wrap: Vec<String>,
}

impl Link {
    pub(crate) fn loopback(backend_port: u16) -> Link {
        Link {
            server_ip: [127, 0, 0, 1].into(),
            client_ip: [127, 0, 0, 1].into(),
            backend: SocketAddr::from(([127, 0, 0, 1], backend_port)),
            wrap: Vec::new(),
        }
    }

    /// `program` run on the client's side of the link.
    pub(crate) fn command(&self, program: &Path) -> Command {
        match self.wrap.split_first() {
            None => Command::new(program),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
        }
    }
}

/// Holds `n` visitor connections open after one request each; returns the
/// tunnel's RSS growth per connection in bytes (server + client), for
/// connections with a live stream and local connection.
pub(crate) fn idle_connections(http: SocketAddr, host: &str, pids: &[u32], n: usize) -> (f64, f64) {
    let rss = || pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<u64>() as f64 * 1024.0;
    let before = rss();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(http).expect("connect"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let connected = rss();
    let req = format!("GET /100 HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for c in &mut conns {
        c.write_all(req.as_bytes()).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = 0;
        while got < 100 {
            let k = c.read(&mut buf).expect("response");
            assert!(k > 0, "closed");
            got += k;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let used = rss();
    drop(conns);
    ((connected - before) / n as f64, (used - before) / n as f64)
}

/// As [`idle_connections`], over TLS: (TCP connected, handshake done and
/// one request answered) bytes per connection.
pub(crate) fn idle_tls_connections(
    https: SocketAddr,
    host: &str,
    pids: &[u32],
    n: usize,
) -> (f64, f64) {
    use std::sync::Arc;
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    // The harness's own visitor: it measures the server, it trusts anything.
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth(),
    );
    let rss = || pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<u64>() as f64 * 1024.0;
    let before = rss();
    let mut tcps = Vec::with_capacity(n);
    for _ in 0..n {
        tcps.push(TcpStream::connect(https).expect("connect"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let connected = rss();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let req = format!("GET /100 HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut conns = Vec::with_capacity(n);
    for tcp in tcps {
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let c = rustls::ClientConnection::new(cfg.clone(), name.clone()).unwrap();
        let mut s = rustls::StreamOwned::new(c, tcp);
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < 100 {
            let k = s.read(&mut buf).expect("response");
            assert!(k > 0, "closed");
            got += k;
        }
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let used = rss();
    drop(conns);
    ((connected - before) / n as f64, (used - before) / n as f64)
}

/// A running tunnel-server + tunnel-client pair (dropped client first).
pub(crate) struct Tunnel {
    pub(crate) client: Proc,
    pub(crate) server: Proc,
    pub(crate) http: SocketAddr,
    pub(crate) https: Option<SocketAddr>,
    /// The public port of the raw TCP tunnel (`raw_tcp`).
    pub(crate) tcp: Option<SocketAddr>,
}

impl Tunnel {
    pub(crate) fn start(
        server_bin: &Path,
        client_bin: &Path,
        dir: &Path,
        backend_port: u16,
        tls: bool,
    ) -> Tunnel {
        // wrk is one address opening thousands of connections.
        let no_limits = ["--max-visitors-per-ip", "0", "--visitor-rate-per-ip", "0"];
        Self::start_with(
            server_bin,
            client_bin,
            dir,
            backend_port,
            tls,
            &no_limits,
            false,
        )
    }

    pub(crate) fn start_with(
        server_bin: &Path,
        client_bin: &Path,
        dir: &Path,
        backend_port: u16,
        tls: bool,
        extra: &[&str],
        raw_tcp: bool,
    ) -> Tunnel {
        Self::start_on(
            server_bin,
            client_bin,
            dir,
            &Link::loopback(backend_port),
            tls,
            extra,
            raw_tcp,
        )
    }

    pub(crate) fn start_on(
        server_bin: &Path,
        client_bin: &Path,
        dir: &Path,
        link: &Link,
        tls: bool,
        extra: &[&str],
        raw_tcp: bool,
    ) -> Tunnel {
        let first = free_port();
        let tcp_ports = format!("{first}-{}", first.saturating_add(3));
        // `TUNNEL_TRANSPORT=tcp` (read by the client itself) measures the
        // TCP transport: the server needs its https port for it, and the
        // plain-http scenarios then need the tunnel to serve plain http.
        let over_tcp = std::env::var("TUNNEL_TRANSPORT").is_ok_and(|v| v == "tcp");
        let plain_too = over_tcp && !tls;
        let tls = tls || over_tcp;
        // Off loopback the server insists on a token.
        let token: &[&str] = if link.wrap.is_empty() {
            &[]
        } else {
            &["--token", "bench-token-0123456789abcdef"]
        };
        let (server, server_lines) = spawn_lines(
            Command::new(server_bin)
                .args(["--http", "127.0.0.1:0", "--quic"])
                .arg(SocketAddr::new(link.server_ip, 0).to_string())
                .args(extra)
                .args(token)
                .args(["--tcp-ports", &tcp_ports])
                .arg("--state-dir")
                .arg(dir)
                .args(if tls {
                    vec![
                        "--https".into(),
                        // Where the client can reach it (the TCP transport
                        // dials it across the lossy link's namespace too).
                        SocketAddr::new(link.server_ip, 0).to_string().into(),
                        "--edge-cert".into(),
                        dir.join("edge.crt").into_os_string(),
                        "--edge-key".into(),
                        dir.join("edge.key").into_os_string(),
                    ]
                } else {
                    Vec::new()
                })
                .env("RUST_LOG", "warn"),
        );
        let ready = Ready::parse(
            &server_lines
                .recv_timeout(Duration::from_secs(20))
                .expect("server ready line"),
        );
        let http = ready.http;
        let https = if tls { ready.https } else { None };
        let (quic, fingerprint) = (ready.quic, ready.fingerprint);
        let expose = link.backend.to_string();
        let what: Vec<&str> = if raw_tcp {
            vec!["tcp", &expose]
        } else if plain_too {
            vec!["http", &expose, "--allow-http", "--subdomain", "bench"]
        } else {
            vec!["--expose", &expose, "--subdomain", "bench"]
        };
        let (client, client_lines) = spawn_lines(
            link.command(client_bin)
                .args(["--server", &quic])
                .args(what)
                .args(["--server-fingerprint", &fingerprint])
                .args(match (over_tcp, https) {
                    (true, Some(h)) => vec!["--server-tcp".to_string(), h.to_string()],
                    _ => Vec::new(),
                })
                .args(token)
                .env("TUNNEL_INSPECT", inspect_env())
                .env("RUST_LOG", "warn"),
        );
        let url = client_lines
            .recv_timeout(Duration::from_secs(20))
            .expect("client URL line");
        let tcp = raw_tcp.then(|| {
            let port: u16 = url
                .split(" -> ")
                .next()
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("tcp://host:port");
            SocketAddr::from(([127, 0, 0, 1], port))
        });
        Tunnel {
            client,
            server,
            http,
            https,
            tcp,
        }
    }

    pub(crate) fn pids(&self) -> [u32; 2] {
        [self.server.0.id(), self.client.0.id()]
    }
}

/// The client's `--inspect` for every run: `TUNNEL_INSPECT` if set
/// (`127.0.0.1:0` measures with the inspector on), else off, the default of
/// a client without a terminal.
pub(crate) fn inspect_env() -> String {
    std::env::var("TUNNEL_INSPECT").unwrap_or_else(|_| "off".into())
}
