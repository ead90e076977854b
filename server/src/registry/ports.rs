//! TCP and UDP tunnels' public ports, held like names: claimed atomically,
//! reserved for their owner when the session ends, across restarts too.

use tunnel_lib::proto::{ErrorCode, TunnelKind};

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{lock, Refusal, Registered, Registry, Session};

/// The registry key of a TCP or UDP tunnel's public port (`tcp:40022`,
/// `udp:40051`): claims, reservations and `names.json` treat it as a name.
pub fn port_key(kind: TunnelKind, port: u16) -> String {
    match kind {
        TunnelKind::Udp => format!("udp:{port}"),
        _ => format!("tcp:{port}"),
    }
}

fn proto_name(kind: TunnelKind) -> &'static str {
    if kind == TunnelKind::Udp {
        "UDP"
    } else {
        "TCP"
    }
}

impl Registry {
    /// Registers a TCP tunnel for `session` on port `requested` of `range`
    /// (0: any free one). `bind` opens the port once it is claimed (the claim
    /// is atomic, so two sessions never race for one port); a port that
    /// cannot be opened is released again. The port is held like a name:
    /// reserved for its owner when the session ends, across restarts too.
    pub fn register_port<L>(
        &self,
        session: &Session,
        kind: TunnelKind,
        requested: u16,
        (range, own): (&std::ops::RangeInclusive<u16>, bool),
        mut bind: impl FnMut(u16) -> std::io::Result<L>,
    ) -> Result<(Registered, L), Refusal> {
        let whose = if own { "this token's" } else { "this server's" };
        self.check_tunnel_count(session)?;
        let (first, last) = (*range.start(), *range.end());
        let (port, listener) = if requested != 0 {
            if !range.contains(&requested) {
                return Err(Refusal {
                    code: ErrorCode::InvalidName,
                    message: format!(
                        "port {requested} is outside {whose} {} ports {first}-{last}: ask for one \
                         inside them with --remote-port, or for none",
                        proto_name(kind)
                    ),
                });
            }
            (
                requested,
                self.claim_port(session, kind, requested, &mut bind)?,
            )
        } else {
            let n = u32::from(last - first) + 1;
            let start = fastrand::u32(..n);
            let mut found = None;
            for i in 0..n {
                let p = first + ((start + i) % n) as u16;
                if !lock(&self.names).is_free(&port_key(kind, p), Instant::now()) {
                    continue;
                }
                if let Ok(l) = self.claim_port(session, kind, p, &mut bind) {
                    found = Some((p, l));
                    break;
                }
            }
            found.ok_or_else(|| Refusal {
                code: ErrorCode::LimitReached,
                message: format!(
                    "every {} port in {whose} range ({first}-{last}) is taken; retry later",
                    proto_name(kind)
                ),
            })?
        };
        let key = port_key(kind, port);
        let tunnel_id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        lock(&session.hosts).push(key.as_str().into());
        self.changed.notify_one();
        Ok((
            Registered {
                tunnel_id,
                url: self.url(&key, kind),
                hostname: key,
            },
            listener,
        ))
    }

    fn claim_port<L>(
        &self,
        session: &Session,
        kind: TunnelKind,
        port: u16,
        bind: &mut impl FnMut(u16) -> std::io::Result<L>,
    ) -> Result<L, Refusal> {
        let key = port_key(kind, port);
        let refused = |why: &str| Refusal {
            code: ErrorCode::NameTaken,
            message: format!("port {port} {why}; ask for another --remote-port, or for none"),
        };
        self.claim(&key, session).map_err(|r| match r.code {
            ErrorCode::NameTaken if r.message.contains("reserved") => {
                refused("is reserved for the client that held it until recently")
            }
            ErrorCode::NameTaken => refused("is taken by another connected tunnel"),
            _ => r,
        })?;
        bind(port).map_err(|e| {
            lock(&self.names).release(&key, session.id);
            refused(&format!("cannot be opened on this server ({e})"))
        })
    }
}
