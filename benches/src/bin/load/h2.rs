//! `--h2`: HTTP/2 visitors, measured with h2load (nghttp2), through this
//! tunnel's h2 edge (the app behind it speaks HTTP/1.1, as most do), beside
//! nginx's own h2 on the same machine (the direct path) and a raw TCP
//! tunnel of ours in front of nginx's h2 port (TLS and h2 end to end, the
//! tunnel only carries bytes), in the same run, alternating, medians of
//! the rounds. CPU is the tunnel's two processes, per request and per GiB.

use std::path::Path;
use std::process::Command;

use crate::{median, Opts, Tunnel};
use tunnel_testkit::procfs::cpu_seconds;

/// What one h2load run reported.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct H2Load {
    pub(crate) rps: f64,
    /// Bytes per second (h2load's traffic figure, headers included).
    pub(crate) bps: f64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
}

/// Reads h2load's summary (`finished in 5.00s, 1234.5 req/s, 1.2MB/s` and
/// `requests: … N succeeded, F failed, E errored, T timeout`).
pub(crate) fn parse_h2load(out: &str) -> H2Load {
    let mut r = H2Load::default();
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            let parts: Vec<&str> = rest.split(", ").collect();
            if parts.len() >= 3 {
                r.rps = parts[1].trim_end_matches(" req/s").parse().unwrap_or(0.0);
                let rate = parts[2].trim_end_matches("/s");
                let (num, unit) = rate.split_at(
                    rate.find(|c: char| c.is_ascii_alphabetic())
                        .unwrap_or(rate.len()),
                );
                let mult = match unit {
                    "GB" => 1e9,
                    "MB" => 1e6,
                    "KB" => 1e3,
                    _ => 1.0,
                };
                r.bps = num.parse::<f64>().unwrap_or(0.0) * mult;
            }
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for item in rest.split(", ") {
                let mut w = item.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => r.succeeded = n,
                    "failed" | "errored" | "timeout" => r.failed += n,
                    _ => {}
                }
            }
        }
    }
    r
}

fn h2load(url: &str, authority: Option<&str>, conns: u32, streams: u32, secs: u64) -> H2Load {
    let mut c = Command::new("h2load");
    c.args([
        "-D",
        &secs.to_string(),
        "-c",
        &conns.to_string(),
        "-m",
        &streams.to_string(),
    ]);
    c.args(["-t", "1"]);
    if let Some(a) = authority {
        c.args(["-H", &format!(":authority: {a}")]);
    }
    let out = c.arg(url).output().expect("h2load runs");
    parse_h2load(&String::from_utf8_lossy(&out.stdout))
}

struct Row {
    name: &'static str,
    path: &'static str,
    conns: u32,
    streams: u32,
}

const ROWS: [Row; 2] = [
    Row {
        name: "100 B, 10 connections × 20 streams",
        path: "/100",
        conns: 10,
        streams: 20,
    },
    Row {
        name: "1 MiB, 2 connections × 4 streams",
        path: "/1m",
        conns: 2,
        streams: 4,
    },
];

/// The table, in markdown.
pub(crate) fn table(
    o: &Opts,
    server_bin: &Path,
    client_bin: &Path,
    dir: &Path,
    backend_port: u16,
    tls_port: u16,
    tck: f64,
) -> String {
    let ours = Tunnel::start(server_bin, client_bin, dir, backend_port, true);
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let raw = Tunnel::start_with(
        server_bin,
        client_bin,
        &raw_dir,
        tls_port,
        false,
        &["--max-visitors-per-ip", "0", "--visitor-rate-per-ip", "0"],
        true,
    );
    let https = ours.https.expect("an https edge");
    let raw_port = raw.tcp.expect("a raw TCP tunnel").port();
    let host = "bench.localhost";
    let mut out = String::new();
    out.push_str(&format!(
        "HTTP/2 (h2load {}s × {} rounds, medians; ratios to nginx's own h2 on this machine)\n\n\
         | scenario | nginx h2 direct | through our h2 edge | our raw TCP tunnel to nginx h2 | our CPU / request (both processes) | our CPU / GiB |\n\
         |---|---|---|---|---|---|\n",
        o.duration, o.rounds
    ));
    for row in ROWS {
        if o.only.as_deref().is_some_and(|n| !row.name.contains(n)) {
            continue;
        }
        let (mut direct, mut edge, mut tunnel) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_req, mut cpu_gib) = (Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            let run = |url: String, authority| {
                h2load(&url, authority, row.conns, row.streams, o.duration)
            };
            let d = run(format!("https://127.0.0.1:{tls_port}{}", row.path), None);
            let pids = ours.pids();
            let before: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum();
            let e = run(
                format!("https://127.0.0.1:{}{}", https.port(), row.path),
                Some(host),
            );
            let used: f64 = pids.iter().map(|p| cpu_seconds(*p, tck)).sum::<f64>() - before;
            let t = run(format!("https://127.0.0.1:{raw_port}{}", row.path), None);
            assert!(
                e.failed == 0 && e.succeeded > 0,
                "{}: {} requests failed through the h2 edge",
                row.name,
                e.failed
            );
            let requests = e.succeeded as f64;
            cpu_req.push(used / requests * 1e6);
            cpu_gib.push(used / (e.bps * o.duration as f64 / (1u64 << 30) as f64));
            direct.push(d);
            edge.push(e);
            tunnel.push(t);
        }
        let bulk = row.path == "/1m";
        let figure =
            |v: &[H2Load]| median(v.iter().map(|r| if bulk { r.bps } else { r.rps }).collect());
        let (d, e, t) = (figure(&direct), figure(&edge), figure(&tunnel));
        let show = |x: f64| {
            if bulk {
                format!("{:.0} MB/s", x / 1e6)
            } else {
                format!("{x:.0} req/s")
            }
        };
        // Per request for small ones, per GiB for bulk.
        let (per_req, per_gib) = if bulk {
            ("–".to_owned(), format!("{:.2} s", median(cpu_gib)))
        } else {
            (format!("{:.1} µs", median(cpu_req)), "–".to_owned())
        };
        out.push_str(&format!(
            "| {} | {} | {} ({:.2}) | {} ({:.2}) | {per_req} | {per_gib} |\n",
            row.name,
            show(d),
            show(e),
            e / d,
            show(t),
            t / d,
        ));
    }
    drop(ours);
    drop(raw);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn h2load_output_is_read() {
        let out = "finished in 5.00s, 23456.78 req/s, 2.52MB/s\n\
                   requests: 117284 total, 117284 started, 117284 done, 117280 succeeded, 4 failed, 0 errored, 0 timeout\n";
        let r = super::parse_h2load(out);
        assert_eq!(r.rps, 23456.78);
        assert_eq!(r.bps, 2.52e6);
        assert_eq!((r.succeeded, r.failed), (117280, 4));
    }
}
