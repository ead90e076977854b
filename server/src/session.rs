//! One client connection: handshake, hello and auth, then registrations on
//! the control stream until the connection ends.

use std::sync::Arc;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tunnel_lib::io::read_message;
use tunnel_lib::limits::HANDSHAKE_TIMEOUT;
use tunnel_lib::proto::{close, Control, ErrorCode, TunnelKind, PROTOCOL_VERSION};
use tunnel_lib::quic::{explain, relay};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::fairness::{Fairness, Slot};
use crate::registry::{self, Owner, Session, Target};
use crate::state::State;

/// Connections between their first packet and a valid hello, at most, from
/// all sources. They hold no `--max-clients` slot: a client is counted only
/// once its token is checked, so strangers cannot lock clients out.
pub const MAX_PENDING: usize = 256;
/// Pending connections from one source address (an IPv6 /64 counts as one).
pub const PENDING_PER_IP: usize = 8;
/// With this many pending, a new address must first prove it can receive
/// (a QUIC Retry), so spoofed sources cannot fill the budget.
pub const RETRY_ABOVE: usize = 16;

/// How long a session replaced by a newer connection of the same client
/// may finish its exchanges in flight (the client's own limit for an old
/// connection is a minute too).
const REPLACED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// What a pending connection holds until its hello is checked.
struct Pending {
    _permit: OwnedSemaphorePermit,
    _slot: Slot,
}

/// Accepts client connections until `shutdown`: each gets a task (on
/// `tracker`) within the pending budgets, and a `clients` permit only
/// after a valid hello.
pub(crate) async fn accept(
    state: Arc<State>,
    endpoint: quinn::Endpoint,
    clients: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let per_source = Fairness::new(PENDING_PER_IP, 0);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = shutdown.cancelled() => return,
        };
        // A client over the TCP transport is counted by its TCP address
        // (and proved it receives by completing TCP and TLS handshakes).
        let relayed = relay::is_relay_addr(&incoming.remote_address());
        let remote = state.relay.real_peer(incoming.remote_address());
        let busy = MAX_PENDING - pending.available_permits();
        if busy >= RETRY_ABOVE
            && !relayed
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            // Costs one small packet; the real client answers it at once.
            let _ = incoming.retry();
            continue;
        }
        let admitted = per_source
            .admit(remote.ip())
            .ok()
            .zip(pending.clone().try_acquire_owned().ok());
        let Some((slot, permit)) = admitted else {
            state.stats.handshakes_refused.inc();
            debug!(%remote, "refusing a connection: too many handshakes pending");
            incoming.refuse();
            continue;
        };
        let pending = Pending {
            _permit: permit,
            _slot: slot,
        };
        tracker.spawn(serve(
            state.clone(),
            incoming,
            pending,
            clients.clone(),
            shutdown.clone(),
        ));
    }
}

