//! Who may use the inspector: the checks run before any route.
//!
//! The inspector shows captured cookies and tokens and can replay requests
//! against the local app, so a web page the developer happens to visit
//! must not reach it:
//! - **DNS rebinding**: on a loopback address only loopback `Host` values
//!   (`127.0.0.1`, `[::1]`, `localhost`, with our port or none) are served;
//!   any other name gets 421.
//! - **Cross-site requests**: a request that changes anything (every
//!   method but GET and HEAD) must carry [`CSRF_HEADER`], which a plain
//!   cross-origin form or `no-cors` fetch cannot send without a CORS
//!   preflight we never grant, and its `Origin`, when sent, must be our own.
//! - **Framing**: every answer forbids being framed.
//! - **Another machine**: a non-loopback address is refused at start unless
//!   the operator opts in, and then every request needs the credential
//!   (HTTP Basic), compared in constant time.

use std::net::SocketAddr;

use base64::Engine;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use subtle::ConstantTimeEq;
use tunnel_lib::auth::{token_digest_bytes, Secret};

/// The header the inspector's page sends with every state-changing request.
pub const CSRF_HEADER: &str = "x-tunnel-inspector";

/// Where the inspector listens and who may use it.
#[derive(Clone)]
pub struct Access {
    bound: SocketAddr,
    /// SHA-256 of `Basic base64(user:password)`; `None`: loopback only.
    credential: Option<[u8; 32]>,
}

impl Access {
    /// The rules for a listener bound to `bound`. A non-loopback address
    /// needs `remote` (the operator's opt-in) and a `USER:PASSWORD`
    /// credential; the error says which flag is missing.
    pub fn new(
        bound: SocketAddr,
        remote: bool,
        credential: Option<&Secret>,
    ) -> Result<Access, String> {
        let credential = credential.filter(|c| !c.is_empty());
        if let Some(c) = credential {
            if !c.expose().contains(':') {
                return Err(
                    "--inspect-auth takes USER:PASSWORD (the browser asks for both)".into(),
                );
            }
        }
        if !bound.ip().is_loopback() {
            if !remote {
                return Err(format!(
                    "--inspect {bound} can be reached from other machines, and the inspector \
                     shows captured cookies and tokens and replays requests: use \
                     127.0.0.1:{port}, or add --inspect-remote with --inspect-auth USER:PASSWORD \
                     (or TUNNEL_INSPECT_AUTH) if you mean it",
                    port = bound.port()
                ));
            }
            if credential.is_none() {
                return Err(format!(
                    "--inspect-remote needs --inspect-auth USER:PASSWORD (or \
                     TUNNEL_INSPECT_AUTH): without it anyone who reaches {bound} reads the \
                     captured secrets"
                ));
            }
        }
        let credential = credential.map(|c| {
            let basic = base64::engine::general_purpose::STANDARD.encode(c.expose());
            token_digest_bytes(format!("Basic {basic}").as_bytes())
        });
        Ok(Access { bound, credential })
    }

    /// The same rules for the address the listener really got.
    pub fn bound_to(mut self, bound: SocketAddr) -> Access {
        self.bound = bound;
        self
    }

    /// `None` if `method` with `headers` may go on; else the refusal.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Option<Refusal> {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let host = get("host").unwrap_or("");
        if let Some(want) = &self.credential {
            let given = get("authorization").unwrap_or("");
            if !bool::from(token_digest_bytes(given.as_bytes()).ct_eq(want)) {
                return Some(Refusal::Credential);
            }
        } else if !self.loopback_host(host) {
            return Some(Refusal::Host);
        }
        if matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        if get(CSRF_HEADER).is_none() {
            return Some(Refusal::CrossSite);
        }
        match get("origin") {
            Some(origin) if !same_origin(origin, host) => Some(Refusal::CrossSite),
            _ => None,
        }
    }

    fn loopback_host(&self, host: &str) -> bool {
        let (name, port) = split_host(host);
        let port_ok = match port {
            None => true,
            Some(p) => p.parse::<u16>().ok() == Some(self.bound.port()),
        };
        let name = name.to_ascii_lowercase();
        port_ok
            && (name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()))
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("bound", &self.bound)
            .field("credential", &self.credential.map(|_| "***"))
            .finish()
    }
}

