//! End-to-end load harness: `cargo run --release -p tunnel-benches --bin load`.
//!
//! Builds the release binaries, starts a backend (nginx with a config this
//! harness writes, or a small built-in keep-alive server when nginx is not
//! installed), a tunnel-server and a tunnel-client, and drives `wrk` against
//! the backend directly and through the tunnel, alternating the two over
//! several rounds, all on 127.0.0.1. Reports per scenario: req/s, p50, p99,
//! transfer/s, the tunnel's CPU (server + client) per request or per GiB,
//! their peak RSS, errors, and the tunnel/direct ratio from the same run.
//!
//! The https scenarios run wrk over TLS against nginx serving the same
//! content over TLS directly (same certificate, an ECDSA P-256 one made
//! here) and against the tunnel's https listener.
//!
//! Options: `--duration SECS` (10), `--rounds N` (3), `--quick` (3 s, 1
//! round), `--only NAME` (a scenario), `--markdown FILE` (also write the
//! table there).
//!
//! `--ab OLD_BIN_DIR` replaces the table with an A/B of the plain scenarios:
//! the binaries in OLD_BIN_DIR (an older commit's `target/release/tunnel-*`)
//! against this build, alternating, as ratios new/old; `--ab-server-args
//! "ARGS"` adds server flags to this build only (`--metrics 127.0.0.1:0`).
//!
//! `--peers` replaces it with this tunnel beside bore and rathole (plain
//! and Noise), built from crates.io into `target/peers` once: a closed-loop
//! table, oha at fixed rates, and a lossy link in a network namespace
//! (`load/peers.rs`).
//!
//! Two long runs replace the table: `--soak MINUTES` (mixed load for that
//! long; RSS and open file descriptors of both processes sampled each
//! minute, their slopes reported) and `--slowloris` (legitimate p99 with
//! 4 000 slow sockets held open against the edge, from another loopback
//! address, with the per-IP limits on and off, as a ratio to the same
//! requests without them). Environment passed through to both tunnel processes (e.g.
//! `TUNNEL_WORKER_THREADS`) is how levers are compared.

// A harness program, not the product: it blocks on child processes and
// files on purpose, outside any async runtime (the built-in backend runs on
// its own thread).
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "load/peers.rs"]
mod peers;

struct Opts {
    duration: u64,
    rounds: usize,
    only: Option<String>,
    markdown: Option<PathBuf>,
    soak: Option<u64>,
    slowloris: bool,
    /// `--ab OLD_BIN_DIR`: alternate an older build with this one.
    ab: Option<PathBuf>,
    /// `--ab-server-args "ARGS"`: extra tunnel-server flags for this build
    /// only (e.g. `--metrics 127.0.0.1:0 --access-log /dev/null`).
    ab_server_args: Vec<String>,
    /// `--peers`: bore and rathole beside this tunnel (`peers.rs`).
    peers: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        duration: 10,
        rounds: 3,
        only: None,
        markdown: None,
        soak: None,
        slowloris: false,
        ab: None,
        ab_server_args: Vec::new(),
        peers: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => {
                o.duration = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--duration SECS")
            }
            "--rounds" => {
                o.rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--quick" => {
                o.duration = 3;
                o.rounds = 1;
            }
            "--only" => o.only = args.next(),
            "--markdown" => o.markdown = args.next().map(PathBuf::from),
            "--soak" => {
                o.soak = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--soak MINUTES"),
                )
            }
            "--slowloris" => o.slowloris = true,
            "--peers" => o.peers = true,
            "--ab" => o.ab = Some(PathBuf::from(args.next().expect("--ab OLD_BIN_DIR"))),
            "--ab-server-args" => {
                o.ab_server_args = args
                    .next()
                    .expect("--ab-server-args \"ARGS\"")
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            }
            other => {
                eprintln!("unknown option {other}; see the top of benches/src/bin/load.rs");
                std::process::exit(2);
            }
        }
    }
    o
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tck
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[derive(Default, Clone)]
struct WrkResult {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    bytes_per_s: f64,
    errors: u64,
    bytes: f64,
}

fn parse_time_us(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => f64::NAN,
    }
}

