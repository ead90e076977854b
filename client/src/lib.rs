//! tunnel-client: holds one QUIC connection to a tunnel-server (in an
//! `ArcSwapOption`), registers tunnels on it, reconnects on its own with
//! exponential backoff and full jitter, and splices each stream the server
//! opens onto a fresh connection to the local service.
//!
//! # Layout
//! - [`settings`]: the command line and settings (flags over the file);
//!   [`app`]: the process around the client (inspector, metrics, screen).
//! - [`Config`], [`TunnelSpec`]: what to expose and where.
//! - `connect`: one connection attempt: trust, handshake, hello, registrations.
//! - `forward`: one data stream ↔ one local connection (TCP, or TLS to a
//!   local https service: `upstream`).
//! - `supervisor`: [`run`] and [`run_with`], the reconnect loop; reports
//!   [`Status`] on a watch channel and returns only after every task it
//!   started has ended.
//!
//! This file is the map: no module below imports anything defined here.

#![forbid(unsafe_code)]

pub mod address;
pub mod app;
mod breaker;
mod config;
pub mod config_file;
mod connect;
mod forward;
mod h2local;
pub mod inspector;
pub mod liveness;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod settings;
mod status;
mod supervisor;
mod target;
mod transport;
pub mod tui;
mod udp;
mod upstream;

pub use config::{Config, TunnelSpec};
pub use config::{Transport, Upstream};
pub use status::{ClientError, Status, TunnelInfo};
pub use target::LocalPolicy;
pub use upstream::UpstreamTrust;

pub use supervisor::{run, run_with};
