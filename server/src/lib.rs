//! tunnel-server: accepts QUIC connections from tunnel clients and public
//! HTTP from visitors, and routes each request by its Host to the client
//! that registered it.
//!
//! # Layout
//! This file is the map: it declares the rooms and re-exports what `main`
//! and the tests use. No module below imports anything defined here.
//! - `server`: the composition: [`Server::bind`] builds the shared state
//!   from a [`Config`] and bound [`Listeners`]; [`Server::run`] starts and
//!   drains everything. `listeners`: the sockets and [`ServerError`].
//! - `state`: what the data path shares (`State`, [`Stats`]).
//! - `accept`: the visitor listeners' accept loop, the QUIC refusal while
//!   draining.
//! - [`config`]: configuration, defaults and validation.
//! - [`registry`]: host rules (`ArcSwap` snapshot of `Arc<Rule>`), sessions
//!   (moka), name claims (DashMap) and reservations (moka with a TTL).
//! - `session`: the QUIC accept loop (pending-handshake budgets) and one
//!   client connection: hello, auth, registrations.
//! - `edge`: one visitor connection: request side and response side, over
//!   plain TCP or TLS (`edge::tls`: ClientHello, SNI decision, passthrough).
//! - `upstream`: open a data stream to a client, its preface and reply.
//! - [`certs`]: the certificates visitors see, chosen per SNI.
//! - [`acme`]: certificates from an ACME CA (one worker task).
//! - [`fairness`]: per-IP limits on open and new visitor connections.
//! - [`respond`]: the pages the server writes itself.
//!
//! [`run`] (or [`Server::bind`] + [`Server::run`]) is what `main` calls and
//! what tests call: it takes bound listeners and a shutdown token and
//! returns only after every task it started has ended.

#![forbid(unsafe_code)]

mod accept;
mod access_log;
pub mod acme;
pub mod certs;
pub mod config;
mod edge;
pub mod fairness;
mod listeners;
mod metrics;
mod names_file;
pub mod policy;
pub mod registry;
pub mod respond;
mod server;
mod session;
pub mod settings;
pub(crate) mod state;
mod tcp;
mod udp;
mod upstream;

pub use config::{Config, ConfigError, Timeouts};
pub use listeners::{Listeners, ServerError};
pub use registry::Registry;
pub use server::{run, Server};
pub use state::Stats;
