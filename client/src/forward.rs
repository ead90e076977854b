//! One data stream from the server ↔ one TCP connection to the local service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use tunnel_lib::io::{read_message, splice_tapped, SpliceEnd};

use crate::observe::{Monitor, Observer};
use tunnel_lib::limits::{LOCAL_CONNECT_TIMEOUT, LOCAL_POOL_IDLE, LOCAL_POOL_MAX, PREFACE_TIMEOUT};
use tunnel_lib::proto::{reset, Preface, Reply, ReplyCode};

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
    pub(crate) idle: Mutex<Vec<(TcpStream, Instant)>>,
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
    pub connect_timeout: std::time::Duration,
    /// Consecutive failed dials that open the circuit (0: never).
    pub breaker_after: u32,
    /// How long an open circuit answers 502 at once before one visitor's
    /// dial probes the service again (doubling while it keeps failing, up
    /// to 16 times this).
    pub breaker_cooldown: std::time::Duration,
}

impl Default for LocalPolicy {
    fn default() -> Self {
        LocalPolicy {
            connect_timeout: LOCAL_CONNECT_TIMEOUT,
            breaker_after: 3,
            breaker_cooldown: std::time::Duration::from_secs(5),
        }
    }
}

/// A circuit breaker per tunnel: closed (dial), open until a moment (fail
/// at once), then half-open (one dial probes; others still fail at once).
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// How many times in a row it opened (the cool-down doubles).
    opened: u32,
    probing: bool,
}

enum Gate {
    Dial,
    /// This dial is the probe of a half-open circuit.
    Probe,
    Open(std::time::Duration),
}

impl Target {
    pub(crate) fn new(local: String, addrs: Vec<SocketAddr>, policy: LocalPolicy) -> Target {
        Target {
            local,
            addrs,
            preferred: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            breaker: Mutex::new(Breaker::default()),
            policy,
            name: Arc::from(""),
            local_name: Arc::from(""),
            http: false,
            metrics: None,
        }
    }

    /// Names the tunnel and gives it its counters (when metrics are on).
    pub(crate) fn named(mut self, name: &str, http: bool, monitor: &Monitor) -> Target {
        self.name = name.into();
        self.local_name = self.local.as_str().into();
        self.http = http;
        self.metrics = monitor
            .metrics
            .as_ref()
            .map(|m| Arc::new(m.tunnels.tunnel(name)));
        self
    }

    /// While the circuit is open: how long until the next probe.
    pub(crate) fn circuit_open(&self) -> Option<std::time::Duration> {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until
            .map(|u| u.saturating_duration_since(Instant::now()))
    }

    fn gate(&self) -> Gate {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match b.open_until {
            None => Gate::Dial,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Gate::Open(until - now)
                } else if b.probing {
                    Gate::Open(std::time::Duration::ZERO)
                } else {
                    b.probing = true;
                    Gate::Probe
                }
            }
        }
    }

    /// Records a dial's outcome; returns the cool-down if the circuit opened.
    fn record(&self, ok: bool) -> Option<std::time::Duration> {
        let policy = self.policy;
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.probing = false;
        if ok {
            *b = Breaker::default();
            return None;
        }
        b.failures += 1;
        if policy.breaker_after == 0 || b.failures < policy.breaker_after && b.open_until.is_none()
        {
            return None;
        }
        let cool = policy.breaker_cooldown * (1u32 << b.opened.min(4));
        b.opened += 1;
        b.open_until = Some(Instant::now() + cool);
        Some(cool)
    }

    /// A recently idle connection that is still open, if any.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((tcp, since)) = idle.pop() {
            if since.elapsed() > LOCAL_POOL_IDLE {
                // Older ones are older still.
                idle.clear();
                return None;
            }
            // Closed by the app while idle (EOF), or sending unasked: drop it.
            let mut probe = [0u8; 1];
            if let Err(e) = tcp.try_read(&mut probe) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Some(tcp);
                }
            }
        }
        None
    }

    fn put_idle(&self, tcp: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < LOCAL_POOL_MAX {
            idle.push((tcp, Instant::now()));
        }
    }
}

pub(crate) type Targets = Arc<HashMap<u32, Target>>;

