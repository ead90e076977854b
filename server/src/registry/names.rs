//! The names room: who holds each name (a host, or `tcp:PORT` / `udp:PORT`),
//! as a pure state machine. A name is *claimed* by a live session, and when
//! the session ends it is *reserved* for the same owner for the grace
//! period, so a client that reconnects gets its URL back and nobody else
//! can take it meanwhile. Each token's names (claimed or reserved) are
//! counted against its limit.
//!
//! Nothing here reads a clock or takes a lock: every method is given `now`,
//! so the tests drive time by hand, and the [`Registry`](super::Registry)
//! keeps one `Names` behind a mutex that no `.await` ever sees. A shared
//! directory (a cluster) keeps the same entries in its store.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tunnel_lib::proto::ErrorCode;

use super::{Offline, Owner, Refusal};

/// At most this many names are held at once (claimed or reserved), whoever
/// holds them: the table's memory has a ceiling.
pub(crate) const MAX_NAMES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Claimed {
        session: u64,
        owner: Owner,
    },
    Reserved {
        owner: Owner,
        until: Instant,
        /// The client said goodbye: visitors are told at once that it is
        /// offline instead of being held for its return.
        left: bool,
    },
}

impl Entry {
    fn owner(&self) -> Owner {
        match *self {
            Entry::Claimed { owner, .. } | Entry::Reserved { owner, .. } => owner,
        }
    }
}

pub(crate) struct Names {
    entries: HashMap<Box<str>, Entry>,
    /// Reservations in the order they lapse (each lasts `grace`, so the
    /// order they were made in).
    lapsing: VecDeque<(Instant, Box<str>)>,
    /// Names each token holds (claimed or reserved).
    held: HashMap<usize, usize>,
    grace: Duration,
    /// Names one token may hold (0: no limit).
    per_token: usize,
}

impl Names {
    pub(crate) fn new(grace: Duration, per_token: usize) -> Names {
        Names {
            entries: HashMap::new(),
            lapsing: VecDeque::new(),
            held: HashMap::new(),
            grace,
            per_token,
        }
    }

    pub(crate) fn set_per_token(&mut self, per_token: usize) {
        self.per_token = per_token;
    }

    /// `session` of `owner` claims `name`: free, or reserved for `owner`.
    pub(crate) fn claim(
        &mut self,
        name: &str,
        session: u64,
        owner: Owner,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.lapse(now);
        let taken = |message: String| Refusal {
            code: ErrorCode::NameTaken,
            message,
        };
        match self.entries.get(name) {
            Some(Entry::Claimed { session: s, .. }) if *s == session => {
                Err(taken(format!("this client already exposes {name:?}")))
            }
            Some(Entry::Claimed { .. }) => Err(taken(format!(
                "{name:?} is taken by another connected client; pick another --subdomain or stop \
                 the other client"
            ))),
            Some(Entry::Reserved { owner: o, .. }) if *o != owner => Err(taken(format!(
                "{name:?} is reserved for the client that held it until recently; pick another \
                 --subdomain or retry later"
            ))),
            // Its own reservation: already counted.
            Some(Entry::Reserved { .. }) => {
                self.entries
                    .insert(name.into(), Entry::Claimed { session, owner });
                Ok(())
            }
            None => {
                self.within_limits(owner)?;
                self.entries
                    .insert(name.into(), Entry::Claimed { session, owner });
                self.count(owner, 1);
                Ok(())
            }
        }
    }

    /// Undoes `session`'s claim of `name` (a port that could not be
    /// opened): free again, not reserved.
    pub(crate) fn release(&mut self, name: &str, session: u64) {
        if let Some(Entry::Claimed { session: s, owner }) = self.entries.get(name).copied() {
            if s == session {
                self.entries.remove(name);
                self.count(owner, -1);
            }
        }
    }

