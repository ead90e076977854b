//! The opt-in access log (`--access-log FILE`): one line per forwarded
//! request, written by its own thread through a bounded queue. A visitor
//! never waits for the disk: when the queue is full the line is dropped and
//! counted (`tunnel_server_access_log_dropped_total`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

use tunnel_lib::logging::LogFormat;

/// Lines waiting for the writer at most.
pub(crate) const QUEUE: usize = 8192;

/// One forwarded request (`bytes_out`: the response's bytes, head included).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) at: SystemTime,
    pub(crate) tunnel: Box<str>,
    pub(crate) client: SocketAddr,
    /// `METHOD target`, as the visitor sent them.
    pub(crate) request: Box<str>,
    pub(crate) status: u16,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
}

enum Msg {
    Line(Box<Entry>),
    Stop,
}

pub(crate) struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Counter,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// Opens `path` for appending (`-`: stdout) and starts the writer.
    pub(crate) async fn open(
        path: &Path,
        format: LogFormat,
        dropped: Counter,
    ) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?;
            Box::new(f.into_std().await)
        };
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, format))?;
        Ok(AccessLog {
            tx,
            dropped,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues a line, or drops and counts it when the writer is behind.
    pub(crate) fn log(&self, e: Entry) {
        match self.tx.try_send(Msg::Line(Box::new(e))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Writes what is queued and stops the writer (off the runtime's threads).
    pub(crate) async fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let tx = self.tx.clone();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || {
                let _ = tx.send(Msg::Stop);
                let _ = w.join();
            })
            .await;
        }
    }
}

fn write_lines(rx: Receiver<Msg>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::new();
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        // Everything queued goes out in one write; flushed once idle.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Stop => {
                    let _ = out.flush();
                    return;
                }
                Msg::Line(e) => {
                    line.clear();
                    render(&e, format, &mut line);
                    if out.write_all(line.as_bytes()).is_err() {
                        // The disk is gone: keep draining, so senders never block.
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// One line, ending in `\n`.
pub(crate) fn render(e: &Entry, format: LogFormat, out: &mut String) {
    use std::fmt::Write as _;
    let time = humantime::format_rfc3339_millis(e.at);
    let (method, target) = e.request.split_once(' ').unwrap_or((&e.request, ""));
    let ms = e.duration.as_secs_f64() * 1000.0;
    match format {
        LogFormat::Text => {
            let _ = writeln!(
                out,
                "{time} {} {} \"{} {}\" {} {} {ms:.1}ms",
                e.tunnel,
                e.client,
                method,
                target.escape_debug(),
                e.status,
                e.bytes_out,
            );
        }
        LogFormat::Json => {
            let v = serde_json::json!({
                "time": time.to_string(),
                "tunnel": &*e.tunnel,
                "client": e.client.to_string(),
                "method": method,
                "path": target,
                "status": e.status,
                "bytes_out": e.bytes_out,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
            });
            let _ = writeln!(out, "{v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            tunnel: "app.example.com".into(),
            client: "203.0.113.9:5000".parse().unwrap(),
            request: "GET /a?b=\"c\"".into(),
            status: 200,
            bytes_out: 2048,
            duration: Duration::from_micros(1500),
        }
    }

    #[test]
    fn text_and_json_lines() {
        let mut s = String::new();
        render(&entry(), LogFormat::Text, &mut s);
        assert_eq!(
            s,
            "2023-11-14T22:13:20.123Z app.example.com 203.0.113.9:5000 \"GET /a?b=\\\"c\\\"\" 200 2048 1.5ms\n"
        );
        s.clear();
        render(&entry(), LogFormat::Json, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/a?b=\"c\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
    }
}
