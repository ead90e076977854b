//! Per-token limits: what one token's clients may hold together, so that
//! one token holder cannot take every client slot, name or certificate
//! order from the rest of the team. Anonymous clients (a server without
//! tokens) are bounded by the server-wide limits only. Sessions and tunnels
//! are counted in `sessions`, names in `names::Names`.

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
