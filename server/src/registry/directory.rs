//! The directory the edge asks: which rule serves a host, and why a host
//! with no route has none. The edge sees only this trait (`State::directory`);
//! its first implementation is the in-process [`Registry`]. A shared
//! directory (a cluster of servers, where a name may be held by a client of
//! another server) implements the same questions, and the edge does not
//! change.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Offline, Registry, Rule, Session};

/// What the edge asks of the names and routes.
pub trait Directory: Send + Sync {
    /// The hot path: the rule and live session for a Host header value (or
    /// an SNI name).
    fn route(&self, host: &[u8]) -> Option<(Arc<Rule>, Option<Arc<Session>>)>;

    /// Why a host (normalised) without a route has none, if it is held for
    /// its owner: the client left, or may be on its way back.
    fn offline(&self, host: &str) -> Option<Offline>;

    /// Waits until `host` has a route again or `limit` passes, while its
    /// owner may be reconnecting. No lock is held.
    fn owner_back<'a>(
        &'a self,
        host: &'a str,
        limit: Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

    /// Whether some tunnel serves `host` (normalised): certificates are
    /// ordered only for those.
    fn serves(&self, host: &str) -> bool;
}

impl Directory for Registry {
    fn route(&self, host: &[u8]) -> Option<(Arc<Rule>, Option<Arc<Session>>)> {
        Registry::route(self, host)
    }

    fn offline(&self, host: &str) -> Option<Offline> {
        if self.lookup(host).is_some() {
            return None;
        }
        lock(&self.names).offline(host, Instant::now())
    }

    fn owner_back<'a>(
        &'a self,
        host: &'a str,
        limit: Duration,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let deadline = tokio::time::sleep(limit);
            tokio::pin!(deadline);
            loop {
                // Armed before the check: a registration in between still
                // wakes it.
                let returned = self.returned.notified();
                tokio::pin!(returned);
                returned.as_mut().enable();
                if self.offline(host) != Some(Offline::Reconnecting) {
                    return;
                }
                tokio::select! {
                    _ = returned => {}
                    _ = &mut deadline => return,
                }
            }
        })
    }

    fn serves(&self, host: &str) -> bool {
        Registry::serves(self, host)
    }
}
