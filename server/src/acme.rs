//! Certificates from an ACME CA (Let's Encrypt by default), through the
//! maintained `instant-acme` client: no hand-written ACME or JWS here.
//!
//! One worker task owns the account and every order. Sessions ask it for a
//! certificate when a tunnel host is registered ([`Acme::ensure`], through
//! a bounded queue); it answers from the store, the disk cache, or a new
//! order. Orders run one at a time, at most [`ORDERS_PER_HOUR`], and a name
//! that failed waits out an exponential backoff before it is ordered again.
//! Names are only ever ordered for a registered tunnel, the server's own
//! name or its wildcard: a scanner's random SNI never reaches this module.
//!
//! Challenges: TLS-ALPN-01 on the https listener (default) or HTTP-01 on
//! the plain listener; `*.DOMAIN` through DNS-01 with the operator's hook
//! (`--acme-dns-hook PROGRAM`, run as `PROGRAM set|clear NAME VALUE` by
//! `tokio::process`, never blocking a runtime thread). Key generation and
//! signing of challenge certificates run in `spawn_blocking`.
//!
//! Renewal: at two thirds of a certificate's lifetime, minus a random
//! jitter of up to 5 % of it; a failed renewal keeps the old certificate,
//! logs what to do, and is retried with backoff.
//!
//! State on disk (the state directory, `acme/`): `account.json` (0600) and
//! per name `NAME.crt` and `NAME.key` (0600), so a restart orders nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::certs::{Cert, CertStore};
use crate::registry::{Owner, Registry};

mod budget;
mod ca;
use budget::Budget;
pub use budget::ORDERS_PER_HOUR;

/// Let's Encrypt's production and staging directories.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Registrations waiting for the worker.
const QUEUE: usize = 64;
/// How long a registration waits for its certificate.
pub const ENSURE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the DNS hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(180);
/// Backoff after a failed order: doubling from this, up to the cap.
const BACKOFF_BASE: Duration = Duration::from_secs(30);
const BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// How the CA validates a name that is not a wildcard
/// (`--acme-challenge`, `acme_challenge = "http-01"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Challenge {
    /// TLS-ALPN-01 on the https listener (port 443 in production).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01 on the plain listener (port 80 in production).
    #[serde(rename = "http-01")]
    Http01,
}

impl std::str::FromStr for Challenge {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "tls-alpn-01" => Ok(Challenge::TlsAlpn01),
            "http-01" => Ok(Challenge::Http01),
            other => Err(format!("{other:?}: expected tls-alpn-01 or http-01")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact for expiry notices.
    pub email: Option<String>,
    /// Trust this root (PEM) for the CA's own https, instead of the system's
    /// roots: a private or test CA.
    pub root: Option<PathBuf>,
    pub challenge: Challenge,
    /// Program that sets and clears DNS TXT records, for the wildcard.
    pub dns_hook: Option<PathBuf>,
    /// Renew a certificate once it is this old, whatever its lifetime
    /// (default: at two thirds of its lifetime).
    pub renew_after: Option<Duration>,
    /// The window of the order budgets (default: an hour).
    pub order_window: Option<Duration>,
}

#[derive(Debug, Error, Clone)]
pub enum AcmeError {
    #[error("the ACME account is not ready: {0}")]
    Account(String),
    #[error("ordering a certificate for {names} failed: {why}")]
    Order { names: String, why: String },
    #[error("--acme-dns-hook {hook}: {why}; it is run as `{hook} set|clear NAME VALUE` and must exit 0 once the TXT record is (un)published")]
    Hook { hook: String, why: String },
    #[error("not ordering {name} again before {secs} s have passed (it failed: {last})")]
    Backoff {
        name: String,
        secs: u64,
        last: String,
    },
    #[error("at most {ORDERS_PER_HOUR} certificate orders per hour: the tunnel serves the default certificate and gets its own in about {0} s, by itself")]
    RateLimited(u64),
    #[error("this token's names have started as many certificate orders this hour as it may (acme_orders_per_token_per_hour): the tunnel serves the default certificate and gets its own in about {0} s, by itself")]
    TokenRateLimited(u64),
    #[error("too many certificate requests are waiting; retry shortly")]
    Busy,
    #[error("the certificate for {0} did not arrive within {ENSURE_TIMEOUT:?}")]
    Timeout(String),
    #[error("the server is shutting down")]
    Stopped,
}

struct Job {
    host: String,
    owner: Owner,
    done: oneshot::Sender<Result<(), AcmeError>>,
}

/// The handle sessions use; the worker is [`Acme::run`].
#[derive(Clone)]
pub struct Acme {
    tx: mpsc::Sender<Job>,
    orders: Arc<AtomicU64>,
}

/// Everything the worker owns.
pub struct Worker {
    cfg: AcmeConfig,
    dir: PathBuf,
    store: Arc<CertStore>,
    registry: Arc<Registry>,
    rx: mpsc::Receiver<Job>,
    /// Orders placed with the CA since start.
    orders: Arc<AtomicU64>,
    account: Option<Account>,
    /// Name → (not before, attempts, last error).
    failures: HashMap<String, (Instant, u32, String)>,
    /// The order budgets, and the names waiting for an order.
    budget: Budget,
    /// Certificates whose renewal is due, by first name, with jitter fixed
    /// once per certificate.
    due: HashMap<String, SystemTime>,
}

impl Acme {
    /// The handle and the worker to run (on the server's tracker).
    pub fn new(
        cfg: AcmeConfig,
        state_dir: &Path,
        store: Arc<CertStore>,
        registry: Arc<Registry>,
    ) -> (Acme, Worker) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let orders = Arc::new(AtomicU64::new(0));
        let budget = Budget::new(
            cfg.order_window.unwrap_or(Duration::from_secs(3600)),
            registry.token_limits().acme_orders_per_hour,
        );
        let worker = Worker {
            cfg,
            dir: state_dir.join("acme"),
            store,
            registry,
            rx,
            orders: orders.clone(),
            account: None,
            failures: HashMap::new(),
            budget,
            due: HashMap::new(),
        };
        (Acme { tx, orders }, worker)
    }

