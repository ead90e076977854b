//! The long runs: `--soak`, `--slowloris`, and the UDP line.

use super::*;

/// Least-squares slope of `ys` against `xs`.
pub(crate) fn slope(xs: &[f64], ys: &[f64]) -> f64 {
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
pub(crate) fn soak(
    server_bin: &Path,
    client_bin: &Path,
    dir: &Path,
    port: u16,
    host: &str,
    minutes: u64,
) {
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
pub(crate) fn slow_sockets(
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
pub(crate) fn slowloris(server_bin: &Path, client_bin: &Path, dir: &Path, port: u16, host: &str) {
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
pub(crate) fn udp_echo() -> SocketAddr {
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
pub(crate) fn udp_rate(to: SocketAddr, secs: u64) -> (f64, u64) {
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
pub(crate) fn udp_line(
    server_bin: &Path,
    client_bin: &Path,
    dir: &Path,
    tck: f64,
    secs: u64,
) -> String {
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
    let quic = tunnel_testkit::ready::field(&ready, "quic=");
    let (client, client_lines) = spawn_lines(
        Command::new(client_bin)
            .args(["--server", &quic, "udp", &echo.to_string(), "--server-cert"])
            .arg(dir.join("cert.pem"))
            .env("TUNNEL_INSPECT", inspect_env())
            // The UDP line measures QUIC: its server has no https port.
            .env_remove("TUNNEL_TRANSPORT")
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
