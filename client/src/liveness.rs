//! What the client knows of its server from its own side: when it last
//! heard from it. Pure over its inputs (a receive counter and the time), so
//! it is tested with made-up clocks; `lib.rs::serve` samples the connection.
//!
//! Both ends send a keep-alive every `QUIC_KEEP_ALIVE` (1.5 s) when idle,
//! so a live server is heard from at least that often. A tick that comes
//! far later than asked means this process did not run (the laptop slept,
//! the process was stopped): what arrives right after it may be old, so it
//! does not count as hearing from the server.

use std::time::{Duration, Instant};

/// Silence after which the screen and the log say the server is not
/// answering (two keep-alive intervals).
pub const SILENT_NOTICE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Liveness {
    period: Duration,
    last_rx: u64,
    last_tick: Instant,
    heard_at: Instant,
}

impl Liveness {
    /// `period`: how often [`Liveness::observe`] is called.
    pub fn new(rx: u64, now: Instant, period: Duration) -> Liveness {
        Liveness {
            period,
            last_rx: rx,
            last_tick: now,
            heard_at: now,
        }
    }

    /// One sample of the datagrams received so far; returns how long the
    /// server has been silent.
    pub fn observe(&mut self, rx: u64, now: Instant) -> Duration {
        let slept = now.saturating_duration_since(self.last_tick) > self.period * 3;
        self.last_tick = now;
        if rx != self.last_rx {
            self.last_rx = rx;
            if !slept {
                self.heard_at = now;
            }
        }
        now.saturating_duration_since(self.heard_at)
    }

    /// When the server was last heard from.
    pub fn heard_at(&self) -> Instant {
        self.heard_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_server_that_keeps_sending_is_never_silent() {
        let t0 = Instant::now();
        let mut l = Liveness::new(0, t0, S);
        for i in 1..10u64 {
            assert_eq!(l.observe(i, t0 + S * i as u32), Duration::ZERO);
        }
    }

    #[test]
    fn silence_grows_from_the_last_packet() {
        let t0 = Instant::now();
        let mut l = Liveness::new(0, t0, S);
        l.observe(5, t0 + S);
        assert_eq!(l.observe(5, t0 + 2 * S), S);
        assert_eq!(l.observe(5, t0 + 4 * S), 3 * S);
        assert!(l.observe(5, t0 + 4 * S) >= SILENT_NOTICE);
        assert_eq!(l.heard_at(), t0 + S);
    }

    /// After a 60 s sleep, packets that were queued meanwhile are not news:
    /// the outage counts from before the sleep.
    #[test]
    fn packets_read_right_after_a_sleep_do_not_count() {
        let t0 = Instant::now();
        let mut l = Liveness::new(0, t0, S);
        l.observe(3, t0 + S);
        let woke = t0 + 61 * S;
        assert_eq!(l.observe(9, woke), 60 * S);
        assert_eq!(l.heard_at(), t0 + S);
        // Fresh packets on the next, timely tick count again.
        assert_eq!(l.observe(12, woke + S), Duration::ZERO);
    }
}
