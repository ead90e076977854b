//! The closed-loop table (wrk) and the fixed-rate one (oha), every system
//! in the same rounds.

use super::*;

pub(super) fn header(t: &mut String, first: &str, systems: &[System]) {
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
pub(super) struct Oha {
    pub(super) rps: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) success: f64,
}

/// The number after `"key":` in `json`, searching from `after` (oha's JSON
/// output; the field names are stable across its 1.x releases).
pub(super) fn json_number(json: &str, after: &str, key: &str) -> f64 {
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
pub(super) fn oha(bin: &Path, url: &str, rate: u32, conns: u32, secs: u64) -> Oha {
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
pub(super) fn signed(us: f64) -> String {
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
