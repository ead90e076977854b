//! The server's settings, each declared once ([`Settings`]): a flag, its
//! environment variable and a key of the `--config` TOML file (the flag's
//! name with `_` for `-`). [`resolve`] lays the flags over the file over
//! the defaults (`Config::default`) and is pure: it reads the token files
//! it names through the function it is given, so its tests run against a
//! map. [`load`] does the reading, before the runtime starts.
//!
//! Values parse themselves (`PortRange`, `DomainGrant`, `Challenge`), so a
//! bad one is refused by clap naming the flag, or by the file parser naming
//! the key and line. What only a combination can refuse (a `[[token]]`
//! range outside the server's) names the key and line through
//! [`Loaded::error_at`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tunnel_lib::settings::Layer;
use tunnel_lib::tuning::Tuning;

use crate::acme::{AcmeConfig, Challenge};
use crate::config::{parse_grant, parse_port_range, Config, PortRange, TokenPorts};
use crate::registry::{DomainGrant, NameRule, TokenLimits};

tunnel_lib::layered! {
    /// Every setting of `tunnel-server`, all optional (absent: the default
    /// in `Config::default`). No `Debug` of secrets: tokens are masked once
    /// resolved into `Config`.
    #[derive(Default, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Settings {
        /// Tunnels are served at <name>.<DOMAIN> (point a wildcard DNS record at this host)
        /// [default: localhost].
        #[arg(long, env = "TUNNEL_DOMAIN")]
        pub domain: Option<String>,
        /// Public HTTP listener [default: 127.0.0.1:8000].
        #[arg(long, env = "TUNNEL_HTTP")]
        pub http: Option<SocketAddr>,
        /// QUIC listener for tunnel clients (UDP) [default: 127.0.0.1:4433].
        #[arg(long, env = "TUNNEL_QUIC")]
        pub quic: Option<SocketAddr>,
        /// A token clients must present (repeatable; TUNNEL_TOKENS takes a comma-separated list).
        /// Required when listening on a non-loopback address. Prefer --token-file: argv is visible
        /// to every user of the machine.
        #[arg(long = "token", env = "TUNNEL_TOKENS", value_delimiter = ',', hide_env_values = true)]
        #[serde(default)]
        pub tokens: Vec<String>,
        /// A file of tokens, one per line (e.g. a systemd credential: `--token-file %d/tokens`).
        #[arg(long, value_name = "FILE", env = "TUNNEL_TOKENS_FILE")]
        #[serde(rename = "tokens_file", alias = "token_file")]
        pub token_file: Option<PathBuf>,
        /// Where the self-signed certificate is kept [default: $XDG_STATE_HOME/tunnel-server or
        /// ~/.local/state/tunnel-server].
        #[arg(long, env = "TUNNEL_STATE_DIR")]
        pub state_dir: Option<PathBuf>,
        /// A real certificate chain (PEM) for the QUIC listener, with --key.
        #[arg(long, requires = "key")]
        pub cert: Option<PathBuf>,
        /// The private key (PEM) for --cert.
        #[arg(long, requires = "cert")]
        pub key: Option<PathBuf>,
        /// Port written in public URLs [default: the --http port; omitted when 80].
        #[arg(long, env = "TUNNEL_PUBLIC_PORT")]
        pub public_port: Option<u16>,
        /// Seconds a released name stays reserved for the token that held it [default: 300].
        #[arg(long, value_name = "SECONDS")]
        pub name_grace: Option<u64>,
        /// Concurrent visitor connections [default: 16384].
        #[arg(long)]
        pub max_visitors: Option<usize>,
        /// At SIGTERM, seconds that exchanges in flight may take to finish before they are cut
        /// (a second signal exits at once) [default: 30].
        #[arg(long, value_name = "SECONDS")]
        pub drain_timeout: Option<u64>,
        /// Concurrent visitor connections from one IP address (0: no limit); past it, 429
        /// [default: 512].
        #[arg(long)]
        pub max_visitors_per_ip: Option<usize>,
        /// New visitor connections per second from one IP address (0: no limit; bursts of twice
        /// that) [default: 200].
        #[arg(long)]
        pub visitor_rate_per_ip: Option<u32>,
        /// Concurrent tunnel clients, counted once their token is checked [default: 1024].
        #[arg(long)]
        pub max_clients: Option<usize>,
        /// Client connections one token may hold at once (0: no limit) [default: 32].
        #[arg(long)]
        pub max_sessions_per_token: Option<usize>,
        /// Tunnels the clients of one token may expose together (0: no limit) [default: 256].
        #[arg(long)]
        pub max_tunnels_per_token: Option<usize>,
        /// Names one token may hold, in use or kept for its clients' return (0: no limit)
        /// [default: 1024].
        #[arg(long)]
        pub max_names_per_token: Option<usize>,
        /// Certificate orders (ACME) one token's names may start per hour (0: no limit)
        /// [default: 10].
        #[arg(long)]
        pub acme_orders_per_token_per_hour: Option<u32>,
        /// Public ports for TCP tunnels, FIRST-LAST (e.g. 40000-40999), opened on the --http
        /// address [default: no TCP tunnels].
        #[arg(long, env = "TUNNEL_TCP_PORTS", value_name = "FIRST-LAST")]
        pub tcp_ports: Option<PortRange>,
        /// Public UDP ports for UDP tunnels, FIRST-LAST, opened on the --http address
        /// [default: no UDP tunnels].
        #[arg(long, env = "TUNNEL_UDP_PORTS", value_name = "FIRST-LAST")]
        pub udp_ports: Option<PortRange>,
        /// Seconds a UDP flow (one visitor address) may be silent before it is forgotten
        /// [default: 60].
        #[arg(long, value_name = "SECONDS")]
        pub udp_idle: Option<u64>,
        /// Largest request body in bytes (413 beyond) [default: no limit; bodies stream with
        /// bounded memory].
        #[arg(long)]
        pub max_body: Option<u64>,
        /// Public HTTPS listener for visitors, e.g. 0.0.0.0:443. With it, URLs are https:// and
        /// the --http listener answers 308 to https (except ACME HTTP-01 challenges).
        #[arg(long, env = "TUNNEL_HTTPS")]
        pub https: Option<SocketAddr>,
        /// Port written in https URLs [default: the --https port; omitted when 443].
        #[arg(long, env = "TUNNEL_PUBLIC_HTTPS_PORT")]
        pub public_https_port: Option<u16>,
        /// A certificate chain (PEM) for visitors, e.g. a wildcard for *.DOMAIN; reloaded on
        /// SIGHUP and when the file changes.
        #[arg(long, value_name = "FILE", requires = "edge_key", env = "TUNNEL_EDGE_CERT")]
        pub edge_cert: Option<PathBuf>,
        /// The private key (PEM) of --edge-cert.
        #[arg(long, value_name = "FILE", requires = "edge_cert", env = "TUNNEL_EDGE_KEY")]
        pub edge_key: Option<PathBuf>,
        /// Obtain a certificate for every tunnel host from an ACME CA (Let's Encrypt by default).
        #[arg(long, env = "TUNNEL_ACME", value_parser = clap::builder::BoolishValueParser::new())]
        #[serde(default)]
        pub acme: bool,
        /// Contact address given to the CA (expiry notices).
        #[arg(long, value_name = "EMAIL", env = "TUNNEL_ACME_EMAIL")]
        pub acme_email: Option<String>,
        /// The CA's ACME directory URL [default: Let's Encrypt].
        #[arg(long, value_name = "URL", env = "TUNNEL_ACME_DIRECTORY")]
        pub acme_directory: Option<String>,
        /// Use Let's Encrypt's staging CA (untrusted certificates, generous rate limits) to try
        /// a setup.
        #[arg(long, conflicts_with = "acme_directory")]
        #[serde(default)]
        pub acme_staging: bool,
        /// Trust this root (PEM) for the CA's own https (a private or test CA such as pebble).
        #[arg(long, value_name = "FILE", env = "TUNNEL_ACME_ROOT")]
        pub acme_root: Option<PathBuf>,
        /// How the CA validates a name: tls-alpn-01 on the https port, or http-01 on the plain
        /// port [default: tls-alpn-01].
        #[arg(long, value_name = "KIND")]
        pub acme_challenge: Option<Challenge>,
        /// Program that publishes DNS TXT records (run as `PROGRAM set|clear NAME VALUE`): with
        /// it the server gets one wildcard certificate for *.DOMAIN through DNS-01.
        #[arg(long, value_name = "PROGRAM", env = "TUNNEL_ACME_DNS_HOOK")]
        pub acme_dns_hook: Option<PathBuf>,
        /// Send Strict-Transport-Security on https responses, with this max-age in seconds.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "31536000", env = "TUNNEL_HSTS")]
        pub hsts: Option<u64>,
        /// A host name outside --domain that clients may claim (a custom domain pointed here by
        /// CNAME): `app.example.com` or `*.example.com`; `N=PATTERN` grants it to the N-th
        /// --token only.
        #[arg(long = "allow-domain", value_name = "[N=]PATTERN", env = "TUNNEL_ALLOW_DOMAINS", value_delimiter = ',')]
        #[serde(default)]
        pub allow_domains: Vec<DomainGrant>,
        /// Serve Prometheus metrics at /metrics (and /healthz, /readyz) on this address, e.g.
        /// 127.0.0.1:9090 [default: off].
        #[arg(long, value_name = "ADDR", env = "TUNNEL_METRICS")]
        pub metrics: Option<SocketAddr>,
        /// A bearer token that scrapers of /metrics must send (it lists tunnel names and client
        /// addresses); /healthz and /readyz stay open.
        #[arg(long, env = "TUNNEL_METRICS_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        pub metrics_token: Option<String>,
        /// Write one line per forwarded request to this file (`-`: stdout) [default: off]. Lines
        /// are dropped (and counted) rather than slow a visitor down.
        #[arg(long, value_name = "FILE", env = "TUNNEL_ACCESS_LOG")]
        pub access_log: Option<PathBuf>,
        /// Log (and access log) lines as text or json [default: text].
        #[arg(long, value_name = "FORMAT", env = "TUNNEL_LOG_FORMAT")]
        pub log_format: Option<tunnel_lib::logging::LogFormat>,
        /// `[[token]]` tables (file only): a token and what it may claim.
        #[arg(skip)]
        #[serde(default)]
        pub token: Vec<TokenEntry>,
        #[command(flatten)]
        #[serde(default)]
        pub tuning: Tuning,
    }
}

