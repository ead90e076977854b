//! Exponential backoff with full jitter (AWS architecture blog, "Exponential
//! Backoff And Jitter"): sleep a uniform random time in `[0, min(cap, base·2ⁿ)]`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let ceiling = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(fastrand::u64(0..=ms))
    }

    /// After a success: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_growing_ceiling_and_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut saw_nonzero = false;
        for n in 0..50u32 {
            let d = b.next_delay();
            let ceiling =
                Duration::from_millis(100 * (1u64 << n.min(20))).min(Duration::from_secs(2));
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            saw_nonzero |= d > Duration::ZERO;
        }
        assert!(saw_nonzero);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
