//! The Host grammar, once: `reg-name / IPv4 / [IPv6]` with an optional
//! `:port` (RFC 9110 §7.2, RFC 3986 §3.2.2), no userinfo, no path. The
//! request parser validates with it and routing normalises with it, so the
//! two can never disagree about what the host part of a value is.

use std::borrow::Cow;

/// Splits a Host value into its host and port parts (`port` without the
/// colon, possibly empty when absent). `None` when the value is not a
/// valid Host.
pub fn split_host(v: &[u8]) -> Option<(&[u8], &[u8])> {
    if v.is_empty() {
        return None;
    }
    let (host, port) = if v[0] == b'[' {
        let end = v.iter().position(|b| *b == b']')?;
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return None;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(c) => (&v[..c], &v[c..]),
            None => (v, &v[v.len()..]),
        }
    };
    if host.is_empty() {
        return None;
    }
    if host[0] != b'['
        && !host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        return None;
    }
    match port {
        [] => Some((host, port)),
        [b':', digits @ ..]
            if digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= 65_535 =>
        {
            Some((host, digits))
        }
        _ => None,
    }
}

/// The routing key of a Host value (or a TLS SNI name): lower case, no
/// port, no trailing dot. `None` for something that cannot be a host we
/// serve.
pub fn normalise_host(raw: &[u8]) -> Option<Cow<'_, str>> {
    let (host, _) = split_host(raw)?;
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // split_host admits ASCII only.
    let s = std::str::from_utf8(host).ok()?;
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(s.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(s))
    }
}

/// The parent names a wildcard rule for `host` could be stored under, most
/// specific first: `a.b.example.com` → `*.b.example.com`, `*.example.com`,
/// `*.com`. Routing probes them in this order after the exact name.
pub fn wildcard_parents(host: &str) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(|(_, c)| *c == '.')
        .map(move |(i, _)| &host[i + 1..])
        .filter(|rest| !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_normalise() {
        assert_eq!(
            normalise_host(b"App.Localhost:8000").as_deref(),
            Some("app.localhost")
        );
        assert_eq!(
            normalise_host(b"app.localhost.").as_deref(),
            Some("app.localhost")
        );
        assert_eq!(normalise_host(b"[::1]:80").as_deref(), Some("[::1]"));
        for bad in [
            &b""[..],
            b"a@b",
            b"a/b",
            b"a:x",
            b"a:123456",
            b"[zz]",
            b"[::1",
            b":80",
        ] {
            assert_eq!(
                normalise_host(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(split_host(b"h:8080"), Some((&b"h"[..], &b"8080"[..])));
        assert_eq!(split_host(b"h"), Some((&b"h"[..], &b""[..])));
    }

    /// Issue 22, item 13.
    #[test]
    fn a_port_above_65535_is_not_a_host() {
        assert!(split_host(b"name:65535").is_some());
        assert!(split_host(b"name:99999").is_none());
        assert!(split_host(b"[::1]:70000").is_none());
    }

    #[test]
    fn parents_walk_up_the_labels() {
        let p: Vec<_> = wildcard_parents("a.b.example.com").collect();
        assert_eq!(p, ["b.example.com", "example.com", "com"]);
        assert_eq!(wildcard_parents("localhost").count(), 0);
    }
}