    /// `session` ended: each of its `names` is reserved for its owner
    /// until the grace period passes. `left`: the client stopped on
    /// purpose.
    pub(crate) fn end<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        session: u64,
        left: bool,
        now: Instant,
    ) {
        let until = now + self.grace;
        for name in names {
            if let Some(Entry::Claimed { session: s, owner }) = self.entries.get(name).copied() {
                if s == session {
                    self.entries
                        .insert(name.into(), Entry::Reserved { owner, until, left });
                    self.lapsing.push_back((until, name.into()));
                }
            }
        }
        self.lapse(now);
    }

    /// Reserves `names` for their owners for the grace period (after a
    /// restart, from the state file). A name already held is left alone.
    pub(crate) fn restore(&mut self, names: Vec<(String, Owner)>, now: Instant) {
        let until = now + self.grace;
        for (name, owner) in names {
            if self.entries.len() >= MAX_NAMES || self.entries.contains_key(name.as_str()) {
                continue;
            }
            self.entries.insert(
                name.as_str().into(),
                Entry::Reserved {
                    owner,
                    until,
                    left: false,
                },
            );
            self.lapsing.push_back((until, name.into()));
            self.count(owner, 1);
        }
    }

    /// The session holding a live claim on `name`.
    pub(crate) fn claimant(&self, name: &str) -> Option<u64> {
        match self.entries.get(name)? {
            Entry::Claimed { session, .. } => Some(*session),
            Entry::Reserved { .. } => None,
        }
    }

    /// Whether nobody holds `name` at `now`.
    pub(crate) fn is_free(&self, name: &str, now: Instant) -> bool {
        match self.entries.get(name) {
            None => true,
            Some(Entry::Claimed { .. }) => false,
            Some(Entry::Reserved { until, .. }) => *until <= now,
        }
    }

    /// Whom `name` is reserved for at `now`, if it is.
    pub(crate) fn reserved_for(&self, name: &str, now: Instant) -> Option<Owner> {
        match self.entries.get(name)? {
            Entry::Reserved { owner, until, .. } if *until > now => Some(*owner),
            _ => None,
        }
    }

    /// Why a reserved name's client is away.
    pub(crate) fn offline(&self, name: &str, now: Instant) -> Option<Offline> {
        match self.entries.get(name)? {
            Entry::Reserved { until, left, .. } if *until > now => Some(if *left {
                Offline::Left
            } else {
                Offline::Reconnecting
            }),
            _ => None,
        }
    }

    /// Every name held at `now`, with its owner: what a restart must keep.
    pub(crate) fn held(&self, now: Instant) -> Vec<(String, Owner)> {
        self.entries
            .iter()
            .filter(|(_, e)| !matches!(e, Entry::Reserved { until, .. } if *until <= now))
            .map(|(n, e)| (n.to_string(), e.owner()))
            .collect()
    }

    /// Names `owner` holds (claimed or reserved, lapsed ones included
    /// until the next change).
    pub(crate) fn count_of(&self, owner: Owner) -> usize {
        match owner {
            Owner::Token(t) => self.held.get(&t).copied().unwrap_or(0),
            Owner::Anonymous => 0,
        }
    }

    fn within_limits(&self, owner: Owner) -> Result<(), Refusal> {
        if self.entries.len() >= MAX_NAMES {
            return Err(Refusal {
                code: ErrorCode::LimitReached,
                message: "the server holds as many names as it can; retry later".into(),
            });
        }
        let max = self.per_token;
        if max == 0 || self.count_of(owner) < max {
            return Ok(());
        }
        Err(Refusal {
            code: ErrorCode::LimitReached,
            message: format!(
                "this token holds {max} names (in use, or kept for its clients' return), the most \
                 the server allows (max_names_per_token): reuse a --subdomain, or wait for names \
                 to lapse"
            ),
        })
    }

    /// Forgets the reservations that lapsed by `now`.
    fn lapse(&mut self, now: Instant) {
        while let Some((until, _)) = self.lapsing.front() {
            if *until > now {
                break;
            }
            let (until, name) = self.lapsing.pop_front().expect("a front");
            // Claimed again since, or reserved anew: not this reservation.
            if let Some(Entry::Reserved {
                until: u, owner, ..
            }) = self.entries.get(&name).copied()
            {
                if u == until {
                    self.entries.remove(&name);
                    self.count(owner, -1);
                }
            }
        }
    }

    fn count(&mut self, owner: Owner, delta: isize) {
        let Owner::Token(t) = owner else { return };
        let n = self.held.entry(t).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.held.remove(&t);
        }
    }
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;
