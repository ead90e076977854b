//! The scenarios, wrk's runs of them and the parse of its output.

use super::*;

#[derive(Default, Clone)]
pub(crate) struct WrkResult {
    pub(crate) requests: f64,
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) bytes_per_s: f64,
    pub(crate) errors: u64,
    pub(crate) bytes: f64,
}

pub(crate) fn parse_time_us(s: &str) -> f64 {
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

pub(crate) fn parse_size(s: &str) -> f64 {
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

pub(crate) fn parse_wrk(out: &str) -> WrkResult {
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

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) path: &'static str,
    pub(crate) conns: u32,
    pub(crate) close: bool,
    pub(crate) bulk: bool,
    /// Visitors speak https (to nginx's TLS port directly, to the tunnel's
    /// https listener through it).
    pub(crate) tls: bool,
    /// Through a raw TCP tunnel (`tunnel-client tcp`) instead of HTTP: the
    /// fair comparison with TCP tunnels such as rathole and bore.
    pub(crate) raw_tcp: bool,
}

pub(crate) const SCENARIOS: &[Scenario] = &[
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

pub(crate) fn wrk(url: &str, host: Option<&str>, s: &Scenario, duration: u64) -> WrkResult {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.2's own output (`wrk -t1 -c2 -d1s --latency`, against a
    /// Python file server): the README's tables come from this parse.
    const SAMPLE: &str = "\
Running 1s test @ http://127.0.0.1:18765/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.22ms  816.18us   5.98ms   67.57%
    Req/Sec     0.87k    58.92     0.95k    72.73%
  Latency Distribution
     50%    2.19ms
     75%    2.73ms
     90%    3.30ms
     99%    4.45ms
  955 requests in 1.10s, 3.08MB read
Requests/sec:    868.72
Transfer/sec:      2.80MB
";

    #[test]
    fn wrk_output_is_read_whole() {
        let r = parse_wrk(SAMPLE);
        assert_eq!(r.requests, 955.0);
        assert_eq!(r.rps, 868.72);
        assert_eq!(r.p50_us, 2190.0);
        assert_eq!(r.p99_us, 4450.0);
        assert!((r.bytes - 3.08 * 1024.0 * 1024.0).abs() < 1.0);
        assert!((r.bytes_per_s - 2.80 * 1024.0 * 1024.0).abs() < 1.0);
        assert_eq!(r.errors, 0);
    }

    #[test]
    fn errors_and_units_are_counted() {
        let r = parse_wrk(
            "  Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 7\n",
        );
        assert_eq!(r.errors, 17);
        assert_eq!(parse_time_us("812.50us"), 812.5);
        assert_eq!(parse_time_us("1.5s"), 1.5e6);
        assert!(parse_time_us("7x").is_nan());
        assert_eq!(parse_size("1.00KB"), 1024.0);
    }
}
