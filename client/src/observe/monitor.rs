//! The book of recent exchanges and the client's counters: what the status
//! screen, the inspector and `/metrics` read. The follower in `observe.rs`
//! writes to it; every method is synchronous.

use super::*;

/// What the status screen, the inspector and `/metrics` read: shared by
/// every stream (synchronous methods only; nothing is held across an await).
#[derive(Debug)]
pub struct Monitor {
    /// The connection the client holds now (`None` while reconnecting).
    pub conn: ArcSwapOption<quinn::Connection>,
    /// Whether bodies and heads are kept (the inspector is on).
    pub capture: bool,
    /// Whether streams are observed at all.
    pub observe: bool,
    next_id: AtomicU64,
    /// Data streams (one per visitor connection and tunnel) so far, and open.
    pub streams_total: AtomicU64,
    pub streams_open: AtomicI64,
    book: Mutex<Book>,
    /// New exchanges, for the inspector's live list (lagging readers skip).
    events: tokio::sync::broadcast::Sender<Arc<Exchange>>,
    /// The last log lines (shown by the status screen, which owns the terminal).
    pub logs: Mutex<VecDeque<String>>,
    /// The client's own metrics (`--metrics`).
    pub metrics: Option<ClientMetrics>,
    pub started: Instant,
    /// When the server was last heard from on the current connection
    /// (`liveness`), `None` without one.
    heard: Mutex<Option<Instant>>,
    /// The current connection's tunnels (their circuit breakers).
    pub(crate) targets: ArcSwapOption<std::collections::HashMap<u32, crate::target::Target>>,
}

#[derive(Debug, Default)]
struct Book {
    ring: VecDeque<Arc<Exchange>>,
    /// (second since start, requests completed in it), oldest first.
    per_second: VecDeque<(u64, u32)>,
    durations: VecDeque<f64>,
    requests: u64,
}

/// Counters the status screen shows.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub requests: u64,
    pub rate_1m: f64,
    pub rate_5m: f64,
    /// Milliseconds.
    pub p50: f64,
    pub p90: f64,
}

/// The client's Prometheus registry and families.
#[derive(Debug)]
pub struct ClientMetrics {
    /// Locked only to register the live collector and to encode a scrape.
    pub registry: Arc<Mutex<prometheus_client::registry::Registry>>,
    pub tunnels: Arc<tunnel_lib::metrics::Tunnels>,
    pub reconnects: prometheus_client::metrics::counter::Counter,
    pub local_failures: prometheus_client::metrics::counter::Counter,
}

impl Monitor {
    /// `observe`: follow requests at all; `capture`: keep heads and bodies.
    pub fn new(observe: bool, capture: bool, metrics: bool) -> Monitor {
        let metrics = metrics.then(|| {
            let mut registry = prometheus_client::registry::Registry::with_prefix("tunnel_client");
            let tunnels = tunnel_lib::metrics::Tunnels::register(&mut registry);
            let reconnects = prometheus_client::metrics::counter::Counter::default();
            let local_failures = prometheus_client::metrics::counter::Counter::default();
            registry.register("reconnects", "Connections to the server made after the first", reconnects.clone());
            registry.register(
                "local_failures",
                "Visitor connections the local service could not take (refused, timed out, circuit open)",
                local_failures.clone(),
            );
            ClientMetrics {
                registry: Arc::new(Mutex::new(registry)),
                tunnels,
                reconnects,
                local_failures,
            }
        });
        Monitor {
            conn: ArcSwapOption::empty(),
            capture,
            observe: observe || capture || metrics.is_some(),
            next_id: AtomicU64::new(1),
            streams_total: AtomicU64::new(0),
            streams_open: AtomicI64::new(0),
            book: Mutex::new(Book::default()),
            events: tokio::sync::broadcast::channel(256).0,
            logs: Mutex::new(VecDeque::new()),
            metrics,
            started: Instant::now(),
            heard: Mutex::new(None),
            targets: ArcSwapOption::empty(),
        }
    }

    /// When the server was last heard from (`None` without a connection).
    pub fn last_heard(&self) -> Option<Instant> {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_heard(&self, at: Option<Instant>) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Nothing observed (the library's default).
    pub fn off() -> Monitor {
        Monitor::new(false, false, false)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a finished exchange.
    pub(crate) fn record(&self, ex: Exchange) {
        let ex = Arc::new(ex);
        let sec = self.started.elapsed().as_secs();
        {
            let mut b = self.book();
            b.requests += 1;
            match b.per_second.back_mut() {
                Some((s, n)) if *s == sec => *n += 1,
                _ => b.per_second.push_back((sec, 1)),
            }
            while b
                .per_second
                .front()
                .is_some_and(|(s, _)| sec - s >= RATE_WINDOW as u64)
            {
                b.per_second.pop_front();
            }
            if b.durations.len() == DURATIONS {
                b.durations.pop_front();
            }
            b.durations.push_back(ex.duration.as_secs_f64() * 1000.0);
            if b.ring.len() == RING {
                b.ring.pop_front();
            }
            b.ring.push_back(ex.clone());
        }
        // Only while an inspector page listens.
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(ex);
        }
    }

    /// The newest `n` exchanges, newest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Exchange>> {
        self.book().ring.iter().rev().take(n).cloned().collect()
    }

    pub fn exchange(&self, id: u64) -> Option<Arc<Exchange>> {
        self.book().ring.iter().rev().find(|e| e.id == id).cloned()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Exchange>> {
        self.events.subscribe()
    }

    pub fn counters(&self) -> Counters {
        let b = self.book();
        let sec = self.started.elapsed().as_secs();
        let window = |w: u64| {
            let n: u64 = b
                .per_second
                .iter()
                .filter(|(s, _)| sec - s < w)
                .map(|(_, n)| u64::from(*n))
                .sum();
            n as f64 / w.min(sec + 1) as f64
        };
        let mut d: Vec<f64> = b.durations.iter().copied().collect();
        d.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            if d.is_empty() {
                0.0
            } else {
                d[((d.len() - 1) as f64 * p).round() as usize]
            }
        };
        Counters {
            requests: b.requests,
            rate_1m: window(60),
            rate_5m: window(300),
            p50: pct(0.5),
            p90: pct(0.9),
        }
    }

    /// Keeps a log line for the status screen.
    pub fn log_line(&self, line: String) {
        let mut l = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == LOG_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }
}
