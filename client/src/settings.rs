//! The client's command line and settings. Each setting is declared once
//! ([`Settings`]): a flag (before or after the command), its environment
//! variable, and a key of the config file. [`resolve`] lays the flags over
//! the file and is pure (files come through the reader it is given);
//! [`load`] reads, before the runtime starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tunnel_lib::logging::LogFormat;
use tunnel_lib::proto::TunnelKind;
use tunnel_lib::settings::Layer;
use tunnel_lib::tuning::Tuning;

use crate::config::{Config, TunnelSpec};
use crate::config_file::{self, PolicyText, Tunnel};
use crate::status::ClientError;
use crate::target::LocalPolicy;

/// Expose a local service at a public URL through a tunnel-server.
///
/// `tunnel-client --expose 8080` (or `tunnel-client http 8080`) gives the app on port 8080 a
/// public URL; `tunnel-client tls 8443` passes TLS through to a local TLS server untouched.
///
/// Exit codes: 0 stopped, 2 bad command line, 65 name not valid, 69 server unreachable
/// (--give-up-after), 75 name taken or a limit reached, 76 version mismatch, 77 token refused,
/// 78 configuration error.
#[derive(Parser)]
#[command(version = tunnel_lib::VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Local port (or HOST:PORT) to expose over HTTP (the same as `http PORT`).
    #[arg(long, value_name = "PORT|HOST:PORT")]
    pub expose: Option<String>,
    /// Subdomain to ask for [default: one the server picks], or a full host name the server
    /// allows (app.example.com, or *.preview.example.com for every name below it).
    #[arg(long, value_name = "NAME", global = true)]
    pub subdomain: Option<String>,
    /// The client's config file (server, token, tunnels, any setting below) [default:
    /// ~/.config/tunnel/client.toml, read if it exists].
    #[arg(long, value_name = "FILE", env = "TUNNEL_CLIENT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What to expose. Connection flags (`--server`, `--token`, trust) and
