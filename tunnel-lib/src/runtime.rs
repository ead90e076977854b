//! The tokio runtime both binaries run on.

/// Builds the runtime: `threads` 0 (the default, `--worker-threads` /
/// `TUNNEL_WORKER_THREADS`) is a current-thread runtime, N a multi-thread
/// runtime with N workers.
///
/// One thread per process measured best on 2 cores shared by the tunnel's
/// two processes, the backend and the load generator (BENCHMARKS.md): a
/// multi-thread runtime pays cross-thread wake-ups on every stream event.
/// On a large dedicated server, set it to the core count.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// A binary's `main` body: builds the runtime and runs `body` on it to the
/// end. The one place that blocks on a runtime, outside any async code.
pub fn run_main<F>(threads: usize, body: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = std::process::ExitCode>,
{
    raise_fd_limit();
    match build(threads) {
        #[allow(clippy::disallowed_methods)]
        Ok(rt) => rt.block_on(body),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Returns when the process is asked to stop: Ctrl-C, or SIGTERM on Unix.
/// Called again, it waits for the next such signal (the handlers stay
/// installed once made).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Raises the soft limit on open files to the hard limit: each visitor,
/// local connection and UDP flow is a descriptor, and the usual soft limit
/// (1 024 in a shell) is far below what the process may have. Returns the
/// (old, new) soft limits, or `None` where there is no such limit.
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
        if soft < hard {
            // macOS caps it below RLIM_INFINITY: the crate knows how far.
            let new = rlimit::increase_nofile_limit(hard).ok()?;
            return Some((soft, new));
        }
        Some((soft, soft))
    }
    #[cfg(not(unix))]
    None
}

/// What an accept loop does when `accept` fails (EMFILE, ENFILE, ENOBUFS):
/// waits, twice as long each time up to a second, and logs the first
/// failure of a streak only, so a full descriptor table neither spins the
/// loop nor floods the log.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    streak: u32,
}

impl AcceptBackoff {
    /// After an accepted connection.
    pub fn accepted(&mut self) {
        self.streak = 0;
    }

    /// After a failed accept of `what`: how long to wait before the next.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) -> std::time::Duration {
        if self.streak == 0 {
            let hint = if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) {
                ": the process has as many files open as it may; raise LimitNOFILE (systemd) \
                 or `ulimit -n`, or lower --max-visitors"
            } else {
                ""
            };
            tracing::warn!("{what}: accept failed: {e}{hint}; backing off until it succeeds");
        }
        self.streak = self.streak.saturating_add(1);
        std::time::Duration::from_millis(10u64 << self.streak.min(7))
            .min(std::time::Duration::from_secs(1))
    }
}
