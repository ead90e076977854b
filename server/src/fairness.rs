//! Visitor fairness: no single IP address may hold all the visitor slots or
//! open connections faster than a configured rate. Decided at accept, before
//! a task is spawned; every method is synchronous.
//!
//! - Open connections per IP: a `DashMap` counter, decremented by the
//!   [`Slot`] guard the connection task holds. An entry lives only while its
//!   IP has connections open, so the map is bounded by `--max-visitors`.
//! - New connections per IP per second: a token bucket per IP in a moka
//!   cache (idle entries expire after 10 s, at most 65 536 of them), so a
//!   scan from many addresses cannot grow it without bound.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use moka::sync::Cache;

/// Why a visitor was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its IP already holds `max` connections.
    TooManyOpen { max: usize },
    /// Its IP opened connections faster than `rate` per second.
    TooFast { rate: u32 },
}

pub struct Fairness {
    /// Open connections per IP at most (0: no limit).
    max_open: usize,
    /// New connections per IP per second (0: no limit); bursts up to twice.
    rate: u32,
    open: Arc<DashMap<IpAddr, usize>>,
    buckets: Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One open connection of an IP; dropping it frees the slot.
pub struct Slot {
    ip: IpAddr,
    open: Option<Arc<DashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.remove_if_mut(&self.ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

impl Fairness {
    pub fn new(max_open: usize, rate: u32) -> Fairness {
        Fairness {
            max_open,
            rate,
            open: Arc::new(DashMap::new()),
            buckets: Cache::builder()
                .time_to_idle(Duration::from_secs(10))
                .max_capacity(65_536)
                .build(),
        }
    }

    /// Admits a new connection from `ip`, or says why not. An IPv6
    /// address counts as its /64 (one subscriber's prefix: a host picks
    /// any of its 2⁶⁴ addresses at will), an IPv4-mapped one as IPv4.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = source_key(ip);
        if self.rate > 0 {
            let rate = f64::from(self.rate);
            let bucket = self.buckets.get_with(ip, || {
                Arc::new(Mutex::new(Bucket {
                    tokens: rate * 2.0,
                    at: Instant::now(),
                }))
            });
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate * 2.0);
            b.at = now;
            if b.tokens < 1.0 {
                return Err(Refused::TooFast { rate: self.rate });
            }
            b.tokens -= 1.0;
        }
        if self.max_open == 0 {
            return Ok(Slot { ip, open: None });
        }
        let mut n = self.open.entry(ip).or_insert(0);
        if *n >= self.max_open {
            return Err(Refused::TooManyOpen { max: self.max_open });
        }
        *n += 1;
        drop(n);
        Ok(Slot {
            ip,
            open: Some(self.open.clone()),
        })
    }

    /// IPs with connections open (for tests and metrics).
    pub fn ips_open(&self) -> usize {
        self.open.len()
    }
}

/// The address a limit counts: IPv4 as is, IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What a plain-http visitor turned away reads before the close.
pub fn refusal_response(why: Refused) -> Vec<u8> {
    let detail = match why {
        Refused::TooManyOpen { max } => {
            format!("Your address has {max} connections open to this server, the most it allows. Close some and retry.")
        }
        Refused::TooFast { rate } => format!(
            "Your address opened connections faster than {rate} per second. Slow down and retry."
        ),
    };
    let mut page = crate::respond::ErrorPage::new(
        429,
        "too-many-connections",
        "Too many connections",
        crate::respond::escape(&detail),
    )
    .render(true, false)
    .to_vec();
    // `Retry-After` before the end of the head.
    if let Some(end) = page.windows(4).position(|w| w == b"\r\n\r\n") {
        page.splice(end + 2..end + 2, b"Retry-After: 1\r\n".iter().copied());
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_are_counted_and_released() {
        let f = Fairness::new(2, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = f.admit(ip).unwrap();
        let _b = f.admit(ip).unwrap();
        assert_eq!(f.admit(ip).err(), Some(Refused::TooManyOpen { max: 2 }));
        assert!(
            f.admit("192.0.2.2".parse().unwrap()).is_ok(),
            "other IPs are not affected"
        );
        drop(a);
        assert!(f.admit(ip).is_ok());
    }

    /// Issue 22, item 8: 600 addresses of one /64 passed a cap of 512.
    #[test]
    fn an_ipv6_prefix_counts_as_one_source() {
        let f = Fairness::new(512, 0);
        let slots: Vec<_> = (0..600u32)
            .map_while(|i| {
                f.admit(
                    format!("2001:db8:1:2::{:x}:{:x}", i >> 8, i & 0xff)
                        .parse()
                        .unwrap(),
                )
                .ok()
            })
            .collect();
        assert_eq!(slots.len(), 512);
        assert!(
            f.admit("2001:db8:1:3::1".parse().unwrap()).is_ok(),
            "another /64"
        );
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
    }

    #[test]
    fn the_map_forgets_ips_without_connections() {
        let f = Fairness::new(5, 0);
        let s = f.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(f.ips_open(), 1);
        drop(s);
        assert_eq!(f.ips_open(), 0);
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_refusals() {
        let f = Fairness::new(0, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..100).filter(|_| f.admit(ip).is_ok()).count();
        assert!((20..=22).contains(&admitted), "{admitted}");
        assert_eq!(f.admit(ip).err(), Some(Refused::TooFast { rate: 10 }));
    }

    #[test]
    fn the_refusal_is_a_429_with_retry_after() {
        let r = String::from_utf8(refusal_response(Refused::TooManyOpen { max: 3 })).unwrap();
        assert!(r.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{r}");
        assert!(
            r.contains("\r\nRetry-After: 1\r\n") && r.contains("Connection: close"),
            "{r}"
        );
    }
}