fn parse_size(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "B" => v,
        "KB" => v * 1024.0,
        "MB" => v * 1024.0 * 1024.0,
        "GB" => v * 1024.0 * 1024.0 * 1024.0,
        "TB" => v * 1024f64.powi(4),
        _ => v,
    }
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        let w: Vec<&str> = t.split_whitespace().collect();
        if t.starts_with("50%") && w.len() >= 2 {
            r.p50_us = parse_time_us(w[1]);
        } else if t.starts_with("99%") && w.len() >= 2 {
            r.p99_us = parse_time_us(w[1]);
        } else if t.starts_with("Requests/sec:") {
            r.rps = w[1].parse().unwrap_or(0.0);
        } else if t.starts_with("Transfer/sec:") {
            r.bytes_per_s = parse_size(w[1]);
        } else if t.contains("requests in") {
            r.requests = w[0].parse().unwrap_or(0.0);
            r.bytes = w
                .get(4)
                .map(|s| parse_size(s.trim_end_matches(" read")))
                .unwrap_or(0.0);
        } else if t.starts_with("Socket errors:") {
            r.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap_or(0))
                .sum::<u64>();
        } else if t.starts_with("Non-2xx or 3xx responses:") {
            r.errors += w.last().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    r
}

struct Scenario {
    name: &'static str,
    path: &'static str,
    conns: u32,
    close: bool,
    bulk: bool,
    /// Visitors speak https (to nginx's TLS port directly, to the tunnel's
    /// https listener through it).
    tls: bool,
    /// Through a raw TCP tunnel (`tunnel-client tcp`) instead of HTTP: the
    /// fair comparison with TCP tunnels such as rathole and bore.
    raw_tcp: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "100 B, 50 keep-alive conns",
        path: "/100",
        conns: 50,
        close: false,
        bulk: false,
        tls: false,
        raw_tcp: false,
    },
    Scenario {
        name: "100 B, 400 keep-alive conns",
        path: "/100",
        conns: 400,
        close: false,
        bulk: false,
        tls: false,
        raw_tcp: false,
    },
    Scenario {
        name: "1 MiB, 50 conns",
        path: "/1m",
        conns: 50,
        close: false,
        bulk: true,
        tls: false,
        raw_tcp: false,
    },
    Scenario {
        name: "new connection per request, 50 conns",
        path: "/100",
        conns: 50,
        close: true,
        bulk: false,
        tls: false,
        raw_tcp: false,
    },
    Scenario {
        name: "https 100 B, 50 keep-alive conns",
        path: "/100",
        conns: 50,
        close: false,
        bulk: false,
        tls: true,
        raw_tcp: false,
    },
    Scenario {
        name: "https new connection per request, 50 conns",
        path: "/100",
        conns: 50,
        close: true,
        bulk: false,
        tls: true,
        raw_tcp: false,
    },
    Scenario {
        name: "tcp tunnel: 100 B, 50 keep-alive conns",
        path: "/100",
        conns: 50,
        close: false,
        bulk: false,
        tls: false,
        raw_tcp: true,
    },
    Scenario {
        name: "tcp tunnel: 1 MiB, 50 conns",
        path: "/1m",
        conns: 50,
        close: false,
        bulk: true,
        tls: false,
        raw_tcp: true,
    },
    Scenario {
        name: "tcp tunnel: new connection per request, 50 conns",
        path: "/100",
        conns: 50,
        close: true,
        bulk: false,
        tls: false,
        raw_tcp: true,
    },
];

fn wrk(url: &str, host: Option<&str>, s: &Scenario, duration: u64) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", s.conns),
        &format!("-d{duration}s"),
        "--latency",
        "--timeout",
        "5s",
    ]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    if s.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("{url}{}", s.path));
    let out = cmd.output().expect("wrk runs");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// A certificate for the https scenarios (`edge.crt`, `edge.key` in `dir`).
fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
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
fn start_nginx(dir: &Path) -> (Proc, u16, u16) {
    start_nginx_on(dir, &Link::loopback(0))
}

