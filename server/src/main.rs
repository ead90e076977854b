//! `tunnel-server`: parse the settings, set up logging, build the runtime,
//! run once. Every setting is declared in `tunnel_server::settings`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnel_server::settings::{self, Settings};
use tunnel_server::{Config, Listeners, Server};

/// Self-hosted reverse tunnel server: QUIC for tunnel clients, HTTP for
/// visitors. With no flags it is a development server on 127.0.0.1.
///
/// Every flag can also be a key of the `--config` TOML file (same name with
/// `_` for `-`: `max_visitors_per_ip = 512`; tuning levers in a `[tuning]`
/// table); flags and environment variables win over the file.
#[derive(Parser)]
#[command(version = tunnel_lib::VERSION, about)]
struct Cli {
    /// A TOML file with the settings (keys as the flags: `domain = "tunnel.example.com"`).
    #[arg(long, value_name = "FILE", env = "TUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the settings, print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match settings::load(cli.settings, cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        return match config.validate(config.http, config.quic, config.https) {
            Ok(()) => {
                println!("{config:#?}");
                eprintln!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    tunnel_lib::logging::init_stderr(config.log_format);
    let threads = config.tuning.worker_threads();
    tunnel_lib::runtime::run_main(threads, async move {
        match serve(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn serve(config: Config) -> Result<(), tunnel_server::ServerError> {
    let listeners =
        Listeners::bind(config.http, config.quic, config.https)?.with_admin(config.metrics)?;
    let server = Server::bind(config, listeners).await?;
    announce(&server);
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    #[cfg(unix)]
    tokio::spawn(on_hangup(server.reload_handle(), shutdown.clone()));
    server.run(shutdown).await
}

/// One stable line on stdout (scripts and tests read the bound ports from
/// it), and a hint for connecting clients on stderr.
fn announce(server: &Server) {
    let https = server
        .https_addr()
        .map(|a| format!(" https={a}"))
        .unwrap_or_default();
    println!(
        "tunnel-server ready: http={}{https} quic={} fingerprint={}",
        server.http_addr(),
        server.quic_addr(),
        server.fingerprint()
    );
    let cert = server
        .cert_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let visitors = match server.https_addr() {
        Some(a) => format!("https://<name>.<domain>:{}", a.port()),
        None => format!("http://<name>.<domain>:{}", server.http_addr().port()),
    };
    tracing::info!(
        "visitors: {visitors}  clients: tunnel-client --server <host>:{} --expose <port> \
         (own certificate: {cert}; remote clients without a public certificate for the server pass --server-fingerprint {})",
        server.quic_addr().port(),
        server.fingerprint()
    );
    if let Some(note) = server.quic_ca_note() {
        tracing::info!("{note}");
    }
}

/// SIGHUP: reload the certificate files. Ends with the runtime.
#[cfg(unix)]
async fn on_hangup(reload: std::sync::Arc<tokio::sync::Notify>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => {
                if r.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading certificates");
                reload.notify_one();
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Ctrl-C or SIGTERM: cancel (the drain); a second one exits at once.
/// Owned by the runtime; ends with it.
async fn on_signal(shutdown: CancellationToken) {
    tunnel_lib::runtime::stop_signal().await;
    tracing::info!("shutting down: draining exchanges in flight (a second signal exits at once)");
    shutdown.cancel();
    tunnel_lib::runtime::stop_signal().await;
    tracing::warn!("second signal: exiting without waiting for the drain");
    std::process::exit(1);
}
