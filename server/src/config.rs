//! Server configuration: what `settings::resolve` fills in, with defaults named and a
//! validation step whose messages name the offending field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tunnel_lib::http1::Limits;

use crate::acme::AcmeConfig;
use crate::registry::DomainGrant;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--domain: {0:?} is not a valid domain name (letters, digits, '-' and '.', e.g. tunnel.example.com)")]
    Domain(String),
    #[error(
        "refusing to listen on {addr} ({field}) without a token: anyone could expose tunnels. \
         Pass --token SECRET (or set TUNNEL_TOKENS), or listen on 127.0.0.1 for local use"
    )]
    TokenRequired {
        field: &'static str,
        addr: SocketAddr,
    },
    #[error("--token: tokens must not be empty")]
    EmptyToken,
    #[error(
        "refusing to listen on {addr} ({field}) with a weak token (the {nth} one: {why}): anyone \
         could guess it. Make one with `openssl rand -hex 32` (at least 16 characters, not an \
         example's placeholder)"
    )]
    WeakToken {
        field: &'static str,
        addr: SocketAddr,
        nth: String,
        why: &'static str,
    },
    #[error("--cert and --key go together: pass both (PEM files) or neither for a self-signed certificate")]
    CertKeyPair,
    #[error("no state directory: set --state-dir (or HOME / XDG_STATE_HOME / TUNNEL_STATE_DIR)")]
    NoStateDir,
    #[error(
        "cannot use {path}: {source}; check the state directory's permissions or pass --state-dir"
    )]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--edge-cert and --edge-key go together: pass both (PEM files), or neither")]
    EdgeCertKeyPair,
    #[error("{0} needs --https ADDR (for example --https 0.0.0.0:443): certificates are for the https listener")]
    NeedsHttps(&'static str),
    #[error("--acme-email {0:?} is not an e-mail address")]
    Email(String),
    #[error("{0} {1:?}: expected FIRST-LAST, e.g. 40000-40999 (ports 1-65535, FIRST <= LAST)")]
    PortRange(&'static str, String),
    #[error("--allow-domain {0:?}: {1}")]
    Grant(String, String),
}

/// Timeouts at the HTTP edge.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// A new visitor connection must send its first byte within this (a
    /// connection that says nothing holds a slot and a descriptor).
    pub first_byte: Duration,
    /// The whole request head must arrive within this from its first byte
    /// (one deadline, not a timeout per read) or the visitor gets 408.
    pub head: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub keep_alive_idle: Duration,
    /// A request body that stalls this long is abandoned.
    pub body_idle: Duration,
    /// The whole TLS handshake (from the ClientHello's first byte) of an
    /// https visitor.
    pub tls_handshake: Duration,
}