/// As [`start_nginx`], on the client's side of `link` (inside its network
/// namespace, listening on every address there), with a sparse 1 GiB file
/// at `/1g` as well.
fn start_nginx_on(dir: &Path, link: &Link) -> (Proc, u16, u16) {
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
         server {{\n    listen {listen}:{port} backlog=4096;\n    listen {listen}:{tls_port} ssl backlog=4096;\n\
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

/// The fallback backend (`tunnel_benches::backend`) on its own thread and
/// current-thread runtime.
fn start_builtin() -> u16 {
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
            tunnel_benches::backend(listener, tokio_util::sync::CancellationToken::new()).await
        });
    });
    wait_port(port);
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    wait_addr(SocketAddr::from(([127, 0, 0, 1], port)));
}

fn wait_addr(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How the tunnel's client side reaches the server side: on loopback, or
/// from a network namespace across a veth (`peers::Netns`).
struct Link {
    /// The server's address as the client dials it.
    server_ip: std::net::IpAddr,
    /// The client side's own address, as the server side reaches it (the
    /// direct path to a backend there).
    client_ip: std::net::IpAddr,
    /// The backend as the client side reaches it.
    backend: SocketAddr,
    /// A prefix for client-side processes (`ip netns exec NS`).
    wrap: Vec<String>,
}

impl Link {
    fn loopback(backend_port: u16) -> Link {
        Link {
            server_ip: [127, 0, 0, 1].into(),
            client_ip: [127, 0, 0, 1].into(),
            backend: SocketAddr::from(([127, 0, 0, 1], backend_port)),
            wrap: Vec::new(),
        }
    }

    /// `program` run on the client's side of the link.
    fn command(&self, program: &Path) -> Command {
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

fn spawn_lines(cmd: &mut Command) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

/// Holds `n` visitor connections open after one request each; returns the
/// tunnel's RSS growth per connection in bytes (server + client), for
/// connections with a live stream and local connection.
fn idle_connections(http: SocketAddr, host: &str, pids: &[u32], n: usize) -> (f64, f64) {
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
fn idle_tls_connections(https: SocketAddr, host: &str, pids: &[u32], n: usize) -> (f64, f64) {
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
struct Tunnel {
    client: Proc,
    server: Proc,
    http: SocketAddr,
    https: Option<SocketAddr>,
    /// The public port of the raw TCP tunnel (`raw_tcp`).
    tcp: Option<SocketAddr>,
}

impl Tunnel {
    fn start(
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

    fn start_with(
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

    fn start_on(
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
                        "127.0.0.1:0".into(),
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
        let ready = server_lines
            .recv_timeout(Duration::from_secs(20))
            .expect("server ready line");
        let field = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        let http: SocketAddr = field("http=").parse().unwrap();
        let https: Option<SocketAddr> = tls.then(|| field("https=").parse().unwrap());
        let quic = field("quic=");
        let fingerprint = field("fingerprint=");
        let expose = link.backend.to_string();
        let what: Vec<&str> = if raw_tcp {
            vec!["tcp", &expose]
        } else {
            vec!["--expose", &expose, "--subdomain", "bench"]
        };
        let (client, client_lines) = spawn_lines(
            link.command(client_bin)
                .args(["--server", &quic])
                .args(what)
                .args(["--server-fingerprint", &fingerprint])
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

    fn pids(&self) -> [u32; 2] {
        [self.server.0.id(), self.client.0.id()]
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_rate(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB/s", b / 1024f64.powi(3))
    } else {
        format!("{:.1} MiB/s", b / 1024f64.powi(2))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let o = opts();
    if !have("wrk") {
        eprintln!(
            "wrk is not installed: apt-get install -y wrk (and nginx-light for the nginx backend)"
        );
        std::process::exit(1);
    }
    let root = workspace_root();
    eprintln!("building release binaries...");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "tunnel-server",
            "-p",
            "tunnel-client",
        ])
        .status()
        .expect("cargo build");
    assert!(st.success(), "release build failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let server_bin = target.join("release/tunnel-server");
    let client_bin = target.join("release/tunnel-client");

    let dir = std::env::temp_dir().join(format!("tunnel-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_cert(&dir);
    let (_nginx, backend_port, backend_tls, backend_name) = if have("nginx") {
        let (p, port, tls) = start_nginx(&dir);
        (Some(p), port, Some(tls), "nginx (1 worker)")
    } else {
        (
            None,
            start_builtin(),
            None,
            "built-in keep-alive server (nginx not installed; no https scenarios)",
        )
    };

    eprintln!("backend: {backend_name}");
    let host = "bench.localhost";
    let tck = clk_tck();
    let direct_url = format!("http://127.0.0.1:{backend_port}");

    // Idle connections first, on fresh processes: later scenarios leave
    // freed heap behind that would hide the growth.
    if let Some(minutes) = o.soak {
        soak(&server_bin, &client_bin, &dir, backend_port, host, minutes);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if o.slowloris {
        slowloris(&server_bin, &client_bin, &dir, backend_port, host);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if o.peers {
        if backend_tls.is_none() {
            eprintln!("--peers needs nginx: apt-get install -y nginx-light");
            std::process::exit(1);
        }
        let bins = peers::install(&target);
        let ours = peers::Ours {
            server: &server_bin,
            client: &client_bin,
        };
        let mut out = peers::closed_loop(&o, &bins, &ours, &dir, backend_port, tck);
        out.push('\n');
        out.push_str(&peers::fixed_rate(&o, &bins, &ours, &dir, backend_port));
        out.push_str(&peers::lossy(&o, &bins, &ours, &dir));
        println!("{out}");
        if let Some(path) = &o.markdown {
            std::fs::write(path, &out).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    if let Some(old) = o.ab.clone() {
        let table = ab(
            &o,
            &old,
            &server_bin,
            &client_bin,
            &dir,
            backend_port,
            host,
            tck,
        );
        println!("{table}");
        if let Some(path) = &o.markdown {
            std::fs::write(path, &table).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    let idle_line = if o.only.as_deref().is_none_or(|n| "idle".contains(n)) {
        let t = Tunnel::start(&server_bin, &client_bin, &dir, backend_port, false);
        let pids = t.pids();
        let base: u64 = pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
        let (connected, with_stream) = idle_connections(t.http, host, &pids, 1000);
        drop(t);
        let t = Tunnel::start(&server_bin, &client_bin, &dir, backend_port, true);
        let pids = t.pids();
        let (tls_connected, tls_with_stream) =
            idle_tls_connections(t.https.unwrap(), host, &pids, 1000);
        format!(
            "\n1000 idle visitor connections (fresh processes, {:.1} MiB RSS before): {:.1} KiB each once \
             connected, {:.1} KiB each after one request (a live QUIC stream and local connection), \
             server + client RSS growth. Over https: {:.1} KiB each once connected, {:.1} KiB each after \
             the handshake and one request.",
            base as f64 / 1024.0,
            connected / 1024.0,
            with_stream / 1024.0,
            tls_connected / 1024.0,
            tls_with_stream / 1024.0
        )
    } else {
        String::new()
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| scenario | direct req/s | tunnel req/s | **ratio** | p50 direct / tunnel | p99 direct / tunnel | tunnel transfer/s | tunnel CPU | peak RSS (server + client) | errors |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|");
    for s in SCENARIOS {
        if o.only.as_deref().is_some_and(|n| !s.name.contains(n)) {
            continue;
        }
        if s.tls && backend_tls.is_none() {
            continue;
        }
        // Fresh tunnel processes per scenario: the peak RSS is this scenario's.
        let no_limits = ["--max-visitors-per-ip", "0", "--visitor-rate-per-ip", "0"];
        let t = Tunnel::start_with(
            &server_bin,
            &client_bin,
            &dir,
            backend_port,
            s.tls,
            &no_limits,
            s.raw_tcp,
        );
        let pids = t.pids();
        let (direct_url, tunnel_url) = match (s.tls, backend_tls, t.https, t.tcp) {
            (true, Some(port), Some(https), _) => (
                format!("https://127.0.0.1:{port}"),
                format!("https://{https}"),
            ),
            (_, _, _, Some(tcp)) => (direct_url.clone(), format!("http://{tcp}")),
            _ => (direct_url.clone(), format!("http://{}", t.http)),
        };
        let mut d_runs = Vec::new();
        let mut t_runs = Vec::new();
        let mut cpu_per = Vec::new();
        let mut peak = 0u64;
        for round in 0..o.rounds {
            eprintln!("{} — round {}/{}", s.name, round + 1, o.rounds);
            d_runs.push(wrk(&direct_url, None, s, o.duration));
            pids.iter().for_each(|p| reset_peak(*p));
            let c0: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
            let t = wrk(&tunnel_url, Some(host), s, o.duration);
            let c1: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
            peak = peak.max(pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum());
            cpu_per.push(if s.bulk {
                (c1 - c0) / (t.bytes / 1024f64.powi(3)).max(1e-9)
            } else {
                (c1 - c0) / t.requests.max(1.0) * 1e6
            });
            t_runs.push(t);
        }
        let m = |v: &[WrkResult], f: fn(&WrkResult) -> f64| median(v.iter().map(f).collect());
        let (drps, trps) = (m(&d_runs, |r| r.rps), m(&t_runs, |r| r.rps));
        let errors: u64 = t_runs.iter().map(|r| r.errors).sum::<u64>()
            + d_runs.iter().map(|r| r.errors).sum::<u64>();
        let cpu = median(cpu_per);
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | **{:.2}** | {} / {} | {} / {} | {} | {} | {:.1} MiB | {} |",
            s.name,
            drps,
            trps,
            trps / drps.max(1.0),
            fmt_us(m(&d_runs, |r| r.p50_us)),
            fmt_us(m(&t_runs, |r| r.p50_us)),
            fmt_us(m(&d_runs, |r| r.p99_us)),
            fmt_us(m(&t_runs, |r| r.p99_us)),
            fmt_rate(m(&t_runs, |r| r.bytes_per_s)),
            if s.bulk {
                format!("{cpu:.2} s/GiB")
            } else {
                format!("{cpu:.1} µs/req")
            },
            peak as f64 / 1024.0,
            errors,
        );
        eprint!("{table}");
    }

    if o.only.as_deref().is_none_or(|n| "udp".contains(n)) {
        table.push_str(&udp_line(&server_bin, &client_bin, &dir, tck, o.duration));
    }
    table.push_str(&idle_line);
    let _ = writeln!(
        table,
        "\nBackend: {backend_name}. wrk -t1, {}s per run, {} round(s), direct and tunnel alternating; medians. \
         CPU: user+system seconds of tunnel-server + tunnel-client during the tunnel runs.",
        o.duration, o.rounds
    );
    println!("{table}");
    if let Some(path) = o.markdown {
        std::fs::write(path, &table).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--ab OLD_BIN_DIR`: the plain scenarios through an older build and this
/// one, fresh processes for every run, the order swapped each round (ABBA);
/// medians, and this build's figures as a ratio to the old one's.
#[allow(clippy::too_many_arguments)]
fn ab(
    o: &Opts,
    old: &Path,
    server_bin: &Path,
    client_bin: &Path,
    dir: &Path,
    backend_port: u16,
    host: &str,
    tck: f64,
) -> String {
    let old_server = old.join("tunnel-server");
    let old_client = old.join("tunnel-client");
    assert!(
        old_server.exists() && old_client.exists(),
        "--ab {}: expected tunnel-server and tunnel-client there (cp target/release/tunnel-* DIR/ \
         on the older commit)",
        old.display()
    );
    let no_limits = ["--max-visitors-per-ip", "0", "--visitor-rate-per-ip", "0"];
    let mut new_args: Vec<&str> = no_limits.to_vec();
    new_args.extend(o.ab_server_args.iter().map(String::as_str));
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| scenario | old req/s | new req/s | **new/old** | old p50 / p99 | new p50 / p99 | old CPU | new CPU |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|");
    for s in SCENARIOS.iter().filter(|s| !s.tls) {
        if o.only.as_deref().is_some_and(|n| !s.name.contains(n)) {
            continue;
        }
        let mut runs: [Vec<(WrkResult, f64)>; 2] = [Vec::new(), Vec::new()];
        for round in 0..o.rounds {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                eprintln!(
                    "{} — round {}/{} — {}",
                    s.name,
                    round + 1,
                    o.rounds,
                    ["old", "new"][which]
                );
                let (sb, cb, extra): (&Path, &Path, &[&str]) = if which == 0 {
                    (&old_server, &old_client, &no_limits)
                } else {
                    (server_bin, client_bin, &new_args)
                };
                let t = Tunnel::start_with(sb, cb, dir, backend_port, false, extra, s.raw_tcp);
                let url = match t.tcp {
                    Some(tcp) => format!("http://{tcp}"),
                    None => format!("http://{}", t.http),
                };
                let pids = t.pids();
                // Warm up (connections, pools, allocator), then measure.
                let _ = wrk(&url, Some(host), s, 1);
                let c0: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
                let r = wrk(&url, Some(host), s, o.duration);
                let c1: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
                let cpu = if s.bulk {
                    (c1 - c0) / (r.bytes / 1024f64.powi(3)).max(1e-9)
                } else {
                    (c1 - c0) / r.requests.max(1.0) * 1e6
                };
                runs[which].push((r, cpu));
            }
        }
        let m = |i: usize, f: fn(&(WrkResult, f64)) -> f64| median(runs[i].iter().map(f).collect());
        let unit = |v: f64| {
            if s.bulk {
                format!("{v:.2} s/GiB")
            } else {
                format!("{v:.1} µs/req")
            }
        };
        let (orps, nrps) = (m(0, |r| r.0.rps), m(1, |r| r.0.rps));
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | **{:.3}** | {} / {} | {} / {} | {} | {} |",
            s.name,
            orps,
            nrps,
            nrps / orps.max(1.0),
            fmt_us(m(0, |r| r.0.p50_us)),
            fmt_us(m(0, |r| r.0.p99_us)),
            fmt_us(m(1, |r| r.0.p50_us)),
            fmt_us(m(1, |r| r.0.p99_us)),
            unit(m(0, |r| r.1)),
            unit(m(1, |r| r.1)),
        );
        eprint!("{table}");
    }
    let _ = writeln!(
        table,
        "\nA/B: old = {}, new = this build{}. wrk -t1, {} s per run after 1 s of warm-up, {} round(s), \
         fresh processes per run, order swapped each round; medians. CPU: tunnel-server + tunnel-client.",
        old.display(),
        if o.ab_server_args.is_empty() {
            String::new()
        } else {
            format!(" with server flags `{}`", o.ab_server_args.join(" "))
        },
        o.duration,
        o.rounds
    );
    table
}

/// The client's `--inspect` for every run: `TUNNEL_INSPECT` if set
/// (`127.0.0.1:0` measures with the inspector on), else off, the default of
/// a client without a terminal.
fn inspect_env() -> String {
    std::env::var("TUNNEL_INSPECT").unwrap_or_else(|_| "off".into())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Least-squares slope of `ys` against `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

/// `--soak MINUTES`: keep-alive small requests, a new connection per
/// request, and 1 MiB downloads at once, minute after minute, through one
/// tunnel pair. Each minute: both processes' RSS and open descriptors.
/// The first minute is warm-up (allocator and pools grow to their working
/// size); the slopes are fitted over the rest.
fn soak(server_bin: &Path, client_bin: &Path, dir: &Path, port: u16, host: &str, minutes: u64) {
    let t = Tunnel::start(server_bin, client_bin, dir, port, false);
    let pids = t.pids();
    let url = format!("http://{}", t.http);
    let mixes = [("/100", 20, false), ("/100", 10, true), ("/1m", 4, false)];
    let mut rows = String::new();
    let (mut xs, mut rss, mut fds) = (Vec::new(), Vec::new(), Vec::new());
    let mut total = 0.0;
    let mut errors = 0u64;
    let started = Instant::now();
    for minute in 1..=minutes {
        let runs: Vec<_> = mixes
            .iter()
            .map(|&(path, conns, close)| {
                let (url, host) = (url.clone(), host.to_owned());
                std::thread::spawn(move || {
                    let s = Scenario {
                        name: "soak",
                        path,
                        conns,
                        close,
                        bulk: path == "/1m",
                        tls: false,
                        raw_tcp: false,
                    };
                    wrk(&url, Some(&host), &s, 60)
                })
            })
            .collect();
        let results: Vec<WrkResult> = runs.into_iter().map(|h| h.join().unwrap()).collect();
        let reqs: f64 = results.iter().map(|r| r.requests).sum();
        total += reqs;
        errors += results.iter().map(|r| r.errors).sum::<u64>();
        let kib: u64 = pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
        let open: usize = pids.iter().map(|p| open_fds(*p)).sum();
        let _ = writeln!(
            rows,
            "| {minute} | {reqs:.0} | {:.1} | {open} |",
            kib as f64 / 1024.0
        );
        eprintln!(
            "soak minute {minute}/{minutes}: {reqs:.0} requests, {:.1} MiB RSS, {open} fds",
            kib as f64 / 1024.0
        );
        if minute > 1 {
            xs.push(started.elapsed().as_secs_f64() / 3600.0);
            rss.push(kib as f64 / 1024.0);
            fds.push(open as f64);
        }
    }
    let table = format!(
        "| minute | requests | RSS server + client (MiB) | open fds |\n|---|---|---|---|\n{rows}\n\
         {minutes} min of mixed load through one tunnel (wrk -c20 keep-alive /100, -c10 new connection per \
         request /100, -c4 keep-alive 1 MiB, all at once, 60 s runs back to back): {total:.0} requests, {errors} \
         errors. Slopes after the first minute: RSS {:+.2} MB/h, open fds {:+.1}/h.\n",
        slope(&xs, &rss) * 1.048_576,
        slope(&xs, &fds),
    );
    println!("{table}");
}

/// Holds `n` slowloris sockets from `source` against `edge`: each sends a
/// partial head and one more header byte every 5 s, and is replaced when
/// the server closes it. Runs until `stop`; returns how many were
/// reconnected.
fn slow_sockets(
    edge: SocketAddr,
    source: std::net::IpAddr,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ready: std::sync::mpsc::Sender<usize>,
) -> u64 {
    use std::sync::atomic::Ordering;
    let open = || -> Option<TcpStream> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        sock.bind(&SocketAddr::new(source, 0).into()).ok()?;
        sock.connect_timeout(&edge.into(), Duration::from_secs(2))
            .ok()?;
        let mut s: TcpStream = sock.into();
        s.write_all(b"GET /100 HTTP/1.1\r\nHost: bench.localhost\r\nX-Slow: ")
            .ok()?;
        Some(s)
    };
    let mut socks: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
    let _ = ready.send(socks.iter().filter(|s| s.is_some()).count());
    let mut replaced = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for s in socks.iter_mut() {
            let alive = s.as_mut().is_some_and(|t| t.write_all(b"a").is_ok());
            if !alive {
                *s = open();
                replaced += 1;
            }
        }
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    replaced
}

/// `--slowloris`: legitimate keep-alive requests (wrk -c10, /100) alone,
/// then with 4 000 slow sockets from 127.0.0.2, with the server's per-IP
/// limits at their defaults and then off.
fn slowloris(server_bin: &Path, client_bin: &Path, dir: &Path, port: u16, host: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const SLOW: usize = 4000;
    let legit = Scenario {
        name: "legit",
        path: "/100",
        conns: 10,
        close: false,
        bulk: false,
        tls: false,
        raw_tcp: false,
    };
    let mut rows = String::new();
    let mut base: Option<WrkResult> = None;
    let no_limits: &[&str] = &["--max-visitors-per-ip", "0", "--visitor-rate-per-ip", "0"];
    // The legitimate user is 127.0.0.1 as well: its own limit must not bite.
    for (label, extra, attack) in [
        ("no attack", no_limits, false),
        (
            "4 000 slow sockets, per-IP limits on (defaults)",
            &[][..],
            true,
        ),
        ("4 000 slow sockets, per-IP limits off", no_limits, true),
    ] {
        let t = Tunnel::start_with(server_bin, client_bin, dir, port, false, extra, false);
        let url = format!("http://{}", t.http);
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = attack.then(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (edge, st) = (t.http, stop.clone());
            let h = std::thread::spawn(move || {
                slow_sockets(edge, "127.0.0.2".parse().unwrap(), SLOW, st, tx)
            });
            let opened = rx.recv().unwrap();
            (h, opened)
        });
        let mut runs: Vec<WrkResult> = (0..3).map(|_| wrk(&url, Some(host), &legit, 10)).collect();
        runs.sort_by(|a, b| a.p99_us.partial_cmp(&b.p99_us).unwrap());
        let r = runs.swap_remove(1);
        stop.store(true, Ordering::Relaxed);
        let (opened, replaced) = match attacker {
            Some((h, opened)) => {
                let replaced = h.join().unwrap();
                (opened, replaced)
            }
            None => (0, 0),
        };
        let (p99_ratio, rps_ratio) = match &base {
            Some(b) => (r.p99_us / b.p99_us.max(1.0), r.rps / b.rps.max(1.0)),
            None => (1.0, 1.0),
        };
        let _ = writeln!(
            rows,
            "| {label} | {:.0} | {} | {} | **{p99_ratio:.2}** | {rps_ratio:.2} | {opened} connected, {replaced} replaced | {} |",
            r.rps,
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            r.errors,
        );
        if base.is_none() {
            base = Some(r);
        }
        drop(t);
    }
    println!(
        "| legitimate load (wrk -t1 -c10 keep-alive /100, 10 s, median of 3) | req/s | p50 | p99 | **p99 ratio** | req/s ratio | slow sockets | errors |\n|---|---|---|---|---|---|---|---|\n{rows}\n\
         Slow sockets from 127.0.0.2: a partial head, one more header byte every 5 s, replaced when closed \
         (the server cuts a head not complete within 15 s)."
    );
}

/// A UDP echo on its own thread; its address.
fn udp_echo() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Round trips per second of 200-byte datagrams, 64 in flight, for `secs`.
fn udp_rate(to: SocketAddr, secs: u64) -> (f64, u64) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let payload = [1u8; 200];
    let mut buf = [0u8; 2048];
    let (mut done, mut lost) = (0u64, 0u64);
    let mut in_flight = 0u32;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        while in_flight < 64 {
            let _ = s.send(&payload);
            in_flight += 1;
        }
        match s.recv(&mut buf) {
            Ok(_) => {
                done += 1;
                in_flight -= 1;
            }
            // A lost datagram: its slot is sent again.
            Err(_) => {
                lost += u64::from(in_flight);
                in_flight = 0;
            }
        }
    }
    (done as f64 / secs as f64, lost)
}

/// The UDP row: a direct echo against the same echo through a UDP tunnel.
fn udp_line(server_bin: &Path, client_bin: &Path, dir: &Path, tck: f64, secs: u64) -> String {
    let echo = udp_echo();
    let first = free_port();
    let (server, server_lines) = spawn_lines(
        Command::new(server_bin)
            .args(["--http", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .args([
                "--udp-ports",
                &format!("{first}-{}", first.saturating_add(3)),
            ])
            .arg("--state-dir")
            .arg(dir)
            .env("RUST_LOG", "warn"),
    );
    let ready = server_lines
        .recv_timeout(Duration::from_secs(20))
        .expect("server ready line");
    let quic = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("quic="))
        .unwrap()
        .to_owned();
    let (client, client_lines) = spawn_lines(
        Command::new(client_bin)
            .args(["--server", &quic, "udp", &echo.to_string(), "--server-cert"])
            .arg(dir.join("cert.pem"))
            .env("TUNNEL_INSPECT", inspect_env())
            .env("RUST_LOG", "warn"),
    );
    let url = client_lines
        .recv_timeout(Duration::from_secs(20))
        .expect("client URL line");
    let port: u16 = url
        .split(" -> ")
        .next()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("udp://host:port");
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let pids = [server.0.id(), client.0.id()];
    let (direct, _) = udp_rate(echo, secs);
    let c0: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
    let (tunnel, lost) = udp_rate(public, secs);
    let c1: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
    let per = (c1 - c0) / (tunnel * secs as f64).max(1.0) * 1e6;
    drop(client);
    drop(server);
    format!(
        "\nUDP echo, 200-byte datagrams, 64 in flight, {secs} s: direct {direct:.0} round trips/s, through a \
         UDP tunnel {tunnel:.0}/s (**{:.2}**), {per:.1} µs of tunnel CPU per round trip (two datagrams), \
         {lost} lost.\n",
        tunnel / direct.max(1.0)
    )
}
