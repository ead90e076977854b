//! How the client reaches the server: QUIC over UDP (every resolved
//! address tried, the families interleaved), or the same QUIC packets over
//! TLS on TCP to the server's https port (`tunnel_lib::quic::relay`) when
//! UDP does not get through. `--transport auto` (the default) starts QUIC,
//! gives it a head start of [`QUIC_HEAD_START`] and then starts TCP too,
//! keeping whichever connection completes first (TCP at once when ICMP
//! says the UDP port is unreachable); once QUIC has failed for a server,
//! the run goes straight to TCP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quinn::ConnectionError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use tunnel_lib::limits::HANDSHAKE_TIMEOUT;
use tunnel_lib::quic::{explain, is_version_mismatch};

use crate::config::{Config, Transport};
use crate::status::ClientError;

/// Why a connection attempt failed.
pub(crate) enum AttemptError {
    /// Retrying cannot help.
    Fatal(ClientError),
    /// A requested name is held by a live session.
    NameTaken(String),
    /// Worth retrying after a backoff.
    Retry(String),
}

/// What `auto` gives QUIC before it starts TCP as well.
pub const QUIC_HEAD_START: Duration = Duration::from_secs(1);

/// Which transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Used {
    Quic,
    Tcp,
}

impl Used {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Used::Quic => "QUIC (UDP)",
            Used::Tcp => "TLS over TCP",
        }
    }
}

/// A connection to the server and how it runs.
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    pub(crate) used: Used,
    /// Over TCP: cancelled when the TCP link closes.
    pub(crate) down: Option<CancellationToken>,
}

