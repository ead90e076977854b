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
use crate::transport::{self, Endpoints};

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
    /// Over TCP: cancelled when the TCP link under the connection closes.
    pub(crate) link_down: Option<tokio_util::sync::CancellationToken>,
}

pub(crate) use crate::transport::AttemptError;

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Splits `--server` ([`crate::config::split_server`]; no port means 443).
fn split_host(server: &str) -> Result<(&str, u16), AttemptError> {
    crate::config::split_server(server).map_err(|e| AttemptError::Fatal(ClientError::Config(e)))
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
    tracker: &tokio_util::task::TaskTracker,
    client_id: [u8; 16],
    names: &[Option<String>],
    monitor: &crate::observe::Monitor,
) -> Result<Live, AttemptError> {
    let (host, port) = split_host(&config.server)?;
    let trust = trust(config, host).await?;
    let client_cfg = tunnel_lib::quic::client_config(&trust, &config.tuning)
        .map_err(|e| AttemptError::Fatal(ClientError::Config(e.to_string())))?;
    let addrs: Vec<SocketAddr> = if config.transport == crate::config::Transport::Tcp {
        // No UDP: the TCP target is resolved when it is dialled.
        Vec::new()
    } else if config.connect_to.is_empty() {
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AttemptError::Retry(format!("cannot resolve {host}: {e}")))?
            .collect()
    } else {
        config.connect_to.clone()
    };
    if addrs.is_empty() && config.transport != crate::config::Transport::Tcp {
        return Err(AttemptError::Retry(format!(
            "{host} resolved to no address"
        )));
    }
    let link = transport::connect(config, endpoints, tracker, client_cfg, host, addrs).await?;
    if link.used == transport::Used::Tcp {
        info!(
            "connected over {} to {}",
            link.used.as_str(),
            config.tcp_server()
        );
    }
    let conn = link.conn;
    // The hello is bounded inside `session`; registrations may take longer
    // (the server gets a new name its certificate first).
    let mut live = session(config, conn, client_id, names, monitor).await?;
    live.link_down = link.down;
    Ok(live)
}

/// Whether a QUIC handshake with the server completes now over UDP (the
/// probe of a client on TLS over TCP; the connection is closed at once).
pub(crate) async fn quic_answers(config: &Config) -> bool {
    let probe = async {
        let (host, port) = split_host(&config.server).ok()?;
        let trust = trust(config, host).await.ok()?;
        let cfg = tunnel_lib::quic::client_config(&trust, &config.tuning).ok()?;
        let addr = match config.connect_to.first() {
            Some(a) => *a,
            None => tokio::net::lookup_host((host, port)).await.ok()?.next()?,
        };
        let ep = tunnel_lib::quic::client_endpoint(addr, &config.tuning).ok()?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, ep.connect_with(cfg, addr, host).ok()?)
            .await
            .ok()?
            .ok()?;
        conn.close(VarInt::from_u32(close::NORMAL), b"probe");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ep.wait_idle()).await;
        Some(())
    };
    probe.await.is_some()
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
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(spec.address())
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
        // A local https service: its TLS settings, before the server is
        // asked (a bad name or CA file is the user's to fix).
        let tls = if spec.https() {
            let h2 = spec.upstream == crate::config::Upstream::H2;
            let tls = config
                .upstream
                .for_service(spec.address(), &spec.policy.host_header, h2)
                .await;
            Some(tls.map_err(|e| AttemptError::Fatal(ClientError::Config(e)))?)
        } else {
            None
        };
        Control::Register {
            request_id,
            subdomain,
            // What `host_header = "rewrite"` sends: the service's host:port.
            local: spec.address().to_owned(),
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
                let mut target = Target::new(spec.local.clone(), addrs, config.local).named(
                    &name,
                    http,
                    monitor.metrics.as_ref().map(|m| &m.tunnels),
                );
                // An https service may pick HTTP/2 by ALPN; `--upstream`
                // says so from the start.
                let said_h2 = spec.upstream != crate::config::Upstream::Http1;
                if said_h2 || tls.is_some() {
                    target.h2 = Some(crate::h2local::H2Pool::default());
                }
                if said_h2 {
                    target.set_speaks_h2();
                }
                target.tls = tls;
                targets.insert(tunnel_id, target);
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
        link_down: None,
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
