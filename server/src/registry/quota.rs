//! Per-token limits: what one token's clients may hold together, so that
//! one token holder cannot take every client slot, name or certificate
//! order from the rest of the team. Anonymous clients (a server without
//! tokens) are bounded by the server-wide limits only.

use dashmap::DashMap;

use tunnel_lib::proto::ErrorCode;

use super::{Owner, Refusal, Registry};

/// The limits of each token (0: no limit). Config keys
/// `max_sessions_per_token`, `max_tunnels_per_token`,
/// `max_names_per_token` and `acme_orders_per_token_per_hour`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// Client connections at once.
    pub sessions: usize,
    /// Tunnels at once, across its connections.
    pub tunnels: usize,
    /// Names and ports held at once: claimed by a live tunnel, or reserved
    /// for a client's return.
    pub names: usize,
    /// Certificate orders (ACME) started per hour.
    pub acme_orders_per_hour: u32,
}

impl Default for TokenLimits {
    fn default() -> TokenLimits {
        TokenLimits {
            sessions: 32,
            tunnels: 256,
            names: 1024,
            acme_orders_per_hour: 10,
        }
    }
}

/// How many names each token holds (claimed or reserved). Kept by the
/// registry at each claim and by the reservation cache's eviction
/// listener; read at each new claim.
#[derive(Default)]
pub(super) struct Held(DashMap<usize, usize>);

impl Held {
    pub(super) fn add(&self, owner: Owner) {
        if let Owner::Token(t) = owner {
            *self.0.entry(t).or_insert(0) += 1;
        }
    }

    pub(super) fn sub(&self, owner: Owner) {
        if let Owner::Token(t) = owner {
            self.0.remove_if_mut(&t, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    pub(super) fn count(&self, owner: Owner) -> usize {
        match owner {
            Owner::Token(t) => self.0.get(&t).map_or(0, |n| *n),
            Owner::Anonymous => 0,
        }
    }
}

impl Registry {
    /// Whether `owner` may hold one more name.
    pub(super) fn within_names(&self, owner: Owner) -> Result<(), Refusal> {
        let max = self.limits.names;
        if max == 0 || self.held.count(owner) < max {
            return Ok(());
        }
        // Lapsed reservations are counted off lazily: settle them first.
        self.reserved.run_pending_tasks();
        if self.held.count(owner) < max {
            return Ok(());
        }
        Err(Refusal {
            code: ErrorCode::LimitReached,
            message: format!(
                "this token holds {max} names (in use, or kept for its clients' return), the most \
                 the server allows (max_names_per_token): reuse a --subdomain, or wait for names \
                 to lapse"
            ),
        })
    }
}
