//! The names attack of issue 22 (item 6), measured: one token registers
//! `--names N` random names, 32 per connection and then disconnects (so
//! each name stays reserved for its return), as fast as the server answers,
//! while a visitor of another token's tunnel times its requests one after
//! another. Prints the visitor's latency before and during the attack, the
//! server's CPU share during it, its RSS after, and `names.json`'s size.
//!
//! `cargo run --release -p tunnel-benches --bin names -- [--bin DIR]
//! [--names 80000] [--uncapped]`: `DIR` holds the `tunnel-server` and
//! `tunnel-client` to measure (default: this build's `target/release`);
//! `--uncapped` passes `--max-names-per-token 0` (and no session or tunnel
//! cap) so the attack runs its course on a build that has the caps.
#![forbid(unsafe_code)]
// A harness binary: its `main` runs the runtime (the one block_on).
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tunnel_lib::io::read_message;
use tunnel_lib::proto::{Control, TunnelKind, PROTOCOL_VERSION};
use tunnel_lib::tls::ServerTrust;
use tunnel_testkit::process::Proc;
use tunnel_testkit::procfs;

const ATTACKER: &str = "attacker-token-0123456789abcdef";
const VICTIM: &str = "victim-token-0123456789abcdef";

struct Opts {
    bin: PathBuf,
    names: usize,
    uncapped: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
        names: 80_000,
        uncapped: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => o.bin = args.next().expect("--bin DIR").into(),
            "--names" => o.names = args.next().and_then(|n| n.parse().ok()).expect("--names N"),
            "--uncapped" => o.uncapped = true,
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(opts()));
}

fn cpu_seconds(pid: u32) -> f64 {
    procfs::cpu_seconds(pid, procfs::clk_tck())
}

fn rss_mib(pid: u32) -> f64 {
    procfs::status_kib(pid, "VmRSS:") as f64 / 1024.0
}

