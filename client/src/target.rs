//! Where a tunnel forwards to: the local service's addresses, its pool of
//! idle connections, and its circuit breaker. Shared by the forwarder (which
//! dials through it) and the monitor (which shows its circuits); it depends
//! on neither.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunnel_lib::limits::{LOCAL_CONNECT_TIMEOUT, LOCAL_POOL_IDLE, LOCAL_POOL_MAX};

use crate::breaker::Breaker;
pub(crate) use crate::breaker::Gate;
use crate::upstream::{LocalConn, UpstreamTls};

/// Where one tunnel forwards to: the addresses `local` resolved to when the
/// tunnel was registered (so no DNS per connection), tried in order.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) local: String,
    pub(crate) addrs: Vec<SocketAddr>,
    /// Index of the address that answered last: tried first next time
    /// (`localhost` resolves to `::1` first, while many apps listen on
    /// 127.0.0.1 only).
    pub(crate) preferred: AtomicUsize,
    /// Idle local connections handed back at a clean HTTP boundary (the
    /// server said `REUSE`), newest last. Touched only in synchronous code.
    pub(crate) idle: Mutex<Vec<(LocalConn, Instant)>>,
    /// A local https service: each connection is TLS (`upstream`).
    pub(crate) tls: Option<UpstreamTls>,
    /// A local service that may speak HTTP/2 (`--upstream h2c|h2`, or an
    /// https one that picks it by ALPN): its HTTP/2 connections.
    pub(crate) h2: Option<crate::h2local::H2Pool>,
    /// It does speak HTTP/2: said at registration (`--upstream`), or
    /// learnt from the first TLS connection's ALPN.
    speaks_h2: std::sync::atomic::AtomicBool,
    /// Fails fast while the local service keeps failing (synchronous only).
    breaker: Mutex<Breaker>,
    pub(crate) policy: LocalPolicy,
    /// The tunnel's public name (what the status screen and metrics show).
    pub(crate) name: Arc<str>,
    pub(crate) local_name: Arc<str>,
    /// HTTP tunnels are observed (`observe`); others are spliced only.
    pub(crate) http: bool,
    pub(crate) metrics: Option<Arc<tunnel_lib::metrics::TunnelMetrics>>,
}

/// How the client treats a local service that does not answer.
#[derive(Debug, Clone, Copy)]
pub struct LocalPolicy {
    /// How long one dial of the local service may take.
    pub connect_timeout: Duration,
    /// Consecutive failed dials that open the circuit (0: never).
    pub breaker_after: u32,
    /// How long an open circuit answers 502 at once before one visitor's
    /// dial probes the service again (doubling while it keeps failing, up
    /// to 16 times this).
    pub breaker_cooldown: Duration,
}

impl Default for LocalPolicy {
    fn default() -> Self {
        LocalPolicy {
            connect_timeout: LOCAL_CONNECT_TIMEOUT,
            breaker_after: 3,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

impl Target {
    pub(crate) fn new(local: String, addrs: Vec<SocketAddr>, policy: LocalPolicy) -> Target {
        Target {
            local,
            addrs,
            preferred: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            tls: None,
            h2: None,
            speaks_h2: std::sync::atomic::AtomicBool::new(false),
            breaker: Mutex::new(Breaker::default()),
            policy,
            name: Arc::from(""),
            local_name: Arc::from(""),
            http: false,
            metrics: None,
        }
    }

    /// Names the tunnel and gives it its counters (when metrics are on).
    pub(crate) fn named(
        mut self,
        name: &str,
        http: bool,
        tunnels: Option<&Arc<tunnel_lib::metrics::Tunnels>>,
    ) -> Target {
        self.name = name.into();
        self.local_name = self.local.as_str().into();
        self.http = http;
        self.metrics = tunnels.map(|t| Arc::new(t.tunnel(name)));
        self
    }

    /// Whether streams go to the HTTP/2 pool without asking the service.
    pub(crate) fn speaks_h2(&self) -> bool {
        self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_speaks_h2(&self) {
        self.speaks_h2
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// While the circuit is open: how long until the next probe.
    pub(crate) fn circuit_open(&self) -> Option<Duration> {
        self.breaker().open_for(Instant::now())
    }

    /// Whether a visitor's stream may dial now.
    pub(crate) fn gate(&self) -> Gate {
        self.breaker().gate(Instant::now())
    }

    /// Records a dial's outcome; returns the cool-down if the circuit opened.
    pub(crate) fn record(&self, ok: bool) -> Option<Duration> {
        let policy = self.policy;
        self.breaker().record(
            ok,
            policy.breaker_after,
            policy.breaker_cooldown,
            Instant::now(),
        )
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A recently idle connection that is still open, if any.
    pub(crate) fn take_idle(&self) -> Option<LocalConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() > LOCAL_POOL_IDLE {
                // Older ones are older still.
                idle.clear();
                return None;
            }
            // Closed by the app while idle (EOF), or sending unasked: drop it.
            if conn.still_idle() {
                return Some(conn);
            }
        }
        None
    }

    pub(crate) fn put_idle(&self, conn: LocalConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < LOCAL_POOL_MAX {
            idle.push((conn, Instant::now()));
        }
    }
}

pub(crate) type Targets = Arc<HashMap<u32, Target>>;
