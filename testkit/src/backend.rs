//! The built-in backend of the benchmarks (`benches/path.rs`, the load
//! harness's fallback, the names harness): as little work per request as an
//! HTTP server can do, so the tunnel's cost is what is measured.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SMALL: usize = 100;
pub const LARGE: usize = 1 << 20;

/// A keep-alive HTTP/1.1 backend: `GET /1m` answers 1 MiB, any other path
/// 100 bytes. Runs until `stop`, with its connections.
pub async fn backend(listener: TcpListener, stop: CancellationToken) {
    // Each response in two forms: keep-alive, and `Connection: close` for a
    // request that asked to close (wrk reuses a connection unless the
    // response says it closes).
    let response = |len: usize, close: bool| -> &'static [u8] {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n{connection}\r\n").into_bytes();
        r.resize(r.len() + len, b'x');
        Box::leak(r.into_boxed_slice())
    };
    let small = [response(SMALL, false), response(SMALL, true)];
    let big = [response(LARGE, false), response(LARGE, true)];
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
            _ = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let stop = stop.clone();
        tracker.spawn(async move {
            let mut tcp = tcp;
            let mut buf = vec![0u8; 8192];
            let mut have = 0;
            loop {
                let n = tokio::select! {
                    r = tcp.read(&mut buf[have..]) => match r { Ok(n) if n > 0 => n, _ => return },
                    _ = stop.cancelled() => return,
                };
                have += n;
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = &buf[..end];
                    let close = head
                        .windows(17)
                        .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                    let sizes = if head.starts_with(b"GET /1m") {
                        &big
                    } else {
                        &small
                    };
                    if tcp.write_all(sizes[close as usize]).await.is_err() || close {
                        return;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}
