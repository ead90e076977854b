//! The test kit: what `server/tests` and the load harness (`benches`)
//! share, written once.
//!
//! - [`process`]: a child process with its output read line by line, in
//!   two forms: [`process::Proc`] for async tests, [`process::Guard`] with
//!   [`process::spawn_lines`] for the load harness, which runs its
//!   processes outside any runtime on purpose.
//! - [`ready`]: the server's ready line (`tunnel-server ready: http=…`).
//! - [`procfs`]: what `/proc` says of a process (descriptors, CPU, memory).
//! - [`netns`]: a network namespace with a veth pair, loss and address
//!   moves.
//! - [`net`]: free ports and waiting for a listener.
//! - [`backend`]: a keep-alive HTTP/1.1 backend (100 B or 1 MiB answers).

#![forbid(unsafe_code)]

pub mod backend;
pub mod net;
pub mod netns;
pub mod process;
pub mod procfs;
pub mod ready;

/// How long a test waits for anything a process should do promptly.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