/// Counts a data stream as open while it lives.
struct OpenStream<'a>(&'a Monitor);

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn handle(
    targets: Targets,
    monitor: Arc<Monitor>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    monitor.streams_total.fetch_add(1, Ordering::Relaxed);
    monitor.streams_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenStream(&monitor);
    let mut buf = BytesMut::new();
    let preface = match tokio::time::timeout(
        PREFACE_TIMEOUT,
        read_message(&mut recv, &mut buf, Preface::decode),
    )
    .await
    {
        Ok(Ok(Some(p))) => p,
        other => {
            debug!("bad stream preface: {other:?}");
            let _ = send.reset(VarInt::from_u32(reset::CANCELLED));
            return;
        }
    };
    let Some(target) = targets.get(&preface.tunnel_id) else {
        reply(
            &mut send,
            Reply::Failed {
                code: ReplyCode::UnknownTunnel,
                message: "unknown tunnel".into(),
            },
        )
        .await;
        return;
    };
    let gate = target.gate();
    let failed = || {
        if let Some(m) = &monitor.metrics {
            m.local_failures.inc();
        }
        // Listed on the screen and in the inspector with the server's 502.
        if target.http && monitor.observe {
            let o = observer(&monitor, target, preface.visitor);
            tunnel_lib::io::Tap::toward_local(&o, &buf.clone().freeze());
            o.answered_by_server(502);
        }
    };
    if let Gate::Open(left) = gate {
        failed();
        let message = format!(
            "{} failed its last connection attempts, so the tunnel answers at once for a while \
             (circuit open; the next try in {:.1} s)",
            target.local,
            left.as_secs_f64()
        );
        reply(
            &mut send,
            Reply::Failed {
                code: ReplyCode::CircuitOpen,
                message,
            },
        )
        .await;
        return;
    }
    let tcp = match dial(target).await {
        Ok(t) => {
            if matches!(gate, Gate::Probe) {
                info!("{} answers again: circuit closed", target.local);
            }
            target.record(true);
            t
        }
        Err((code, message)) => {
            failed();
            warn!(visitor = %preface.visitor, "{message}: is the local service running?");
            if let Some(cool) = target.record(false) {
                warn!(
                    "{} keeps failing: answering 502 at once for {:.1} s (circuit open), then probing",
                    target.local,
                    cool.as_secs_f64()
                );
            }
            reply(&mut send, Reply::Failed { code, message }).await;
            return;
        }
    };
    let mut out = BytesMut::with_capacity(8);
    Reply::Connected.encode(&mut out);
    if send.write_chunk(out.freeze()).await.is_err() {
        return;
    }
    let observer =
        (target.http && monitor.observe).then(|| observer(&monitor, target, preface.visitor));
    let end = splice_tapped(tcp, &mut send, &mut recv, buf.freeze(), &observer).await;
    if let Some(o) = &observer {
        o.finish();
    }
    match end {
        Ok(SpliceEnd::Reusable(tcp)) => target.put_idle(tcp),
        Ok(SpliceEnd::Closed) => {}
        Err(e) => debug!(visitor = %preface.visitor, "stream ended: {e}"),
    }
}

fn observer(monitor: &Arc<Monitor>, target: &Target, visitor: SocketAddr) -> Observer {
    Observer::new(
        monitor.clone(),
        target.name.clone(),
        target.local_name.clone(),
        visitor,
        target.metrics.clone(),
    )
}

async fn reply(send: &mut SendStream, r: Reply) {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    if send.write_chunk(out.freeze()).await.is_ok() {
        let _ = send.finish();
    }
}

async fn dial(target: &Target) -> Result<TcpStream, (ReplyCode, String)> {
    if let Some(tcp) = target.take_idle() {
        return Ok(tcp);
    }
    let mut last = (
        ReplyCode::Unreachable,
        format!("{} did not resolve to any address", target.local),
    );
    let first = target.preferred.load(Ordering::Relaxed);
    let n = target.addrs.len();
    for i in (0..n).map(|k| (first + k) % n) {
        let addr = &target.addrs[i];
        let limit = target.policy.connect_timeout;
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                if i != first {
                    target.preferred.store(i, Ordering::Relaxed);
                }
                return Ok(tcp);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = (
                    ReplyCode::Refused,
                    format!("connection refused by {} ({addr})", target.local),
                );
            }
            Ok(Err(e)) => {
                last = (
                    ReplyCode::Unreachable,
                    format!("cannot connect to {} ({addr}): {e}", target.local),
                )
            }
            Err(_) => {
                last = (
                    ReplyCode::TimedOut,
                    format!(
                        "connecting to {} ({addr}) timed out after {limit:?}",
                        target.local
                    ),
                )
            }
        }
    }
    Err(last)
}