/// Why a token is too weak for a public listener, if it is.
pub fn weak_token(t: &str) -> Option<&'static str> {
    const PLACEHOLDERS: [&str; 6] = [
        "change-me",
        "changeme",
        "replace-me",
        "secret",
        "example",
        "your-token",
    ];
    let lower = t.to_ascii_lowercase();
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        Some("it is an example's placeholder")
    } else if t.len() < 16 {
        Some("shorter than 16 characters")
    } else {
        None
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte: Duration::from_secs(10),
            head: Duration::from_secs(15),
            keep_alive_idle: Duration::from_secs(60),
            body_idle: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Tunnels are served at `<name>.<domain>`.
    pub domain: String,
    /// Public HTTP listener (used by `Listeners::bind`).
    pub http: SocketAddr,
    /// QUIC listener for clients (used by `Listeners::bind`).
    pub quic: SocketAddr,
    /// Accepted client tokens. Empty: no authentication (loopback only).
    pub tokens: Vec<tunnel_lib::auth::Secret>,
    /// Where the self-signed certificate is kept. `None`: the default
    /// (`tunnel_lib::paths::default_state_dir`).
    pub state_dir: Option<PathBuf>,
    /// A real certificate chain and key (PEM). `None`: self-signed.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Port written in public URLs. `None`: the HTTP listener's port (omitted
    /// when 80). Set it when a load balancer fronts the server.
    pub public_port: Option<u16>,
    /// Port written in https URLs and redirects. `None`: the https
    /// listener's port (omitted when 443).
    pub public_https_port: Option<u16>,
    /// How long a released name stays reserved for the token that held it,
    /// so a reconnecting client gets its URL back.
    pub name_grace: Duration,
    /// Concurrent visitor connections; past it, new ones wait in the backlog.
    pub max_visitors: usize,
    /// At shutdown, how long exchanges in flight may take to finish before
    /// they are cut.
    pub drain_timeout: Duration,
    /// Concurrent visitor connections from one IP address (0: no limit);
    /// past it, new ones get 429 and a close.
    pub max_visitors_per_ip: usize,
    /// New visitor connections per second from one IP address (0: no limit;
    /// bursts of twice that pass).
    pub visitor_rate_per_ip: u32,
    /// Concurrent client connections.
    pub max_clients: usize,
    /// Tunnels one client connection may register.
    pub max_tunnels_per_client: usize,
    /// What the clients of one token may hold together.
    pub token_limits: crate::registry::TokenLimits,
    pub http_limits: Limits,
    pub timeouts: Timeouts,
    /// Largest request body accepted (413 beyond). `None`: no limit (bodies
    /// stream with bounded memory whatever their size).
    pub max_body: Option<u64>,
    /// The https listener for visitors (used by `Listeners::bind`). With it,
    /// URLs are https and the plain listener redirects (308).
    pub https: Option<SocketAddr>,
    /// The operator's certificate for visitors (a wildcard is fine),
    /// reloaded on SIGHUP and when the files change.
    pub edge_cert: Option<PathBuf>,
    pub edge_key: Option<PathBuf>,
    /// Certificates from an ACME CA for every tunnel host.
    pub acme: Option<AcmeConfig>,
    /// `Strict-Transport-Security: max-age=…` on https responses (opt-in).
    pub hsts: Option<Duration>,
    /// Host names outside `domain` that tokens may claim.
    pub allow_domains: Vec<DomainGrant>,
    /// Public ports TCP tunnels are given (on the `http` listener's
    /// address). `None`: no TCP tunnels.
    pub tcp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Public UDP ports UDP tunnels are given. `None`: no UDP tunnels.
    pub udp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// A UDP flow (one visitor address) without a datagram either way for
    /// this long is forgotten.
    pub udp_idle: Duration,
    /// Flows one UDP tunnel keeps at once; datagrams from more visitors are
    /// dropped (and counted).
    pub max_udp_flows: usize,
    /// Narrower port ranges for some tokens (`[[token]]` in the config
    /// file); other tokens may use all of `tcp_ports` / `udp_ports`.
    pub token_ports: Vec<TokenPorts>,
    /// Names under the domain kept for one token each (`[[token]] names`).
    pub token_names: Vec<crate::registry::NameRule>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None`: off.
    /// Bound by `Listeners::with_admin`.
    pub metrics: Option<SocketAddr>,
    /// `/metrics` answers only with `Authorization: Bearer <this>`
    /// (`/healthz` and `/readyz` stay open: they tell nothing).
    pub metrics_token: Option<tunnel_lib::auth::Secret>,
    /// One line per forwarded request to this file (`-`: stdout); `None`: off.
    pub access_log: Option<PathBuf>,
    /// How access log lines (and log lines) are written.
    pub log_format: tunnel_lib::logging::LogFormat,
    /// The benchmark levers (QUIC windows, congestion control, threads).
    pub tuning: tunnel_lib::tuning::Tuning,
}

/// The ports one token may claim.
#[derive(Debug, Clone, Default)]
pub struct TokenPorts {
    /// Index into `Config::tokens`.
    pub token: usize,
    /// Its own range (inside the server's); `None`: the server's.
    pub tcp: Option<std::ops::RangeInclusive<u16>>,
    pub udp: Option<std::ops::RangeInclusive<u16>>,
    /// It may not open TCP (UDP) tunnels at all (`tcp_ports = "none"`).
    pub no_tcp: bool,
    pub no_udp: bool,
}

impl Config {
    /// The ports `owner` may claim for `kind` (`Tcp` or `Udp`) and whether
    /// that range is the token's own, or the refusal to send.
    pub fn port_range(
        &self,
        owner: crate::registry::Owner,
        kind: tunnel_lib::proto::TunnelKind,
    ) -> Result<(std::ops::RangeInclusive<u16>, bool), String> {
        let udp = kind == tunnel_lib::proto::TunnelKind::Udp;
        let (name, flag) = if udp {
            ("UDP", "--udp-ports")
        } else {
            ("TCP", "--tcp-ports")
        };
        let global = if udp {
            &self.udp_ports
        } else {
            &self.tcp_ports
        };
        let Some(global) = global.clone() else {
            return Err(format!(
                "this server has no {name} ports to give: its operator must start tunnel-server \
                 with {flag} FIRST-LAST (e.g. 40000-40999)"
            ));
        };
        if let crate::registry::Owner::Token(i) = owner {
            if let Some(t) = self.token_ports.iter().find(|t| t.token == i) {
                if (udp && t.no_udp) || (!udp && t.no_tcp) {
                    return Err(format!(
                        "this token may not open {name} tunnels on this server; ask its operator \
                         (the token's [[token]] table says {}_ports = \"none\")",
                        name.to_ascii_lowercase()
                    ));
                }
                if let Some(r) = if udp { &t.udp } else { &t.tcp } {
                    return Ok((r.clone(), true));
                }
            }
        }
        Ok((global, false))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            http: ([127, 0, 0, 1], 8000).into(),
            quic: ([127, 0, 0, 1], 4433).into(),
            tokens: Vec::new(),
            state_dir: None,
            cert: None,
            key: None,
            public_port: None,
            public_https_port: None,
            name_grace: Duration::from_secs(300),
            max_visitors: 16_384,
            drain_timeout: Duration::from_secs(30),
            max_visitors_per_ip: 512,
            visitor_rate_per_ip: 200,
            max_clients: 1024,
            max_tunnels_per_client: 32,
            token_limits: Default::default(),
            http_limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_body: None,
            https: None,
            edge_cert: None,
            edge_key: None,
            acme: None,
            tcp_ports: None,
            udp_ports: None,
            udp_idle: Duration::from_secs(60),
            max_udp_flows: 1024,
            token_ports: Vec::new(),
            token_names: Vec::new(),
            metrics: None,
            metrics_token: None,
            access_log: None,
            log_format: Default::default(),
            tuning: Default::default(),
            hsts: None,
            allow_domains: Vec::new(),
        }
    }
}

/// A range of public ports, `FIRST-LAST` (`--tcp-ports`, `udp_ports`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange(pub std::ops::RangeInclusive<u16>);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_port_range("FIRST-LAST", s)
            .map(PortRange)
            .map_err(|_| {
                format!(
                    "{s:?}: expected FIRST-LAST, e.g. 40000-40999 (ports 1-65535, FIRST <= LAST)"
                )
            })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for DomainGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_grant(s).map_err(|e| e.to_string())
    }
}

impl TryFrom<String> for DomainGrant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Parses `--tcp-ports FIRST-LAST` (or `--udp-ports`: `flag` names it).
pub fn parse_port_range(
    flag: &'static str,
    s: &str,
) -> Result<std::ops::RangeInclusive<u16>, ConfigError> {
    let bad = || ConfigError::PortRange(flag, s.to_owned());
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

/// Parses `--allow-domain [N=]PATTERN`: PATTERN is `app.example.com` or
/// `*.example.com`; `N=` limits it to the N-th `--token` (from 1).
pub fn parse_grant(s: &str) -> Result<DomainGrant, ConfigError> {
    let bad = |why: &str| ConfigError::Grant(s.to_owned(), why.to_owned());
    let (token, pattern) = match s.split_once('=') {
        Some((n, p)) => {
            let n: usize = n.parse().map_err(|_| {
                bad("expected N=PATTERN with N the position of a --token (1, 2, ...)")
            })?;
            if n == 0 {
                return Err(bad("tokens are counted from 1"));
            }
            (Some(n - 1), p)
        }
        None => (None, s),
    };
    let pattern = crate::registry::normalise_hostname(pattern)
        .map_err(|_| bad("expected a host name (app.example.com) or *.example.com"))?;
    Ok(DomainGrant { token, pattern })
}

impl Config {
    /// Checks what can be checked before binding. `http` / `quic` are the
    /// addresses actually listened on.
    pub fn validate(
        &self,
        http: SocketAddr,
        quic: SocketAddr,
        https: Option<SocketAddr>,
    ) -> Result<(), ConfigError> {
        let d = &self.domain;
        let valid = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid {
            return Err(ConfigError::Domain(d.clone()));
        }
        if self.tokens.iter().any(|t| t.is_empty()) {
            return Err(ConfigError::EmptyToken);
        }
        let public = [
            ("--quic", Some(quic)),
            ("--http", Some(http)),
            ("--https", https),
        ]
        .into_iter()
        .find_map(|(field, addr)| Some((field, addr.filter(|a| !a.ip().is_loopback())?)));
        if let Some((field, addr)) = public {
            if self.tokens.is_empty() {
                return Err(ConfigError::TokenRequired { field, addr });
            }
            for (i, t) in self.tokens.iter().enumerate() {
                if let Some(why) = weak_token(t.expose()) {
                    return Err(ConfigError::WeakToken {
                        field,
                        addr,
                        nth: ordinal(i + 1),
                        why,
                    });
                }
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::CertKeyPair);
        }
        if self.edge_cert.is_some() != self.edge_key.is_some() {
            return Err(ConfigError::EdgeCertKeyPair);
        }
        if https.is_none() {
            if self.acme.is_some() {
                return Err(ConfigError::NeedsHttps("--acme"));
            }
            if self.edge_cert.is_some() {
                return Err(ConfigError::NeedsHttps("--edge-cert"));
            }
            if self.hsts.is_some() {
                return Err(ConfigError::NeedsHttps("--hsts"));
            }
        }
        if let Some(email) = self.acme.as_ref().and_then(|a| a.email.as_ref()) {
            if !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(ConfigError::Email(email.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_or_name_the_flag() {
        assert_eq!(
            parse_port_range("--tcp-ports", "40000-40999").unwrap(),
            40000..=40999
        );
        assert_eq!(parse_port_range("--tcp-ports", " 5 - 5 ").unwrap(), 5..=5);
        for bad in ["", "40000", "0-10", "10-5", "1-70000", "a-b"] {
            let e = parse_port_range("--tcp-ports", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--tcp-ports"), "{e}");
        }
    }

    #[test]
    fn debug_masks_tokens() {
        let c = Config {
            tokens: vec!["hunter2-token".into()],
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Secret(***)"), "{shown}");
    }
}
