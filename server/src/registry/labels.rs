//! Names: the random ones the server picks, and the validation of a label
//! or a host name a client asks for.

use tunnel_lib::limits::MAX_SUBDOMAIN_LEN;
use tunnel_lib::proto::ErrorCode;

use super::Refusal;

const ADJECTIVES: &[&str] = &[
    "quiet", "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively",
    "merry", "nimble", "proud", "silly", "witty", "zesty", "bold", "bright", "crisp", "swift",
    "sunny", "cosy", "clever", "plucky",
];
const NOUNS: &[&str] = &[
    "fox", "otter", "panda", "tiger", "eagle", "koala", "lynx", "moose", "newt", "owl", "quail",
    "raven", "seal", "whale", "yak", "zebra", "badger", "bison", "crane", "heron", "ibis", "lemur",
    "mole", "wren",
];
/// Suffix alphabet: lowercase letters and digits without the ones read
/// alike (`l`/`1`, `o`/`0`): 32 symbols, 5 bits each.
const SUFFIX: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
const SUFFIX_LEN: usize = 7;
/// A random name, `adjective-noun-xxxxxxx`: 24 × 24 × 32^7 ≈ 2^44
/// possibilities from the system's CSPRNG, so URLs cannot be enumerated
/// or predicted from ones seen before, and still read as words.
pub fn random_label() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2 + SUFFIX_LEN];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The OS generator failing is not a reason to refuse a tunnel.
        b.iter_mut().for_each(|x| *x = fastrand::u8(..));
    }
    let suffix: String = b[2..]
        .iter()
        .map(|x| SUFFIX[usize::from(x & 31)] as char)
        .collect();
    format!(
        "{}-{}-{suffix}",
        ADJECTIVES[usize::from(b[0]) % ADJECTIVES.len()],
        NOUNS[usize::from(b[1]) % NOUNS.len()],
    )
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= MAX_SUBDOMAIN_LEN
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Validates a requested subdomain label (DNS label rules, lower-cased).
pub fn normalise_label(s: &str) -> Result<String, Refusal> {
    let l = s.to_ascii_lowercase();
    if valid_label(&l) {
        Ok(l)
    } else {
        Err(Refusal {
            code: ErrorCode::InvalidName,
            message: format!(
                "subdomain {s:?} is not valid: use 1-63 letters, digits or '-', not starting or ending with '-'"
            ),
        })
    }
}

/// Validates a name rule of a `[[token]]` table: a label (`api`) or a
/// prefix ending in `*` (`alice-*`), lower-cased.
pub fn normalise_name_rule(s: &str) -> Result<String, String> {
    let r = s.trim().to_ascii_lowercase();
    let ok = match r.strip_suffix('*') {
        Some(prefix) => {
            !prefix.is_empty()
                && prefix.len() < MAX_SUBDOMAIN_LEN
                && !prefix.starts_with('-')
                && valid_label(&format!("{prefix}x"))
        }
        None => valid_label(&r),
    };
    if ok {
        Ok(r)
    } else {
        Err(format!(
            "{s:?}: expected a label (api) or a prefix ending in * (alice-*)"
        ))
    }
}

/// Validates a full host name (`app.example.com`, or `*.preview.example.com`
/// for a wildcard rule).
pub fn normalise_hostname(s: &str) -> Result<String, Refusal> {
    let h = s.trim_end_matches('.').to_ascii_lowercase();
    let body = h.strip_prefix("*.").unwrap_or(&h);
    let ok = h.len() <= 253 && body.contains('.') && body.split('.').all(valid_label);
    if ok {
        Ok(h)
    } else {
        Err(Refusal {
            code: ErrorCode::InvalidName,
            message: format!(
                "{s:?} is not a valid host name: use labels of letters, digits and '-' \
                 (app.example.com), or *.parent for a wildcard rule"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_are_labels_or_prefixes() {
        assert_eq!(normalise_name_rule("API").unwrap(), "api");
        assert_eq!(normalise_name_rule("alice-*").unwrap(), "alice-*");
        for bad in ["", "*", "-a*", "a.b", "a_b", "x*y"] {
            assert!(normalise_name_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_names_are_words_and_a_suffix_and_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let l = random_label();
            let parts: Vec<&str> = l.split('-').collect();
            assert_eq!(parts.len(), 3, "{l}");
            assert!(
                ADJECTIVES.contains(&parts[0]) && NOUNS.contains(&parts[1]),
                "{l}"
            );
            assert_eq!(parts[2].len(), SUFFIX_LEN, "{l}");
            assert!(parts[2].bytes().all(|b| SUFFIX.contains(&b)), "{l}");
            assert!(normalise_label(&l).is_ok(), "{l}");
            assert!(seen.insert(l), "a name repeated within 20 000");
        }
        // 24 × 24 × 32^7 ≥ 2^40.
        let space = (ADJECTIVES.len() * NOUNS.len()) as f64 * 32f64.powi(SUFFIX_LEN as i32);
        assert!(space.log2() >= 40.0, "{}", space.log2());
    }

    #[test]
    fn labels_and_hostnames_validate() {
        assert_eq!(normalise_label("MyApp").unwrap(), "myapp");
        for bad in ["", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(normalise_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalise_hostname("App.Example.com.").unwrap(),
            "app.example.com"
        );
        assert_eq!(
            normalise_hostname("*.p.example.com").unwrap(),
            "*.p.example.com"
        );
        for bad in ["localhost", "a..b", "*.com", "a.*.b", "-a.b", "a_b.c"] {
            assert!(normalise_hostname(bad).is_err(), "{bad}");
        }
    }
}
