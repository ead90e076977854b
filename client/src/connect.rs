//! One connection attempt: choose how to trust the server, handshake, hello,
//! register every tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{ConnectionError, RecvStream, SendStream, VarInt};
use tracing::{debug, info};

use tunnel_lib::io::read_message;
use tunnel_lib::limits::{HANDSHAKE_TIMEOUT, REGISTER_NOTICE, REGISTER_TIMEOUT};
use tunnel_lib::paths::{default_state_dir, DEV_CERT_FILE};
use tunnel_lib::proto::{close, Control, ErrorCode, TunnelKind, PROTOCOL_VERSION};
use tunnel_lib::quic::{explain, is_version_mismatch};
use tunnel_lib::tls::{fingerprint, parse_fingerprint, read_certs, ServerTrust};

use crate::config::Config;
use crate::status::{ClientError, Outcome, TunnelInfo};
use crate::target::{Target, Targets};

/// A registered connection.
pub(crate) struct Live {
    pub(crate) conn: quinn::Connection,
    /// Kept open for the session's life: the server ends the session when
    /// the control stream ends.
    #[allow(dead_code)]
    pub(crate) control_send: SendStream,
    pub(crate) control_recv: RecvStream,
    pub(crate) control_buf: BytesMut,
    pub(crate) tunnels: Vec<TunnelInfo>,
    pub(crate) targets: Targets,
    /// UDP tunnels: tunnel id → the local address datagrams go to.
    pub(crate) udp: Arc<HashMap<u32, SocketAddr>>,
}

