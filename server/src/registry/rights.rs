//! Who may claim which name: labels under the server's domain (kept for
//! one token by `[[token]] names`), and full host names outside it by an
//! operator's grant (`--allow-domain`). No grant reaches the domain itself.

use tunnel_lib::proto::ErrorCode;

use super::{normalise_hostname, normalise_label, Owner, Refusal};

/// A token's right to claim host names outside the server's domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct DomainGrant {
    /// The token (its position in the configured list); `None`: every token.
    pub token: Option<usize>,
    /// `app.example.com` (that name), or `*.example.com` (every name below
    /// it, wildcard rules included).
    pub pattern: String,
}

impl DomainGrant {
    pub(super) fn allows(&self, owner: Owner, host: &str) -> bool {
        let who = match (self.token, owner) {
            (None, _) => true,
            (Some(t), Owner::Token(o)) => t == o,
            (Some(_), Owner::Anonymous) => false,
        };
        let what = match self.pattern.strip_prefix("*.") {
            // Every name below the parent, and wildcard rules below it (or
            // the very wildcard the grant names).
            Some(parent) => {
                let h = host.strip_prefix("*.").unwrap_or(host);
                host == self.pattern || h.strip_suffix(parent).is_some_and(|r| r.ends_with('.'))
            }
            // That name only.
            None => self.pattern == host,
        };
        who && what
    }
}

/// `pattern` (a label, or a prefix ending in `*`) under the domain belongs
/// to token `token`: only it may claim matching names, and a token with
/// rules claims only names that match one of its own.
#[derive(Debug, Clone)]
pub struct NameRule {
    pub token: usize,
    pub pattern: String,
}

impl NameRule {
    fn matches(&self, label: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => label.starts_with(prefix),
            None => label == self.pattern,
        }
    }
}

/// The rights of every token: the domain, the grants and the name rules.
/// Pure: it decides from the configuration alone.
#[derive(Debug, Clone)]
pub struct Rights {
    domain: String,
    grants: Vec<DomainGrant>,
    /// Names under the domain kept for one token each (`[[token]] names`).
    name_rules: Vec<NameRule>,
}

impl Rights {
    pub fn new(domain: &str, grants: Vec<DomainGrant>, name_rules: Vec<NameRule>) -> Rights {
        Rights {
            domain: domain.to_ascii_lowercase(),
            grants,
            name_rules,
        }
    }

    pub(super) fn set_name_rules(&mut self, rules: Vec<NameRule>) {
        self.name_rules = rules;
    }

    /// Whether `owner` may have a random name: not a token with names of
    /// its own (it asks for one of them).
    pub fn may_pick_any(&self, owner: Owner) -> Result<(), Refusal> {
        let Owner::Token(i) = owner else {
            return Ok(());
        };
        let own: Vec<&str> = self
            .name_rules
            .iter()
            .filter(|r| r.token == i)
            .map(|r| r.pattern.as_str())
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        Err(Refusal {
            code: ErrorCode::InvalidName,
            message: format!(
                "this token claims its names by name: pass --subdomain with one of {}",
                own.join(", ")
            ),
        })
    }

    /// Whether `owner` may claim `label` under the domain, by the name rules.
    fn may_claim_label(&self, owner: Owner, label: &str) -> Result<(), Refusal> {
        if self.name_rules.is_empty() {
            return Ok(());
        }
        let token = match owner {
            Owner::Token(i) => Some(i),
            Owner::Anonymous => None,
        };
        if let Some(r) = self.name_rules.iter().find(|r| r.matches(label)) {
            if Some(r.token) != token {
                return Err(Refusal {
                    code: ErrorCode::NameTaken,
                    message: format!(
                        "{label:?} is kept for another token by the server's configuration; pick another --subdomain"
                    ),
                });
            }
            return Ok(());
        }
        let own: Vec<&str> = self
            .name_rules
            .iter()
            .filter(|r| Some(r.token) == token)
            .map(|r| r.pattern.as_str())
            .collect();
        if own.is_empty() {
            Ok(())
        } else {
            Err(Refusal {
                code: ErrorCode::InvalidName,
                message: format!(
                    "this token may claim only these names: {}; pass one with --subdomain",
                    own.join(", ")
                ),
            })
        }
    }

    /// `host` is the domain or a name below it.
    pub fn under_domain(&self, host: &str) -> bool {
        host == self.domain
            || host
                .strip_suffix(self.domain.as_str())
                .is_some_and(|r| r.ends_with('.'))
    }

    /// Which host a request names: a label under the domain, or a granted
    /// full host name.
    pub fn requested_host(&self, owner: Owner, name: &str) -> Result<String, Refusal> {
        if !name.contains('.') {
            let label = normalise_label(name)?;
            self.may_claim_label(owner, &label)?;
            return Ok(format!("{label}.{}", self.domain));
        }
        let host = normalise_hostname(name)?;
        if let Some(label) = host.strip_suffix(&format!(".{}", self.domain)) {
            if !label.contains('.') && !label.starts_with('*') {
                self.may_claim_label(owner, label)?;
                return Ok(host);
            }
        }
        // The domain, wildcards and deeper names under it are the server's:
        // no grant reaches them (a grant of *.example.com with --domain
        // tunnel.example.com would otherwise take every unclaimed name).
        if self.under_domain(host.strip_prefix("*.").unwrap_or(&host)) {
            return Err(Refusal {
                code: ErrorCode::InvalidName,
                message: format!(
                    "{host:?} is the server's own domain or under it: claim one label with \
                     --subdomain NAME (it becomes NAME.{})",
                    self.domain
                ),
            });
        }
        if self.grants.iter().any(|g| g.allows(owner, &host)) {
            Ok(host)
        } else {
            Err(Refusal {
                code: ErrorCode::InvalidName,
                message: format!(
                    "this token may not claim {host:?}: the server's operator grants custom domains \
                     with tunnel-server --allow-domain (names under {} need no grant)",
                    self.domain
                ),
            })
        }
    }
}
