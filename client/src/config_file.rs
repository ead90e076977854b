//! The client's TOML file (`~/.config/tunnel/client.toml`, or `--config`):
//! the server, the token and a list of named tunnels, which
//! `tunnel-client start [NAME]...` runs over one connection.
//! `tunnel-client login` writes the connection part (mode 0600).
//!
//! ```toml
//! server = "tunnel.example.com:4433"
//! token = "…"                  # or token_file = "/run/credentials/…"
//!
//! [tunnels.web]
//! local = "8080"               # kind = "http" is the default
//! subdomain = "myapp"
//!
//! [tunnels.ssh]
//! kind = "tcp"
//! local = "22"
//! remote_port = 40022
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use tunnel_lib::proto::TunnelKind;

use crate::config::TunnelSpec;

/// The file. No `Debug`: it may hold the token.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tunnels: BTreeMap<String, Tunnel>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Http,
    Tcp,
    Udp,
    Tls,
}

/// One `[tunnels.NAME]` table. No `Debug`: it may hold passwords.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    #[serde(default)]
    pub kind: Kind,
    /// A port or `HOST:PORT` of the local service.
    pub local: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<Spanned<u16>>,
    // Visitor policy (http tunnels), as the `http` command's flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub basic_auth: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_header_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_header_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_header_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_header_remove: Vec<String>,
}

/// A tunnel's visitor policy as written (flags or keys).
#[derive(Default)]
pub struct PolicyText {
    pub basic_auth: Vec<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub rate_per_ip: u32,
    pub host_header: String,
    pub request_header_add: Vec<String>,
    pub request_header_remove: Vec<String>,
    pub response_header_add: Vec<String>,
    pub response_header_remove: Vec<String>,
}

fn header_lines(flag: &str, lines: &[String]) -> Result<Vec<(String, String)>, String> {
    lines
        .iter()
        .map(|line| match line.split_once(':') {
            Some((k, v)) => Ok((k.trim().to_owned(), v.trim().to_owned())),
            None => Err(format!("{flag} {line:?}: expected \"NAME: VALUE\"")),
        })
        .collect()
}

impl PolicyText {
    /// The wire form; `NAME: VALUE` lines split.
    pub fn policy(self) -> Result<tunnel_lib::proto::Policy, String> {
        Ok(tunnel_lib::proto::Policy {
            basic_auth: self.basic_auth.into_iter().map(Into::into).collect(),
            allow: self.allow,
            deny: self.deny,
            rate_per_ip: self.rate_per_ip,
            host_header: self.host_header,
            add_request_headers: header_lines("--request-header-add", &self.request_header_add)?,
            remove_request_headers: self.request_header_remove,
            add_response_headers: header_lines("--response-header-add", &self.response_header_add)?,
            remove_response_headers: self.response_header_remove,
        })
    }
}

/// A parsed file and its text (for line numbers).
pub struct Loaded {
    pub path: PathBuf,
    pub file: ClientFile,
    text: String,
}

/// The default place: `$XDG_CONFIG_HOME/tunnel/client.toml`, else
/// `~/.config/tunnel/client.toml`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("tunnel/client.toml"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".config/tunnel/client.toml"))
}

/// Parses the file's text: its values, or an error naming the file, the line
/// and the key.
pub fn parse(path: &Path, text: String) -> Result<Loaded, String> {
    let file = tunnel_lib::toml_file::parse::<ClientFile>(path, &text)?;
    Ok(Loaded {
        path: path.to_owned(),
        file,
        text,
    })
}

impl Loaded {
    fn at<T>(&self, name: &str, key: &str, v: &Spanned<T>, why: impl std::fmt::Display) -> String {
        format!(
            "{} line {}: tunnels.{name}.{key}: {why}",
            self.path.display(),
            tunnel_lib::toml_file::line_of(&self.text, v.span().start)
        )
    }

