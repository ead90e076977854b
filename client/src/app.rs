//! The process around the client: the inspector and metrics listeners,
//! the status screen or plain URL lines, and the signals that stop it.
//! `main` resolves the settings and calls [`run`].

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::observe::Monitor;
use crate::settings::Ui;
use crate::status::{ClientError, Status};

/// Runs the client with what surrounds it (the inspector, the metrics
/// listener, the status screen, the URLs on stdout) until a signal or a
/// fatal error; returns after every task it started has ended.
pub async fn run(config: Config, ui: Ui, monitor: Arc<Monitor>) -> Result<(), ClientError> {
    let shutdown = CancellationToken::new();
    let (tx, rx) = watch::channel(Status::Connecting);
    // The inspector and the metrics listener: owned, stopped after the client.
    let services_done = CancellationToken::new();
    let mut services = tokio::task::JoinSet::new();
    let mut inspector_url = None;
    if let (Some(addr), Some(access)) = (ui.inspect, ui.inspect_access.clone()) {
        match tunnel_lib::io::listen_tcp(addr) {
            Ok(l) => {
                let bound = l.local_addr().unwrap_or(addr);
                // Port 0: the rules are for the port the kernel chose.
                let access = access.bound_to(bound);
                inspector_url = Some(format!("http://{bound}"));
                if !ui.screen {
                    eprintln!("inspector: http://{bound}");
                }
                services.spawn(crate::inspector::serve(
                    l,
                    access,
                    monitor.clone(),
                    services_done.clone().cancelled_owned(),
                ));
            }
            // The tunnel matters more than its inspector.
            Err(e) => tracing::warn!(
                "the inspector cannot listen on {addr}: {e}; the tunnel runs without it \
                 (choose another address with --inspect ADDR, or --inspect off)"
            ),
        }
    }
    let mut metrics_addr = None;
    if let (Some(addr), Some(handler)) = (ui.metrics, crate::metrics::handler(monitor.clone())) {
        match tunnel_lib::io::listen_tcp(addr) {
            Ok(l) => {
                let bound = l.local_addr().unwrap_or(addr);
                if !ui.screen {
                    eprintln!("metrics: http://{bound}/metrics");
                }
                metrics_addr = Some(bound.to_string());
                services.spawn(tunnel_lib::admin::serve(
                    l,
                    services_done.clone().cancelled_owned(),
                    handler,
                ));
            }
            Err(e) => {
                return Err(ClientError::Config(format!(
                    "--metrics {addr}: cannot listen: {e}; is something else there?"
                )));
            }
        }
    }
    let screen = if ui.screen {
        let facts = crate::tui::Facts {
            server: config.server.clone(),
            version: tunnel_lib::VERSION,
            inspector: inspector_url,
            metrics: metrics_addr,
        };
        match crate::tui::spawn(monitor.clone(), rx.clone(), facts, shutdown.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("warning: no status screen ({e}); plain lines follow");
                None
            }
        }
    } else {
        None
    };
    let urls = tokio::spawn(print_urls(rx, screen.is_none()));
    let stop = shutdown.clone();
    let signals = tokio::spawn(async move {
        tunnel_lib::runtime::stop_signal().await;
        stop.cancel();
    });
    let result = crate::supervisor::run_with(config, shutdown.clone(), tx, monitor).await;
    signals.abort();
    shutdown.cancel();
    services_done.cancel();
    while services.join_next().await.is_some() {}
    if let Some(h) = screen {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    let _ = urls.await;
    result
}

/// Prints each public URL on its own line on stdout, again only if it
/// changes. Ends when the client drops its status sender.
async fn print_urls(mut rx: watch::Receiver<Status>, print: bool) {
    let mut shown: Vec<String> = Vec::new();
    while rx.changed().await.is_ok() {
        if !print {
            continue;
        }
        let status = rx.borrow_and_update().clone();
        if let Status::Online { tunnels, .. } = status {
            let lines: Vec<String> = tunnels
                .iter()
                .map(|t| {
                    if !t.url.starts_with("http") || t.local.starts_with("https://") {
                        format!("{} -> {}", t.url, t.local)
                    } else {
                        format!("{} -> http://{}", t.url, t.local)
                    }
                })
                .collect();
            if lines != shown {
                for l in &lines {
                    println!("{l}");
                }
                shown = lines;
            }
        }
    }
}
