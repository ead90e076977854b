//! `tunnel-client`: expose a local port through a tunnel-server.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use tunnel_client::observe::Monitor;
use tunnel_client::{config_file, Config, Status, TunnelSpec};
use tunnel_lib::proto::TunnelKind;

/// Expose a local service at a public URL through a tunnel-server.
///
/// `tunnel-client --expose 8080` (or `tunnel-client http 8080`) gives the app on port 8080 a
/// public URL; `tunnel-client tls 8443` passes TLS through to a local TLS server untouched.
#[derive(Debug, Parser)]
#[command(version = tunnel_lib::VERSION, about)]
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
    /// The server's QUIC address [default: the config file's, else localhost:4433].
    #[arg(long, env = "TUNNEL_SERVER", global = true)]
    server: Option<String>,
    /// The client's config file (server, token, tunnels) [default: ~/.config/tunnel/client.toml,
    /// read if it exists].
    #[arg(long, value_name = "FILE", env = "TUNNEL_CLIENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Token the server expects.
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the token (kept out of argv and the environment).
    #[arg(long, value_name = "FILE", env = "TUNNEL_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Trust this certificate (PEM): a self-signed server's certificate or a private CA.
    #[arg(long, value_name = "FILE", global = true)]
    server_cert: Option<PathBuf>,
    /// Pin the server certificate's SHA-256 (as tunnel-server prints it).
    #[arg(long, value_name = "SHA256", global = true)]
    server_fingerprint: Option<String>,
    /// Seconds a UDP flow may be silent both ways before its local socket is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, global = true)]
    udp_idle: u64,
    /// Where the inspector (the web page of recent requests, with replay) listens, or `off`
    /// [default: 127.0.0.1:4040 when run from a terminal, off otherwise].
    #[arg(long, value_name = "ADDR|off", env = "TUNNEL_INSPECT", global = true)]
    inspect: Option<String>,
    /// Let the inspector listen on an address other machines can reach (it shows captured
    /// cookies and tokens): needs --inspect-auth.
    #[arg(long, env = "TUNNEL_INSPECT_REMOTE", global = true)]
    inspect_remote: bool,
    /// USER:PASSWORD the browser must give to use a remote inspector (HTTP Basic).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "TUNNEL_INSPECT_AUTH",
        hide_env_values = true,
        global = true
    )]
    inspect_auth: Option<String>,
    /// Serve the client's Prometheus metrics at /metrics (and /healthz, /readyz) on this address
    /// [default: off].
    #[arg(long, value_name = "ADDR", env = "TUNNEL_METRICS", global = true)]
    metrics: Option<std::net::SocketAddr>,
    /// Log lines as text or JSON [default: text].
    #[arg(long, value_name = "FORMAT", env = "TUNNEL_LOG_FORMAT", global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Plain lines instead of the status screen, even on a terminal.
    #[arg(long, global = true)]
    no_screen: bool,
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
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Pass TLS through to a local TLS server, routed by SNI: visitors see its certificate.
    Tls {
        /// Local port (or HOST:PORT) of a TLS server.
        #[arg(value_name = "PORT|HOST:PORT")]
        local: String,
    },
    /// Run the tunnels of the config file (all, or those named) over one connection.
    Start {
        /// Names of `[tunnels.NAME]` tables [default: all].
        names: Vec<String>,
    },
    /// Save --server, --token (and --server-fingerprint or --server-cert) in the config file
    /// (mode 0600), so later runs need no flags.
    Login,
    /// Expose a local UDP service (WireGuard, DNS, a game server) on a public UDP port.
    Udp {
        /// Local port (or HOST:PORT).
        #[arg(value_name = "PORT|HOST:PORT")]
        local: String,
        /// The public port to ask for (from the server's --udp-ports) [default: any].
        #[arg(long, value_name = "PORT")]
        remote_port: Option<u16>,
    },
    /// Expose a local TCP service (SSH, a database...) on a public port of the server.
    Tcp {
        /// Local port (or HOST:PORT).
        #[arg(value_name = "PORT|HOST:PORT")]
        local: String,
        /// The public port to ask for (from the server's --tcp-ports) [default: any].
        #[arg(long, value_name = "PORT")]
        remote_port: Option<u16>,
    },
}

/// What the server enforces on an HTTP tunnel's visitors, and the edits it
/// makes to their requests.
#[derive(Debug, clap::Args)]
struct PolicyArgs {
    /// Visitors must sign in (HTTP Basic): USER:PASSWORD, or USER:sha256:HEX (repeatable).
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Vec<String>,
    /// Only visitors from this address or CIDR (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<String>,
    /// No visitors from this address or CIDR (repeatable).
    #[arg(long, value_name = "CIDR")]
    deny: Vec<String>,
    /// Requests per second one visitor address may make (bursts of twice that); past it, 429.
    #[arg(long, value_name = "N")]
    rate_per_ip: Option<u32>,
    /// The Host the local app sees: `rewrite` (its own address, for Vite, webpack, Django,
    /// Rails) or a value [default: the visitor's].
    #[arg(long, value_name = "rewrite|HOST")]
    host_header: Option<String>,
    /// Add a header to every request: "NAME: VALUE" (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    request_header_add: Vec<String>,
    /// Remove a header from every request (repeatable).
    #[arg(long, value_name = "NAME")]
    request_header_remove: Vec<String>,
    /// Add a header to every response: "NAME: VALUE" (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    response_header_add: Vec<String>,
    /// Remove a header from every response (repeatable).
    #[arg(long, value_name = "NAME")]
    response_header_remove: Vec<String>,
}

