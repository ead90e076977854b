//! `tunnel-server`: parse the command line, set up logging, build the
//! runtime, run once.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnel_server::{Config, Listeners, Server};

/// Self-hosted reverse tunnel server: QUIC for tunnel clients, HTTP for
/// visitors. With no flags it is a development server on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Tunnels are served at <name>.<DOMAIN> (point a wildcard DNS record at this host).
    #[arg(long, default_value = "localhost", env = "TUNNEL_DOMAIN")]
    domain: String,
    /// Public HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8000", env = "TUNNEL_HTTP")]
    http: SocketAddr,
    /// QUIC listener for tunnel clients (UDP).
    #[arg(long, default_value = "127.0.0.1:4433", env = "TUNNEL_QUIC")]
    quic: SocketAddr,
    /// A token clients must present (repeatable; TUNNEL_TOKENS takes a comma-separated list).
    /// Required when listening on a non-loopback address.
    #[arg(
        long = "token",
        env = "TUNNEL_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// Where the self-signed certificate is kept [default: $XDG_STATE_HOME/tunnel-server or ~/.local/state/tunnel-server].
    #[arg(long, env = "TUNNEL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A real certificate chain (PEM) for the QUIC listener, with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Port written in public URLs [default: the --http port; omitted when 80].
    #[arg(long)]
    public_port: Option<u16>,
    /// Seconds a released name stays reserved for the token that held it.
    #[arg(long, default_value_t = 300)]
    name_grace: u64,
    /// Concurrent visitor connections.
    #[arg(long, default_value_t = 16_384)]
    max_visitors: usize,
    /// Concurrent tunnel clients.
    #[arg(long, default_value_t = 1024)]
    max_clients: usize,
    /// Largest request body in bytes (413 beyond) [default: no limit; bodies stream with bounded memory].
    #[arg(long)]
    max_body: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config {
        domain: cli.domain,
        http: cli.http,
        quic: cli.quic,
        tokens: cli.tokens,
        state_dir: cli.state_dir,
        cert: cli.cert,
        key: cli.key,
        public_port: cli.public_port,
        name_grace: Duration::from_secs(cli.name_grace),
        max_visitors: cli.max_visitors,
        max_clients: cli.max_clients,
        max_body: cli.max_body,
        ..Config::default()
    };
    let runtime = match tunnel_lib::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one place that blocks on the runtime: main, outside async code.
    #[allow(clippy::disallowed_methods)]
    let result = runtime.block_on(async move {
        let listeners = Listeners::bind(config.http, config.quic)?;
        let server = Server::bind(config, listeners).await?;
        announce(&server);
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        server.run(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One stable line on stdout (scripts and tests read the bound ports from
/// it), and a hint for connecting clients on stderr.
fn announce(server: &Server) {
    println!(
        "tunnel-server ready: http={} quic={} fingerprint={}",
        server.http_addr(),
        server.quic_addr(),
        server.fingerprint()
    );
    let cert = server
        .cert_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    tracing::info!(
        "visitors: http://<name>.<domain>:{}  clients: tunnel-client --server <host>:{} --expose <port> \
         (self-signed certificate: {cert}; remote clients pass --server-fingerprint {})",
        server.http_addr().port(),
        server.quic_addr().port(),
        server.fingerprint()
    );
}

/// Ctrl-C or SIGTERM: cancel. Owned by the runtime; ends with it.
async fn on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
