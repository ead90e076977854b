//! A circuit breaker, pure: closed (dial), open until a moment (fail at
//! once), then half-open (one dial probes; the others still fail at once).
//! Every method takes the time, so the tests drive it with their own clock.

use std::time::{Duration, Instant};

/// A circuit breaker per tunnel: closed (dial), open until a moment (fail
/// at once), then half-open (one dial probes; others still fail at once).
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// How many times in a row it opened (the cool-down doubles).
    opened: u32,
    probing: bool,
}

pub(crate) enum Gate {
    Dial,
    /// This dial is the probe of a half-open circuit.
    Probe,
    Open(Duration),
}

impl Breaker {
    /// While open: how long until the next probe.
    pub(crate) fn open_for(&self, now: Instant) -> Option<Duration> {
        self.open_until.map(|u| u.saturating_duration_since(now))
    }

    /// Whether a dial may go now (and whether it is the probe).
    pub(crate) fn gate(&mut self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Dial,
            Some(until) if now < until => Gate::Open(until - now),
            Some(_) if self.probing => Gate::Open(Duration::ZERO),
            Some(_) => {
                self.probing = true;
                Gate::Probe
            }
        }
    }

    /// Records a dial's outcome: `after` failures in a row (0: never) open
    /// the circuit for `cooldown`, doubling each time it opens again (at
    /// most 16 times). Returns the cool-down if it opened.
    pub(crate) fn record(
        &mut self,
        ok: bool,
        after: u32,
        cooldown: Duration,
        now: Instant,
    ) -> Option<Duration> {
        self.probing = false;
        if ok {
            *self = Breaker::default();
            return None;
        }
        self.failures += 1;
        if after == 0 || self.failures < after && self.open_until.is_none() {
            return None;
        }
        let cool = cooldown * (1u32 << self.opened.min(4));
        self.opened += 1;
        self.open_until = Some(now + cool);
        Some(cool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(5);

    #[test]
    fn three_failures_open_it_and_a_probe_closes_it() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        assert!(b.record(false, 3, COOL, t0).is_none());
        assert!(b.record(false, 3, COOL, t0).is_none());
        assert_eq!(b.record(false, 3, COOL, t0), Some(COOL));
        assert!(matches!(b.gate(t0), Gate::Open(d) if d == COOL));
        assert_eq!(
            b.open_for(t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(3))
        );
        // Cooled down: one probe goes, the others still fail at once.
        let later = t0 + COOL;
        assert!(matches!(b.gate(later), Gate::Probe));
        assert!(matches!(b.gate(later), Gate::Open(d) if d.is_zero()));
        assert!(b.record(true, 3, COOL, later).is_none());
        assert!(matches!(b.gate(later), Gate::Dial));
        assert_eq!(b.open_for(later), None);
    }

    #[test]
    fn a_failed_probe_reopens_it_for_twice_as_long_up_to_sixteen_times() {
        let mut now = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.record(false, 3, COOL, now);
        }
        let mut cools = Vec::new();
        for _ in 0..6 {
            now += Duration::from_secs(3600);
            assert!(matches!(b.gate(now), Gate::Probe));
            cools.push(b.record(false, 3, COOL, now).unwrap().as_secs());
        }
        assert_eq!(cools, [10, 20, 40, 80, 80, 80]);
    }

    #[test]
    fn zero_failures_means_never() {
        let now = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..100 {
            assert!(b.record(false, 0, COOL, now).is_none());
        }
        assert!(matches!(b.gate(now), Gate::Dial));
    }
}
