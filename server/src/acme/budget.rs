//! How many certificate orders may start: at most [`ORDERS_PER_HOUR`] in
//! all (the CA's limits are the server's), and at most the token limit's
//! `acme_orders_per_hour` for the names of one token, so one token holder
//! cannot spend the budget of the whole team. Renewals count in all only.
//!
//! Also the names that got the default certificate because an order could
//! not start or failed: the worker orders them again by itself when the
//! budgets and their backoff allow ([`Budget::next_retry`]).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::registry::Owner;

/// New orders per window in all (Let's Encrypt allows 300 per 3 hours).
pub const ORDERS_PER_HOUR: usize = 60;

/// Order start times in a rolling window.
#[derive(Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// When one more may start (`now` if it may now), with at most `max`
    /// per `window`.
    fn free_at(&mut self, now: Instant, window: Duration, max: usize) -> Instant {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.0.pop_front();
        }
        if max == 0 || self.0.len() < max {
            return now;
        }
        self.0[self.0.len() - max] + window
    }
}

pub(super) struct Budget {
    window: Duration,
    per_token: usize,
    all: Window,
    tokens: HashMap<usize, Window>,
    /// Names serving the default certificate, waiting for an order.
    pub(super) pending: HashMap<String, Owner>,
}

impl Budget {
    /// `per_token` orders per `window` for each token (0: no limit).
    pub(super) fn new(window: Duration, per_token: u32) -> Budget {
        Budget {
            window,
            per_token: per_token as usize,
            all: Window::default(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// When an order for `owner` may start (`None`: a renewal, counted in
    /// all only).
    pub(super) fn free_at(&mut self, owner: Option<Owner>, now: Instant) -> Instant {
        let all = self.all.free_at(now, self.window, ORDERS_PER_HOUR);
        match owner {
            Some(Owner::Token(t)) if self.per_token > 0 => {
                let own =
                    self.tokens
                        .entry(t)
                        .or_default()
                        .free_at(now, self.window, self.per_token);
                all.max(own)
            }
            _ => all,
        }
    }

    /// Whether the next order's wait is the token's own budget.
    pub(super) fn token_bound(&mut self, owner: Option<Owner>, now: Instant) -> bool {
        let all = self.all.free_at(now, self.window, ORDERS_PER_HOUR);
        self.free_at(owner, now) > all
    }

    /// An order for `owner` starts now.
    pub(super) fn spend(&mut self, owner: Option<Owner>, now: Instant) {
        self.all.0.push_back(now);
        if let Some(Owner::Token(t)) = owner {
            self.tokens.entry(t).or_default().0.push_back(now);
        }
        // Tokens with nothing in the window take no room.
        let window = self.window;
        self.tokens
            .retain(|_, w| w.0.back().is_some_and(|t| now.duration_since(*t) < window));
    }

    /// The earliest time a pending name may be ordered again, given when
    /// each name's backoff ends.
    pub(super) fn next_retry(
        &mut self,
        backoff_until: impl Fn(&str) -> Option<Instant>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let pending: Vec<(String, Owner)> =
            self.pending.iter().map(|(h, o)| (h.clone(), *o)).collect();
        pending
            .into_iter()
            .map(|(host, owner)| {
                let free = self.free_at(Some(owner), now);
                backoff_until(&host).map_or(free, |b| b.max(free))
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_spends_its_share_and_not_the_others() {
        let mut b = Budget::new(Duration::from_secs(3600), 2);
        let now = Instant::now();
        let (a, c) = (Some(Owner::Token(0)), Some(Owner::Token(1)));
        b.spend(a, now);
        b.spend(a, now);
        assert!(b.free_at(a, now) > now);
        assert!(b.token_bound(a, now));
        assert_eq!(b.free_at(c, now), now);
        assert_eq!(b.free_at(None, now), now, "renewals go on");
        assert_eq!(b.free_at(a, now), now + Duration::from_secs(3600));
    }

    #[test]
    fn the_server_wide_budget_binds_everyone() {
        let mut b = Budget::new(Duration::from_secs(3600), 0);
        let now = Instant::now();
        for i in 0..ORDERS_PER_HOUR {
            b.spend(Some(Owner::Token(i)), now);
        }
        assert!(b.free_at(Some(Owner::Token(999)), now) > now);
        assert!(b.free_at(None, now) > now);
    }
}
