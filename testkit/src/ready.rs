//! The line `tunnel-server` prints on stdout once it listens:
//! `tunnel-server ready: http=ADDR [https=ADDR] quic=ADDR fingerprint=HEX`.

use std::net::SocketAddr;

/// The value of `key` (`http=`, `quic=`, ...) in a ready line.
pub fn field(ready: &str, key: &str) -> String {
    try_field(ready, key).unwrap_or_else(|| panic!("no {key} in {ready:?}"))
}

fn try_field(ready: &str, key: &str) -> Option<String> {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(str::to_owned)
}

/// A parsed ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    /// As printed (`127.0.0.1:4433`): what `--server` takes.
    pub quic: String,
    pub fingerprint: String,
}

impl Ready {
    /// Panics with the line if it is not a ready line.
    pub fn parse(line: &str) -> Ready {
        assert!(
            line.starts_with("tunnel-server ready: "),
            "not a ready line: {line:?}"
        );
        Ready {
            http: field(line, "http=").parse().expect("http= is an address"),
            https: try_field(line, "https=").map(|a| a.parse().expect("https= is an address")),
            quic: field(line, "quic="),
            fingerprint: field(line, "fingerprint="),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_parses() {
        let r = Ready::parse(
            "tunnel-server ready: http=127.0.0.1:8000 https=127.0.0.1:8443 quic=127.0.0.1:4433 fingerprint=ab12",
        );
        assert_eq!(r.http, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(r.https, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(
            (r.quic.as_str(), r.fingerprint.as_str()),
            ("127.0.0.1:4433", "ab12")
        );
        let r = Ready::parse("tunnel-server ready: http=[::1]:1 quic=[::1]:2 fingerprint=x");
        assert!(r.https.is_none());
        assert_eq!(field("a=1 b=2", "b="), "2");
    }
}