/// Connects by the transport the settings ask for: a QUIC connection
/// (over UDP or relayed over TCP) and which one it is. A TCP link's pump
/// runs on `tracker` and ends with the connection's endpoint.
pub(crate) async fn connect(
    config: &Config,
    endpoints: &mut Endpoints,
    tracker: &TaskTracker,
    cfg: quinn::ClientConfig,
    host: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Link, AttemptError> {
    let tcp_target = config.tcp_server();
    let tcp = || over_tcp(config, tracker, cfg.clone(), host, &tcp_target);
    match config.transport {
        Transport::Quic => race(interleave(addrs), endpoints, cfg, host, &config.server)
            .await
            .map(quic_link)
            .map_err(|e| udp_hint(e, config)),
        Transport::Tcp => tcp().await.map(tcp_link),
        Transport::Auto if endpoints.quic_failed.load(Ordering::Relaxed) => {
            tcp().await.map(tcp_link)
        }
        Transport::Auto => {
            let r = auto(
                config,
                endpoints,
                tcp,
                cfg.clone(),
                host,
                addrs,
                &tcp_target,
            )
            .await;
            if matches!(&r, Ok(l) if l.used == Used::Tcp) {
                // This network drops UDP to this server: the run goes
                // straight to TCP from now on.
                endpoints.quic_failed.store(true, Ordering::Relaxed);
            }
            r
        }
    }
}

fn quic_link(conn: quinn::Connection) -> Link {
    Link {
        conn,
        used: Used::Quic,
        down: None,
    }
}

fn tcp_link((conn, down): (quinn::Connection, CancellationToken)) -> Link {
    Link {
        conn,
        used: Used::Tcp,
        down: Some(down),
    }
}

/// `auto`: QUIC with a head start, then TCP as well; the first up wins.
async fn auto<F>(
    config: &Config,
    endpoints: &mut Endpoints,
    tcp: impl FnOnce() -> F,
    cfg: quinn::ClientConfig,
    host: &str,
    addrs: Vec<SocketAddr>,
    tcp_target: &str,
) -> Result<Link, AttemptError>
where
    F: std::future::Future<Output = Result<(quinn::Connection, CancellationToken), AttemptError>>,
{
    let addrs_of_race = interleave(addrs);
    let quic = race(addrs_of_race.clone(), endpoints, cfg, host, &config.server);
    tokio::pin!(quic);
    let head_start = tokio::time::sleep(QUIC_HEAD_START);
    tokio::pin!(head_start);
    let icmp = unreachable(&addrs_of_race);
    tokio::pin!(icmp);
    let (quic_failed, icmp_said) = tokio::select! {
        r = &mut quic => match r {
            Ok(c) => return Ok(quic_link(c)),
            Err(e @ AttemptError::Fatal(_)) => return Err(e),
            Err(e) => (Some(e), None),
        },
        said = &mut icmp => (None, Some(said)),
        _ = &mut head_start => (None, None),
    };
    let why = match (&quic_failed, icmp_said) {
        (Some(AttemptError::Retry(m)) | Some(AttemptError::NameTaken(m)), _) => m.clone(),
        (_, Some(said)) => said,
        _ => format!("no QUIC answer within {QUIC_HEAD_START:?}"),
    };
    info!("{why}; trying TLS over TCP to {tcp_target} as well");
    let over = tcp();
    tokio::pin!(over);
    let (mut quic_done, mut tcp_err) = (quic_failed.is_some(), None);
    loop {
        tokio::select! {
            r = &mut quic, if !quic_done => match r {
                Ok(c) => return Ok(quic_link(c)),
                Err(e @ AttemptError::Fatal(_)) => return Err(e),
                Err(e) => match tcp_err.take() {
                    Some(t) => return Err(t),
                    None => { quic_done = true; let _ = e; }
                },
            },
            r = &mut over, if tcp_err.is_none() => match r {
                Ok(c) => return Ok(tcp_link(c)),
                Err(e @ AttemptError::Fatal(_)) => return Err(e),
                Err(e) if quic_done => return Err(e),
                Err(e) => tcp_err = Some(e),
            },
        }
    }
}

/// Ends when every address in `addrs` has answered a probe datagram with
/// an ICMP error (port, host or network unreachable: a firewall that
/// rejects rather than drops, or no server on that UDP port), with what
/// it said; pending otherwise. quinn does not surface ICMP, so a connected
/// UDP socket per address sends a byte no QUIC server takes for a packet
/// (it is under the 1200-byte minimum of an Initial and is dropped
/// unread) and reads the error the kernel reports on that socket.
async fn unreachable(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return std::future::pending().await;
    }
    let probes = addrs.iter().map(|&addr| async move {
        let Ok(sock) = tokio::net::UdpSocket::bind(tunnel_lib::quic::wildcard_for(addr)).await
        else {
            return std::future::pending().await;
        };
        if sock.connect(addr).await.is_err() {
            return std::future::pending().await;
        }
        let mut buf = [0u8; 64];
        // ICMP errors are rate-limited and may be lost: a few tries.
        for wait in [100u64, 200, 400] {
            let error = match sock.send(&[0]).await {
                Err(e) => Some(e),
                Ok(_) => tokio::time::timeout(Duration::from_millis(wait), sock.recv(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::err),
            };
            if let Some(said) = error.as_ref().and_then(icmp_error) {
                return format!("{addr}: {said}");
            }
        }
        std::future::pending().await
    });
    let said = futures_util::future::join_all(probes).await;
    format!("UDP {} (ICMP)", said.join(", "))
}

/// What an ICMP error reported on a connected UDP socket says.
fn icmp_error(e: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => Some("port unreachable"),
        ErrorKind::HostUnreachable => Some("host unreachable"),
        ErrorKind::NetworkUnreachable => Some("network unreachable"),
        _ => None,
    }
}

/// A QUIC failure with `--transport quic` names the way around it.
fn udp_hint(e: AttemptError, config: &Config) -> AttemptError {
    match e {
        AttemptError::Retry(m) => AttemptError::Retry(format!(
            "{m} (UDP to {}; if this network drops UDP, --transport tcp reaches the server's \
             https port over TLS)",
            config.server
        )),
        other => other,
    }
}

