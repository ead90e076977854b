//! What the client reports: its tunnels once online, its status over time,
//! and the errors that end it.

use thiserror::Error;

/// A live tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    pub url: String,
    pub hostname: String,
    pub local: String,
}

/// What the client is doing, for the UI and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    /// Registered; `generation` counts successful (re)connections.
    Online {
        tunnels: Vec<TunnelInfo>,
        generation: u64,
    },
    Reconnecting {
        attempt: u32,
        reason: String,
        /// When the next attempt starts (`None`: now).
        retry_at: Option<std::time::Instant>,
    },
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    VersionMismatch(String),
    #[error("{0}")]
    NameTaken(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Config(String),
}

pub(crate) enum Outcome {
    Shutdown,
    Lost(String),
    /// The server is draining: reconnect now, let the old connection's
    /// streams finish.
    GoingAway(String),
    Fatal(ClientError),
}
