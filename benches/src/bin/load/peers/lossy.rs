//! The lossy link: a network namespace with a veth pair and iptables
//! `statistic` drops, downloads through every system.

use super::rates::{header, oha, Oha};
use super::*;
use tunnel_testkit::netns::Netns;

/// The namespace of the lossy link: `10.77.0.1` here, `10.77.0.2` there.
fn namespace() -> Result<Netns, String> {
    let ns = Netns::create("tl", "10.77.0")?;
    // iptables must work inside it, or there is no loss to set.
    ns.set_loss(0.0)?;
    Ok(ns)
}

/// The link through `ns`: the server here, the client and the backend
/// (on `backend_port`) there.
fn link(ns: &Netns, backend_port: u16) -> Link {
    Link {
        server_ip: ns.here(),
        client_ip: ns.there(),
        backend: SocketAddr::from(([127, 0, 0, 1], backend_port)),
        wrap: ns.exec_prefix().to_vec(),
    }
}

/// GETs of `/1g` through `public`, back to back, until `stop`; counts the
/// bytes received in `bytes` and says on `flowing` when the first arrive.
pub(super) fn download_loop(
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
    let ns = match namespace() {
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
    crate::tunnel::write_cert(&ns_dir);
    let link0 = Link {
        backend: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..link(&ns, 0)
    };
    let (_nginx, port, _) = start_nginx_on(&ns_dir, &link0);
    let link = link(&ns, port);
    let systems = started(bins, ours, dir, &link);
    let n = systems.len();
    let mut t = String::from("\n");
    header(&mut t, "lossy link (veth, random loss each way)", &SYSTEMS);
    for percent in [0.0, 1.0, 5.0] {
        let name = format!("loss {percent} %");
        if o.only.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ns.set_loss(percent).expect("iptables in the namespace");
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