/// Runs one client connection to its end.
async fn serve(
    state: Arc<State>,
    incoming: quinn::Incoming,
    pending: Pending,
    clients: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let remote = state.relay.real_peer(incoming.remote_address());
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!(%remote, "client handshake failed: {}", explain(&e));
            return;
        }
        Err(_) => {
            debug!(%remote, "client handshake timed out");
            return;
        }
    };
    // DATAGRAMs sent before the hello are read and dropped: nothing
    // readable stays unread.
    let hello = tokio::select! {
        h = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_hello(&conn)) => h,
        () = drop_datagrams(&conn) => return,
    };
    let (mut send, mut recv, mut buf, token, client_id, version) = match hello {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => {
            debug!(%remote, "client gave no hello: {why}");
            conn.close(
                VarInt::from_u32(close::PROTOCOL_ERROR),
                b"expected a hello on the control stream",
            );
            return;
        }
        Err(_) => {
            debug!(%remote, "client sent no hello in time");
            conn.close(VarInt::from_u32(close::PROTOCOL_ERROR), b"hello timed out");
            return;
        }
    };
    if version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version mismatch: the server speaks {PROTOCOL_VERSION}, the client {version}; \
             install matching versions of tunnel-client and tunnel-server"
        );
        info!(%remote, "{msg}");
        refuse(
            &conn,
            &mut send,
            ErrorCode::VersionMismatch,
            close::VERSION_MISMATCH,
            &msg,
        )
        .await;
        return;
    }
    let owner = if state.tokens.is_empty() {
        Owner::Anonymous
    } else {
        match tunnel_lib::auth::match_token(&state.tokens, token.expose()) {
            Some(i) => Owner::Token(i),
            None => {
                info!(%remote, "client rejected: wrong or missing token");
                let msg = "the server rejected the token: check --token (or TUNNEL_TOKEN) against the server's --token";
                refuse(
                    &conn,
                    &mut send,
                    ErrorCode::Unauthorized,
                    close::UNAUTHORIZED,
                    msg,
                )
                .await;
                return;
            }
        }
    };

    // Counted now: the token is good; its connection gets the full window.
    drop(pending);
    conn.set_receive_window(state.config.tuning.receive_window());
    let Ok(_client) = clients.try_acquire_owned() else {
        warn!(%remote, "refusing client: at --max-clients");
        let msg = "the server has as many clients as --max-clients allows; retrying";
        refuse(&conn, &mut send, ErrorCode::Busy, close::BUSY, msg).await;
        return;
    };
    let (session, stale) = match state
        .registry
        .add_session(conn.clone(), owner, client_id, remote)
    {
        Ok(s) => s,
        Err(max) => {
            warn!(%remote, "refusing client: its token has {max} sessions (max_sessions_per_token)");
            let msg = format!(
                "this token already has {max} clients connected, the most the server allows \
                 (max_sessions_per_token): stop one, or ask the operator for a higher limit; retrying"
            );
            refuse(&conn, &mut send, ErrorCode::Busy, close::BUSY, &msg).await;
            return;
        }
    };
    if let Some(old) = stale {
        // Its routes moved to this session at once; its connection is left
        // to finish the exchanges in flight (the client closes it when they
        // are done: make-before-break, as when it moves from TLS over TCP
        // back to QUIC), or to time out if it is dead.
        debug!(
            session = old.id,
            "replaced by a newer connection of the same client"
        );
    }
    info!(%remote, session = session.id, "client connected");

    let mut out = BytesMut::new();
    Control::Welcome {
        version: PROTOCOL_VERSION,
        session_id: session.id,
    }
    .encode(&mut out);
    let ok = send.write_all(&out).await.is_ok()
        && control_loop(&state, &session, &mut send, &mut recv, &mut buf, &shutdown).await;
    if ok && shutdown.is_cancelled() {
        let mut out = BytesMut::new();
        Control::GoingAway {
            reason: "server shutting down".into(),
        }
        .encode(&mut out);
        let _ = send.write_all(&out).await;
        // Make-before-break: the streams of exchanges in flight go on until
        // the visitors have drained (or the client leaves first).
        tokio::select! {
            _ = state.drained.cancelled() => {}
            _ = conn.closed() => {}
        }
        conn.close(
            VarInt::from_u32(close::GOING_AWAY),
            b"server shutting down; reconnect later",
        );
    }
    // Replaced by a newer connection of the same client: its routes moved
    // already; the streams in flight here finish before the client closes
    // this connection (bounded).
    if session.ended.is_cancelled() && conn.close_reason().is_none() {
        tokio::select! {
            _ = conn.closed() => {}
            _ = tokio::time::sleep(REPLACED_GRACE) => {}
            _ = state.drained.cancelled() => {}
        }
    }
    // The client stopped on purpose (tunnel-client exiting): no visitor
    // is held for its return.
    let left = matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(ref a)) if a.error_code == VarInt::from_u32(close::NORMAL)
    );
    state.registry.end_session_as(&session, left);
    let why = conn
        .close_reason()
        .map(|e| explain(&e))
        .unwrap_or_else(|| "control stream ended".into());
    info!(%remote, session = session.id, "client disconnected: {why}");
    conn.close(VarInt::from_u32(close::NORMAL), b"session ended");
}

/// Reads DATAGRAMs and drops them until the connection ends.
async fn drop_datagrams(conn: &quinn::Connection) {
    while conn.read_datagram().await.is_ok() {}
}

