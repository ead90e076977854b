//! `--ab OLD_BIN_DIR`: an older build against this one, alternating.

use super::*;

/// `--ab OLD_BIN_DIR`: the plain scenarios through an older build and this
/// one, fresh processes for every run, the order swapped each round (ABBA);
/// medians, and this build's figures as a ratio to the old one's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ab(
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