/// `--subdomain` go before or after the command.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Expose a local HTTP service (the server terminates TLS and parses requests).
    Http {
        /// Local port (or HOST:PORT).
        #[arg(value_name = "PORT|HOST:PORT")]
        local: String,
        /// Also serve plain-http visitors instead of redirecting them to https.
        #[arg(long)]
        allow_http: bool,
        /// What the local service speaks: http1, h2c (HTTP/2 without TLS: a gRPC server) or h2
        /// (HTTP/2 over TLS, with an https:// local) [default: http1].
        #[arg(long, value_name = "http1|h2c|h2")]
        upstream: Option<crate::config::Upstream>,
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
/// makes to their requests (as the keys of a `[tunnels.NAME]` table).
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
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
        PolicyText {
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

tunnel_lib::layered! {
    /// Every setting of `tunnel-client`, all optional. No `Debug`: it holds
    /// the token.
    #[derive(Default, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Settings {
        /// The server: HOST (port 443 for QUIC and TCP) or HOST:PORT [default: localhost:4433].
        #[arg(long, env = "TUNNEL_SERVER", global = true)]
        pub server: Option<String>,
        /// Token the server expects.
        #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true, global = true)]
        pub token: Option<String>,
        /// A file holding the token (kept out of argv and the environment).
        #[arg(long, value_name = "FILE", env = "TUNNEL_TOKEN_FILE", global = true)]
        pub token_file: Option<PathBuf>,
        /// How to reach the server: auto (QUIC over UDP, and TLS over TCP to the server's https
        /// port when UDP does not answer within a second), quic, or tcp [default: auto].
        #[arg(long, value_name = "auto|quic|tcp", env = "TUNNEL_TRANSPORT", global = true)]
        pub transport: Option<crate::Transport>,
        /// With auto on TLS over TCP, seconds between tries of QUIC again; when it answers, the
        /// client moves back to it without losing a request [default: 300].
        #[arg(long, value_name = "SECONDS", global = true)]
        pub quic_retry: Option<u64>,
        /// The server's https address for the TCP transport [default: --server's host and port].
        #[arg(long, value_name = "HOST:PORT", env = "TUNNEL_SERVER_TCP", global = true)]
        pub server_tcp: Option<String>,
        /// Reach the server through this proxy (TCP transport): http://[USER:PASSWORD@]HOST:PORT,
        /// https://… or socks5://… [default: HTTPS_PROXY or ALL_PROXY, minus NO_PROXY].
        #[arg(long, value_name = "URL", global = true)]
        pub proxy: Option<crate::proxy::Proxy>,
        /// Trust this CA or certificate (PEM) for local https services (`--expose
        /// https://localhost:8443`), besides the system's roots.
        #[arg(long, value_name = "FILE", env = "TUNNEL_UPSTREAM_CA", global = true)]
        pub upstream_ca: Option<PathBuf>,
        /// Do not verify local https services at all (a dev server's self-signed certificate).
        #[arg(long, env = "TUNNEL_UPSTREAM_INSECURE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
        #[serde(default)]
        pub upstream_insecure: bool,
        /// Trust this certificate (PEM): a self-signed server's certificate or a private CA.
        #[arg(long, value_name = "FILE", global = true)]
        pub server_cert: Option<PathBuf>,
        /// Pin the server certificate's SHA-256 (as tunnel-server prints it).
        #[arg(long, value_name = "SHA256", global = true)]
        pub server_fingerprint: Option<String>,
        /// Exit (code 69) after this many seconds without a connection to the server
        /// [default: never; reconnect for ever].
        #[arg(long, value_name = "SECONDS", global = true)]
        pub give_up_after: Option<u64>,
        /// Seconds a UDP flow may be silent both ways before its local socket is closed
        /// [default: 60].
        #[arg(long, value_name = "SECONDS", global = true)]
        pub udp_idle: Option<u64>,
        /// Seconds a connection to the local service may take before the visitor gets a 502
        /// [default: 10].
        #[arg(long, value_name = "SECONDS", global = true)]
        pub local_timeout: Option<f64>,
        /// Where the inspector (the web page of recent requests, with replay) listens, or `off`
        /// [default: 127.0.0.1:4040 when run from a terminal, off otherwise].
        #[arg(long, value_name = "ADDR|off", env = "TUNNEL_INSPECT", global = true)]
        pub inspect: Option<String>,
        /// Let the inspector listen on an address other machines can reach (it shows captured
        /// cookies and tokens): needs --inspect-auth.
        #[arg(long, env = "TUNNEL_INSPECT_REMOTE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
        #[serde(default)]
        pub inspect_remote: bool,
        /// USER:PASSWORD the browser must give to use a remote inspector (HTTP Basic).
        #[arg(long, value_name = "USER:PASSWORD", env = "TUNNEL_INSPECT_AUTH", hide_env_values = true, global = true)]
        pub inspect_auth: Option<String>,
        /// Serve the client's Prometheus metrics at /metrics (and /healthz, /readyz) on this
        /// address [default: off].
        #[arg(long, value_name = "ADDR", env = "TUNNEL_METRICS", global = true)]
        pub metrics: Option<SocketAddr>,
        /// Log lines as text or json [default: text].
        #[arg(long, value_name = "FORMAT", env = "TUNNEL_LOG_FORMAT", global = true)]
        pub log_format: Option<LogFormat>,
        /// Plain lines instead of the status screen, even on a terminal.
        #[arg(long, global = true)]
        #[serde(default)]
        pub no_screen: bool,
        /// `[tunnels.NAME]` tables (file only), run by `start`.
        #[arg(skip)]
        #[serde(default)]
        pub tunnels: BTreeMap<String, Tunnel>,
        #[command(flatten)]
        #[serde(default)]
        pub tuning: Tuning,
    }
}

/// A parsed config file: the settings (keys as the flags) and
/// `[tunnels.NAME]` tables.
pub type Loaded = tunnel_lib::toml_file::Loaded<Settings>;

/// What the client shows besides the tunnel: the status screen, the
/// inspector, metrics and the log format.
pub struct Ui {
    pub screen: bool,
    pub inspect: Option<SocketAddr>,
    pub inspect_access: Option<crate::inspector::Access>,
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
}

/// What `main` is to do.
pub enum Job {
    /// Run the tunnels.
    Run(Box<Config>, Ui),
    /// `login`: write `text` to the config file at `path` (mode 0600).
    Login { path: PathBuf, text: String },
}

/// Reads the config file (the default one only if it exists) and the token
/// file, then resolves. It runs before the runtime exists, so plain
/// blocking reads hold up nothing else.
#[allow(clippy::disallowed_methods)]
pub fn load(cli: Cli, interactive: bool) -> Result<Job, ClientError> {
    let login = matches!(cli.command, Some(Command::Login));
    let path = cli.config.clone().or_else(config_file::default_path);
    let file = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => Some(Loaded::parse(p, text).map_err(ClientError::Config)?),
            // The default file is optional; one named with --config is not
            // (except for login, which makes it).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && (cli.config.is_none() || login) =>
            {
                None
            }
            Err(e) => {
                return Err(ClientError::Config(format!(
                    "--config {}: {e}",
                    p.display()
                )))
            }
        },
        None => None,
    };
    let env = |name: &str| std::env::var(name).ok();
    resolve(
        cli,
        path,
        file,
        interactive,
        &|p| std::fs::read_to_string(p),
        &env,
    )
}

