//! The TCP transport through a proxy: `--proxy URL` (`http://`,
//! `https://`, `socks5://`, credentials in the URL), else `HTTPS_PROXY` /
//! `ALL_PROXY` as curl reads them, minus the hosts of `NO_PROXY`. An HTTP
//! proxy is asked for a tunnel with `CONNECT` (its answer read with
//! `httparse`); a SOCKS5 one through `tokio-socks`. Every refusal names the
//! proxy and what it answered.

use std::fmt;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use tunnel_lib::auth::Secret;
use tunnel_lib::limits::HANDSHAKE_TIMEOUT;

/// A byte stream to the server, direct or through a proxy.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
    Socks5,
}

/// A proxy, parsed from its URL. `Debug` leaves the password out.
#[derive(Clone, PartialEq)]
pub struct Proxy {
    kind: Kind,
    host: String,
    port: u16,
    auth: Option<(String, Secret)>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// `scheme://host:port`, never the credentials.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Socks5 => "socks5",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or("a % not followed by two hex digits")?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| "a % not followed by two hex digits")?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials that are not UTF-8".into())
}

impl std::str::FromStr for Proxy {
    type Err = String;

    fn from_str(url: &str) -> Result<Proxy, String> {
        let bad = |why: &str| {
            format!("proxy {url:?}: {why}; expected http://[USER:PASSWORD@]HOST:PORT, https://… or socks5://…")
        };
        let (scheme, rest) = url.trim().split_once("://").unwrap_or(("http", url.trim()));
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" => Kind::Http,
            "https" => Kind::Https,
            "socks5" | "socks5h" => Kind::Socks5,
            _ => return Err(bad("an unknown scheme")),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let auth = match userinfo {
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user).map_err(|e| bad(&e))?;
                let pass = percent_decode(pass).map_err(|e| bad(&e))?;
                Some((user, Secret::from(pass)))
            }
            None => None,
        };
        let default_port = match kind {
            Kind::Http => 80,
            Kind::Https => 443,
            Kind::Socks5 => 1080,
        };
        let (host, port) = crate::address::split_server(hostport).map_err(|_| bad("no host"))?;
        let port = if hostport.ends_with(']') || !hostport.contains(':') {
            default_port
        } else {
            port
        };
        Ok(Proxy {
            kind,
            host: host.to_owned(),
            port,
            auth,
        })
    }
}

