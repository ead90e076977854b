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

fn header(t: &mut String, first: &str, systems: &[System]) {
    let _ = write!(t, "| {first} |");
    for s in systems {
        let _ = write!(t, " {} |", s.label());
    }
    let _ = write!(t, "\n|---|");
    for _ in systems {
        let _ = write!(t, "---|");
    }
    t.push('\n');
}

/// Table 1: wrk per scenario, every system in every round (the order
/// rotated each round), fresh processes per scenario.
pub(crate) fn closed_loop(
    o: &Opts,
    bins: &PeerBins,
    ours: &Ours,
    dir: &Path,
    backend_port: u16,
    tck: f64,
) -> String {
    let link = Link::loopback(backend_port);
    let mut t = String::new();
    header(&mut t, "wrk -t1, closed loop", &SYSTEMS);
    for s in SCENARIOS.iter().filter(|s| !s.tls && !s.raw_tcp) {
        if o.only.as_deref().is_some_and(|n| !s.name.contains(n)) {
            continue;
        }
        let systems = started(bins, ours, dir, &link);
        let n = systems.len();
        let runs = rotated(o, s.name, &systems, |r| {
            let pids: &[u32] = r.as_ref().map_or(&[], |r| &r.pids);
            pids.iter().for_each(|p| reset_peak(*p));
            let c0: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
            let w = wrk(&url_of(r, &link, backend_port), Some(HOST), s, o.duration);
            let c1: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
            let peak: u64 = pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum();
            let cpu = if s.bulk {
                (c1 - c0) / (w.bytes / 1024f64.powi(3)).max(1e-9)
            } else {
                (c1 - c0) / w.requests.max(1.0) * 1e6
            };
            (w, cpu, peak)
        });
        let med = |i: usize, f: &dyn Fn(&(WrkResult, f64, u64)) -> f64| {
            median(runs[i].iter().map(f).collect())
        };
        let direct = med(0, &|r| r.0.rps).max(1.0);
        let row = |t: &mut String, what: &str, cell: &dyn Fn(usize) -> String| {
            let _ = write!(t, "| {} — {what} |", s.name);
            for i in 0..n {
                let _ = write!(t, " {} |", cell(i));
            }
            t.push('\n');
        };
        row(&mut t, "req/s (ratio to direct)", &|i| {
            let rps = med(i, &|r| r.0.rps);
            if i == 0 {
                format!("{rps:.0}")
            } else {
                format!("{rps:.0} (**{:.2}**)", rps / direct)
            }
        });
        row(&mut t, "p50 / p99", &|i| {
            format!(
                "{} / {}",
                fmt_us(med(i, &|r| r.0.p50_us)),
                fmt_us(med(i, &|r| r.0.p99_us))
            )
        });
        row(
            &mut t,
            if s.bulk {
                "tunnel CPU per GiB"
            } else {
                "tunnel CPU per request"
            },
            &|i| {
                if i == 0 {
                    "–".into()
                } else if s.bulk {
                    format!("{:.2} s", med(i, &|r| r.1))
                } else {
                    format!("{:.1} µs", med(i, &|r| r.1))
                }
            },
        );
        row(&mut t, "peak RSS (server + client)", &|i| {
            if i == 0 {
                "–".into()
            } else {
                let peak = runs[i].iter().map(|r| r.2).max().unwrap_or(0);
                format!("{:.1} MiB", peak as f64 / 1024.0)
            }
        });
        let errors: u64 = runs.iter().flatten().map(|r| r.0.errors).sum();
        if errors > 0 {
            row(&mut t, "errors (all runs)", &|i| {
                runs[i].iter().map(|r| r.0.errors).sum::<u64>().to_string()
            });
        }
        eprint!("{t}");
    }
    let _ = writeln!(
        t,
        "\nwrk -t1, {} s per run, {} round(s), every system in every round (order rotated), medians; \
         CPU: user + system of the tunnel's server and client processes during its runs; peak RSS: \
         their VmHWM. Peers: {}.",
        o.duration,
        o.rounds,
        bins.versions.join(", ")
    );
    t
}

/// What oha reports of one fixed-rate run.
#[derive(Clone, Copy, Default)]
struct Oha {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    success: f64,
}

/// The number after `"key":` in `json`, searching from `after` (oha's JSON
/// output; the field names are stable across its 1.x releases).
fn json_number(json: &str, after: &str, key: &str) -> f64 {
    let from = json.find(after).unwrap_or(0);
    let pat = format!("\"{key}\":");
    json[from..]
        .find(&pat)
        .map(|i| {
            let rest = json[from + i + pat.len()..].trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
                .unwrap_or(rest.len());
            rest[..end].parse().unwrap_or(f64::NAN)
        })
        .unwrap_or(f64::NAN)
}

