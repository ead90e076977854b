//! Visitor policy of an HTTP tunnel, enforced at the edge before a stream
//! is opened: address allow/deny lists, HTTP Basic authentication, a per-IP
//! request rate; and the request edits (Host rewrite, header add/remove).
//! Built once at registration from the client's `Policy` (every mistake
//! named), then read-only behind the tunnel's `Arc<Rule>`.

use std::net::IpAddr;

use base64::Engine as _;
use bytes::Bytes;
use ipnet::IpNet;
use subtle::ConstantTimeEq;

use tunnel_lib::proto::Policy;

use crate::fairness::Fairness;
use crate::respond::{self, ErrorPage};

pub struct EdgePolicy {
    /// User name and the SHA-256 of the password.
    users: Vec<(Box<str>, [u8; 32])>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    rate: Option<Fairness>,
    /// The `Host` sent to the local service instead of the visitor's.
    pub host: Option<Box<str>>,
    pub add: Vec<(Box<str>, Box<str>)>,
    pub remove: Vec<Box<str>>,
    /// Response header lines added (`Name: value\r\n`, rendered once).
    pub response_add: Vec<Bytes>,
    /// Response header names removed.
    pub response_remove: Vec<Box<str>>,
}

impl std::fmt::Debug for EdgePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Users by name only: the hashes stay out of logs.
        f.debug_struct("EdgePolicy")
            .field(
                "users",
                &self.users.iter().map(|u| &u.0).collect::<Vec<_>>(),
            )
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("rate", &self.rate.is_some())
            .field("host", &self.host)
            .field("add", &self.add)
            .field("remove", &self.remove)
            .field("response_add", &self.response_add.len())
            .field("response_remove", &self.response_remove)
            .finish()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header_name(flag: &str, n: &str) -> Result<Box<str>, String> {
    if n.is_empty() || !n.bytes().all(token_char) {
        return Err(format!(
            "{flag} {n:?}: not a header name (letters, digits and -)"
        ));
    }
    Ok(n.into())
}

fn header_value(flag: &str, v: &str) -> Result<Box<str>, String> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "{flag}: a header value may not contain a line break"
        ));
    }
    Ok(v.trim().into())
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
fn net(flag: &str, s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{flag} {s:?}: expected an address or a CIDR such as 10.0.0.0/8"))
}

