//! Token comparison in constant time.

use subtle::ConstantTimeEq;

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
