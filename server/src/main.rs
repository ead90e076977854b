//! `tunnel-server`: parse the command line, set up logging, build the
//! runtime, run once.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tunnel_server::{config_file, Config, Listeners, Server};

/// Self-hosted reverse tunnel server: QUIC for tunnel clients, HTTP for
/// visitors. With no flags it is a development server on 127.0.0.1.
///
/// Every flag can also be a key of the `--config` TOML file (same name with
/// `_` for `-`: `max_visitors_per_ip = 512`); flags and environment
/// variables win over the file.
#[derive(Debug, Parser)]
#[command(version = tunnel_lib::VERSION, about)]
struct Cli {
    /// A TOML file with the settings (keys as the flags: `domain = "tunnel.example.com"`).
    #[arg(long, value_name = "FILE", env = "TUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the settings, print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    check: bool,
    /// Tunnels are served at <name>.<DOMAIN> (point a wildcard DNS record at this host)
    /// [default: localhost].
    #[arg(long, env = "TUNNEL_DOMAIN")]
    domain: Option<String>,
    /// Public HTTP listener [default: 127.0.0.1:8000].
    #[arg(long, env = "TUNNEL_HTTP")]
    http: Option<SocketAddr>,
    /// QUIC listener for tunnel clients (UDP) [default: 127.0.0.1:4433].
    #[arg(long, env = "TUNNEL_QUIC")]
    quic: Option<SocketAddr>,
    /// A token clients must present (repeatable; TUNNEL_TOKENS takes a comma-separated list).
    /// Required when listening on a non-loopback address. Prefer --token-file: argv is visible
    /// to every user of the machine.
    #[arg(
        long = "token",
        env = "TUNNEL_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// A file of tokens, one per line (e.g. a systemd credential: `--token-file %d/tokens`).
    #[arg(long, value_name = "FILE", env = "TUNNEL_TOKENS_FILE")]
    token_file: Option<PathBuf>,
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
    #[arg(long, env = "TUNNEL_PUBLIC_PORT")]
    public_port: Option<u16>,
    /// Seconds a released name stays reserved for the token that held it [default: 300].
    #[arg(long)]
    name_grace: Option<u64>,
    /// Concurrent visitor connections [default: 16384].
    #[arg(long)]
    max_visitors: Option<usize>,
    /// At SIGTERM, seconds that exchanges in flight may take to finish before they are cut
    /// (a second signal exits at once) [default: 30].
    #[arg(long)]
    drain_timeout: Option<u64>,
    /// Concurrent visitor connections from one IP address (0: no limit); past it, 429 [default: 512].
    #[arg(long)]
    max_visitors_per_ip: Option<usize>,
    /// New visitor connections per second from one IP address (0: no limit; bursts of twice that)
    /// [default: 200].
    #[arg(long)]
    visitor_rate_per_ip: Option<u32>,
    /// Concurrent tunnel clients, counted once their token is checked [default: 1024].
    #[arg(long)]
    max_clients: Option<usize>,
    /// Client connections one token may hold at once (0: no limit) [default: 32].
    #[arg(long)]
    max_sessions_per_token: Option<usize>,
    /// Tunnels the clients of one token may expose together (0: no limit) [default: 256].
    #[arg(long)]
    max_tunnels_per_token: Option<usize>,
    /// Names one token may hold, in use or kept for its clients' return (0: no limit)
    /// [default: 1024].
    #[arg(long)]
    max_names_per_token: Option<usize>,
    /// Certificate orders (ACME) one token's names may start per hour (0: no limit) [default: 10].
    #[arg(long)]
    acme_orders_per_token_per_hour: Option<u32>,
    /// Public ports for TCP tunnels, FIRST-LAST (e.g. 40000-40999), opened on the --http address
    /// [default: no TCP tunnels].
    #[arg(long, env = "TUNNEL_TCP_PORTS", value_name = "FIRST-LAST")]
    tcp_ports: Option<String>,
    /// Public UDP ports for UDP tunnels, FIRST-LAST, opened on the --http address
    /// [default: no UDP tunnels].
    #[arg(long, env = "TUNNEL_UDP_PORTS", value_name = "FIRST-LAST")]
    udp_ports: Option<String>,
    /// Seconds a UDP flow (one visitor address) may be silent before it is forgotten [default: 60].
    #[arg(long, value_name = "SECONDS")]
    udp_idle: Option<u64>,
    /// Largest request body in bytes (413 beyond) [default: no limit; bodies stream with bounded memory].
    #[arg(long)]
    max_body: Option<u64>,
    /// Public HTTPS listener for visitors, e.g. 0.0.0.0:443. With it, URLs are https:// and the
    /// --http listener answers 308 to https (except ACME HTTP-01 challenges).
    #[arg(long, env = "TUNNEL_HTTPS")]
    https: Option<SocketAddr>,
    /// Port written in https URLs [default: the --https port; omitted when 443].
    #[arg(long, env = "TUNNEL_PUBLIC_HTTPS_PORT")]
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
    /// The CA's ACME directory URL [default: Let's Encrypt].
    #[arg(long, value_name = "URL", env = "TUNNEL_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// Use Let's Encrypt's staging CA (untrusted certificates, generous rate limits) to try a setup.
    #[arg(long, conflicts_with = "acme_directory")]
    acme_staging: bool,
    /// Trust this root (PEM) for the CA's own https (a private or test CA such as pebble).
    #[arg(long, value_name = "FILE", env = "TUNNEL_ACME_ROOT")]
    acme_root: Option<PathBuf>,
    /// How the CA validates a name: tls-alpn-01 on the https port, or http-01 on the plain port
    /// [default: tls-alpn-01].
    #[arg(long, value_name = "KIND", value_parser = ["tls-alpn-01", "http-01"])]
    acme_challenge: Option<String>,
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
    /// Serve Prometheus metrics at /metrics (and /healthz, /readyz) on this address, e.g.
    /// 127.0.0.1:9090 [default: off].
    #[arg(long, value_name = "ADDR", env = "TUNNEL_METRICS")]
    metrics: Option<SocketAddr>,
    /// A bearer token that scrapers of /metrics must send (it lists tunnel names and client
    /// addresses); /healthz and /readyz stay open.
    #[arg(
        long,
        env = "TUNNEL_METRICS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    metrics_token: Option<String>,
    /// Write one line per forwarded request to this file (`-`: stdout) [default: off]. Lines are
    /// dropped (and counted) rather than slow a visitor down.
    #[arg(long, value_name = "FILE", env = "TUNNEL_ACCESS_LOG")]
    access_log: Option<PathBuf>,
    /// Log (and access log) lines as text or JSON [default: text].
    #[arg(long, value_name = "FORMAT", env = "TUNNEL_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tunnel_lib::runtime::run_main(async move {
        let check = cli.check;
        let config = match configure(cli).await {
            Ok(c) => c,
            Err(e) => {
                tunnel_lib::logging::init_stderr(Default::default());
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        tunnel_lib::logging::init_stderr(config.log_format);
        if check {
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

/// The effective configuration: flags and environment over the file over
/// the defaults. Errors name the flag, or the file's key and line.
async fn configure(cli: Cli) -> Result<Config, String> {
    let file = match &cli.config {
        Some(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            Some(config_file::parse(path, text)?)
        }
        None => None,
    };
    let empty = config_file::FileConfig::default();
    let f = file.as_ref().map_or(&empty, |l| &l.values);
    let at = |key: &str, v: &toml::Spanned<String>, why: String| match &file {
        Some(l) => l.error_at(key, v, why),
        None => why,
    };
    let d = Config::default();

    // Tokens: flags or env, else the file's list; plus a tokens file.
    let mut tokens: Vec<String> = cli.tokens.clone();
    if tokens.is_empty() {
        tokens = f
            .tokens
            .iter()
            .flatten()
            .map(|t| t.get_ref().clone())
            .collect();
    }
    if let Some(path) = cli.token_file.as_ref().or(f.tokens_file.as_ref()) {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        tokens.extend(config_file::tokens_from(&text));
    }

    let mut allow_domains = Vec::new();
    if cli.allow_domains.is_empty() {
        for g in f.allow_domains.iter().flatten() {
            let grant = tunnel_server::config::parse_grant(g.get_ref())
                .map_err(|e| at("allow_domains", g, e.to_string()))?;
            allow_domains.push(grant);
        }
    } else {
        for g in &cli.allow_domains {
            allow_domains.push(tunnel_server::config::parse_grant(g).map_err(|e| e.to_string())?);
        }
    }
    let range = |flag: &'static str,
                 key: &str,
                 cli: &Option<String>,
                 file: &Option<toml::Spanned<String>>| {
        use tunnel_server::config::parse_port_range;
        match (cli, file) {
            (Some(s), _) => parse_port_range(flag, s)
                .map(Some)
                .map_err(|e| e.to_string()),
            (None, Some(s)) => parse_port_range(flag, s.get_ref())
                .map(Some)
                .map_err(|e| at(key, s, e.to_string())),
            (None, None) => Ok(None),
        }
    };
    let tcp_ports = range("--tcp-ports", "tcp_ports", &cli.tcp_ports, &f.tcp_ports)?;
    let udp_ports = range("--udp-ports", "udp_ports", &cli.udp_ports, &f.udp_ports)?;

    // `[[token]]` tables: more tokens, each with its own grants and ports.
    let mut token_ports = Vec::new();
    let mut token_names = Vec::new();
    for (n, t) in f.token.iter().enumerate() {
        let secret = match (&t.secret, &t.secret_file) {
            (Some(s), None) => s.get_ref().trim().to_owned(),
            (None, Some(path)) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("token[{n}].secret_file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            _ => {
                return Err(format!(
                    "{}: [[token]] number {}: give exactly one of secret or secret_file",
                    cli.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    n + 1
                ))
            }
        };
        tokens.push(secret);
        let index = tokens.len() - 1;
        for d in &t.domains {
            let grant =
                tunnel_server::config::parse_grant(&format!("{}={}", index + 1, d.get_ref()))
                    .map_err(|e| at("token.domains", d, e.to_string()))?;
            allow_domains.push(grant);
        }
        let own = |key: &str,
                   v: &Option<toml::Spanned<String>>,
                   global: &Option<std::ops::RangeInclusive<u16>>| {
            let Some(v) = v else { return Ok(None) };
            if v.get_ref().trim() == "none" {
                return Ok(None);
            }
            let r = tunnel_server::config::parse_port_range("--tcp-ports", v.get_ref())
                .map_err(|e| at(key, v, e.to_string()))?;
            match global {
                Some(g) if g.contains(r.start()) && g.contains(r.end()) => Ok(Some(r)),
                _ => Err(at(
                    key,
                    v,
                    format!(
                        "{:?} must lie inside the server's own range ({})",
                        v.get_ref(),
                        key.trim_start_matches("token.")
                    ),
                )),
            }
        };
        for name in &t.names {
            let n = name.get_ref().to_ascii_lowercase();
            let label = n.strip_suffix('*').unwrap_or(&n);
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-');
            if !ok {
                return Err(at(
                    "token.names",
                    name,
                    format!("{n:?}: expected a label (api) or a prefix ending in * (alice-*)"),
                ));
            }
            token_names.push(tunnel_server::registry::NameRule {
                token: index,
                pattern: n,
            });
        }
        let none = |v: &Option<toml::Spanned<String>>| {
            v.as_ref().is_some_and(|v| v.get_ref().trim() == "none")
        };
        token_ports.push(tunnel_server::config::TokenPorts {
            token: index,
            tcp: own("token.tcp_ports", &t.tcp_ports, &tcp_ports)?,
            udp: own("token.udp_ports", &t.udp_ports, &udp_ports)?,
            no_tcp: none(&t.tcp_ports),
            no_udp: none(&t.udp_ports),
        });
    }
    let challenge = match (&cli.acme_challenge, &f.acme_challenge) {
        (Some(c), _) => c.clone(),
        (None, Some(c)) => match c.get_ref().as_str() {
            "tls-alpn-01" | "http-01" => c.get_ref().clone(),
            other => {
                return Err(at(
                    "acme_challenge",
                    c,
                    format!("{other:?}: expected \"tls-alpn-01\" or \"http-01\""),
                ))
            }
        },
        (None, None) => "tls-alpn-01".into(),
    };
    let acme_on = cli.acme || f.acme.unwrap_or(false);
    let staging = cli.acme_staging || f.acme_staging.unwrap_or(false);
    let acme_email = cli.acme_email.or_else(|| f.acme_email.clone());
    let acme_root = cli.acme_root.or_else(|| f.acme_root.clone());
    let acme_dns_hook = cli.acme_dns_hook.or_else(|| f.acme_dns_hook.clone());
    if !acme_on && (acme_email.is_some() || acme_root.is_some() || acme_dns_hook.is_some()) {
        return Err(
            "--acme-email, --acme-root and --acme-dns-hook configure --acme: add --acme (or acme = true)"
                .into(),
        );
    }
    let acme = acme_on.then(|| tunnel_server::acme::AcmeConfig {
        directory: if staging {
            tunnel_server::acme::LETS_ENCRYPT_STAGING.to_owned()
        } else {
            cli.acme_directory
                .clone()
                .or_else(|| f.acme_directory.clone())
                .unwrap_or_else(|| tunnel_server::acme::LETS_ENCRYPT.to_owned())
        },
        email: acme_email,
        root: acme_root,
        challenge: if challenge == "http-01" {
            tunnel_server::acme::Challenge::Http01
        } else {
            tunnel_server::acme::Challenge::TlsAlpn01
        },
        dns_hook: acme_dns_hook,
        renew_after: None,
        order_window: None,
    });
    let log_format = match (&cli.log_format, &f.log_format) {
        (Some(v), _) => v.parse()?,
        (None, Some(v)) => v.get_ref().parse().map_err(|e| at("log_format", v, e))?,
        (None, None) => Default::default(),
    };
    let secs = Duration::from_secs;
    Ok(Config {
        domain: cli.domain.or_else(|| f.domain.clone()).unwrap_or(d.domain),
        http: cli.http.or(f.http).unwrap_or(d.http),
        quic: cli.quic.or(f.quic).unwrap_or(d.quic),
        tokens: tokens.into_iter().map(Into::into).collect(),
        state_dir: cli.state_dir.or_else(|| f.state_dir.clone()),
        cert: cli.cert.or_else(|| f.cert.clone()),
        key: cli.key.or_else(|| f.key.clone()),
        public_port: cli.public_port.or(f.public_port),
        name_grace: cli.name_grace.or(f.name_grace).map_or(d.name_grace, secs),
        max_visitors: cli
            .max_visitors
            .or(f.max_visitors)
            .unwrap_or(d.max_visitors),
        drain_timeout: cli
            .drain_timeout
            .or(f.drain_timeout)
            .map_or(d.drain_timeout, secs),
        max_visitors_per_ip: cli
            .max_visitors_per_ip
            .or(f.max_visitors_per_ip)
            .unwrap_or(d.max_visitors_per_ip),
        visitor_rate_per_ip: cli
            .visitor_rate_per_ip
            .or(f.visitor_rate_per_ip)
            .unwrap_or(d.visitor_rate_per_ip),
        max_clients: cli.max_clients.or(f.max_clients).unwrap_or(d.max_clients),
        token_limits: tunnel_server::registry::TokenLimits {
            sessions: cli
                .max_sessions_per_token
                .or(f.max_sessions_per_token)
                .unwrap_or(d.token_limits.sessions),
            tunnels: cli
                .max_tunnels_per_token
                .or(f.max_tunnels_per_token)
                .unwrap_or(d.token_limits.tunnels),
            names: cli
                .max_names_per_token
                .or(f.max_names_per_token)
                .unwrap_or(d.token_limits.names),
            acme_orders_per_hour: cli
                .acme_orders_per_token_per_hour
                .or(f.acme_orders_per_token_per_hour)
                .unwrap_or(d.token_limits.acme_orders_per_hour),
        },
        max_body: cli.max_body.or(f.max_body),
        https: cli.https.or(f.https),
        public_https_port: cli.public_https_port.or(f.public_https_port),
        edge_cert: cli.edge_cert.or_else(|| f.edge_cert.clone()),
        edge_key: cli.edge_key.or_else(|| f.edge_key.clone()),
        acme,
        hsts: cli.hsts.or(f.hsts).map(secs),
        allow_domains,
        tcp_ports,
        udp_ports,
        token_ports,
        token_names,
        udp_idle: cli.udp_idle.or(f.udp_idle).map_or(d.udp_idle, secs),
        metrics: cli.metrics.or(f.metrics),
        metrics_token: cli
            .metrics_token
            .clone()
            .or(f.metrics_token.clone())
            .filter(|t| !t.is_empty())
            .map(tunnel_lib::auth::Secret::from),
        access_log: cli.access_log.or_else(|| f.access_log.clone()),
        log_format,
        ..d
    })
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
