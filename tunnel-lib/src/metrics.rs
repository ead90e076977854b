//! What both ends count per tunnel, in Prometheus families
//! (`prometheus-client`), with bounded label cardinality.
//!
//! The hot path never looks a label set up: a tunnel gets its counters once
//! ([`Tunnels::tunnel`]) and keeps them in its own rule, so counting an
//! exchange is a few atomic adds and two histogram observations. A label
//! set lives while some tunnel holds it; at most [`MAX_TUNNEL_LABELS`]
//! names are labelled, the rest count under `tunnel="other"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Tunnel names labelled at once; past it, `tunnel="other"`.
pub const MAX_TUNNEL_LABELS: usize = 1000;

/// The label value for the tunnels past the cap.
pub const OTHER: &str = "other";

/// Latency buckets, seconds: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tunnel: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByteLabels {
    tunnel: String,
    direction: &'static str,
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// The status class label of `status`.
pub fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// The per-tunnel families and the exchange histograms of one process.
#[derive(Debug)]
pub struct Tunnels {
    requests: Family<RequestLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    duration: Histogram,
    ttfb: Histogram,
    /// Label sets alive, by name: how many tunnels hold each.
    live: Mutex<HashMap<Box<str>, usize>>,
}

impl Tunnels {
    /// Registers the families in `registry` (names are prefixed by it).
    pub fn register(registry: &mut Registry) -> Arc<Tunnels> {
        let t = Tunnels {
            requests: Family::default(),
            bytes: Family::default(),
            duration: Histogram::new(LATENCY_BUCKETS),
            ttfb: Histogram::new(LATENCY_BUCKETS),
            live: Mutex::new(HashMap::new()),
        };
        registry.register(
            "requests",
            "HTTP exchanges by tunnel and status class",
            t.requests.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed by tunnel: in = towards the local service, out = towards visitors",
            t.bytes.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "From a request's head to the end of its response",
            t.duration.clone(),
        );
        registry.register(
            "time_to_first_byte_seconds",
            "From a request's head to the first byte of its response",
            t.ttfb.clone(),
        );
        Arc::new(t)
    }

    /// The counters of tunnel `name`, held as long as the tunnel lives.
    pub fn tunnel(self: &Arc<Self>, name: &str) -> TunnelMetrics {
        let label = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let n = live.len();
            match live.get_mut(name) {
                Some(count) => {
                    *count += 1;
                    Some(name)
                }
                None if n < MAX_TUNNEL_LABELS => {
                    live.insert(name.into(), 1);
                    Some(name)
                }
                None => None,
            }
        };
        let tunnel = label.unwrap_or(OTHER).to_owned();
        let requests = CLASSES.map(|class| {
            self.requests.get_or_create_owned(&RequestLabels {
                tunnel: tunnel.clone(),
                class,
            })
        });
        let bytes = |direction| {
            self.bytes.get_or_create_owned(&ByteLabels {
                tunnel: tunnel.clone(),
                direction,
            })
        };
        TunnelMetrics {
            bytes_in: bytes("in"),
            bytes_out: bytes("out"),
            requests,
            owner: label.map(|_| (self.clone(), tunnel.clone().into_boxed_str())),
        }
    }

    fn release(&self, name: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let gone = match live.get_mut(name) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                live.remove(name);
                true
            }
            None => false,
        };
        drop(live);
        if gone {
            for class in CLASSES {
                self.requests.remove(&RequestLabels {
                    tunnel: name.to_owned(),
                    class,
                });
            }
            for direction in ["in", "out"] {
                self.bytes.remove(&ByteLabels {
                    tunnel: name.to_owned(),
                    direction,
                });
            }
        }
    }

    /// Records one exchange's timings (all tunnels together).
    pub fn observe(&self, duration: Duration, ttfb: Option<Duration>) {
        self.duration.observe(duration.as_secs_f64());
        if let Some(t) = ttfb {
            self.ttfb.observe(t.as_secs_f64());
        }
    }
}

/// One tunnel's counters (clones of the family's: counting is an atomic
/// add). Dropping the last holder of a name removes its label sets.
#[derive(Debug)]
pub struct TunnelMetrics {
    requests: [Counter; 6],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    owner: Option<(Arc<Tunnels>, Box<str>)>,
}

impl TunnelMetrics {
    /// Counts one exchange by its status.
    pub fn request(&self, status: u16) {
        self.requests[class_index(status)].inc();
    }

    /// Counters that belong to no family (tests, benchmarks).
    pub fn detached() -> TunnelMetrics {
        TunnelMetrics {
            requests: Default::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            owner: None,
        }
    }

    /// Exchanges counted so far, every class together.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(|c| c.get()).sum()
    }
}

impl Drop for TunnelMetrics {
    fn drop(&mut self) {
        if let Some((t, name)) = self.owner.take() {
            t.release(&name);
        }
    }
}

/// One gauge without labels, for a scrape-time collector.
pub fn const_gauge(
    enc: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let g = prometheus_client::metrics::gauge::ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One counter without labels, for a scrape-time collector.
pub fn const_counter(
    enc: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    let c = prometheus_client::metrics::counter::ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        out.push_str("# encoding failed\n# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_live_while_a_tunnel_holds_them_and_are_capped() {
        let mut reg = Registry::with_prefix("t");
        let t = Tunnels::register(&mut reg);
        let a = t.tunnel("a.example");
        let a2 = t.tunnel("a.example");
        a.request(200);
        a2.request(503);
        let text = encode(&reg);
        assert!(
            text.contains(r#"t_requests_total{tunnel="a.example",class="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"t_requests_total{tunnel="a.example",class="5xx"} 1"#));
        drop(a);
        assert!(encode(&reg).contains("a.example"), "still held by a2");
        drop(a2);
        assert!(
            !encode(&reg).contains("a.example"),
            "removed with its last tunnel"
        );

        let held: Vec<_> = (0..MAX_TUNNEL_LABELS)
            .map(|i| t.tunnel(&format!("n{i}")))
            .collect();
        let over = t.tunnel("one-too-many");
        over.request(200);
        let text = encode(&reg);
        assert!(!text.contains("one-too-many"));
        assert!(text.contains(r#"t_requests_total{tunnel="other",class="2xx"} 1"#));
        drop(held);
    }

    #[test]
    fn classes() {
        assert_eq!(CLASSES[class_index(101)], "1xx");
        assert_eq!(CLASSES[class_index(404)], "4xx");
        assert_eq!(CLASSES[class_index(599)], "5xx");
        assert_eq!(CLASSES[class_index(700)], "other");
    }
}