    /// Orders placed with the CA since start.
    pub fn orders(&self) -> u64 {
        self.orders.load(Ordering::Relaxed)
    }

    /// Makes sure a certificate covers `host`: at once when one does,
    /// otherwise after an order (bounded by [`ENSURE_TIMEOUT`]).
    pub async fn ensure(&self, host: &str, owner: Owner) -> Result<(), AcmeError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .try_send(Job {
                host: host.to_owned(),
                owner,
                done,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AcmeError::Busy,
                mpsc::error::TrySendError::Closed(_) => AcmeError::Stopped,
            })?;
        match tokio::time::timeout(ENSURE_TIMEOUT, wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AcmeError::Stopped),
            Err(_) => Err(AcmeError::Timeout(host.to_owned())),
        }
    }
}

impl Worker {
    /// Serves until `shutdown`: startup orders (the server's own name, the
    /// wildcard with a DNS hook), registrations, renewals. An order under
    /// way at shutdown is abandoned.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.serve() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    async fn serve(&mut self) {
        let domain = self.registry.domain().to_owned();
        let mut startup_done = false;
        let mut account_retry = Instant::now();
        loop {
            if self.account.is_none() && Instant::now() >= account_retry {
                match self.account().await {
                    Ok(a) => self.account = Some(a),
                    Err(e) => {
                        warn!("{e}; retrying in 60 s");
                        account_retry = Instant::now() + Duration::from_secs(60);
                    }
                }
            }
            if self.account.is_some() && !startup_done {
                startup_done = true;
                if self.cfg.dns_hook.is_some() {
                    let names = vec![format!("*.{domain}"), domain.clone()];
                    if let Err(e) = self.obtain(&names, None).await {
                        warn!("{e}; new tunnels get a certificate each until the wildcard works");
                    }
                } else if let Err(e) = self.obtain(std::slice::from_ref(&domain), None).await {
                    warn!("{e}; clients need --server-fingerprint until the server has a certificate for {domain}");
                }
            }
            let wake = self.next_wake(account_retry);
            tokio::select! {
                job = self.rx.recv() => match job {
                    Some(job) => {
                        let r = self.for_host(&job.host, job.owner).await;
                        let _ = job.done.send(r);
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => {
                    self.renew_due().await;
                    self.retry_pending().await;
                }
            }
        }
    }

    /// When to look at renewals (and the account) next.
    fn next_wake(&mut self, account_retry: Instant) -> Instant {
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if self.account.is_none() {
            wake = wake.min(account_retry);
        }
        for c in self.store.acme_certs() {
            let at = self.due_at(&c);
            let d = at.duration_since(now_sys).unwrap_or_default();
            wake = wake.min(now + d);
        }
        let failures = &self.failures;
        if let Some(at) = self.budget.next_retry(|h| failures.get(h).map(|f| f.0)) {
            wake = wake.min(at.max(now));
        }
        wake
    }

    /// Orders again, one at a time, the names that got the default
    /// certificate, as their budgets and backoff allow; forgets those no
    /// tunnel serves any more.
    async fn retry_pending(&mut self) {
        let now = Instant::now();
        let pending: Vec<(String, Owner)> = self
            .budget
            .pending
            .iter()
            .map(|(h, o)| (h.clone(), *o))
            .collect();
        for (host, owner) in pending {
            if !self.registry.serves(&host) || self.store.covers(&host) {
                self.budget.pending.remove(&host);
                continue;
            }
            let backoff = self.failures.get(&host).is_some_and(|f| f.0 > now);
            if backoff || self.budget.free_at(Some(owner), now) > now {
                continue;
            }
            match self.for_host(&host, owner).await {
                Ok(()) => info!(%host, "the certificate that was refused earlier is issued"),
                Err(e) => debug!(%host, "still no certificate: {e}"),
            }
        }
    }

    fn due_at(&mut self, c: &Cert) -> SystemTime {
        let key = c.names.first().cloned().unwrap_or_default();
        let renew_after = self.cfg.renew_after;
        *self.due.entry(key).or_insert_with(|| match renew_after {
            // From when this worker first saw it (CAs backdate not-before).
            Some(age) => SystemTime::now() + age,
            None => {
                let life = c.not_after.duration_since(c.not_before).unwrap_or_default();
                let jitter = life.mul_f64(fastrand::f64() * 0.05);
                c.renew_at() - jitter
            }
        })
    }

    /// Renews every certificate that is due and still needed.
    async fn renew_due(&mut self) {
        let now = SystemTime::now();
        let domain = self.registry.domain().to_owned();
        for c in self.store.acme_certs() {
            if self.due_at(&c) > now {
                continue;
            }
            let needed = c
                .names
                .iter()
                .any(|n| *n == domain || *n == format!("*.{domain}") || self.registry.serves(n));
            if !needed {
                continue;
            }
            let key = c.names.first().cloned().unwrap_or_default();
            match self.order(&c.names, None).await {
                Ok(()) => {
                    self.due.remove(&key);
                    info!(names = ?c.names, "certificate renewed");
                }
                Err(e) => {
                    // Keep the old certificate; try again after the backoff.
                    let retry = self
                        .failures
                        .get(&key)
                        .map(|f| f.0)
                        .unwrap_or_else(|| Instant::now() + BACKOFF_BASE);
                    let wait = retry.saturating_duration_since(Instant::now());
                    self.due.insert(key, now + wait.max(Duration::from_secs(1)));
                    warn!(
                        "renewal failed, keeping the current certificate (valid until {}): {e}. \
                         Check that the CA can reach this server (DNS, ports 80/443) and see the logs above",
                        httpdate(c.not_after)
                    );
                }
            }
        }
    }

    /// A registration's certificate. A name that cannot have one now
    /// (budget, backoff, a failed order) is kept to be ordered again.
    async fn for_host(&mut self, host: &str, owner: Owner) -> Result<(), AcmeError> {
        if self.store.covers(host) {
            self.budget.pending.remove(host);
            return Ok(());
        }
        if host.starts_with("*.") && self.cfg.dns_hook.is_none() {
            return Err(AcmeError::Order {
                names: host.to_owned(),
                why:
                    "a wildcard needs a DNS-01 challenge: start tunnel-server with --acme-dns-hook"
                        .into(),
            });
        }
        let r = self.obtain(&[host.to_owned()], Some(owner)).await;
        match &r {
            Ok(()) => self.budget.pending.remove(host),
            Err(_) => self.budget.pending.insert(host.to_owned(), owner),
        };
        r
    }

    /// Orders `names` unless backoff or a budget says no.
    async fn obtain(&mut self, names: &[String], owner: Option<Owner>) -> Result<(), AcmeError> {
        if names.iter().all(|n| self.store.covers(n)) {
            return Ok(());
        }
        let key = names[0].clone();
        if let Some((until, _, last)) = self.failures.get(&key) {
            let now = Instant::now();
            if *until > now {
                return Err(AcmeError::Backoff {
                    name: key,
                    secs: (*until - now).as_secs().max(1),
                    last: last.clone(),
                });
            }
        }
        self.order(names, owner).await
    }

    /// One order, with its bookkeeping (budgets, backoff on failure).
    /// `owner`: whose names (`None`: the server's own, or a renewal).
    async fn order(&mut self, names: &[String], owner: Option<Owner>) -> Result<(), AcmeError> {
        let now = Instant::now();
        let free = self.budget.free_at(owner, now);
        if free > now {
            let secs = (free - now).as_secs().max(1);
            return Err(if self.budget.token_bound(owner, now) {
                AcmeError::TokenRateLimited(secs)
            } else {
                AcmeError::RateLimited(secs)
            });
        }
        self.budget.spend(owner, now);
        self.orders.fetch_add(1, Ordering::Relaxed);
        let key = names[0].clone();
        info!(?names, "ordering a certificate");
        match self.order_once(names).await {
            Ok(cert) => {
                self.failures.remove(&key);
                info!(?names, not_after = %httpdate(cert.not_after), "certificate issued");
                let domain = self.registry.domain();
                if cert.names.iter().any(|n| n.eq_ignore_ascii_case(domain)) {
                    // Issued or renewed: what QUIC presents has changed.
                    info!("{}", crate::certs::quic_note(&cert, domain));
                }
                self.store.add_acme(Arc::new(cert));
                Ok(())
            }
            Err(e) => {
                let attempts = self.failures.get(&key).map_or(0, |f| f.1) + 1;
                let backoff = BACKOFF_BASE
                    .saturating_mul(1 << (attempts - 1).min(10))
                    .min(BACKOFF_CAP);
                let backoff = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                self.failures
                    .insert(key, (Instant::now() + backoff, attempts, e.to_string()));
                warn!("{e}");
                Err(e)
            }
        }
    }
}

/// A time as seconds since the epoch, for logs.
fn httpdate(t: SystemTime) -> String {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("unix {}", d.as_secs()),
        Err(_) => "before 1970".into(),
    }
}
