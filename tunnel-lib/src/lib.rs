//! Shared code of the tunnel.
//!
//! # Layout
//!
//! Two sans-IO cores take bytes and return decisions; they know nothing of
//! sockets, tasks or time, so they are tested exhaustively (round trips, input
//! split at every byte) and fuzzed:
//!
//! - [`proto`]: the control protocol (hello, register, errors, going away) and
//!   the per-stream preface/reply, length-delimited and versioned.
//! - [`http1`]: HTTP/1.1 request-head parsing with the RFC 9112 rules that
//!   `httparse` leaves to us, body framing state machines, response-head
//!   parsing, and re-serialisation of the head we forward.
//!
//! With the default `io` feature come the thin async adapters both binaries
//! share:
//!
//! - [`tls`]: certificates (dev self-signed generation, PEM loading) and the
//!   client's server-verification modes (webpki roots, trust file, pinned
//!   SHA-256 fingerprint). One crypto provider: ring.
//! - [`quic`]: quinn endpoint and transport configuration from [`limits`].
//! - [`io`]: stream readers and the splice between a QUIC stream and a TCP
//!   socket, plus listen helpers (backlog, TCP_NODELAY).
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`paths`]: where the dev server keeps its state (and the client finds it).
//! - [`admin`]: the HTTP server of the admin listener and the inspector.
//! - [`metrics`]: per-tunnel Prometheus counters both ends keep.
//! - [`logging`]: `--log-format text|json`.
//! - [`runtime`]: the tokio runtime of both binaries (`--worker-threads`).
//! - [`settings`]: flags over the config file, each setting declared once.
//! - [`tuning`]: the benchmark levers both binaries take as settings.

#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod http1;
pub mod limits;
pub mod proto;

/// `0.1.0 (commit abc123def456)`: what `--version` prints. The commit comes
/// from `git` at build time, or `TUNNEL_COMMIT` where there is no checkout
/// (a container build).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TUNNEL_COMMIT"),
    ")"
);

#[cfg(feature = "io")]
pub mod admin;
#[cfg(feature = "io")]
pub mod backoff;
#[cfg(feature = "io")]
pub mod h2x;
#[cfg(feature = "io")]
pub mod io;
#[cfg(feature = "io")]
pub mod logging;
#[cfg(feature = "io")]
pub mod metrics;
#[cfg(feature = "io")]
pub mod paths;
#[cfg(feature = "io")]
pub mod quic;
#[cfg(feature = "io")]
pub mod runtime;
#[cfg(feature = "io")]
pub mod settings;
#[cfg(feature = "io")]
pub mod tls;
#[cfg(feature = "io")]
pub mod toml_file;
#[cfg(feature = "io")]
pub mod tuning;

pub use error::ProtoError;