/// oha at `rate` req/s (latency-corrected: a late request counts from when
/// it should have been sent) with `conns` keep-alive connections.
fn oha(bin: &Path, url: &str, rate: u32, conns: u32, secs: u64) -> Oha {
    let out = Command::new(bin)
        .args([
            "-z",
            &format!("{secs}s"),
            "-q",
            &rate.to_string(),
            "-c",
            &conns.to_string(),
        ])
        .args([
            "--latency-correction",
            "--no-tui",
            "--output-format",
            "json",
        ])
        .args(["-H", &format!("Host: {HOST}"), "-t", "5s"])
        .arg(format!("{url}/100"))
        .stderr(Stdio::null())
        .output()
        .expect("oha runs");
    let j = String::from_utf8_lossy(&out.stdout);
    Oha {
        rps: json_number(&j, "\"summary\"", "requestsPerSec"),
        success: json_number(&j, "\"summary\"", "successRate"),
        p50: json_number(&j, "\"latencyPercentiles\"", "p50") * 1e6,
        p99: json_number(&j, "\"latencyPercentiles\"", "p99") * 1e6,
        p999: json_number(&j, "\"latencyPercentiles\"", "p99.9") * 1e6,
    }
}

/// `+1.20 ms`, `−304 µs`: a difference (noise can make it negative).
fn signed(us: f64) -> String {
    if us < 0.0 {
        format!("−{}", fmt_us(-us))
    } else {
        format!("+{}", fmt_us(us))
    }
}

/// Table 2: oha at fixed rates; direct in absolute figures, each tunnel as
/// what it adds to the direct median of the same rounds.
pub(crate) fn fixed_rate(
    o: &Opts,
    bins: &PeerBins,
    ours: &Ours,
    dir: &Path,
    backend_port: u16,
) -> String {
    let link = Link::loopback(backend_port);
    let mut t = String::new();
    header(
        &mut t,
        "oha, fixed rate, 50 keep-alive conns, `/100`",
        &SYSTEMS,
    );
    for rate in [5_000u32, 20_000] {
        let name = format!("fixed {rate} req/s");
        if o.only.as_deref().is_some_and(|n| !name.contains(n)) {
            continue;
        }
        let systems = started(bins, ours, dir, &link);
        let n = systems.len();
        let runs = rotated(o, &name, &systems, |r| {
            oha(
                &bins.oha,
                &url_of(r, &link, backend_port),
                rate,
                50,
                o.duration,
            )
        });
        let med = |i: usize, f: fn(&Oha) -> f64| median(runs[i].iter().map(f).collect());
        let (d50, d99, d999) = (med(0, |r| r.p50), med(0, |r| r.p99), med(0, |r| r.p999));
        let _ = write!(
            t,
            "| {rate} req/s — p50 / p99 / p99.9 (tunnels: added to direct) |"
        );
        for i in 0..n {
            let (p50, p99, p999) = (med(i, |r| r.p50), med(i, |r| r.p99), med(i, |r| r.p999));
            if i == 0 {
                let _ = write!(t, " {} / {} / {} |", fmt_us(p50), fmt_us(p99), fmt_us(p999));
            } else {
                let _ = write!(
                    t,
                    " {} / {} / {} |",
                    signed(p50 - d50),
                    signed(p99 - d99),
                    signed(p999 - d999)
                );
            }
        }
        let _ = write!(t, "\n| {rate} req/s — achieved req/s, success |");
        for i in 0..n {
            let _ = write!(
                t,
                " {:.0}, {:.1} % |",
                med(i, |r| r.rps),
                med(i, |r| r.success) * 100.0
            );
        }
        t.push('\n');
        eprint!("{t}");
    }
    let _ = writeln!(
        t,
        "\n`oha -z {d}s -q RATE -c 50 --latency-correction`, {r} round(s), systems rotated, medians. \
         A tunnel's cell is its percentile minus direct's: the latency it adds at the same offered load.",
        d = o.duration,
        r = o.rounds
    );
    t
}

/// A network namespace with a veth to this one: `10.77.0.1` here,
/// `10.77.0.2` there. Deleted (with its veth and its iptables rules) on drop.
struct Netns {
    name: String,
}

impl Netns {
    const HERE: [u8; 4] = [10, 77, 0, 1];
    const THERE: [u8; 4] = [10, 77, 0, 2];