impl PolicyArgs {
    fn policy(self) -> Result<tunnel_lib::proto::Policy, String> {
        config_file::PolicyText {
            basic_auth: self.basic_auth,
            allow: self.allow,
            deny: self.deny,
            rate_per_ip: self.rate_per_ip.unwrap_or(0),
            host_header: self.host_header.unwrap_or_default(),
            request_header_add: self.request_header_add,
            request_header_remove: self.request_header_remove,
            response_header_add: self.response_header_add,
            response_header_remove: self.response_header_remove,
        }
        .policy()
    }
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

/// What the client shows besides the tunnel: the status screen, the
/// inspector, metrics and the log format.
struct Ui {
    screen: bool,
    inspect: Option<std::net::SocketAddr>,
    inspect_access: Option<tunnel_client::inspector::Access>,
    metrics: Option<std::net::SocketAddr>,
    log_format: tunnel_lib::logging::LogFormat,
}

impl Ui {
    fn from_cli(cli: &Cli) -> Result<Ui, String> {
        use std::io::IsTerminal;
        // On by default for a person at a terminal (as ngrok's agent); a
        // client under systemd or in a pipe captures nothing unless asked.
        let interactive = std::io::stdout().is_terminal();
        let inspect = match cli.inspect.as_deref().map(str::trim) {
            None if interactive => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 4040))),
            None | Some("off" | "false" | "") => None,
            Some(a) => Some(a.parse().map_err(|e| {
                format!("--inspect {a}: {e}; give ADDR:PORT (127.0.0.1:4040) or off")
            })?),
        };
        let inspect_access = match inspect {
            Some(a) => Some(tunnel_client::inspector::Access::new(
                a,
                cli.inspect_remote,
                cli.inspect_auth
                    .clone()
                    .map(tunnel_lib::auth::Secret::from)
                    .as_ref(),
            )?),
            None => None,
        };
        let log_format = match &cli.log_format {
            Some(f) => f.parse()?,
            None => Default::default(),
        };
        Ok(Ui {
            screen: !cli.no_screen && cli.log_format.is_none() && interactive,
            inspect,
            inspect_access,
            metrics: cli.metrics,
            log_format,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = match Ui::from_cli(&cli) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let monitor = Arc::new(Monitor::new(
        ui.screen,
        ui.inspect.is_some(),
        ui.metrics.is_some(),
    ));
    if ui.screen {
        // The screen owns the terminal: log lines are shown inside it.
        tunnel_lib::logging::init(
            ui.log_format,
            tunnel_client::tui::ScreenLog(monitor.clone()),
            false,
        );
    } else {
        tunnel_lib::logging::init_stderr(ui.log_format);
    }
    tunnel_lib::runtime::run_main(async move {
        match configure(cli).await {
            Ok(Some(config)) => run(config, ui, monitor).await,
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    })
}

/// The client's configuration from the flags over the config file; `None`
/// when the command is done already (`login`).
async fn configure(cli: Cli) -> Result<Option<Config>, String> {
    let path = cli.config.clone().or_else(config_file::default_path);
    let loaded = match &path {
        Some(p) => match tokio::fs::read_to_string(p).await {
            Ok(text) => Some(config_file::parse(p, text)?),
            // The default file is optional; one named with --config is not
            // (except for login, which makes it).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && (cli.config.is_none() || matches!(cli.command, Some(Command::Login))) =>
            {
                None
            }
            Err(e) => return Err(format!("--config {}: {e}", p.display())),
        },
        None => None,
    };
    if matches!(cli.command, Some(Command::Login)) {
        let path = path.ok_or("no HOME to keep the config file in: pass --config FILE")?;
        let (Some(server), Some(token)) = (cli.server, cli.token) else {
            return Err(
                "login saves a server and its token: pass --server HOST:PORT --token TOKEN".into(),
            );
        };
        let file = loaded.map(|l| l.file).unwrap_or_default();
        let text =
            config_file::with_login(file, server, token, cli.server_fingerprint, cli.server_cert)?;
        tunnel_lib::paths::write_atomic(&path, text.as_bytes(), 0o600)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!(
            "saved the server and token in {} (mode 0600)",
            path.display()
        );
        return Ok(None);
    }
    let file = loaded.as_ref().map(|l| &l.file);
    let tunnels: Vec<TunnelSpec> = match (cli.command, cli.expose) {
        (Some(_), Some(_)) => {
            return Err(
                "--expose and a command (http, tcp, tls, start) both say what to expose: pass one"
                    .into(),
            )
        }
        (Some(Command::Start { names }), None) => {
            if cli.subdomain.is_some() {
                return Err(
                    "--subdomain is for one tunnel: with start, write subdomain = \"...\" \
                            under its [tunnels.NAME]"
                        .into(),
                );
            }
            let Some(l) = &loaded else {
                return Err(format!(
                    "start runs the tunnels of a config file, and there is none at {}: write one \
                     (see tunnel-client start --help) or pass --config FILE",
                    path.map(|p| p.display().to_string()).unwrap_or_default()
                ));
            };
            l.tunnels(&names, local_target)?
                .into_iter()
                .map(|(_, t)| t)
                .collect()
        }
        (Some(Command::Login), _) => return Err("login saves the connection only".into()),
        (command, expose) => {
            let none = tunnel_lib::proto::Policy::default;
            let (local, kind, plain_http, remote_port, policy) = match (command, expose) {
                (
                    Some(Command::Http {
                        local,
                        allow_http,
                        policy,
                    }),
                    None,
                ) => (local, TunnelKind::Http, allow_http, 0, policy.policy()?),
                (Some(Command::Tls { local }), None) => (local, TunnelKind::Tls, false, 0, none()),
                (Some(Command::Tcp { local, remote_port }), None) => (
                    local,
                    TunnelKind::Tcp,
                    false,
                    remote_port.unwrap_or(0),
                    none(),
                ),
                (Some(Command::Udp { local, remote_port }), None) => (
                    local,
                    TunnelKind::Udp,
                    false,
                    remote_port.unwrap_or(0),
                    none(),
                ),
                (None, Some(local)) => (local, TunnelKind::Http, false, 0, none()),
                _ => {
                    return Err(
                        "nothing to expose: pass --expose PORT (or `tunnel-client http PORT`, \
                         `tunnel-client tcp PORT`, `tunnel-client udp PORT`, `tunnel-client tls PORT`, \
                         `tunnel-client start`); \
                         see --help"
                            .into(),
                    )
                }
            };
            vec![TunnelSpec {
                local: local_target(&local)?,
                subdomain: cli.subdomain,
                kind,
                plain_http,
                remote_port,
                policy,
            }]
        }
    };
    let mut token = cli.token.or_else(|| file.and_then(|f| f.token.clone()));
    if token.is_none() {
        if let Some(tf) = cli
            .token_file
            .as_ref()
            .or_else(|| file.and_then(|f| f.token_file.as_ref()))
        {
            let text = tokio::fs::read_to_string(tf)
                .await
                .map_err(|e| format!("token_file {}: {e}", tf.display()))?;
            token = Some(text.trim().to_owned());
        }
    }
    Ok(Some(Config {
        server: cli
            .server
            .or_else(|| file.and_then(|f| f.server.clone()))
            .unwrap_or_else(|| "localhost:4433".into()),
        token: token.map(Into::into),
        tunnels,
        server_cert: cli
            .server_cert
            .or_else(|| file.and_then(|f| f.server_cert.clone())),
        server_fingerprint: cli
            .server_fingerprint
            .or_else(|| file.and_then(|f| f.server_fingerprint.clone())),
        local: tunnel_client::LocalPolicy {
            connect_timeout: std::time::Duration::from_secs_f64(
                cli.local_timeout.clamp(0.1, 3600.0),
            ),
            ..Default::default()
        },
        udp_idle: std::time::Duration::from_secs(cli.udp_idle.max(1)),
        ..Config::default()
    }))
}

async fn run(config: Config, ui: Ui, monitor: Arc<Monitor>) -> ExitCode {
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
                services.spawn(tunnel_client::inspector::serve(
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
    if let (Some(addr), Some(handler)) =
        (ui.metrics, tunnel_client::metrics::handler(monitor.clone()))
    {
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
                eprintln!("error: --metrics {addr}: cannot listen: {e}; is something else there?");
                return ExitCode::from(2);
            }
        }
    }
    let screen = if ui.screen {
        let facts = tunnel_client::tui::Facts {
            server: config.server.clone(),
            version: tunnel_lib::VERSION,
            inspector: inspector_url,
            metrics: metrics_addr,
        };
        match tunnel_client::tui::spawn(monitor.clone(), rx.clone(), facts, shutdown.clone()) {
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
    let signals = tokio::spawn(on_signal(shutdown.clone()));
    let result = tunnel_client::run_with(config, shutdown.clone(), tx, monitor).await;
    signals.abort();
    shutdown.cancel();
    services_done.cancel();
    while services.join_next().await.is_some() {}
    if let Some(h) = screen {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    let _ = urls.await;
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
                    if !t.url.starts_with("http") {
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
