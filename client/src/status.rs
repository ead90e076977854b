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

/// Why the client stopped, each with its exit code (`exit_code`; the
/// README's table): a script tells "fix the token" from "try later".
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server refused the token. Exit 77 (EX_NOPERM).
    #[error("{0}")]
    Unauthorized(String),
    /// Client and server speak different protocol versions. Exit 76
    /// (EX_PROTOCOL).
    #[error("{0}")]
    VersionMismatch(String),
    /// The name asked for is held by another client. Exit 75 (EX_TEMPFAIL:
    /// it may be free later).
    #[error("{0}")]
    NameTaken(String),
    /// The name asked for is not one the server gives. Exit 65 (EX_DATAERR).
    #[error("{0}")]
    InvalidName(String),
    /// The server refused for another reason (a limit of the token). Exit 75
    /// (EX_TEMPFAIL).
    #[error("{0}")]
    Refused(String),
    /// The settings cannot work (a bad address, an unreadable file, a
    /// certificate that does not load). Exit 78 (EX_CONFIG).
    #[error("{0}")]
    Config(String),
    /// No connection for `--give-up-after`. Exit 69 (EX_UNAVAILABLE).
    #[error("{0}")]
    Unreachable(String),
}

impl ClientError {
    /// The process's exit code for this error (sysexits.h); 2 is clap's, for
    /// a command line it cannot parse, and 1 anything unforeseen.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unauthorized(_) => 77,
            ClientError::VersionMismatch(_) => 76,
            ClientError::NameTaken(_) | ClientError::Refused(_) => 75,
            ClientError::InvalidName(_) => 65,
            ClientError::Config(_) => 78,
            ClientError::Unreachable(_) => 69,
        }
    }
}

pub(crate) enum Outcome {
    Shutdown,
    Lost(String),
    /// The server is draining: reconnect now, let the old connection's
    /// streams finish.
    GoingAway(String),
    Fatal(ClientError),
}
