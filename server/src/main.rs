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
    /// At SIGTERM, seconds that exchanges in flight may take to finish before they are cut
    /// (a second signal exits at once).
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Concurrent visitor connections from one IP address (0: no limit); past it, 429.
    #[arg(long, default_value_t = 512)]
    max_visitors_per_ip: usize,
    /// New visitor connections per second from one IP address (0: no limit; bursts of twice that).
    #[arg(long, default_value_t = 200)]
    visitor_rate_per_ip: u32,
    /// Concurrent tunnel clients.
    #[arg(long, default_value_t = 1024)]
    max_clients: usize,
    /// Largest request body in bytes (413 beyond) [default: no limit; bodies stream with bounded memory].
    #[arg(long)]
    max_body: Option<u64>,
    /// Public HTTPS listener for visitors, e.g. 0.0.0.0:443. With it, URLs are https:// and the
    /// --http listener answers 308 to https (except ACME HTTP-01 challenges).
    #[arg(long, env = "TUNNEL_HTTPS")]
    https: Option<SocketAddr>,
    /// Port written in https URLs [default: the --https port; omitted when 443].
    #[arg(long)]
    public_https_port: Option<u16>,
    /// A certificate chain (PEM) for visitors, e.g. a wildcard for *.DOMAIN; reloaded on SIGHUP
    /// and when the file changes.
    #[arg(
        long,
        value_name = "FILE",
        requires = "edge_key",
        env = "TUNNEL_EDGE_CERT"
    )]
    edge_cert: Option<PathBuf>,
    /// The private key (PEM) of --edge-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "edge_cert",
        env = "TUNNEL_EDGE_KEY"
    )]
    edge_key: Option<PathBuf>,
    /// Obtain a certificate for every tunnel host from an ACME CA (Let's Encrypt by default).
    #[arg(long, env = "TUNNEL_ACME")]
    acme: bool,
    /// Contact address given to the CA (expiry notices).
    #[arg(long, value_name = "EMAIL", env = "TUNNEL_ACME_EMAIL")]
    acme_email: Option<String>,
    /// The CA's ACME directory URL.
    #[arg(long, value_name = "URL", default_value = tunnel_server::acme::LETS_ENCRYPT, env = "TUNNEL_ACME_DIRECTORY")]
    acme_directory: String,
    /// Use Let's Encrypt's staging CA (untrusted certificates, generous rate limits) to try a setup.
    #[arg(long, conflicts_with = "acme_directory")]
    acme_staging: bool,
    /// Trust this root (PEM) for the CA's own https (a private or test CA such as pebble).
    #[arg(long, value_name = "FILE")]
    acme_root: Option<PathBuf>,
    /// How the CA validates a name: tls-alpn-01 on the https port, or http-01 on the plain port.
    #[arg(long, value_name = "KIND", default_value = "tls-alpn-01", value_parser = ["tls-alpn-01", "http-01"])]
    acme_challenge: String,
    /// Program that publishes DNS TXT records (run as `PROGRAM set|clear NAME VALUE`): with it the
    /// server gets one wildcard certificate for *.DOMAIN through DNS-01.
    #[arg(long, value_name = "PROGRAM", env = "TUNNEL_ACME_DNS_HOOK")]
    acme_dns_hook: Option<PathBuf>,
    /// Send Strict-Transport-Security on https responses, with this max-age in seconds.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "31536000", env = "TUNNEL_HSTS")]
    hsts: Option<u64>,
    /// A host name outside --domain that clients may claim (a custom domain pointed here by CNAME):
    /// `app.example.com` or `*.example.com`; `N=PATTERN` grants it to the N-th --token only.
    #[arg(
        long = "allow-domain",
        value_name = "[N=]PATTERN",
        env = "TUNNEL_ALLOW_DOMAINS",
        value_delimiter = ','
    )]
    allow_domains: Vec<String>,
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
    let mut allow_domains = Vec::new();
    for g in &cli.allow_domains {
        match tunnel_server::config::parse_grant(g) {
            Ok(g) => allow_domains.push(g),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let acme = cli.acme.then(|| tunnel_server::acme::AcmeConfig {
        directory: if cli.acme_staging {
            tunnel_server::acme::LETS_ENCRYPT_STAGING.to_owned()
        } else {
            cli.acme_directory.clone()
        },
        email: cli.acme_email.clone(),
        root: cli.acme_root.clone(),
        challenge: if cli.acme_challenge == "http-01" {
            tunnel_server::acme::Challenge::Http01
        } else {
            tunnel_server::acme::Challenge::TlsAlpn01
        },
        dns_hook: cli.acme_dns_hook.clone(),
        renew_after: None,
    });
    if !cli.acme
        && (cli.acme_email.is_some() || cli.acme_root.is_some() || cli.acme_dns_hook.is_some())
    {
        eprintln!(
            "error: --acme-email, --acme-root and --acme-dns-hook configure --acme: add --acme"
        );
        return ExitCode::from(2);
    }
    let config = Config {
        domain: cli.domain,
        http: cli.http,
        quic: cli.quic,
        tokens: cli.tokens.into_iter().map(Into::into).collect(),
        state_dir: cli.state_dir,
        cert: cli.cert,
        key: cli.key,
        public_port: cli.public_port,
        name_grace: Duration::from_secs(cli.name_grace),
        max_visitors: cli.max_visitors,
        drain_timeout: Duration::from_secs(cli.drain_timeout),
        max_visitors_per_ip: cli.max_visitors_per_ip,
        visitor_rate_per_ip: cli.visitor_rate_per_ip,
        max_clients: cli.max_clients,
        max_body: cli.max_body,
        https: cli.https,
        public_https_port: cli.public_https_port,
        edge_cert: cli.edge_cert,
        edge_key: cli.edge_key,
        acme,
        hsts: cli.hsts.map(Duration::from_secs),
        allow_domains,
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
        let listeners = Listeners::bind(config.http, config.quic, config.https)?;
        let server = Server::bind(config, listeners).await?;
        announce(&server);
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        #[cfg(unix)]
        tokio::spawn(on_hangup(server.reload_handle(), shutdown.clone()));
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

/// Ctrl-C or SIGTERM: cancel. Owned by the runtime; ends with it.
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
        tracing::info!(
            "shutting down: draining exchanges in flight (a second signal exits at once)"
        );
        shutdown.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(1);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    }
}