    fn create() -> Result<Netns, String> {
        let name = format!("tunnel-load-{}", std::process::id());
        let ns = Netns { name };
        let (here, there) = ("tlh0", "tln0");
        let n = ns.name.as_str();
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", n],
            vec![
                "ip", "link", "add", here, "type", "veth", "peer", "name", there,
            ],
            vec!["ip", "link", "set", there, "netns", n],
            vec!["ip", "addr", "add", "10.77.0.1/24", "dev", here],
            vec!["ip", "link", "set", here, "up"],
            vec![
                "ip",
                "netns",
                "exec",
                n,
                "ip",
                "addr",
                "add",
                "10.77.0.2/24",
                "dev",
                there,
            ],
            vec!["ip", "netns", "exec", n, "ip", "link", "set", there, "up"],
            vec!["ip", "netns", "exec", n, "ip", "link", "set", "lo", "up"],
            vec!["ip", "netns", "exec", n, "iptables", "-L", "-n"],
        ];
        for step in steps {
            let out = Command::new(step[0])
                .args(&step[1..])
                .output()
                .map_err(|e| format!("{}: {e}", step.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "`{}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }

    /// Drops `percent` % of the packets crossing the veth, each direction,
    /// at random (iptables `statistic`), inside the namespace.
    fn set_loss(&self, percent: f64) {
        let n = self.name.as_str();
        let run = |args: &[&str]| {
            let st = Command::new("ip")
                .args(["netns", "exec", n, "iptables"])
                .args(args)
                .status()
                .expect("iptables");
            assert!(st.success(), "iptables {args:?} failed");
        };
        run(&["-F"]);
        if percent > 0.0 {
            let p = format!("{}", percent / 100.0);
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                run(&[
                    "-A",
                    chain,
                    dir,
                    "tln0",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ]);
            }
        }
    }

    fn link(&self, backend_port: u16) -> Link {
        Link {
            server_ip: Self::HERE.into(),
            client_ip: Self::THERE.into(),
            backend: SocketAddr::from(([127, 0, 0, 1], backend_port)),
            wrap: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.name.clone(),
            ],
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // Normally gone with the namespace; this is for a half-made one.
        let _ = Command::new("ip")
            .args(["link", "del", "tlh0"])
            .stderr(Stdio::null())
            .status();
    }
}

/// GETs of `/1g` through `public`, back to back, until `stop`; counts the
/// bytes received in `bytes` and says on `flowing` when the first arrive.
fn download_loop(
    public: SocketAddr,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    flowing: std::sync::mpsc::SyncSender<()>,
) {
    let mut flowing = Some(flowing);
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect_timeout(&public, Duration::from_secs(5)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let req = format!("GET /1g HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            continue;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    bytes.fetch_add(k as u64, Ordering::Relaxed);
                    if let Some(tx) = flowing.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
}

/// Table 3: the lossy link. `None` with a reason where namespaces or
/// iptables are not available.
pub(crate) fn lossy(o: &Opts, bins: &PeerBins, ours: &Ours, dir: &Path) -> String {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            return format!(
                "\nLossy link: skipped, network namespaces are not available here ({e}). \
                 It needs root, iproute2 and iptables.\n"
            )
        }
    };
    let ns_dir = dir.join("netns");
    std::fs::create_dir_all(&ns_dir).unwrap();
    super::write_cert(&ns_dir);
    let link0 = Link {
        backend: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ns.link(0)
    };
    let (_nginx, port, _) = start_nginx_on(&ns_dir, &link0);
    let link = ns.link(port);
    let systems = started(bins, ours, dir, &link);
    let n = systems.len();
    let mut t = String::from("\n");
    header(&mut t, "lossy link (veth, random loss each way)", &SYSTEMS);
    for percent in [0.0, 1.0, 5.0] {
        let name = format!("loss {percent} %");
        if o.only.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ns.set_loss(percent);
        let runs = rotated(o, &name, &systems, |r| {
            let public = match r {
                Some(r) => r.public,
                None => SocketAddr::new(link.client_ip, port),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let bytes = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let (tx, flowing) = std::sync::mpsc::sync_channel(1);
            let dl = {
                let (stop, bytes) = (stop.clone(), bytes.clone());
                std::thread::spawn(move || download_loop(public, stop, bytes, tx))
            };
            // The download's first bytes arrive, then the small requests
            // share the link with it (a download that never starts shows
            // as 0 MiB/s in the table).
            let _ = flowing.recv_timeout(Duration::from_secs(10));
            let small = oha(&bins.oha, &format!("http://{public}"), 100, 10, o.duration);
            let secs = started.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let _ = dl.join();
            (bytes.load(Ordering::Relaxed) as f64 / secs, small)
        });
        let med =
            |i: usize, f: &dyn Fn(&(f64, Oha)) -> f64| median(runs[i].iter().map(f).collect());
        let _ = write!(t, "| {percent} % loss — download MiB/s |");
        for i in 0..n {
            let _ = write!(t, " {:.1} |", med(i, &|r| r.0) / 1024f64.powi(2));
        }
        let _ = write!(t, "\n| {percent} % loss — small requests p50 / p99 |");
        for i in 0..n {
            let _ = write!(
                t,
                " {} / **{}** |",
                fmt_us(med(i, &|r| r.1.p50)),
                fmt_us(med(i, &|r| r.1.p99))
            );
        }
        let _ = write!(t, "\n| {percent} % loss — small requests answered |");
        for i in 0..n {
            let _ = write!(t, " {:.1} % |", med(i, &|r| r.1.success) * 100.0);
        }
        t.push('\n');
        eprint!("{t}");
    }
    let _ = writeln!(
        t,
        "\nThe client side (tunnel client, nginx) in a network namespace behind a veth (MTU 1500); \
         iptables `statistic` drops that share of packets at random in each direction. Per run: a \
         1 GiB file downloaded through the tunnel back to back while `oha -q 100 -c 10 \
         --latency-correction` sends small requests through the same tunnel for {} s; {} round(s), \
         medians. Direct = the same requests straight to nginx across the same link.",
        o.duration, o.rounds
    );
    drop(systems);
    t
}
