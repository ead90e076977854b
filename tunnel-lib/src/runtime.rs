//! The tokio runtime both binaries run on.

/// Builds the runtime from `TUNNEL_WORKER_THREADS`: `0` (the default) is a
/// current-thread runtime, `N` a multi-thread runtime with N workers.
///
/// One thread per process measured best on 2 cores shared by the tunnel's
/// two processes, the backend and the load generator (BENCHMARKS.md): a
/// multi-thread runtime pays cross-thread wake-ups on every stream event.
/// On a large dedicated server, set it to the core count.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let threads: usize = std::env::var("TUNNEL_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
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
pub fn run_main<F>(body: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = std::process::ExitCode>,
{
    match build() {
        #[allow(clippy::disallowed_methods)]
        Ok(rt) => rt.block_on(body),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
