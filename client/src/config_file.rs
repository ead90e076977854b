//! The client's TOML file (`~/.config/tunnel/client.toml`, or `--config`):
//! the server, the token, any other setting (`settings::Settings`, keys as
//! the flags) and a list of named tunnels, which
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
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use tunnel_lib::proto::TunnelKind;

use crate::config::TunnelSpec;
use tunnel_lib::toml_file::Loaded;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Http,
    Tcp,
    Udp,
    Tls,
}

/// One `[tunnels.NAME]` table. No `Debug`: it may hold passwords.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    #[serde(default)]
    pub kind: Kind,
    /// A port or `HOST:PORT` of the local service.
    pub local: Spanned<String>,
    pub subdomain: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_http: bool,
    pub remote_port: Option<Spanned<u16>>,
    /// What the local service speaks: http1, h2c or h2 (http tunnels).
    #[serde(default)]
    pub upstream: crate::config::Upstream,
    // Visitor policy (http tunnels), as the `http` command's flags.
    #[serde(default)]
    pub basic_auth: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub rate_per_ip: Option<u32>,
    pub host_header: Option<String>,
    #[serde(default)]
    pub request_header_add: Vec<String>,
    #[serde(default)]
    pub request_header_remove: Vec<String>,
    #[serde(default)]
    pub response_header_add: Vec<String>,
    #[serde(default)]
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