/// The job the command line asks for: `cli` over the config `file` (found
/// at `path`) over the defaults. `interactive`: stdout is a terminal.
pub fn resolve(
    cli: Cli,
    path: Option<PathBuf>,
    mut file: Option<Loaded>,
    interactive: bool,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Job, ClientError> {
    let config_err = ClientError::Config;
    if let Some(Command::Login) = cli.command {
        let path = path.ok_or_else(|| {
            config_err("no HOME to keep the config file in: pass --config FILE".into())
        })?;
        let flags = cli.settings;
        let (Some(server), Some(token)) = (flags.server, flags.token) else {
            return Err(config_err(
                "login saves a server and its token: pass --server HOST:PORT --token TOKEN".into(),
            ));
        };
        let text = config_file::with_login(
            file.as_ref().map(Loaded::text),
            server,
            token,
            flags.server_fingerprint,
            flags.server_cert,
        )
        .map_err(config_err)?;
        return Ok(Job::Login { path, text });
    }
    let lower = file.as_mut().map(Loaded::take_values).unwrap_or_default();
    let s = cli.settings.over(lower);
    let tunnels = tunnels(
        cli.command,
        cli.expose,
        cli.subdomain,
        file.as_ref(),
        &s.tunnels,
        path,
    )
    .and_then(upstreams)
    .map_err(config_err)?;
    let mut token = s.token.clone();
    if let (None, Some(tf)) = (&token, &s.token_file) {
        let text = read(tf).map_err(|e| config_err(format!("token_file {}: {e}", tf.display())))?;
        token = Some(text.trim().to_owned());
    }
    let ui = ui(&s, interactive).map_err(config_err)?;
    let d = Config::default();
    let server = s.server.clone().unwrap_or(d.server.clone());
    let proxy = match s.proxy.clone() {
        Some(p) => Some(p),
        None => {
            let tcp = s.server_tcp.clone().unwrap_or_else(|| server.clone());
            let host = crate::config::split_server(&tcp)
                .map(|(h, _)| h.to_owned())
                .unwrap_or(tcp);
            crate::proxy::from_env(&host, env)
                .transpose()
                .map_err(config_err)?
        }
    };
    let config = Config {
        server,
        token: token.map(Into::into),
        tunnels,
        server_cert: s.server_cert,
        server_fingerprint: s.server_fingerprint,
        local: LocalPolicy {
            connect_timeout: s.local_timeout.map_or(d.local.connect_timeout, |t| {
                Duration::from_secs_f64(t.clamp(0.1, 3600.0))
            }),
            ..Default::default()
        },
        udp_idle: s
            .udp_idle
            .map_or(d.udp_idle, |t| Duration::from_secs(t.max(1))),
        give_up_after: s.give_up_after.map(Duration::from_secs),
        tuning: s.tuning,
        // Behind a proxy only TCP gets out: QUIC is not tried unless asked.
        transport: s.transport.unwrap_or(if proxy.is_some() {
            crate::Transport::Tcp
        } else {
            crate::Transport::Auto
        }),
        server_tcp: s.server_tcp,
        proxy,
        quic_retry: s
            .quic_retry
            .map_or(d.quic_retry, |t| Duration::from_secs(t.max(1))),
        upstream: crate::upstream::UpstreamTrust::new(s.upstream_ca.clone(), s.upstream_insecure),
        ..d
    };
    Ok(Job::Run(Box::new(config), ui))
}

/// The tunnels the command asks for: one from `--expose` or a command, or
/// the file's (`start`).
fn tunnels(
    command: Option<Command>,
    expose: Option<String>,
    subdomain: Option<String>,
    file: Option<&Loaded>,
    tables: &BTreeMap<String, Tunnel>,
    path: Option<PathBuf>,
) -> Result<Vec<TunnelSpec>, String> {
    let none = tunnel_lib::proto::Policy::default;
    let mut upstream = crate::config::Upstream::default();
    let (local, kind, plain_http, remote_port, policy) = match (command, expose) {
        (Some(_), Some(_)) => {
            return Err("--expose and a command (http, tcp, tls, start) both say what to expose: pass one".into())
        }
        (Some(Command::Start { names }), None) => {
            if subdomain.is_some() {
                return Err("--subdomain is for one tunnel: with start, write subdomain = \"...\" \
                            under its [tunnels.NAME]"
                    .into());
            }
            let Some(l) = file else {
                return Err(format!(
                    "start runs the tunnels of a config file, and there is none at {}: write one \
                     (see tunnel-client start --help) or pass --config FILE",
                    path.map(|p| p.display().to_string()).unwrap_or_default()
                ));
            };
            let specs = config_file::tunnels(l, tables, &names, local_target)?;
            return Ok(specs.into_iter().map(|(_, t)| t).collect());
        }
        (Some(Command::Http { local, allow_http, upstream: u, policy }), None) => {
            upstream = u.unwrap_or_default();
            (local, TunnelKind::Http, allow_http, 0, policy.policy()?)
        }
        (Some(Command::Tls { local }), None) => (local, TunnelKind::Tls, false, 0, none()),
        (Some(Command::Tcp { local, remote_port }), None) => {
            (local, TunnelKind::Tcp, false, remote_port.unwrap_or(0), none())
        }
        (Some(Command::Udp { local, remote_port }), None) => {
            (local, TunnelKind::Udp, false, remote_port.unwrap_or(0), none())
        }
        (None, Some(local)) => (local, TunnelKind::Http, false, 0, none()),
        (Some(Command::Login), None) => return Err("login saves the connection only".into()),
        (None, None) => {
            return Err("nothing to expose: pass --expose PORT (or `tunnel-client http PORT`, \
                        `tunnel-client tcp PORT`, `tunnel-client udp PORT`, `tunnel-client tls PORT`, \
                        `tunnel-client start`); see --help"
                .into())
        }
    };
    Ok(vec![TunnelSpec {
        local: local_target(&local)?,
        subdomain,
        kind,
        plain_http,
        remote_port,
        policy,
        upstream,
    }])
}

fn ui(s: &Settings, interactive: bool) -> Result<Ui, String> {
    // On by default for a person at a terminal (as ngrok's agent); a
    // client under systemd or in a pipe captures nothing unless asked.
    let inspect =
        match s.inspect.as_deref().map(str::trim) {
            None if interactive => Some(SocketAddr::from(([127, 0, 0, 1], 4040))),
            None | Some("off" | "false" | "") => None,
            Some(a) => Some(a.parse().map_err(|e| {
                format!("--inspect {a}: {e}; give ADDR:PORT (127.0.0.1:4040) or off")
            })?),
        };
    let inspect_access = match inspect {
        Some(a) => {
            let auth = s.inspect_auth.clone().map(tunnel_lib::auth::Secret::from);
            Some(crate::inspector::Access::new(
                a,
                s.inspect_remote,
                auth.as_ref(),
            )?)
        }
        None => None,
    };
    Ok(Ui {
        screen: !s.no_screen && s.log_format.is_none() && interactive,
        inspect,
        inspect_access,
        metrics: s.metrics,
        log_format: s.log_format.unwrap_or_default(),
    })
}

/// `8080` is `localhost:8080`; `HOST:PORT` (or `http://HOST:PORT`) is
/// kept; `https://HOST[:PORT]` is a local https service (port 443 unless
/// given); anything else is an error that shows the forms.
pub fn local_target(expose: &str) -> Result<String, String> {
    let expose = expose.trim();
    let bad = || {
        format!(
            "{expose:?}: expected a port (8080), HOST:PORT (127.0.0.1:8080) or \
             https://HOST:PORT (a local https service) of the local service"
        )
    };
    if let Some(rest) = expose.strip_prefix("https://") {
        let rest = rest.trim_end_matches('/');
        let with_port = match rest.rsplit_once(':') {
            Some((_, p)) if p.parse::<u16>().is_ok() && !rest.ends_with(']') => rest.to_owned(),
            _ => format!("{rest}:443"),
        };
        return match with_port.rsplit_once(':') {
            Some((host, _)) if !host.is_empty() && !host.contains('/') => {
                Ok(format!("https://{with_port}"))
            }
            _ => Err(bad()),
        };
    }
    let expose = expose
        .strip_prefix("http://")
        .unwrap_or(expose)
        .trim_end_matches('/');
    if let Ok(port) = expose.parse::<u16>() {
        return Ok(format!("localhost:{port}"));
    }
    match expose.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(expose.to_owned())
        }
        _ => Err(bad()),
    }
}

