//! `tunnel-server --config FILE`: a TOML file whose keys mirror the flags
//! (`--max-visitors-per-ip 512` ↔ `max_visitors_per_ip = 512`). Flags and
//! environment variables override it. Unknown keys are errors; every error
//! names the key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The file's contents, every key optional (absent: the flag's default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub domain: Option<String>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    /// Accepted tokens. Better kept out of the file: `tokens_file` or
    /// `TUNNEL_TOKENS`.
    pub tokens: Option<Vec<Spanned<String>>>,
    /// A file with one token per line (`#` comments), e.g. a systemd
    /// credential.
    pub tokens_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub public_port: Option<u16>,
    pub public_https_port: Option<u16>,
    pub name_grace: Option<u64>,
    pub max_visitors: Option<usize>,
    pub drain_timeout: Option<u64>,
    pub max_visitors_per_ip: Option<usize>,
    pub visitor_rate_per_ip: Option<u32>,
    pub max_clients: Option<usize>,
    pub max_sessions_per_token: Option<usize>,
    pub max_tunnels_per_token: Option<usize>,
    pub max_names_per_token: Option<usize>,
    pub acme_orders_per_token_per_hour: Option<u32>,
    pub max_body: Option<u64>,
    pub edge_cert: Option<PathBuf>,
    pub edge_key: Option<PathBuf>,
    pub acme: Option<bool>,
    pub acme_email: Option<String>,
    pub acme_directory: Option<String>,
    pub acme_staging: Option<bool>,
    pub acme_root: Option<PathBuf>,
    pub acme_challenge: Option<Spanned<String>>,
    pub acme_dns_hook: Option<PathBuf>,
    pub hsts: Option<u64>,
    pub allow_domains: Option<Vec<Spanned<String>>>,
    pub tcp_ports: Option<Spanned<String>>,
    pub udp_ports: Option<Spanned<String>>,
    pub udp_idle: Option<u64>,
    pub metrics: Option<SocketAddr>,
    /// Better kept out of the file: `TUNNEL_METRICS_TOKEN`.
    pub metrics_token: Option<String>,
    pub access_log: Option<PathBuf>,
    pub log_format: Option<Spanned<String>>,
    /// `[[token]]` tables: a token and what it may claim.
    #[serde(default)]
    pub token: Vec<TokenEntry>,
}

/// One `[[token]]`: its secret (inline or in a file) and its rights.
#[derive(Debug, Default, Deserialize)]
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
    /// Its own TCP / UDP port range, inside the server's.
    pub tcp_ports: Option<Spanned<String>>,
    pub udp_ports: Option<Spanned<String>>,
}

/// A loaded file: its values and its text (for line numbers).
pub struct Loaded {
    pub path: PathBuf,
    pub values: FileConfig,
    text: String,
}

impl Loaded {
    /// `FILE line N: key = …: why`, for a value the parser accepted but
    /// the server does not.
    pub fn error_at<T>(
        &self,
        key: &str,
        value: &Spanned<T>,
        why: impl std::fmt::Display,
    ) -> String {
        let line = tunnel_lib::toml_file::line_of(&self.text, value.span().start);
        format!("{} line {line}: {key}: {why}", self.path.display())
    }
}

/// Parses `text` (read from `path`): the values, or an error that names the
/// file, the line and the key.
pub fn parse(path: &Path, text: String) -> Result<Loaded, String> {
    let values = tunnel_lib::toml_file::parse::<FileConfig>(path, &text)?;
    Ok(Loaded {
        path: path.to_owned(),
        values,
        text,
    })
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
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let p = Path::new("server.toml");
        let e = parse(p, "domain = \"a.example\"\n\nmax_visitor = 5\n".into())
            .err()
            .unwrap();
        assert!(e.starts_with("server.toml line 3: "), "{e}");
        assert!(e.contains("max_visitor"), "{e}");
        assert!(e.contains("max_visitors"), "{e}: lists the known keys");
        let e = parse(p, "http = \"not an address\"\n".into())
            .err()
            .unwrap();
        assert!(e.starts_with("server.toml line 1: "), "{e}");
        let e = parse(p, "\nmax_clients = -1\n".into()).err().unwrap();
        assert!(e.starts_with("server.toml line 2: "), "{e}");
        let l = parse(p, "\n\ntcp_ports = \"9-1\"\n".into()).unwrap();
        let v = l.values.tcp_ports.as_ref().unwrap();
        assert_eq!(
            l.error_at("tcp_ports", v, "why"),
            "server.toml line 3: tcp_ports: why"
        );
    }

    #[test]
    fn token_files_skip_blanks_and_comments() {
        assert_eq!(tokens_from("# team\n a \n\nb\n"), ["a", "b"]);
    }
}