type Hello = (
    SendStream,
    RecvStream,
    BytesMut,
    tunnel_lib::auth::Secret,
    [u8; 16],
    u16,
);

async fn accept_hello(conn: &quinn::Connection) -> Result<Hello, String> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| explain(&e))?;
    let mut buf = BytesMut::new();
    match read_message(&mut recv, &mut buf, Control::decode)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(Control::Hello {
            version,
            token,
            client_id,
            ..
        }) => Ok((send, recv, buf, token, client_id, version)),
        Some(other) => Err(format!("unexpected first message {other:?}")),
        None => Err("control stream closed".into()),
    }
}

/// Sends an error frame, gives it a moment to arrive, then closes the
/// connection with `code` (whose reason carries the message too, in case the
/// frame is lost in the close).
async fn refuse(
    conn: &quinn::Connection,
    send: &mut SendStream,
    code: ErrorCode,
    close_code: u32,
    msg: &str,
) {
    let mut out = BytesMut::new();
    Control::Error {
        request_id: 0,
        code,
        message: msg.to_owned(),
    }
    .encode(&mut out);
    if send.write_all(&out).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
    }
    conn.close(VarInt::from_u32(close_code), msg.as_bytes());
}

/// Serves registrations until the client goes, the control stream ends or
/// the server shuts down. Returns whether the connection is still usable.
async fn control_loop(
    state: &Arc<State>,
    session: &Arc<Session>,
    send: &mut SendStream,
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        // Without a UDP tunnel nobody else reads DATAGRAMs: they are
        // dropped here, so none stays buffered.
        let udp = !session
            .datagrams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        let msg = tokio::select! {
            // read_chunk (inside read_message) is cancel-safe and `buf`
            // keeps any partial frame, so losing this race loses nothing.
            m = read_message(recv, buf, Control::decode) => m,
            d = session.conn.read_datagram(), if !udp => match d {
                Ok(_) => continue,
                Err(_) => return false,
            },
            _ = session.conn.closed() => return false,
            _ = shutdown.cancelled() => return true,
        };
        let reply = match msg {
            Ok(Some(Control::Register {
                request_id, local, ..
            })) if !valid_local(&local) => answer(
                session,
                request_id,
                Err(registry::Refusal {
                    code: ErrorCode::InvalidName,
                    message: format!(
                        "the local address {local:?} is not HOST:PORT (a name or an IP address, \
                         and a port): pass one such as 127.0.0.1:8080 or localhost:3000"
                    ),
                }),
            ),
            Ok(Some(Control::Register {
                request_id,
                subdomain,
                local,
                kind,
                plain_http,
                policy,
                remote_port,
            })) => {
                let want = Want {
                    kind,
                    name: &subdomain,
                    plain_http,
                    policy: &policy,
                    local: &local,
                    remote_port,
                };
                match register(state, session, want, shutdown).await {
                    Some(result) => answer(session, request_id, result),
                    None => return false,
                }
            }
            Ok(Some(other)) => {
                warn!(session = session.id, "unexpected control message {other:?}");
                session.conn.close(
                    VarInt::from_u32(close::PROTOCOL_ERROR),
                    b"unexpected control message",
                );
                return false;
            }
            Ok(None) => return false,
            // The connection went away under the read: not the peer's fault.
            Err(tunnel_lib::io::StreamError::Read(_)) => return false,
            Err(e) => {
                debug!(session = session.id, "control stream: {e}");
                session.conn.close(
                    VarInt::from_u32(close::PROTOCOL_ERROR),
                    b"malformed control message",
                );
                return false;
            }
        };
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        if send.write_all(&out).await.is_err() {
            return false;
        }
    }
}

/// The answer to one `Register`.
fn answer(
    session: &Session,
    request_id: u32,
    result: Result<registry::Registered, registry::Refusal>,
) -> Control {
    match result {
        Ok(r) => Control::Registered {
            request_id,
            tunnel_id: r.tunnel_id,
            hostname: r.hostname,
            url: r.url,
        },
        Err(refusal) => {
            debug!(
                session = session.id,
                "registration refused: {}", refusal.message
            );
            Control::Error {
                request_id,
                code: refusal.code,
                message: refusal.message,
            }
        }
    }
}

