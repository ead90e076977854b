//! `--peers`: this tunnel beside bore and rathole (plain and with Noise), in
//! the same rounds, against the same nginx, on the same machine.
//!
//! Three tables:
//! 1. wrk (closed loop) per scenario: req/s as a ratio to direct, p50 and
//!    p99, tunnel CPU per request or per GiB, peak RSS, per system.
//! 2. oha at fixed request rates (latency-corrected): p50, p99, p99.9 that
//!    each tunnel adds to the direct path.
//! 3. A lossy link: the client side in a network namespace behind a veth,
//!    random loss on it with iptables `statistic`; downloads of a 1 GiB file
//!    back to back while oha sends small requests at a fixed rate through
//!    the same tunnel: throughput and the small requests' p50 and p99.
//!
//! The peers are built from crates.io into `target/peers` once
//! (`cargo install --root`).

#[path = "peers/lossy.rs"]
mod lossy;
#[path = "peers/rates.rs"]
mod rates;
pub(crate) use lossy::lossy;
pub(crate) use rates::{closed_loop, fixed_rate};

use super::{
    cpu_seconds, fmt_us, free_port, median, reset_peak, start_nginx_on, status_kib, wait_addr, wrk,
    Link, Opts, Proc, Tunnel, WrkResult, SCENARIOS,
};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The peers' binaries under `target/peers/bin`, and what their install said.
pub(crate) struct PeerBins {
    bore: PathBuf,
    rathole: PathBuf,
    oha: PathBuf,
    versions: Vec<String>,
}

/// (crate, binary, extra `cargo install` arguments). rathole without its
/// default TLS features: no OpenSSL needed, and Noise is what it offers for
/// an encrypted link without certificates (the fair twin of this tunnel's
/// QUIC with a pinned certificate).
const INSTALLS: &[(&str, &str, &[&str])] = &[
    ("bore-cli", "bore", &[]),
    (
        "rathole",
        "rathole",
        &["--no-default-features", "--features", "server,client,noise"],
    ),
    ("oha", "oha", &[]),
];

/// Installs the peers into `target/peers` unless they are there already.
pub(crate) fn install(target: &Path) -> PeerBins {
    let root = target.join("peers");
    let bin = root.join("bin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut versions = Vec::new();
    for (krate, name, extra) in INSTALLS {
        if !bin.join(name).exists() {
            eprintln!("installing {krate} into {} (once)...", root.display());
            let run = |locked: bool| {
                Command::new(&cargo)
                    .args(["install", "--root"])
                    .arg(&root)
                    .args(locked.then_some("--locked"))
                    .arg(krate)
                    .args(*extra)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !run(true) {
                eprintln!(
                    "{krate}: its Cargo.lock does not build with this toolchain; installing without --locked"
                );
                if !run(false) {
                    eprintln!(
                        "cargo install {krate} failed: see its output above (it needs crates.io)"
                    );
                    std::process::exit(1);
                }
                versions.push(format!("{krate} installed without --locked"));
            }
        }
    }
    // "bore-cli v0.6.0:" lines: what is installed, by crate and version.
    let list = Command::new(&cargo)
        .args(["install", "--list", "--root"])
        .arg(&root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    versions.extend(
        list.lines()
            .filter(|l| !l.starts_with(char::is_whitespace))
            .map(|l| l.trim_end_matches(':').to_owned()),
    );
    PeerBins {
        bore: bin.join("bore"),
        rathole: bin.join("rathole"),
        oha: bin.join("oha"),
        versions,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Direct,
    Http,
    Tcp,
    Bore,
    Rathole,
    RatholeNoise,
}

const SYSTEMS: [System; 6] = [
    System::Direct,
    System::Http,
    System::Tcp,
    System::Bore,
    System::Rathole,
    System::RatholeNoise,
];

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Http => "**this tunnel** (HTTP)",
            System::Tcp => "**this tunnel** (TCP)",
            System::Bore => "bore (plain TCP)",
            System::Rathole => "rathole (plain TCP)",
            System::RatholeNoise => "rathole + Noise",
        }
    }
}

/// This tunnel's binaries.
pub(crate) struct Ours<'a> {
    pub(crate) server: &'a Path,
    pub(crate) client: &'a Path,
}

/// One system ready for visitors at `public`.
struct Running {
    _procs: Vec<Proc>,
    pids: Vec<u32>,
    public: SocketAddr,
}