/// The tunnels of `file` to run (its `tables`, taken out of its values):
/// every one, or those named (by name). `local_target` turns `8080` into
/// `localhost:8080` and checks the rest.
pub fn tunnels<T>(
    file: &Loaded<T>,
    tables: &BTreeMap<String, Tunnel>,
    names: &[String],
    local_target: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<(String, TunnelSpec)>, String> {
    let known: Vec<&str> = tables.keys().map(String::as_str).collect();
    for n in names {
        if !tables.contains_key(n) {
            return Err(format!(
                "{}: no tunnel named {n:?}; the file has: {}",
                file.path.display(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let mut out = Vec::new();
    for (name, t) in tables {
        if !names.is_empty() && !names.contains(name) {
            continue;
        }
        let local = local_target(t.local.get_ref())
            .map_err(|e| file.error_at(&format!("tunnels.{name}.local"), &t.local, e))?;
        let kind = match t.kind {
            Kind::Http => TunnelKind::Http,
            Kind::Tcp => TunnelKind::Tcp,
            Kind::Udp => TunnelKind::Udp,
            Kind::Tls => TunnelKind::Tls,
        };
        if let (Some(s), Kind::Tcp | Kind::Udp) = (&t.subdomain, t.kind) {
            return Err(file.error_at(
                &format!("tunnels.{name}.subdomain"),
                s,
                "a tcp or udp tunnel has a port, not a name: use remote_port",
            ));
        }
        if let (Some(p), Kind::Http | Kind::Tls) = (&t.remote_port, t.kind) {
            return Err(file.error_at(
                &format!("tunnels.{name}.remote_port"),
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
        .map_err(|e| format!("{}: tunnels.{name}: {e}", file.path.display()))?;
        if t.kind != Kind::Http && !policy.is_empty() {
            return Err(format!(
                "{}: tunnels.{name}: basic_auth, allow, deny, rate_per_ip, host_header, \
                     request_header_* and response_header_* apply to http tunnels only",
                file.path.display()
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
                upstream: t.upstream,
            },
        ));
    }
    if out.is_empty() {
        return Err(format!(
            "{}: no [tunnels.NAME] to start; add one (see tunnel-client start --help)",
            file.path.display()
        ));
    }
    Ok(out)
}

/// The connection keys `login` writes (and replaces).
const LOGIN_KEYS: [&str; 5] = [
    "server",
    "token",
    "token_file",
    "server_fingerprint",
    "server_cert",
];

/// The file's text (`None`: no file yet) with the connection settings
/// replaced; everything else (tunnels, other settings, comments) kept as
/// written. The old connection keys are cut out where toml's parser found
/// them, and the new ones go first (top-level keys precede any table).
pub fn with_login(
    text: Option<&str>,
    server: String,
    token: String,
    fingerprint: Option<String>,
    cert: Option<PathBuf>,
) -> Result<String, String> {
    let text = text.unwrap_or("");
    let doc = toml::de::DeTable::parse(text).map_err(|e| e.to_string())?;
    let mut cuts: Vec<std::ops::Range<usize>> = doc
        .get_ref()
        .iter()
        .filter(|(k, _)| LOGIN_KEYS.contains(&k.get_ref().as_ref()))
        .map(|(k, v)| {
            // The whole line or lines of `key = value`, with the newline.
            let start = text[..k.span().start].rfind('\n').map_or(0, |i| i + 1);
            let end = text[v.span().end..]
                .find('\n')
                .map_or(text.len(), |i| v.span().end + i + 1);
            start..end
        })
        .collect();
    cuts.sort_by_key(|r| r.start);
    let quoted = |s: &str| toml_writer::ToTomlValue::to_toml_value(s);
    let mut out = format!("server = {}\ntoken = {}\n", quoted(&server), quoted(&token));
    if let Some(f) = fingerprint {
        out += &format!("server_fingerprint = {}\n", quoted(&f));
    }
    if let Some(c) = cert {
        out += &format!("server_cert = {}\n", quoted(&c.display().to_string()));
    }
    let mut at = 0;
    for cut in cuts {
        out += &text[at..cut.start];
        at = cut.end;
    }
    out += &text[at..];
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Loaded;
    use std::path::Path;

    fn target(s: &str) -> Result<String, String> {
        crate::settings::local_target(s)
    }

    /// The file's tunnels, as `start` reads them.
    fn tunnels_of(l: &mut Loaded, names: &[String]) -> Result<Vec<(String, TunnelSpec)>, String> {
        let tables = std::mem::take(&mut l.values.tunnels);
        let r = tunnels(l, &tables, names, target);
        l.values.tunnels = tables;
        r
    }

    fn parse(p: &Path, text: &str) -> Result<Loaded, String> {
        Loaded::parse(p, text.to_owned())
    }

    #[test]
    fn tunnels_are_read_in_order_and_mistakes_name_key_and_line() {
        let p = Path::new("client.toml");
        let mut l = parse(
            p,
            "server = \"s:1\"\n[tunnels.web]\nlocal = \"8080\"\nsubdomain = \"app\"\n\
             [tunnels.ssh]\nkind = \"tcp\"\nlocal = \"22\"\nremote_port = 40022\n",
        )
        .unwrap();
        let all = tunnels_of(&mut l, &[]).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "ssh");
        assert_eq!(all[0].1.remote_port, 40022);
        assert_eq!(all[1].1.subdomain.as_deref(), Some("app"));
        let one = tunnels_of(&mut l, &["web".into()]).unwrap();
        assert_eq!(one.len(), 1);
        let e = tunnels_of(&mut l, &["api".into()]).err().unwrap();
        assert!(
            e.contains("no tunnel named \"api\"") && e.contains("ssh, web"),
            "{e}"
        );

        let e = parse(p, "[tunnels.web]\nlocal = \"8080\"\nport = 1\n")
            .err()
            .unwrap();
        assert!(e.starts_with("client.toml line 3: port: "), "{e}");
        let e = parse(p, "[tunnels.web]\nkind = \"udpx\"\nlocal = \"1\"\n")
            .err()
            .unwrap();
        assert!(e.starts_with("client.toml line 2: kind: "), "{e}");
        let mut l = parse(p, "[tunnels.web]\n\nlocal = \"eighty\"\n").unwrap();
        let e = tunnels_of(&mut l, &[]).err().unwrap();
        assert!(
            e.starts_with("client.toml line 3: tunnels.web.local: "),
            "{e}"
        );
        let mut l = parse(
            p,
            "[tunnels.db]\nkind = \"tcp\"\nlocal = \"5432\"\nsubdomain = \"x\"\n",
        )
        .unwrap();
        let e = tunnels_of(&mut l, &[]).err().unwrap();
        assert!(
            e.starts_with("client.toml line 4: tunnels.db.subdomain: "),
            "{e}"
        );
    }

    #[test]
    fn login_keeps_the_tunnels_and_the_other_settings() {
        let p = Path::new("client.toml");
        let old =
            "# my laptop\nserver = \"old:1\"\ntoken_file = \"/t\"  # a comment\nno_screen = true\n\
                   [tunnels.web]\nlocal = \"8080\" # the app\n";
        let text = with_login(
            Some(old),
            "new:2".into(),
            "tok".into(),
            Some("ab".into()),
            None,
        )
        .unwrap();
        let mut again = parse(p, &text).unwrap();
        assert_eq!(again.values.server.as_deref(), Some("new:2"));
        assert_eq!(again.values.token.as_deref(), Some("tok"));
        assert_eq!(again.values.server_fingerprint.as_deref(), Some("ab"));
        assert!(
            again.values.token_file.is_none(),
            "the token replaces the token file"
        );
        assert!(again.values.no_screen);
        assert_eq!(tunnels_of(&mut again, &[]).unwrap().len(), 1);
        assert!(
            text.contains("# my laptop") && text.contains("# the app"),
            "{text}"
        );
        assert!(
            !text.contains("old:1") && !text.contains("a comment"),
            "{text}"
        );
        // A value that needs escaping is written as TOML.
        let odd = with_login(Some(&text), "h:1".into(), "a\"b\\c".into(), None, None).unwrap();
        assert_eq!(
            parse(p, &odd).unwrap().values.token.as_deref(),
            Some("a\"b\\c")
        );
        let fresh = with_login(None, "s:1".into(), "t".into(), None, None).unwrap();
        assert!(parse(p, &fresh).is_ok());
    }
}