/// A tunnel's visitor policy, checked (HTTP tunnels only).
/// A client's local address as it must be to reach a log line or a `Host`
/// header: `HOST:PORT`, a DNS name or an IP address (IPv6 in brackets),
/// printable ASCII only, at most 261 bytes.
pub(crate) fn valid_local(local: &str) -> bool {
    let Some((host, port)) = local.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        }
    };
    local.len() <= 261 && host_ok && port.parse::<u16>().is_ok()
}

fn edge_policy(
    kind: TunnelKind,
    policy: &tunnel_lib::proto::Policy,
    local: &str,
) -> Result<Option<Arc<crate::policy::EdgePolicy>>, registry::Refusal> {
    let invalid = |message: String| registry::Refusal {
        code: ErrorCode::InvalidName,
        message,
    };
    if kind != TunnelKind::Http {
        return if policy.is_empty() {
            Ok(None)
        } else {
            Err(invalid(
                "visitor policy (--basic-auth, --allow, --host-header...) applies to http tunnels only"
                    .into(),
            ))
        };
    }
    crate::policy::EdgePolicy::new(policy, local)
        .map(|p| p.map(Arc::new))
        .map_err(invalid)
}

/// What one `Register` asks for.
struct Want<'a> {
    kind: TunnelKind,
    name: &'a str,
    plain_http: bool,
    policy: &'a tunnel_lib::proto::Policy,
    local: &'a str,
    remote_port: u16,
}

/// The one place each tunnel kind is registered: a host rule for HTTP and
/// TLS (an HTTP tunnel's URL is answered once its certificate is ready), a
/// public port for TCP and UDP. `None`: the connection or the server went
/// away meanwhile.
async fn register(
    state: &Arc<State>,
    session: &Arc<Session>,
    want: Want<'_>,
    shutdown: &CancellationToken,
) -> Option<Result<registry::Registered, registry::Refusal>> {
    let result = match want.kind {
        TunnelKind::Tcp => crate::tcp::register(state, session, want.remote_port, shutdown),
        TunnelKind::Udp => crate::udp::register(state, session, want.remote_port, shutdown),
        TunnelKind::Http | TunnelKind::Tls => edge_policy(want.kind, want.policy, want.local)
            .and_then(|policy| {
                let target = match want.kind {
                    TunnelKind::Http => Target::Http {
                        plain_http: want.plain_http,
                        policy,
                    },
                    _ => Target::Tls,
                };
                let name = want.name;
                state
                    .registry
                    .register(session, &registry::Request { name, target })
            }),
    };
    let r = match result {
        Ok(r) => r,
        Err(refusal) => return Some(Err(refusal)),
    };
    info!(session = session.id, url = %r.url, local = ?want.local, "tunnel registered");
    if want.kind == TunnelKind::Http && !certificate(state, session, &r.hostname, shutdown).await {
        return None;
    }
    Some(Ok(r))
}

/// With ACME: waits until a certificate covers `host` (or ordering it
/// failed, which is logged: visitors then see the default certificate).
/// Returns false if the connection or the server went away meanwhile.
async fn certificate(
    state: &State,
    session: &Session,
    host: &str,
    shutdown: &CancellationToken,
) -> bool {
    let Some(acme) = &state.acme else { return true };
    tokio::select! {
        r = acme.ensure(host, session.owner) => {
            if let Err(e) = r {
                warn!(session = session.id, %host, "no certificate yet: {e}");
            }
            true
        }
        _ = session.conn.closed() => false,
        _ = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    /// Issue 22, item 9: a forged log line and a clear-screen escape.
    #[test]
    fn a_local_address_is_host_and_port_only() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:3000",
            "[::1]:80",
            "my-app.internal:443",
        ] {
            assert!(super::valid_local(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1:8080\n2026-12-07T00:00:00Z INFO forged line",
            "\x1b[2Jlocalhost:80",
            "localhost",
            "localhost:99999",
            "evil host:80",
            "[nonsense]:80",
            &format!("{}:80", "a".repeat(300)),
        ] {
            assert!(!super::valid_local(bad), "{bad:?}");
        }
    }
}