impl Running {
    /// A peer's server and client, serving visitors on 127.0.0.1:`port`.
    fn pair(server: Proc, client: Proc, port: u16) -> Running {
        Running {
            pids: vec![server.0.id(), client.0.id()],
            _procs: vec![client, server],
            public: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// A peer's process, quiet: `RUST_LOG=warn` (no line per connection, as
/// for this tunnel), output discarded.
fn quiet(cmd: &mut Command, what: &str) -> Proc {
    Proc(
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}")),
    )
}

const HOST: &str = "bench.localhost";

/// Starts `sys` with its client side on `link`'s far end; `None` for the
/// direct path, which is `link.client_ip:backend port`.
fn start(sys: System, bins: &PeerBins, ours: &Ours, dir: &Path, link: &Link) -> Option<Running> {
    let no_limits = ["--max-visitors-per-ip", "0", "--visitor-rate-per-ip", "0"];
    let r = match sys {
        System::Direct => return None,
        System::Http | System::Tcp => {
            let raw = sys == System::Tcp;
            let t = Tunnel::start_on(ours.server, ours.client, dir, link, false, &no_limits, raw);
            let public = t.tcp.unwrap_or(t.http);
            let pids = t.pids().to_vec();
            let Tunnel { client, server, .. } = t;
            Running {
                _procs: vec![client, server],
                pids,
                public,
            }
        }
        System::Bore => {
            let port = free_port();
            // bore's control port is fixed (7835).
            let server = quiet(
                Command::new(&bins.bore)
                    .args([
                        "server",
                        "--min-port",
                        &port.to_string(),
                        "--max-port",
                        &port.to_string(),
                    ])
                    .args([
                        "--bind-addr",
                        &link.server_ip.to_string(),
                        "--bind-tunnels",
                        "127.0.0.1",
                    ]),
                "bore server starts",
            );
            wait_addr(SocketAddr::new(link.server_ip, 7835));
            let client = quiet(
                link.command(&bins.bore)
                    .args(["local", &link.backend.port().to_string()])
                    .args(["--local-host", &link.backend.ip().to_string()])
                    .args([
                        "--to",
                        &link.server_ip.to_string(),
                        "--port",
                        &port.to_string(),
                    ]),
                "bore local starts",
            );
            Running::pair(server, client, port)
        }
        System::Rathole | System::RatholeNoise => {
            let noise = sys == System::RatholeNoise;
            let (ctl, public) = (free_port(), free_port());
            let (transport_s, transport_c) = if noise {
                let (private, public_key) = rathole_keys(&bins.rathole);
                (
                    format!("type = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
                    format!("type = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public_key}\"\n"),
                )
            } else {
                ("type = \"tcp\"\n".to_owned(), "type = \"tcp\"\n".to_owned())
            };
            let tag = if noise { "noise" } else { "tcp" };
            let (sconf, cconf) = (
                dir.join(format!("rathole-server-{tag}.toml")),
                dir.join(format!("rathole-client-{tag}.toml")),
            );
            std::fs::write(
                &sconf,
                format!(
                    "[server]\nbind_addr = \"{}\"\ndefault_token = \"bench\"\n[server.transport]\n{transport_s}\
                     [server.services.bench]\nbind_addr = \"127.0.0.1:{public}\"\n",
                    SocketAddr::new(link.server_ip, ctl)
                ),
            )
            .unwrap();
            std::fs::write(
                &cconf,
                format!(
                    "[client]\nremote_addr = \"{}\"\ndefault_token = \"bench\"\n[client.transport]\n{transport_c}\
                     [client.services.bench]\nlocal_addr = \"{}\"\n",
                    SocketAddr::new(link.server_ip, ctl),
                    link.backend
                ),
            )
            .unwrap();
            let server = quiet(
                Command::new(&bins.rathole).arg("--server").arg(&sconf),
                "rathole server starts",
            );
            wait_addr(SocketAddr::new(link.server_ip, ctl));
            let client = quiet(
                link.command(&bins.rathole).arg("--client").arg(&cconf),
                "rathole client starts",
            );
            Running::pair(server, client, public)
        }
    };
    wait_serving(r.public, sys);
    Some(r)
}

/// A fresh Noise key pair from `rathole --genkey`: (private, public).
fn rathole_keys(rathole: &Path) -> (String, String) {
    let out = Command::new(rathole)
        .arg("--genkey")
        .output()
        .expect("rathole --genkey");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut next_after = |label: &str| {
        lines
            .by_ref()
            .skip_while(|l| !l.starts_with(label))
            .nth(1)
            .unwrap_or_else(|| panic!("rathole --genkey printed no {label}"))
            .to_owned()
    };
    let private = next_after("Private Key:");
    let public = next_after("Public Key:");
    (private, public)
}

/// One `GET /100`, answered 200, within 2 s.
fn get_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /100 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// Waits until a request through `public` is answered (the peers bind their
/// public port before their client has connected).
fn wait_serving(public: SocketAddr, sys: System) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_ok(public) {
        assert!(
            Instant::now() < deadline,
            "{} did not serve a request at {public} within 30 s",
            sys.label()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn started(
    bins: &PeerBins,
    ours: &Ours,
    dir: &Path,
    link: &Link,
) -> Vec<(System, Option<Running>)> {
    SYSTEMS
        .iter()
        .map(|&s| (s, start(s, bins, ours, dir, link)))
        .collect()
}

/// Every system in every round, the order rotated each round so none
/// always runs first; `run(system, running)` is one measurement. Returns
/// the measurements per system, in `systems`' order.
fn rotated<T>(
    o: &Opts,
    name: &str,
    systems: &[(System, Option<Running>)],
    mut run: impl FnMut(&Option<Running>) -> T,
) -> Vec<Vec<T>> {
    let n = systems.len();
    let mut runs: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..o.rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let (sys, r) = &systems[i];
            eprintln!(
                "peers: {name} — round {}/{} — {}",
                round + 1,
                o.rounds,
                sys.label()
            );
            runs[i].push(run(r));
        }
    }
    runs
}

fn url_of(r: &Option<Running>, link: &Link, backend_port: u16) -> String {
    match r {
        Some(r) => format!("http://{}", r.public),
        None => format!("http://{}", SocketAddr::new(link.client_ip, backend_port)),
    }
}
