//! Tokens: a type that never prints its value, and comparison in
//! constant time.

use subtle::ConstantTimeEq;

/// A secret (a token) whose `Debug` prints `***`: a derived `Debug` of a
/// config or a message holding one cannot leak it into a log. The value is
/// reached only through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value itself: for the wire and the comparison, never a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(***)"
        })
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

/// SHA-256 of a token: what the server keeps and compares, so that every
/// comparison is over 32 bytes whatever the token's length.
pub fn token_digest(token: &str) -> [u8; 32] {
    token_digest_bytes(token.as_bytes())
}

/// SHA-256 of any bytes.
pub fn token_digest_bytes(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Index of the configured token that `presented` matches. Every configured
/// token is compared (no early exit), each in constant time.
pub fn match_token(configured: &[[u8; 32]], presented: &str) -> Option<usize> {
    let digest = token_digest(presented);
    let mut found: Option<usize> = None;
    for (i, want) in configured.iter().enumerate() {
        let eq: bool = want.ct_eq(&digest).into();
        if eq && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_right_token_only() {
        let conf = [token_digest("alpha"), token_digest("beta")];
        assert_eq!(match_token(&conf, "alpha"), Some(0));
        assert_eq!(match_token(&conf, "beta"), Some(1));
        assert_eq!(match_token(&conf, "gamma"), None);
        assert_eq!(match_token(&conf, ""), None);
        assert_eq!(match_token(&[], "alpha"), None);
    }
}

#[cfg(test)]
mod secret_tests {
    use super::Secret;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::from("hunter2-token");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(***))");
        assert_eq!(s.expose(), "hunter2-token");
        let hello = crate::proto::Control::Hello {
            version: 2,
            token: s,
            client_id: [0; 16],
            agent: "a".into(),
        };
        assert!(!format!("{hello:?}").contains("hunter2"), "{hello:?}");
    }
}