/// A local https service is for HTTP tunnels (a `tls` tunnel passes TLS
/// through as it is); it gets its own name as the Host unless the tunnel's
/// host-header rule says otherwise (as the SNI the client sends).
fn upstreams(mut specs: Vec<TunnelSpec>) -> Result<Vec<TunnelSpec>, String> {
    use crate::config::Upstream;
    for spec in &mut specs {
        match (spec.upstream, spec.https()) {
            (Upstream::Http1, _) => {}
            _ if spec.kind != TunnelKind::Http => {
                return Err(format!(
                    "{}: --upstream (upstream) is for http tunnels",
                    spec.local
                ))
            }
            (Upstream::H2c, true) => {
                return Err(format!(
                    "{}: h2c is HTTP/2 without TLS; for an https:// service say --upstream h2",
                    spec.local
                ))
            }
            (Upstream::H2, false) => {
                return Err(format!(
                    "{}: h2 is HTTP/2 over TLS: give the service as https://HOST:PORT, or say \
                     --upstream h2c for one without TLS",
                    spec.local
                ))
            }
            _ => {}
        }
        if !spec.https() {
            continue;
        }
        if spec.kind != TunnelKind::Http {
            return Err(format!(
                "{}: an https:// local service is for http tunnels (the client re-encrypts to \
                 it); a tls tunnel passes TLS through to {} as it is",
                spec.local,
                spec.address()
            ));
        }
        if spec.policy.host_header.is_empty() {
            spec.policy.host_header = "rewrite".into();
        }
    }
    Ok(specs)
}

#[cfg(test)]
#[path = "settings/tests.rs"]
mod tests;
