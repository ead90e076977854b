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