/// `host` as (name, port); an IPv6 literal keeps its brackets.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => {
                let port = host[end + 1..].strip_prefix(':');
                (&host[..=end], port)
            }
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    }
}

fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Host,
    CrossSite,
    Credential,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Host => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossSite => StatusCode::FORBIDDEN,
            Refusal::Credential => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Host => {
                "the inspector answers only to 127.0.0.1, [::1] or localhost: open it by that \
                 address (another name here is how DNS rebinding reaches it)"
            }
            Refusal::CrossSite => {
                "the inspector takes changes only from its own page: this request came from \
                 another site, or without the inspector's header"
            }
            Refusal::Credential => {
                "the inspector needs the user and password given to --inspect-auth"
            }
        }
    }
}

/// The headers every answer carries: never framed, never sniffed, no
/// referrer leaks the exchange ids.
pub fn harden(headers: &mut HeaderMap) {
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

/// A header name whose value the inspector masks unless asked: anything
/// that names a token, secret, key, password, session or authorization,
/// and cookies.
pub fn is_secret_header(name: &str) -> bool {
    const PATTERNS: [&str; 7] = [
        "token", "secret", "key", "auth", "cookie", "passw", "session",
    ];
    let name = name.trim().to_ascii_lowercase();
    PATTERNS.iter().any(|p| name.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_loopback_hosts_are_served() {
        let a = Access::new("127.0.0.1:4040".parse().unwrap(), false, None).unwrap();
        for ok in [
            "127.0.0.1:4040",
            "localhost:4040",
            "LOCALHOST",
            "[::1]:4040",
            "127.0.0.1",
        ] {
            assert_eq!(
                a.check(&Method::GET, &headers(&[("host", ok)])),
                None,
                "{ok}"
            );
        }
        for bad in [
            "evil.example:4040",
            "127.0.0.1:4041",
            "",
            "localhost.evil:4040",
            "[::1]:1",
        ] {
            assert_eq!(
                a.check(&Method::GET, &headers(&[("host", bad)])),
                Some(Refusal::Host),
                "{bad}"
            );
        }
    }

    #[test]
    fn changes_need_our_header_and_origin() {
        let a = Access::new("127.0.0.1:4040".parse().unwrap(), false, None).unwrap();
        let h = "127.0.0.1:4040";
        assert_eq!(
            a.check(&Method::POST, &headers(&[("host", h)])),
            Some(Refusal::CrossSite)
        );
        let from = |origin| {
            a.check(
                &Method::POST,
                &headers(&[("host", h), (CSRF_HEADER, "1"), ("origin", origin)]),
            )
        };
        assert_eq!(from("http://127.0.0.1:8000"), Some(Refusal::CrossSite));
        assert_eq!(from("http://127.0.0.1:4040"), None);
    }

    #[test]
    fn a_remote_inspector_needs_the_opt_in_and_a_credential() {
        let any: SocketAddr = "0.0.0.0:4040".parse().unwrap();
        assert!(Access::new(any, false, None)
            .unwrap_err()
            .contains("--inspect-remote"));
        assert!(Access::new(any, true, None)
            .unwrap_err()
            .contains("--inspect-auth"));
        let cred = Secret::new("me:pw");
        let a = Access::new(any, true, Some(&cred)).unwrap();
        assert_eq!(
            a.check(&Method::GET, &headers(&[("host", "box.example:4040")])),
            Some(Refusal::Credential)
        );
        // base64("me:pw") = bWU6cHc=
        assert_eq!(
            a.check(
                &Method::GET,
                &headers(&[
                    ("host", "box.example:4040"),
                    ("authorization", "Basic bWU6cHc=")
                ])
            ),
            None
        );
        assert!(!format!("{a:?}").contains("pw"));
    }

    #[test]
    fn secret_headers_are_found_by_pattern() {
        for s in [
            "Cookie",
            "Set-Cookie",
            "X-Auth-Token",
            "X-API-Key",
            "Authorization",
            "X-Session-Id",
            "Client-Secret",
        ] {
            assert!(is_secret_header(s), "{s}");
        }
        for s in ["Host", "Content-Type", "Accept", "Connection"] {
            assert!(!is_secret_header(s), "{s}");
        }
    }
}