/// Sequential keep-alive GETs until `stop`: each one's latency.
async fn visitor(http: SocketAddr, host: String, stop: CancellationToken) -> Vec<Duration> {
    let mut tcp = TcpStream::connect(http).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !stop.is_cancelled() {
        let t = Instant::now();
        tcp.write_all(req.as_bytes()).await.unwrap();
        // The backend's 100-byte answer: read until its body is in.
        let mut got = 0;
        loop {
            let n = tcp.read(&mut buf[got..]).await.unwrap();
            assert!(n > 0, "the visitor's connection closed");
            got += n;
            if let Some(h) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                if got >= h + 4 + tunnel_testkit::backend::SMALL {
                    break;
                }
            }
        }
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

/// One attacking connection: up to 32 random names, then gone. The names
/// it got; `Err` with the server's refusal once it refuses.
async fn attack_once(
    ep: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    quic: SocketAddr,
    want: usize,
    n: u64,
) -> Result<usize, String> {
    let conn = ep
        .connect_with(cfg.clone(), quic, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    // A client id per connection: each is a new client, not a reconnect.
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    Control::Hello {
        version: PROTOCOL_VERSION,
        token: ATTACKER.into(),
        client_id: id,
        agent: "names-attack".into(),
    }
    .encode(&mut out);
    for i in 0..want as u32 {
        Control::Register {
            request_id: i + 1,
            subdomain: String::new(),
            local: "127.0.0.1:9".into(),
            kind: TunnelKind::Http,
            plain_http: true,
            remote_port: 0,
            policy: Default::default(),
        }
        .encode(&mut out);
    }
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let mut got = 0;
    let mut refused = None;
    for _ in 0..=want {
        match read_message(&mut recv, &mut buf, Control::decode).await {
            Ok(Some(Control::Welcome { .. })) => {}
            Ok(Some(Control::Registered { .. })) => got += 1,
            Ok(Some(Control::Error { message, .. })) => refused = Some(message),
            other => return Err(format!("{other:?}")),
        }
    }
    conn.close(0u32.into(), b"");
    match refused {
        Some(m) if got == 0 => Err(m),
        _ => Ok(got),
    }
}

async fn run(o: Opts) {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(tunnel_testkit::backend::backend(backend, stop.clone()));

    let mut cmd = Command::new(o.bin.join("tunnel-server"));
    cmd.args([
        "--http",
        "127.0.0.1:0",
        "--quic",
        "127.0.0.1:0",
        "--state-dir",
    ])
    .arg(dir.path())
    .env("TUNNEL_TOKENS", format!("{ATTACKER},{VICTIM}"))
    .env("RUST_LOG", "error");
    if o.uncapped {
        cmd.args([
            "--max-names-per-token",
            "0",
            "--max-sessions-per-token",
            "0",
            "--max-tunnels-per-token",
            "0",
        ]);
    }
    let mut server = Proc::spawn_quiet(&mut cmd);
    let ready = tunnel_testkit::ready::Ready::parse(&server.line().await);
    let http = ready.http;
    let quic: SocketAddr = ready.quic.parse().unwrap();
    let pin = tunnel_lib::tls::parse_fingerprint(&ready.fingerprint).unwrap();
    let pid = server.child.id().unwrap();

    let mut client = Proc::spawn_quiet(
        Command::new(o.bin.join("tunnel-client"))
            .args(["--server", &quic.to_string(), "--server-fingerprint"])
            .arg(&ready.fingerprint)
            .args([
                "--expose",
                &backend_addr.to_string(),
                "--subdomain",
                "victim",
            ])
            .env("TUNNEL_TOKEN", VICTIM)
            .env("TUNNEL_INSPECT", "off")
            .env("HOME", dir.path())
            .env("RUST_LOG", "error"),
    );
    let url = client.line().await;
    let host = url
        .split_whitespace()
        .next()
        .and_then(|u| u.strip_prefix("http://"))
        .unwrap()
        .to_owned();

    // Before: 2 s of the visitor alone.
    let calm = CancellationToken::new();
    let v = tokio::spawn(visitor(http, host.clone(), calm.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    calm.cancel();
    let mut before = v.await.unwrap();

    let during = CancellationToken::new();
    let v = tokio::spawn(visitor(http, host.clone(), during.clone()));
    let cfg = tunnel_lib::quic::client_config(&ServerTrust::Pinned(vec![pin]), &Default::default())
        .unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    let mut held = 0;
    let mut refusal = None;
    let mut n = 0u64;
    while held < o.names {
        n += 1;
        match attack_once(&ep, &cfg, quic, 32.min(o.names - held), n).await {
            Ok(n) => held += n,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let took = t0.elapsed();
    let cpu = (cpu_seconds(pid) - c0) / took.as_secs_f64() * 100.0;
    during.cancel();
    let mut under = v.await.unwrap();
    // The file is written at most once a second after the last change:
    // wait for a write that started after the attack ended.
    let names_file = dir.path().join("names.json");
    let ended = std::time::SystemTime::now();
    let mut size = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(m) = tokio::fs::metadata(&names_file).await {
            if m.modified().is_ok_and(|t| t > ended) {
                size = m.len();
                break;
            }
        }
    }
    println!("binaries: {}", o.bin.display());
    println!(
        "names held by the attacking token: {held} in {:.1} s{}",
        took.as_secs_f64(),
        refusal.map_or(String::new(), |r| format!(" (then refused: {r})"))
    );
    println!("server CPU during the attack: {cpu:.0} %");
    println!(
        "victim's requests: p50 {:.2} ms, p99 {:.2} ms before ({} requests); p50 {:.2} ms, p99 {:.2} ms during ({} requests)",
        pct(&mut before, 0.5),
        pct(&mut before, 0.99),
        before.len(),
        pct(&mut under, 0.5),
        pct(&mut under, 0.99),
        under.len()
    );
    println!(
        "server RSS after: {:.0} MiB; names.json: {:.1} MB",
        rss_mib(pid),
        size as f64 / 1e6
    );
    stop.cancel();
}