    /// The tunnels to run: every one, or those named (by name).
    /// `local_target` turns `8080` into `localhost:8080` and checks the rest.
    pub fn tunnels(
        &self,
        names: &[String],
        local_target: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<(String, TunnelSpec)>, String> {
        let known: Vec<&str> = self.file.tunnels.keys().map(String::as_str).collect();
        for n in names {
            if !self.file.tunnels.contains_key(n) {
                return Err(format!(
                    "{}: no tunnel named {n:?}; the file has: {}",
                    self.path.display(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        let mut out = Vec::new();
        for (name, t) in &self.file.tunnels {
            if !names.is_empty() && !names.contains(name) {
                continue;
            }
            let local =
                local_target(t.local.get_ref()).map_err(|e| self.at(name, "local", &t.local, e))?;
            let kind = match t.kind {
                Kind::Http => TunnelKind::Http,
                Kind::Tcp => TunnelKind::Tcp,
                Kind::Udp => TunnelKind::Udp,
                Kind::Tls => TunnelKind::Tls,
            };
            if let (Some(s), Kind::Tcp | Kind::Udp) = (&t.subdomain, t.kind) {
                return Err(self.at(
                    name,
                    "subdomain",
                    s,
                    "a tcp or udp tunnel has a port, not a name: use remote_port",
                ));
            }
            if let (Some(p), Kind::Http | Kind::Tls) = (&t.remote_port, t.kind) {
                return Err(self.at(
                    name,
                    "remote_port",
                    p,
                    "only tcp and udp tunnels have a remote port: use subdomain",
                ));
            }
            let policy = PolicyText {
                basic_auth: t.basic_auth.clone(),
                allow: t.allow.clone(),
                deny: t.deny.clone(),
                rate_per_ip: t.rate_per_ip.unwrap_or(0),
                host_header: t.host_header.clone().unwrap_or_default(),
                request_header_add: t.request_header_add.clone(),
                request_header_remove: t.request_header_remove.clone(),
                response_header_add: t.response_header_add.clone(),
                response_header_remove: t.response_header_remove.clone(),
            }
            .policy()
            .map_err(|e| format!("{}: tunnels.{name}: {e}", self.path.display()))?;
            if t.kind != Kind::Http && !policy.is_empty() {
                return Err(format!(
                    "{}: tunnels.{name}: basic_auth, allow, deny, rate_per_ip, host_header, \
                     request_header_* and response_header_* apply to http tunnels only",
                    self.path.display()
                ));
            }
            out.push((
                name.clone(),
                TunnelSpec {
                    local,
                    subdomain: t.subdomain.as_ref().map(|s| s.get_ref().clone()),
                    kind,
                    plain_http: t.allow_http,
                    remote_port: t.remote_port.as_ref().map_or(0, |p| *p.get_ref()),
                    policy,
                },
            ));
        }
        if out.is_empty() {
            return Err(format!(
                "{}: no [tunnels.NAME] to start; add one (see tunnel-client start --help)",
                self.path.display()
            ));
        }
        Ok(out)
    }
}

/// The file's text with the connection settings replaced (tunnels kept).
pub fn with_login(
    mut file: ClientFile,
    server: String,
    token: String,
    fingerprint: Option<String>,
    cert: Option<PathBuf>,
) -> Result<String, String> {
    file.server = Some(server);
    file.token = Some(token);
    file.token_file = None;
    file.server_fingerprint = fingerprint;
    file.server_cert = cert;
    toml::to_string(&file).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Result<String, String> {
        match s.parse::<u16>() {
            Ok(p) => Ok(format!("localhost:{p}")),
            Err(_) if s.contains(':') => Ok(s.to_owned()),
            Err(_) => Err(format!("{s:?}: expected a port or HOST:PORT")),
        }
    }

    #[test]
    fn tunnels_are_read_in_order_and_mistakes_name_key_and_line() {
        let p = Path::new("client.toml");
        let l = parse(
            p,
            "server = \"s:1\"\n[tunnels.web]\nlocal = \"8080\"\nsubdomain = \"app\"\n\
             [tunnels.ssh]\nkind = \"tcp\"\nlocal = \"22\"\nremote_port = 40022\n"
                .into(),
        )
        .unwrap();
        let all = l.tunnels(&[], target).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "ssh");
        assert_eq!(all[0].1.remote_port, 40022);
        assert_eq!(all[1].1.subdomain.as_deref(), Some("app"));
        let one = l.tunnels(&["web".into()], target).unwrap();
        assert_eq!(one.len(), 1);
        let e = l.tunnels(&["api".into()], target).err().unwrap();
        assert!(
            e.contains("no tunnel named \"api\"") && e.contains("ssh, web"),
            "{e}"
        );

        let e = parse(p, "[tunnels.web]\nlocal = \"8080\"\nport = 1\n".into())
            .err()
            .unwrap();
        assert!(
            e.starts_with("client.toml line 3: ") && e.contains("port"),
            "{e}"
        );
        let e = parse(p, "[tunnels.web]\nkind = \"udpx\"\nlocal = \"1\"\n".into())
            .err()
            .unwrap();
        assert!(e.starts_with("client.toml line 2: "), "{e}");
        let l = parse(p, "[tunnels.web]\n\nlocal = \"eighty\"\n".into()).unwrap();
        let e = l.tunnels(&[], target).err().unwrap();
        assert!(
            e.starts_with("client.toml line 3: tunnels.web.local: "),
            "{e}"
        );
        let l = parse(
            p,
            "[tunnels.db]\nkind = \"tcp\"\nlocal = \"5432\"\nsubdomain = \"x\"\n".into(),
        )
        .unwrap();
        let e = l.tunnels(&[], target).err().unwrap();
        assert!(
            e.starts_with("client.toml line 4: tunnels.db.subdomain: "),
            "{e}"
        );
    }

    #[test]
    fn login_keeps_the_tunnels() {
        let p = Path::new("client.toml");
        let l = parse(
            p,
            "server = \"old:1\"\n[tunnels.web]\nlocal = \"8080\"\n".into(),
        )
        .unwrap();
        let text = with_login(l.file, "new:2".into(), "tok".into(), None, None).unwrap();
        let again = parse(p, text).unwrap();
        assert_eq!(again.file.server.as_deref(), Some("new:2"));
        assert_eq!(again.file.token.as_deref(), Some("tok"));
        assert_eq!(again.tunnels(&[], target).unwrap().len(), 1);
    }
}
