//! The route table: host → rule, a lock-free snapshot (`ArcSwap`) rebuilt
//! on registration, probed on every request.

use std::collections::HashMap;
use std::sync::Arc;

use tunnel_lib::http1::host::wildcard_parents;

use super::Rule;

/// Host → rule. Wildcard rules are keyed by their parent in `wild`, so a
/// lookup is the exact probe plus one probe per parent label, and only
/// when wildcard rules exist.
#[derive(Default, Clone)]
pub(super) struct RouteTable {
    pub(super) exact: HashMap<Box<str>, Arc<Rule>>,
    pub(super) wild: HashMap<Box<str>, Arc<Rule>>,
}

impl RouteTable {
    pub(super) fn insert(&mut self, rule: Arc<Rule>) {
        match rule.host.strip_prefix("*.") {
            Some(parent) => self.wild.insert(parent.into(), rule),
            None => self.exact.insert(rule.host.clone(), rule),
        };
    }

    /// The rule for `host`: its exact rule, else the nearest wildcard rule
    /// above it unless `wild_ok` says the name is not a wildcard's to take.
    pub(super) fn get(&self, host: &str, wild_ok: impl FnOnce() -> bool) -> Option<&Arc<Rule>> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        if self.wild.is_empty() || !wild_ok() {
            return None;
        }
        wildcard_parents(host).find_map(|p| self.wild.get(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_probe_exact_then_wildcard_parents() {
        let mut t = RouteTable::default();
        let rule = |host: &str, id| {
            Arc::new(Rule {
                host: host.into(),
                session_id: id,
                tunnel_id: id as u32,
                target: crate::registry::Target::Tls,
                metrics: tunnel_lib::metrics::TunnelMetrics::detached(),
            })
        };
        t.insert(rule("*.preview.example.com", 1));
        t.insert(rule("a.preview.example.com", 2));
        t.insert(rule("*.example.com", 3));
        assert_eq!(
            t.get("a.preview.example.com", || true).unwrap().session_id,
            2
        );
        assert_eq!(
            t.get("b.preview.example.com", || true).unwrap().session_id,
            1
        );
        assert_eq!(
            t.get("x.y.preview.example.com", || true)
                .unwrap()
                .session_id,
            1
        );
        assert_eq!(t.get("other.example.com", || true).unwrap().session_id, 3);
        assert!(t.get("example.com", || true).is_none());
        assert!(t.get("example.org", || true).is_none());
    }
}