impl<'de> serde::Deserialize<'de> for Proxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The proxy for `host` from the environment, as curl reads it:
/// `HTTPS_PROXY` (the tunnel's outer layer is TLS), else `ALL_PROXY`
/// (either case), unless `NO_PROXY` lists the host (a suffix, or `*`). A
/// server on this machine is never reached through a proxy.
pub fn from_env(host: &str, var: impl Fn(&str) -> Option<String>) -> Option<Result<Proxy, String>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    let get = |name: &str| {
        var(name)
            .or_else(|| var(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
    };
    let url = get("HTTPS_PROXY").or_else(|| get("ALL_PROXY"))?;
    if let Some(no) = get("NO_PROXY") {
        let host = host.to_ascii_lowercase();
        let skip = no.split(',').map(str::trim).any(|n| {
            let n = n.trim_start_matches('.').to_ascii_lowercase();
            let n = n.split(':').next().unwrap_or("");
            n == "*" || (!n.is_empty() && (host == n || host.ends_with(&format!(".{n}"))))
        });
        if skip {
            return None;
        }
    }
    Some(url.parse())
}

/// Why a stream could not be had: worth retrying, or not until the
/// settings change (the proxy wants credentials, or forbids the server).
#[derive(Debug)]
pub(crate) enum DialError {
    Retry(String),
    Refused(String),
}

impl From<String> for DialError {
    fn from(s: String) -> DialError {
        DialError::Retry(s)
    }
}

/// A stream to `target` (`host:port`): direct, or a tunnel through `proxy`.
pub(crate) async fn dial(proxy: Option<&Proxy>, target: &str) -> Result<Box<dyn Io>, DialError> {
    let Some(p) = proxy else {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("{e}; is the server's https port open there (--server-tcp)?"))?;
        let _ = tcp.set_nodelay(true);
        return Ok(Box::new(tcp));
    };
    let tcp = TcpStream::connect((p.host.as_str(), p.port))
        .await
        .map_err(|e| format!("the proxy {p} cannot be reached: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match p.kind {
        Kind::Http => connect_through(p, tcp, target).await,
        Kind::Https => {
            let cfg = tunnel_lib::tls::webpki_client_crypto().map_err(|e| e.to_string())?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(p.host.clone())
                .map_err(|e| DialError::Refused(format!("the proxy {p}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to the proxy {p}: {e}"))?;
            connect_through(p, tls, target).await
        }
        Kind::Socks5 => {
            let s = match &p.auth {
                Some((user, pass)) => {
                    tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                        tcp,
                        target,
                        user,
                        pass.expose(),
                    )
                    .await
                }
                None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
            };
            let s =
                s.map_err(|e| format!("the SOCKS5 proxy {p} refused a tunnel to {target}: {e}"))?;
            Ok(Box::new(s))
        }
    }
}

/// `CONNECT target` on an HTTP proxy; the stream once it answered 2xx.
async fn connect_through<S: Io + 'static>(
    p: &Proxy,
    mut s: S,
    target: &str,
) -> Result<Box<dyn Io>, DialError> {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = &p.auth {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", pass.expose()));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("the proxy {p} closed the connection: {e}"))?;
    // The answer's head, read a byte at a time: nothing of the tunnel
    // behind it may be taken.
    let mut head = Vec::with_capacity(256);
    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
                return Err("it closed the connection".to_string());
            }
            head.push(b[0]);
            if head.ends_with(b"\r\n\r\n") {
                return Ok(());
            }
            if head.len() > 16 * 1024 {
                return Err("its answer's head is larger than 16 KiB".to_string());
            }
        }
    })
    .await
    .map_err(|_| format!("the proxy {p} did not answer CONNECT within {HANDSHAKE_TIMEOUT:?}"))?;
    answer.map_err(|e| format!("the proxy {p} refused a tunnel to {target}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let code = match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
        _ => {
            return Err(DialError::Retry(format!(
                "the proxy {p} answered CONNECT with something not HTTP"
            )))
        }
    };
    match code {
        200..=299 => Ok(Box::new(s)),
        407 => Err(DialError::Refused(format!(
            "the proxy {p} wants credentials (407 Proxy Authentication Required): put them in the \
             URL, --proxy http://USER:PASSWORD@HOST:PORT"
        ))),
        403 => Err(DialError::Refused(format!(
            "the proxy {p} forbids a tunnel to {target} (403 Forbidden): ask its administrator to \
             allow CONNECT to that port"
        ))),
        other => Err(DialError::Retry(format!(
            "the proxy {p} refused a tunnel to {target}: {other} {}",
            resp.reason.unwrap_or("")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_and_never_print_their_password() {
        let p: Proxy = "http://alice:s%40cret@proxy.example:3128".parse().unwrap();
        assert_eq!(p.to_string(), "http://proxy.example:3128");
        assert_eq!(p.auth.as_ref().unwrap().1.expose(), "s@cret");
        assert!(!format!("{p:?}").contains("cret"));
        let s: Proxy = "socks5://[::1]".parse().unwrap();
        assert_eq!(s.to_string(), "socks5://[::1]:1080");
        assert_eq!("proxy:8080".parse::<Proxy>().unwrap().kind, Kind::Http);
        assert_eq!("https://p.example".parse::<Proxy>().unwrap().port, 443);
        assert!("ftp://p:1".parse::<Proxy>().is_err());
        assert!("http://".parse::<Proxy>().is_err());
    }

    #[test]
    fn the_environment_is_read_as_curl_reads_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = from_env("t.example", env(&[("https_proxy", "http://p:1")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "http://p:1");
        let p = from_env("t.example", env(&[("ALL_PROXY", "socks5://s:2")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.to_string(), "socks5://s:2");
        let no = &[
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "localhost,.example"),
        ];
        assert!(from_env("t.example", env(no)).is_none());
        assert!(from_env("example", env(no)).is_none());
        assert!(from_env("other.org", env(no)).is_some());
        assert!(from_env(
            "x",
            env(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")])
        )
        .is_none());
        assert!(from_env("x", env(&[])).is_none());
        let any = &[("HTTPS_PROXY", "http://p:1")];
        for local in ["localhost", "a.localhost", "127.0.0.1", "::1"] {
            assert!(from_env(local, env(any)).is_none(), "{local}");
        }
    }
}