impl EdgePolicy {
    /// Checks and builds a tunnel's policy; `None` when it has none. `local`
    /// is the client's local address (what `host_header = "rewrite"` sends).
    pub fn new(p: &Policy, local: &str) -> Result<Option<EdgePolicy>, String> {
        if p.is_empty() {
            return Ok(None);
        }
        let mut users = Vec::new();
        for cred in &p.basic_auth {
            let Some((user, pass)) = cred.expose().split_once(':') else {
                return Err("--basic-auth: expected USER:PASSWORD (or USER:sha256:HEX)".into());
            };
            if user.is_empty() || pass.is_empty() {
                return Err("--basic-auth: the user name and the password may not be empty".into());
            }
            let hash = match pass.strip_prefix("sha256:") {
                Some(hex) if hex.len() == 64 => {
                    let mut h = [0u8; 32];
                    for (i, b) in h.iter_mut().enumerate() {
                        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| {
                            "--basic-auth USER:sha256:HEX: HEX is the password's SHA-256 in 64 hex digits"
                                .to_string()
                        })?;
                    }
                    h
                }
                _ => sha256(pass.as_bytes()),
            };
            users.push((user.into(), hash));
        }
        let allow = p
            .allow
            .iter()
            .map(|s| net("--allow", s))
            .collect::<Result<_, _>>()?;
        let deny = p
            .deny
            .iter()
            .map(|s| net("--deny", s))
            .collect::<Result<_, _>>()?;
        let host = match p.host_header.as_str() {
            "" => None,
            "rewrite" => Some(local.into()),
            v => {
                let v = header_value("--host-header", v)?;
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(
                        "--host-header: expected rewrite or a host such as localhost:5173".into(),
                    );
                }
                Some(v)
            }
        };
        let mut add = Vec::new();
        for (k, v) in &p.add_request_headers {
            let name = header_name("--request-header-add", k)?;
            if ["host", "content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                return Err(format!(
                    "--request-header-add {name}: the tunnel writes this header itself{}",
                    if name.eq_ignore_ascii_case("host") {
                        "; use --host-header"
                    } else {
                        ""
                    }
                ));
            }
            add.push((name, header_value("--request-header-add", v)?));
        }
        let remove = p
            .remove_request_headers
            .iter()
            .map(|n| header_name("--request-header-remove", n))
            .collect::<Result<_, _>>()?;
        // The edge frames responses by these: never edited.
        let framing = |flag: &str, n: &str| -> Result<Box<str>, String> {
            let name = header_name(flag, n)?;
            if [
                "content-length",
                "transfer-encoding",
                "connection",
                "upgrade",
            ]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
            {
                return Err(format!("{flag} {name}: the tunnel frames responses by this header; it cannot be edited"));
            }
            Ok(name)
        };
        let mut response_add = Vec::new();
        for (k, v) in &p.add_response_headers {
            let name = framing("--response-header-add", k)?;
            let value = header_value("--response-header-add", v)?;
            response_add.push(Bytes::from(format!("{name}: {value}\r\n")));
        }
        let response_remove = p
            .remove_response_headers
            .iter()
            .map(|n| framing("--response-header-remove", n))
            .collect::<Result<_, _>>()?;
        Ok(Some(EdgePolicy {
            users,
            allow,
            deny,
            rate: (p.rate_per_ip > 0).then(|| Fairness::new(0, p.rate_per_ip)),
            host,
            add,
            remove,
            response_add,
            response_remove,
        }))
    }

    /// Whether this visitor's request may go through: the page otherwise.
    pub fn admit(
        &self,
        host: &str,
        ip: IpAddr,
        authorization: Option<&[u8]>,
    ) -> Result<(), ErrorPage> {
        let ip = ip.to_canonical();
        if (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)))
            || self.deny.iter().any(|n| n.contains(&ip))
        {
            return Err(respond::forbidden(host));
        }
        if let Some(rate) = &self.rate {
            if rate.admit(ip).is_err() {
                return Err(respond::rate_limited(host));
            }
        }
        if !self.users.is_empty() && !self.authorized(authorization) {
            return Err(respond::unauthorized(host));
        }
        Ok(())
    }

    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(v) = authorization else { return false };
        let v = v.trim_ascii();
        let Some(b64) = v
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case(b"basic "))
            .map(|_| v[6..].trim_ascii())
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        let hash = sha256(pass);
        // Every user is compared, in constant time, whoever matches.
        let mut ok = subtle::Choice::from(0);
        for (u, h) in &self.users {
            ok |= u.as_bytes().ct_eq(user) & h.ct_eq(&hash);
        }
        ok.into()
    }

    /// Whether a request header is removed before forwarding.
    pub fn removes(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut Policy)) -> Result<Option<EdgePolicy>, String> {
        let mut p = Policy::default();
        f(&mut p);
        EdgePolicy::new(&p, "localhost:5173")
    }

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    #[test]
    fn an_empty_policy_is_none() {
        assert!(policy(|_| {}).unwrap().is_none());
    }

    #[test]
    fn addresses_are_allowed_and_denied_by_cidr() {
        let p = policy(|p| {
            p.allow = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
            p.deny = vec!["10.9.0.0/16".into()];
        })
        .unwrap()
        .unwrap();
        let ok = |ip: &str| p.admit("h", ip.parse().unwrap(), None).is_ok();
        assert!(ok("10.1.2.3"));
        assert!(
            ok("::ffff:10.1.2.3"),
            "a v4-mapped visitor on a dual-stack listener"
        );
        assert!(!ok("10.9.0.1"));
        assert!(!ok("192.0.2.1"));
        assert!(ok("2001:db8::1"));
        let e = policy(|p| p.allow = vec!["10.0.0.0/33".into()])
            .err()
            .unwrap();
        assert!(e.starts_with("--allow \"10.0.0.0/33\""), "{e}");
    }

    #[test]
    fn basic_auth_takes_a_password_or_its_hash() {
        let hash = super::sha256(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let p = policy(|p| {
            p.basic_auth = vec!["ann:pw".into(), format!("bob:sha256:{hash}").into()];
        })
        .unwrap()
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(p.admit("h", ip, Some(&basic("ann:pw"))).is_ok());
        assert!(p.admit("h", ip, Some(&basic("bob:s3cret"))).is_ok());
        let denied = p.admit("h", ip, Some(&basic("ann:wrong"))).unwrap_err();
        assert_eq!(denied.status, 401);
        assert!(denied.header.as_ref().unwrap().1.starts_with("Basic"));
        assert!(p.admit("h", ip, None).is_err());
        assert!(p.admit("h", ip, Some(b"Bearer x")).is_err());
        assert!(p.admit("h", ip, Some(b"Basic !!!")).is_err());
        assert!(!format!("{p:?}").contains(&hash), "no hash in Debug");
        assert!(policy(|p| p.basic_auth = vec!["nocolon".into()]).is_err());
    }

    #[test]
    fn the_rate_limit_answers_429_past_the_burst() {
        let p = policy(|p| p.rate_per_ip = 5).unwrap().unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let passed = (0..40).filter(|_| p.admit("h", ip, None).is_ok()).count();
        assert!((10..=12).contains(&passed), "{passed} passed a burst of 10");
        assert_eq!(p.admit("h", ip, None).unwrap_err().status, 429);
        assert!(
            p.admit("h", "192.0.2.8".parse().unwrap(), None).is_ok(),
            "per address"
        );
    }

    #[test]
    fn header_edits_are_checked() {
        let p = policy(|p| {
            p.host_header = "rewrite".into();
            p.add_request_headers = vec![("X-Env".into(), "dev".into())];
            p.remove_request_headers = vec!["Cookie".into()];
        })
        .unwrap()
        .unwrap();
        assert_eq!(p.host.as_deref(), Some("localhost:5173"));
        assert!(p.removes(b"cookie"));
        assert!(policy(|p| p.add_request_headers = vec![("Bad Name".into(), "x".into())]).is_err());
        let e = policy(|p| p.remove_response_headers = vec!["Content-Length".into()])
            .err()
            .unwrap();
        assert!(e.contains("cannot be edited"), "{e}");
        let p2 =
            policy(|p| p.add_response_headers = vec![("X-Robots-Tag".into(), "noindex".into())])
                .unwrap()
                .unwrap();
        assert_eq!(&p2.response_add[0][..], b"X-Robots-Tag: noindex\r\n");
        assert!(policy(|p| p.add_request_headers = vec![("X-A".into(), "a\r\nb".into())]).is_err());
        let e = policy(|p| p.add_request_headers = vec![("Host".into(), "x".into())])
            .err()
            .unwrap();
        assert!(e.contains("--host-header"), "{e}");
    }
}