pub(crate) enum AttemptError {
    /// Retrying cannot help.
    Fatal(ClientError),
    /// A requested name is held by a live session.
    NameTaken(String),
    /// Worth retrying after a backoff.
    Retry(String),
}

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host:port` (IPv6 in brackets).
fn split_host(server: &str) -> Result<(&str, u16), AttemptError> {
    let bad = || {
        AttemptError::Fatal(ClientError::Config(format!(
            "--server {server:?}: expected HOST:PORT, e.g. tunnel.example.com:4433"
        )))
    };
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// The client's UDP endpoints, one per address family, made when first
/// needed and kept across reconnects.
pub(crate) struct Endpoints {
    /// The levers every endpoint is made with.
    tuning: tunnel_lib::tuning::Tuning,
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    pub(crate) fn new(tuning: tunnel_lib::tuning::Tuning) -> Endpoints {
        Endpoints {
            tuning,
            v4: None,
            v6: None,
        }
    }

    fn for_addr(&mut self, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let slot = if addr.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if let Some(ep) = slot {
            return Ok(ep.clone());
        }
        let ep = tunnel_lib::quic::client_endpoint(addr, &self.tuning)?;
        *slot = Some(ep.clone());
        Ok(ep)
    }

    /// Moves the endpoint that reaches `remote` to a new UDP socket (a new
    /// local port); quinn then migrates each of its connections actively:
    /// a fresh connection ID and a PING on the new path at once.
    pub(crate) fn rebind(&self, remote: SocketAddr) -> std::io::Result<()> {
        let ep = if remote.is_ipv4() { &self.v4 } else { &self.v6 };
        match ep {
            Some(ep) => ep.rebind(tunnel_lib::quic::client_socket(remote)?),
            None => Ok(()),
        }
    }

    /// Lets each endpoint flush its closes (bounded by `limit`).
    pub(crate) async fn wait_idle(self, limit: std::time::Duration) {
        for ep in [self.v4, self.v6].into_iter().flatten() {
            let _ = tokio::time::timeout(limit, ep.wait_idle()).await;
        }
    }
}

/// The local address this host would send from to reach `remote` now (a
/// connected UDP socket sends nothing); `None` while there is no route.
pub(crate) async fn route_source(remote: SocketAddr) -> Option<std::net::IpAddr> {
    let probe = tokio::net::UdpSocket::bind(tunnel_lib::quic::wildcard_for(remote))
        .await
        .ok()?;
    probe.connect(remote).await.ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// Addresses to try, in the resolver's order but with the families
/// alternating (RFC 8305 §4): a host whose first family is broken still
/// gets its other family tried within one head start.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(|a| a.is_ipv6());
    let (mut a, mut b): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|x| x.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(a.len() + b.len());
    while let Some(x) = a.pop() {
        out.push(x);
        if let Some(y) = b.pop() {
            out.push(y);
        }
    }
    out.extend(b.into_iter().rev());
    out.truncate(MAX_ADDRESSES);
    out
}

/// At most this many addresses are tried per attempt.
const MAX_ADDRESSES: usize = 8;

/// RFC 8305's connection attempt delay: the next address gets its try this
/// long after the previous one started, or at once when it failed.
const HEAD_START: std::time::Duration = std::time::Duration::from_millis(250);

/// Connects to the first address that completes a handshake, starting one
/// attempt per head start (one task each, owned by this call: the others are
/// dropped, and their handshakes abandoned, when one wins).
async fn race(
    addrs: Vec<SocketAddr>,
    endpoints: &mut Endpoints,
    cfg: quinn::ClientConfig,
    host: &str,
    server: &str,
) -> Result<quinn::Connection, AttemptError> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut pending = addrs.into_iter();
    let mut last: Option<AttemptError> = None;
    loop {
        let more = pending.len() > 0;
        if attempts.is_empty() || more {
            if let Some(addr) = pending.next() {
                let ep = endpoints
                    .for_addr(addr)
                    .map_err(|e| AttemptError::Retry(format!("cannot open a UDP socket: {e}")))?;
                let connecting = ep.connect_with(cfg.clone(), addr, host).map_err(|e| {
                    AttemptError::Fatal(ClientError::Config(format!(
                        "cannot connect to {host}: {e}"
                    )))
                })?;
                let server = server.to_owned();
                attempts.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                        Ok(Ok(c)) => Ok(c),
                        Ok(Err(e)) => Err(classify_connect(&e, &server)),
                        Err(_) => Err(AttemptError::Retry(format!(
                            "no answer from {server} ({addr}) within {HANDSHAKE_TIMEOUT:?}; is tunnel-server \
                             running and its UDP port open?"
                        ))),
                    }
                });
            }
        }
        let more = pending.len() > 0;
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(conn))) => return Ok(conn),
                Some(Ok(Err(e @ AttemptError::Fatal(_)))) => return Err(e),
                Some(Ok(Err(e))) => last = Some(e),
                Some(Err(join)) => last = Some(AttemptError::Retry(format!("connection attempt failed: {join}"))),
                None if !more => {
                    return Err(last.unwrap_or_else(|| AttemptError::Retry(format!("{host}: no address to try"))));
                }
                None => {}
            },
            _ = tokio::time::sleep(HEAD_START), if more => {}
        }
    }
}

/// How to verify this server: flags first, then the dev certificate of a
/// server on this machine, then the webpki roots.
async fn trust(config: &Config, host: &str) -> Result<ServerTrust, AttemptError> {
    if let Some(fp) = &config.server_fingerprint {
        let pin = parse_fingerprint(fp).map_err(|e| {
            AttemptError::Fatal(ClientError::Config(format!("--server-fingerprint: {e}")))
        })?;
        return Ok(ServerTrust::Pinned(vec![pin]));
    }
    if let Some(path) = &config.server_cert {
        let certs = read_certs(path)
            .await
            .map_err(|e| AttemptError::Fatal(ClientError::Config(format!("--server-cert: {e}"))))?;
        return Ok(ServerTrust::Roots(certs));
    }
    if is_local(host) {
        let dir: Option<PathBuf> = config.dev_state_dir.clone().or_else(default_state_dir);
        let Some(path) = dir.map(|d| d.join(DEV_CERT_FILE)) else {
            return Err(AttemptError::Fatal(ClientError::Config(
                "cannot locate the dev server's certificate (no HOME); pass --server-cert".into(),
            )));
        };
        return match read_certs(&path).await {
            Ok(certs) => Ok(ServerTrust::Pinned(certs.iter().map(fingerprint).collect())),
            Err(_) => Err(AttemptError::Retry(format!(
                "no certificate for the local server at {}: tunnel-server writes it there on first start; \
                 start tunnel-server, or pass --server-cert FILE / --server-fingerprint",
                path.display()
            ))),
        };
    }
    Ok(ServerTrust::WebPki)
}

pub(crate) async fn attempt(
    config: &Config,
    endpoints: &mut Endpoints,
    client_id: [u8; 16],
    names: &[Option<String>],
    monitor: &crate::observe::Monitor,
) -> Result<Live, AttemptError> {
    let (host, port) = split_host(&config.server)?;
    let trust = trust(config, host).await?;
    let client_cfg = tunnel_lib::quic::client_config(&trust, &config.tuning)
        .map_err(|e| AttemptError::Fatal(ClientError::Config(e.to_string())))?;
    let addrs: Vec<SocketAddr> = if config.connect_to.is_empty() {
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AttemptError::Retry(format!("cannot resolve {host}: {e}")))?
            .collect()
    } else {
        config.connect_to.clone()
    };
    if addrs.is_empty() {
        return Err(AttemptError::Retry(format!(
            "{host} resolved to no address"
        )));
    }
    let conn = race(
        interleave(addrs),
        endpoints,
        client_cfg,
        host,
        &config.server,
    )
    .await?;
    // The hello is bounded inside `session`; registrations may take longer
    // (the server gets a new name its certificate first).
    session(config, conn, client_id, names, monitor).await
}

async fn session(
    config: &Config,
    conn: quinn::Connection,
    client_id: [u8; 16],
    names: &[Option<String>],
    monitor: &crate::observe::Monitor,
) -> Result<Live, AttemptError> {
    let control = hello(config, &conn, client_id).await?;
    register(config, conn, control, names, monitor).await
}

/// How a failure on the control stream reads: the connection's close
/// reason if it has one, else the stream's own error (retried).
fn stream_err(conn: &quinn::Connection, e: String) -> AttemptError {
    match conn.close_reason() {
        Some(c) => lost(&c),
        None => AttemptError::Retry(e),
    }
}

fn lost(e: &ConnectionError) -> AttemptError {
    match classify_lost(e) {
        Outcome::Fatal(e) => AttemptError::Fatal(e),
        Outcome::Lost(m) | Outcome::GoingAway(m) => AttemptError::Retry(m),
        Outcome::Shutdown => AttemptError::Retry("shut down".into()),
    }
}

/// The control stream once the server has welcomed us.
struct ControlStream {
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
}

/// Opens the control stream and says hello (bounded by
/// `HANDSHAKE_TIMEOUT`): the token and the protocol version are checked.
async fn hello(
    config: &Config,
    conn: &quinn::Connection,
    client_id: [u8; 16],
) -> Result<ControlStream, AttemptError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let mut out = BytesMut::new();
    Control::Hello {
        version: PROTOCOL_VERSION,
        token: config.token.clone().unwrap_or_default(),
        client_id,
        agent: concat!("tunnel-client/", env!("CARGO_PKG_VERSION")).into(),
    }
    .encode(&mut out);
    send.write_all(&out)
        .await
        .map_err(|e| stream_err(conn, e.to_string()))?;
    let mut buf = BytesMut::new();
    let welcome = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_message(&mut recv, &mut buf, Control::decode),
    )
    .await;
    let Ok(welcome) = welcome else {
        conn.close(VarInt::from_u32(close::NORMAL), b"timed out");
        return Err(AttemptError::Retry(
            "the server did not answer the hello in time".into(),
        ));
    };
    match welcome {
        Ok(Some(Control::Welcome { .. })) => {}
        Ok(Some(Control::Error { code, message, .. })) => return Err(refusal(code, message)),
        Ok(other) => {
            return Err(stream_err(
                conn,
                format!("unexpected answer to hello: {other:?}"),
            ))
        }
        Err(e) => return Err(stream_err(conn, e.to_string())),
    }
    Ok(ControlStream { send, recv, buf })
}

/// Registers every tunnel of `config` on the control stream, one after the
/// other; the connection is live once all are.
async fn register(
    config: &Config,
    conn: quinn::Connection,
    control: ControlStream,
    names: &[Option<String>],
    monitor: &crate::observe::Monitor,
) -> Result<Live, AttemptError> {
    let ControlStream {
        mut send,
        mut recv,
        mut buf,
    } = control;
    let mut tunnels = Vec::with_capacity(config.tunnels.len());
    let mut targets = HashMap::new();
    let mut udp = HashMap::new();
    for (i, spec) in config.tunnels.iter().enumerate() {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(spec.local.as_str())
            .await
            .map_err(|e| {
                AttemptError::Fatal(ClientError::Config(format!("--expose {}: {e}", spec.local)))
            })?
            .collect();
        let mut out = BytesMut::new();
        let request_id = i as u32 + 1;
        let learned = names.get(i).cloned().flatten();
        // A TCP or UDP tunnel's name is its port (`tcp:40022`): asked for
        // again.
        let (subdomain, remote_port) = match spec.kind {
            TunnelKind::Tcp | TunnelKind::Udp => (
                String::new(),
                learned
                    .as_deref()
                    .and_then(|h| h.split_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(spec.remote_port),
            ),
            _ => (learned.unwrap_or_default(), 0),
        };
        Control::Register {
            request_id,
            subdomain,
            local: spec.local.clone(),
            kind: spec.kind,
            plain_http: spec.plain_http,
            remote_port,
            policy: spec.policy.clone(),
        }
        .encode(&mut out);
        send.write_all(&out)
            .await
            .map_err(|e| stream_err(&conn, e.to_string()))?;
        let answer = registration_answer(&mut recv, &mut buf, &spec.local).await;
        let Ok(answer) = answer else {
            conn.close(VarInt::from_u32(close::NORMAL), b"timed out");
            return Err(AttemptError::Retry(format!(
                "the server did not answer the registration within {REGISTER_TIMEOUT:?}"
            )));
        };
        match answer {
            Ok(Some(Control::Registered {
                tunnel_id,
                hostname,
                url,
                ..
            })) => {
                debug!(%url, "registered");
                let name = hostname.clone();
                tunnels.push(TunnelInfo {
                    url,
                    hostname,
                    local: spec.local.clone(),
                });
                if spec.kind == TunnelKind::Udp {
                    // UDP cannot tell a closed port: an IPv4 address first
                    // (`localhost` gives ::1 first, most services bind v4).
                    let to = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
                    if let Some(a) = to {
                        udp.insert(tunnel_id, *a);
                    }
                }
                let http = spec.kind == TunnelKind::Http;
                targets.insert(
                    tunnel_id,
                    Target::new(spec.local.clone(), addrs, config.local).named(
                        &name,
                        http,
                        monitor.metrics.as_ref().map(|m| &m.tunnels),
                    ),
                );
            }
            Ok(Some(Control::Error { code, message, .. })) => {
                conn.close(VarInt::from_u32(close::NORMAL), b"registration refused");
                return Err(refusal(code, message));
            }
            Ok(other) => {
                return Err(stream_err(
                    &conn,
                    format!("unexpected answer to register: {other:?}"),
                ))
            }
            Err(e) => return Err(stream_err(&conn, e.to_string())),
        }
    }
    Ok(Live {
        conn,
        control_send: send,
        control_recv: recv,
        control_buf: buf,
        tunnels,
        targets: Arc::new(targets),
        udp: Arc::new(udp),
    })
}

/// Waits for the answer to a registration, saying so once if it takes a
/// while (a new https name gets its certificate before its URL).
async fn registration_answer(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    local: &str,
) -> Result<Result<Option<Control>, tunnel_lib::io::StreamError>, tokio::time::error::Elapsed> {
    let read = tokio::time::timeout(REGISTER_TIMEOUT, read_message(recv, buf, Control::decode));
    tokio::pin!(read);
    tokio::select! {
        r = &mut read => return r,
        _ = tokio::time::sleep(REGISTER_NOTICE) => {}
    }
    info!("waiting for the server to register the tunnel for {local} (a new https name gets its certificate first)");
    read.await
}

fn refusal(code: ErrorCode, message: String) -> AttemptError {
    match code {
        ErrorCode::Unauthorized => AttemptError::Fatal(ClientError::Unauthorized(message)),
        ErrorCode::VersionMismatch => AttemptError::Fatal(ClientError::VersionMismatch(message)),
        ErrorCode::InvalidName => AttemptError::Fatal(ClientError::InvalidName(message)),
        ErrorCode::NameTaken => AttemptError::NameTaken(message),
        ErrorCode::LimitReached => AttemptError::Fatal(ClientError::Refused(message)),
        _ => AttemptError::Retry(format!("the server refused: {message}")),
    }
}

fn classify_connect(e: &ConnectionError, server: &str) -> AttemptError {
    if is_version_mismatch(e) {
        return AttemptError::Fatal(ClientError::VersionMismatch(explain(e)));
    }
    match e {
        ConnectionError::TransportError(t) if t.code.to_string().contains("crypto") || t.reason.contains("certificate") => {
            AttemptError::Fatal(ClientError::Config(format!(
                "cannot verify the server {server}: {t}. Pass --server-cert FILE or --server-fingerprint sha256:… \
                 for a self-signed server"
            )))
        }
        other => AttemptError::Retry(format!("cannot connect to {server}: {}", explain(other))),
    }
}

/// Sorts an ended connection into "reconnect" and "give up".
pub(crate) fn classify_lost(e: &ConnectionError) -> Outcome {
    if is_version_mismatch(e) {
        return Outcome::Fatal(ClientError::VersionMismatch(explain(e)));
    }
    match e {
        ConnectionError::ApplicationClosed(a)
            if a.error_code == VarInt::from_u32(close::UNAUTHORIZED) =>
        {
            Outcome::Fatal(ClientError::Unauthorized(
                String::from_utf8_lossy(&a.reason).into_owned(),
            ))
        }
        other => Outcome::Lost(explain(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::interleave;
    use std::net::SocketAddr;

    #[test]
    fn families_alternate_from_the_first_one() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = interleave(vec![
            a("[::1]:1"),
            a("[::2]:1"),
            a("[::3]:1"),
            a("1.1.1.1:1"),
            a("2.2.2.2:1"),
        ]);
        assert_eq!(
            got,
            [
                a("[::1]:1"),
                a("1.1.1.1:1"),
                a("[::2]:1"),
                a("2.2.2.2:1"),
                a("[::3]:1")
            ]
        );
        let got = interleave(vec![
            a("1.1.1.1:1"),
            a("[::1]:1"),
            a("[::2]:1"),
            a("[::3]:1"),
        ]);
        assert_eq!(
            got,
            [a("1.1.1.1:1"), a("[::1]:1"), a("[::2]:1"), a("[::3]:1")]
        );
        assert_eq!(interleave(Vec::new()), Vec::<SocketAddr>::new());
    }
}
