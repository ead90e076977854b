//! The client's `--metrics ADDR`: Prometheus text at `/metrics`, `/healthz`
//! and `/readyz` (ready while online). Per-tunnel counters come from the
//! observer (`observe`); the connection's path (RTT, congestion window,
//! packets lost) is read at scrape time from the connection the client
//! holds in the [`Monitor`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::StatusCode;
use prometheus_client::encoding::DescriptorEncoder;
use tunnel_lib::admin::{self, Body};
use tunnel_lib::metrics::{const_counter as counter, const_gauge as gauge};

use crate::observe::Monitor;

/// Reads the live connection at each scrape.
/// Weak: the monitor owns the registry this collector sits in.
struct Live(std::sync::Weak<Monitor>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl prometheus_client::collector::Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(m) = self.0.upgrade() else {
            return Ok(());
        };
        let conn = m.conn.load();
        gauge(
            &mut enc,
            "online",
            "1 while connected to the server",
            f64::from(u8::from(conn.is_some())),
        )?;
        counter(
            &mut enc,
            "streams",
            "Data streams (visitor connections) served",
            m.streams_total.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut enc,
            "streams_open",
            "Data streams open now",
            m.streams_open.load(Ordering::Relaxed).max(0) as f64,
        )?;
        if let Some(c) = conn.as_deref() {
            let p = c.stats().path;
            gauge(
                &mut enc,
                "rtt_seconds",
                "The server connection's smoothed round-trip time",
                p.rtt.as_secs_f64(),
            )?;
            gauge(
                &mut enc,
                "congestion_window_bytes",
                "The server connection's congestion window",
                p.cwnd as f64,
            )?;
            counter(
                &mut enc,
                "lost_packets",
                "Packets lost on the server connection",
                p.lost_packets,
            )?;
            counter(
                &mut enc,
                "sent_packets",
                "Packets sent on the server connection",
                p.sent_packets,
            )?;
        }
        let open = m.targets.load().as_ref().map_or(0, |t| {
            t.values().filter(|t| t.circuit_open().is_some()).count()
        });
        gauge(
            &mut enc,
            "circuits_open",
            "Local services answered 502 at once (circuit breaker open)",
            open as f64,
        )?;
        Ok(())
    }
}

/// The routes, over `monitor`'s registry (which gets the live collector).
pub fn handler(
    monitor: Arc<Monitor>,
) -> Option<
    impl Fn(hyper::Request<hyper::body::Incoming>) -> std::future::Ready<hyper::Response<Body>>
        + Send
        + Sync
        + 'static,
> {
    let registry = monitor.metrics.as_ref()?.registry.clone();
    registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register_collector(Box::new(Live(Arc::downgrade(&monitor))));
    Some(move |req: hyper::Request<hyper::body::Incoming>| {
        let m = &monitor;
        let resp = match req.uri().path() {
            "/metrics" => {
                let text = tunnel_lib::metrics::encode(
                    &registry.lock().unwrap_or_else(|p| p.into_inner()),
                );
                admin::full(StatusCode::OK, admin::METRICS_CONTENT_TYPE, text)
            }
            "/healthz" => admin::text(StatusCode::OK, "ok\n"),
            "/readyz" if m.conn.load().is_some() => admin::text(StatusCode::OK, "online\n"),
            "/readyz" => admin::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not connected to the server\n",
            ),
            _ => admin::text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz and /readyz\n",
            ),
        };
        std::future::ready(resp)
    })
}