/// QUIC relayed over TLS on TCP to `target` (the server's https port).
async fn over_tcp(
    config: &Config,
    tracker: &TaskTracker,
    cfg: quinn::ClientConfig,
    host: &str,
    target: &str,
) -> Result<(quinn::Connection, CancellationToken), AttemptError> {
    let retry = |why: String| AttemptError::Retry(format!("TLS over TCP to {target}: {why}"));
    let proxy = config.proxy.as_ref();
    // Every address given (`tcp_connect_to`, as curl's --resolve) in turn:
    // a draining server's closed port sends the client to the next one.
    let candidates: Vec<String> = match config.tcp_connect_to.as_slice() {
        [] => vec![target.to_owned()],
        addrs => addrs.iter().map(ToString::to_string).collect(),
    };
    let mut last = None;
    let mut tcp = None;
    for candidate in &candidates {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::proxy::dial(proxy, candidate)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(crate::proxy::DialError::Refused(why))) => {
                return Err(AttemptError::Fatal(ClientError::Config(why)))
            }
            Ok(Err(crate::proxy::DialError::Retry(why))) => last = Some(retry(why)),
            Err(_) => last = Some(retry(format!("no answer within {HANDSHAKE_TIMEOUT:?}"))),
        }
    }
    let Some(tcp) = tcp else {
        return Err(last.unwrap_or_else(|| retry("no address to try".into())));
    };
    let tls_cfg = tunnel_lib::tls::relay_client_crypto(tunnel_lib::quic::relay::ALPN)
        .map_err(|e| AttemptError::Fatal(ClientError::Config(e.to_string())))?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| AttemptError::Fatal(ClientError::Config(format!("--server {host}: {e}"))))?;
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(tls_cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| retry(format!("no TLS answer within {HANDSHAKE_TIMEOUT:?}")))?
    .map_err(|e| retry(format!("TLS: {e}")))?;
    if tls.get_ref().1.alpn_protocol() != Some(tunnel_lib::quic::relay::ALPN) {
        return Err(retry(
            "the server there does not take tunnel clients over TCP (an older tunnel-server, or \
             not its https port)"
                .into(),
        ));
    }
    let (endpoint, ends) =
        tunnel_lib::quic::stream_endpoint(&config.tuning).map_err(|e| retry(e.to_string()))?;
    let peer = ends.peer;
    // Ends when the stream does (then `down` tells the supervisor at once:
    // a server killed mid-run is noticed now, not at the idle timeout), or
    // when the endpoint and the socket the pump feeds are gone.
    let down = tokio_util::sync::CancellationToken::new();
    let link_down = down.clone().drop_guard();
    tracker.spawn(async move {
        let _down = link_down;
        if let Err(e) = ends.run(tls).await {
            tracing::debug!("TLS over TCP link ended: {e}");
        }
    });
    let connecting = endpoint.connect_with(cfg, peer, host).map_err(|e| {
        AttemptError::Fatal(ClientError::Config(format!(
            "cannot connect to {host}: {e}"
        )))
    })?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok((c, down)),
        Ok(Err(e)) => Err(classify_connect(&e, target)),
        Err(_) => Err(retry(format!(
            "no QUIC handshake within {HANDSHAKE_TIMEOUT:?}"
        ))),
    }
}

/// The client's UDP endpoints, one per address family, made when first
/// needed and kept across reconnects.
pub(crate) struct Endpoints {
    /// QUIC failed for this server and TCP worked: `auto` goes straight to
    /// TCP until a probe finds QUIC answering again (`quic_back`).
    quic_failed: std::sync::atomic::AtomicBool,
    /// The levers every endpoint is made with.
    tuning: tunnel_lib::tuning::Tuning,
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    /// QUIC answers again: `auto` tries it first from now on.
    pub(crate) fn quic_back(&self) {
        self.quic_failed.store(false, Ordering::Relaxed);
    }

    pub(crate) fn new(tuning: tunnel_lib::tuning::Tuning) -> Endpoints {
        Endpoints {
            quic_failed: std::sync::atomic::AtomicBool::new(false),
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
