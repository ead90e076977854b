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
//! `--h2` replaces it with HTTP/2 visitors (h2load): through this tunnel's
//! h2 edge, nginx's own h2 and a raw TCP tunnel to it (`h2.rs`).
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
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "load/ab.rs"]
mod ab;
// `--h2`: HTTP/2 visitors with h2load.
#[path = "load/h2.rs"]
mod h2;
#[path = "load/long.rs"]
mod long;
#[path = "load/peers.rs"]
mod peers;
#[path = "load/procs.rs"]
mod procs;
#[path = "load/tunnel.rs"]
mod tunnel;
#[path = "load/wrk.rs"]
mod wrk;

use ab::*;
use long::*;
use procs::*;
use tunnel::*;
use wrk::*;

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
    /// `--h2`: HTTP/2 visitors with h2load (`h2.rs`).
    h2: bool,
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
        h2: false,
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
            "--h2" => o.h2 = true,
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
    if o.h2 {
        let (Some(tls_port), true) = (backend_tls, have("h2load")) else {
            eprintln!("--h2 needs nginx and h2load: apt-get install -y nginx-light nghttp2-client");
            std::process::exit(1);
        };
        let out = h2::table(
            &o,
            &server_bin,
            &client_bin,
            &dir,
            backend_port,
            tls_port,
            tck,
        );
        println!("{out}");
        if let Some(path) = &o.markdown {
            std::fs::write(path, &out).unwrap();
        }
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
