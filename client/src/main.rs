//! `tunnel-client`: expose a local port through a tunnel-server.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tunnel_client::{Config, Status, TunnelSpec};
use tunnel_lib::proto::TunnelKind;

/// Expose a local service at a public URL through a tunnel-server.
///
/// `tunnel-client --expose 8080` (or `tunnel-client http 8080`) gives the app on port 8080 a
/// public URL; `tunnel-client tls 8443` passes TLS through to a local TLS server untouched.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Local port (or HOST:PORT) to expose over HTTP (the same as `http PORT`).
    #[arg(long, value_name = "PORT|HOST:PORT")]
    expose: Option<String>,
    /// Subdomain to ask for [default: one the server picks], or a full host name the server
    /// allows (app.example.com, or *.preview.example.com for every name below it).
    #[arg(long, value_name = "NAME", global = true)]
    subdomain: Option<String>,
    /// The server's QUIC address.
    #[arg(
        long,
        default_value = "localhost:4433",
        env = "TUNNEL_SERVER",
        global = true
    )]
    server: String,
    /// Token the server expects.
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Trust this certificate (PEM): a self-signed server's certificate or a private CA.
    #[arg(long, value_name = "FILE", global = true)]
    server_cert: Option<PathBuf>,
    /// Pin the server certificate's SHA-256 (as tunnel-server prints it).
    #[arg(long, value_name = "SHA256", global = true)]
    server_fingerprint: Option<String>,
    /// Seconds a connection to the local service may take before the visitor gets a 502.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, global = true)]
    local_timeout: f64,
}

/// What to expose. Connection flags (`--server`, `--token`, trust) and
/// `--subdomain` go before or after the command.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Expose a local HTTP service (the server terminates TLS and parses requests).
    Http {
        /// Local port (or HOST:PORT).
        #[arg(value_name = "PORT|HOST:PORT")]
        local: String,
        /// Also serve plain-http visitors instead of redirecting them to https.
        #[arg(long)]
        allow_http: bool,
    },
    /// Pass TLS through to a local TLS server, routed by SNI: visitors see its certificate.
    Tls {
        /// Local port (or HOST:PORT) of a TLS server.
        #[arg(value_name = "PORT|HOST:PORT")]
        local: String,
    },
}

fn local_target(expose: &str) -> Result<String, String> {
    let expose = expose.trim();
    if let Ok(port) = expose.parse::<u16>() {
        return Ok(format!("localhost:{port}"));
    }
    match expose.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(expose.to_owned())
        }
        _ => Err(format!(
            "{expose:?}: expected a port (8080) or HOST:PORT (127.0.0.1:8080) of the local service"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal, none for journald or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (local, kind, plain_http) = match (cli.command, cli.expose) {
        (Some(_), Some(_)) => {
            eprintln!(
                "error: --expose and a command (http, tls) both say what to expose: pass one"
            );
            return ExitCode::from(2);
        }
        (Some(Command::Http { local, allow_http }), None) => (local, TunnelKind::Http, allow_http),
        (Some(Command::Tls { local }), None) => (local, TunnelKind::Tls, false),
        (None, Some(local)) => (local, TunnelKind::Http, false),
        (None, None) => {
            eprintln!(
                "error: nothing to expose: pass --expose PORT (or `tunnel-client http PORT`, \
                 `tunnel-client tls PORT`); see --help"
            );
            return ExitCode::from(2);
        }
    };
    let local = match local_target(&local) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        server: cli.server,
        token: cli.token.map(Into::into),
        tunnels: vec![TunnelSpec {
            local,
            subdomain: cli.subdomain,
            kind,
            plain_http,
        }],
        server_cert: cli.server_cert,
        server_fingerprint: cli.server_fingerprint,
        local: tunnel_client::LocalPolicy {
            connect_timeout: std::time::Duration::from_secs_f64(
                cli.local_timeout.clamp(0.1, 3600.0),
            ),
            ..Default::default()
        },
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
        let shutdown = CancellationToken::new();
        let (tx, rx) = watch::channel(Status::Connecting);
        let ui = tokio::spawn(print_urls(rx));
        let signals = tokio::spawn(on_signal(shutdown.clone()));
        let r = tunnel_client::run(config, shutdown, tx).await;
        signals.abort();
        let _ = ui.await;
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each public URL on its own line on stdout, again only if it
/// changes. Ends when the client drops its status sender.
async fn print_urls(mut rx: watch::Receiver<Status>) {
    let mut shown: Vec<String> = Vec::new();
    while rx.changed().await.is_ok() {
        let status = rx.borrow_and_update().clone();
        if let Status::Online { tunnels, .. } = status {
            let lines: Vec<String> = tunnels
                .iter()
                .map(|t| {
                    if t.url.starts_with("tls://") {
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

async fn on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}