/// One `[[token]]`: its secret (inline or in a file) and its rights.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub secret: Option<Spanned<String>>,
    pub secret_file: Option<PathBuf>,
    /// Host names outside the domain it may claim (as `--allow-domain`).
    #[serde(default)]
    pub domains: Vec<Spanned<String>>,
    /// Labels under the domain kept for it (`api`, or a prefix `alice-*`).
    #[serde(default)]
    pub names: Vec<Spanned<String>>,
    /// Its own TCP / UDP port range inside the server's, or `"none"`.
    pub tcp_ports: Option<Spanned<String>>,
    pub udp_ports: Option<Spanned<String>>,
}

/// A loaded `--config` file.
pub type Loaded = tunnel_lib::toml_file::Loaded<Settings>;

/// Reads the `--config` file and the token files the settings name, then
/// resolves. It runs before the runtime exists, so plain blocking reads
/// hold up nothing else.
#[allow(clippy::disallowed_methods)]
pub fn load(flags: Settings, config: Option<&Path>) -> Result<Config, String> {
    let file = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            Some(Loaded::parse(path, text)?)
        }
        None => None,
    };
    resolve(flags, file, &|p| std::fs::read_to_string(p))
}

/// The effective configuration: `flags` (and their environment variables)
/// over `file` over the defaults. Errors name the flag, or the file's key
/// and line.
pub fn resolve(
    flags: Settings,
    mut file: Option<Loaded>,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Config, String> {
    let mut lower = file
        .as_mut()
        .map(|l| std::mem::take(&mut l.values))
        .unwrap_or_default();
    // `[[token]]` tables come only from the file.
    let tables = std::mem::take(&mut lower.token);
    let s = flags.over(lower);

    let mut tokens = s.tokens.clone();
    if let Some(path) = &s.token_file {
        let text = read(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
        tokens.extend(tokens_from(&text));
    }
    let mut allow_domains = s.allow_domains.clone();
    let tcp_ports = s.tcp_ports.clone().map(|r| r.0);
    let udp_ports = s.udp_ports.clone().map(|r| r.0);
    let mut token_ports = Vec::new();
    let mut token_names = Vec::new();
    let with_file = file.as_ref().map(|l| (l, tables.as_slice()));
    for (l, (n, t)) in with_file
        .into_iter()
        .flat_map(|(l, ts)| ts.iter().enumerate().map(move |e| (l, e)))
    {
        let secret = match (&t.secret, &t.secret_file) {
            (Some(s), None) => s.get_ref().trim().to_owned(),
            (None, Some(path)) => read(path)
                .map_err(|e| format!("token[{n}].secret_file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            _ => {
                return Err(format!(
                    "{}: [[token]] number {}: give exactly one of secret or secret_file",
                    l.path.display(),
                    n + 1
                ))
            }
        };
        tokens.push(secret);
        let index = tokens.len() - 1;
        for d in &t.domains {
            let grant = parse_grant(&format!("{}={}", index + 1, d.get_ref()))
                .map_err(|e| l.error_at("token.domains", d, e))?;
            allow_domains.push(grant);
        }
        for name in &t.names {
            let pattern = crate::registry::normalise_name_rule(name.get_ref())
                .map_err(|e| l.error_at("token.names", name, e))?;
            token_names.push(NameRule {
                token: index,
                pattern,
            });
        }
        token_ports.push(TokenPorts {
            token: index,
            tcp: own_range(l, "token.tcp_ports", &t.tcp_ports, &tcp_ports)?,
            udp: own_range(l, "token.udp_ports", &t.udp_ports, &udp_ports)?,
            no_tcp: is_none(&t.tcp_ports),
            no_udp: is_none(&t.udp_ports),
        });
    }

    if !s.acme && (s.acme_email.is_some() || s.acme_root.is_some() || s.acme_dns_hook.is_some()) {
        return Err(
            "--acme-email, --acme-root and --acme-dns-hook configure --acme: add --acme (or acme = true)"
                .into(),
        );
    }
    let acme = s.acme.then(|| AcmeConfig {
        directory: match (s.acme_staging, &s.acme_directory) {
            (true, _) => crate::acme::LETS_ENCRYPT_STAGING.to_owned(),
            (false, Some(d)) => d.clone(),
            (false, None) => crate::acme::LETS_ENCRYPT.to_owned(),
        },
        email: s.acme_email.clone(),
        root: s.acme_root.clone(),
        challenge: s.acme_challenge.unwrap_or_default(),
        dns_hook: s.acme_dns_hook.clone(),
        renew_after: None,
        order_window: None,
    });
    let d = Config::default();
    let secs = Duration::from_secs;
    Ok(Config {
        domain: s.domain.unwrap_or(d.domain),
        http: s.http.unwrap_or(d.http),
        quic: s.quic.unwrap_or(d.quic),
        tokens: tokens.into_iter().map(Into::into).collect(),
        state_dir: s.state_dir,
        cert: s.cert,
        key: s.key,
        public_port: s.public_port,
        name_grace: s.name_grace.map_or(d.name_grace, secs),
        max_visitors: s.max_visitors.unwrap_or(d.max_visitors),
        drain_timeout: s.drain_timeout.map_or(d.drain_timeout, secs),
        max_visitors_per_ip: s.max_visitors_per_ip.unwrap_or(d.max_visitors_per_ip),
        visitor_rate_per_ip: s.visitor_rate_per_ip.unwrap_or(d.visitor_rate_per_ip),
        max_clients: s.max_clients.unwrap_or(d.max_clients),
        token_limits: TokenLimits {
            sessions: s.max_sessions_per_token.unwrap_or(d.token_limits.sessions),
            tunnels: s.max_tunnels_per_token.unwrap_or(d.token_limits.tunnels),
            names: s.max_names_per_token.unwrap_or(d.token_limits.names),
            acme_orders_per_hour: s
                .acme_orders_per_token_per_hour
                .unwrap_or(d.token_limits.acme_orders_per_hour),
        },
        max_body: s.max_body,
        https: s.https,
        public_https_port: s.public_https_port,
        edge_cert: s.edge_cert,
        edge_key: s.edge_key,
        acme,
        hsts: s.hsts.map(secs),
        allow_domains,
        tcp_ports,
        udp_ports,
        token_ports,
        token_names,
        udp_idle: s.udp_idle.map_or(d.udp_idle, secs),
        metrics: s.metrics,
        metrics_token: s
            .metrics_token
            .filter(|t| !t.is_empty())
            .map(tunnel_lib::auth::Secret::from),
        access_log: s.access_log,
        log_format: s.log_format.unwrap_or_default(),
        tuning: s.tuning,
        ..d
    })
}

fn is_none(v: &Option<Spanned<String>>) -> bool {
    v.as_ref().is_some_and(|v| v.get_ref().trim() == "none")
}

/// A `[[token]]`'s own port range: inside the server's, or `"none"`.
fn own_range(
    l: &Loaded,
    key: &str,
    v: &Option<Spanned<String>>,
    global: &Option<std::ops::RangeInclusive<u16>>,
) -> Result<Option<std::ops::RangeInclusive<u16>>, String> {
    let Some(v) = v else { return Ok(None) };
    if v.get_ref().trim() == "none" {
        return Ok(None);
    }
    let r = parse_port_range("--tcp-ports", v.get_ref()).map_err(|e| l.error_at(key, v, e))?;
    match global {
        Some(g) if g.contains(r.start()) && g.contains(r.end()) => Ok(Some(r)),
        _ => Err(l.error_at(
            key,
            v,
            format!(
                "{:?} must lie inside the server's own range ({})",
                v.get_ref(),
                key.trim_start_matches("token.")
            ),
        )),
    }
}

/// Tokens from a file: one per line, blank lines and `#` comments skipped.
pub fn tokens_from(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
#[path = "settings/tests.rs"]
mod tests;
