//! quinn configuration: ALPN, transport limits from [`crate::limits`], and
//! errors explained in words a person can act on.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{ConnectionError, TransportConfig, TransportErrorCode, VarInt};

use crate::limits::*;
use crate::proto::{close, ALPN};
use crate::tls::{client_crypto, server_crypto, CertPair, ServerTrust, TlsError};
pub use crate::tuning::Tuning;

// Our socket waits through epoll/kqueue readiness (`AsyncFd`); elsewhere,
// quinn's own.
#[cfg(not(unix))]
pub use quinn::TokioRuntime as Runtime;
#[cfg(unix)]
pub use socket::Runtime;
pub mod relay;
#[cfg(unix)]
mod socket;

/// Which end of the tunnel a transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Transport limits. Streams flow server → client (one per visitor
/// connection), so the *client* grants many bidirectional streams and the
/// server only a few (the control stream). `tuning` holds the benchmark
/// levers, all off by default.
pub fn transport(side: Side, tuning: &Tuning) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(
        VarInt::from_u32(QUIC_IDLE_TIMEOUT.as_millis() as u32).into(),
    ));
    t.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(tuning.receive_window());
    t.send_window(tuning.send_window());
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    if tuning.no_send_fairness {
        t.send_fairness(false);
    }
    // PMTU discovery above the internet-safe 1452 bytes, where the path
    // allows it (a jumbo-frame LAN, loopback). A lever, off by default:
    // BENCHMARKS.md reports it apart from the default figures.
    if let Some(n) = tuning.mtu_upper {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(n);
        t.mtu_discovery_config(Some(mtu));
    }
    // BBR by default (`Congestion`); `--congestion cubic|newreno` is the
    // lever back.
    t.congestion_controller_factory(tuning.congestion_factory());
    // Ask the peer to ACK every N ack-eliciting packets instead of every
    // second one.
    if let Some(n) = tuning.ack_threshold {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(n));
        t.ack_frequency_config(Some(ack));
    }
    match side {
        // A client opens exactly one stream (control) and no other: a
        // second one would be a buffer nobody reads. Until its hello is
        // checked the connection's window is small ([`PRE_HELLO_WINDOW`]),
        // and DATAGRAMs get a small buffer that the server drains.
        Side::Server => {
            t.max_concurrent_bidi_streams(VarInt::from_u32(1));
            t.receive_window(VarInt::from_u32(PRE_HELLO_WINDOW));
            t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
        }
        Side::Client => {
            t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CLIENT));
        }
    }
    t
}

/// The server's connection receive window until the client's hello is
/// checked: a stranger can make it buffer this much stream data at most.
pub const PRE_HELLO_WINDOW: u32 = 64 * 1024;

/// The server's DATAGRAM receive buffer: what arrives faster than a UDP
/// tunnel relays it, or with no UDP tunnel at all, before it is read and
/// dropped. quinn drops the oldest beyond it.
pub const DATAGRAM_BUFFER: usize = 256 * 1024;

/// The endpoint configuration both sides share; with the MTU lever set, it
/// also accepts datagrams that large from the peer.
fn endpoint_config(mut cfg: quinn::EndpointConfig, tuning: &Tuning) -> quinn::EndpointConfig {
    if let Some(n) = tuning.mtu_upper {
        let _ = cfg.max_udp_payload_size(n);
    }
    cfg
}

pub fn server_config(pair: CertPair, tuning: &Tuning) -> Result<quinn::ServerConfig, TlsError> {
    quic_server(server_crypto(pair)?, tuning)
}

/// A server configuration whose certificate is chosen per connection (by
/// SNI) by `resolver`.
pub fn server_config_with(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    tuning: &Tuning,
) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    quic_server(crypto, tuning)
}

fn quic_server(
    mut crypto: rustls::ServerConfig,
    tuning: &Tuning,
) -> Result<quinn::ServerConfig, TlsError> {
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(Side::Server, tuning)));
    Ok(cfg)
}

pub fn client_config(
    trust: &ServerTrust,
    tuning: &Tuning,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut crypto = client_crypto(trust)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(Side::Client, tuning)));
    Ok(cfg)
}

/// A UDP socket for a QUIC endpoint, with buffers sized for bulk transfer.
/// Returns the socket and the receive buffer the kernel granted.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the OS allows it; ignore where it does not.
        let _ = sock.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    sock.bind(&addr.into())?;
    let granted = sock.recv_buffer_size().unwrap_or(0);
    Ok((sock.into(), granted))
}

/// Warns once if the kernel granted much less UDP buffer than asked for.
pub fn warn_small_buffer(granted: usize) {
    // Linux reports twice the usable size.
    if granted < UDP_BUFFER {
        tracing::warn!(
            "the UDP receive buffer is {} KiB (asked for {} KiB): bulk transfers may drop packets. \
             Raise it with: sysctl -w net.core.rmem_max={} net.core.wmem_max={}",
            granted / 1024,
            UDP_BUFFER / 1024,
            UDP_BUFFER,
            UDP_BUFFER
        );
    }
}

/// A server endpoint on an already-bound UDP socket (tests pass port 0).
/// `reset_secret` keys the stateless-reset tokens: kept across restarts
/// (the server stores it in its state directory), a restarted server's
/// resets are recognised by the clients of the one before, which then
/// reconnect at once instead of waiting out their idle timeout.
///
/// With `relay`, the endpoint also serves the peers that reach the server
/// over a stream ([`relay::Hub::serve`], the TCP transport).
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    cfg: quinn::ServerConfig,
    reset_secret: &[u8],
    tuning: &Tuning,
    relay: Option<Arc<relay::Hub>>,
) -> std::io::Result<quinn::Endpoint> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    // Connection IDs carry a keyed checksum; a restarted server must accept
    // the old ones as its own to answer them with a reset (quinn drops
    // packets whose CID fails the check). The key comes from the secret.
    let tag = ring::hmac::sign(&key, b"tunnel connection-id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut endpoint = endpoint_config(quinn::EndpointConfig::new(Arc::new(key)), tuning);
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let runtime = Arc::new(Runtime);
    let udp = quinn::Runtime::wrap_udp_socket(&*runtime, socket)?;
    let socket: Arc<dyn quinn::AsyncUdpSocket> = match relay {
        Some(hub) => Arc::new(relay::HubSocket::new(udp, hub)),
        None => udp,
    };
    quinn::Endpoint::new_with_abstract_socket(endpoint, Some(cfg), socket, runtime)
}

/// A client endpoint whose only peer is reached over a stream (the TCP
/// transport): the endpoint, and the ends its pump runs on
/// ([`relay::StreamEnds::run`]). Connect to `ends.peer`.
pub fn stream_endpoint(tuning: &Tuning) -> std::io::Result<(quinn::Endpoint, relay::StreamEnds)> {
    let (socket, ends) = relay::StreamSocket::new();
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(quinn::EndpointConfig::default(), tuning),
        None,
        Arc::new(socket),
        Arc::new(Runtime),
    )?;
    Ok((endpoint, ends))
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(server: SocketAddr, tuning: &Tuning) -> std::io::Result<quinn::Endpoint> {
    let socket = client_socket(server)?;
    quinn::Endpoint::new(
        endpoint_config(quinn::EndpointConfig::default(), tuning),
        None,
        socket,
        Arc::new(Runtime),
    )
}

/// A new socket for a client endpoint (`Endpoint::rebind`): the wildcard
/// address of `server`'s family, a new port.
pub fn client_socket(server: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(wildcard_for(server))
}

/// Port 0 on the unspecified address of `addr`'s family: the kernel picks
/// the source address per route, so a changed route changes it.
pub fn wildcard_for(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    }
}

/// TLS alert `no_application_protocol` (120) as a QUIC crypto error.
fn is_alpn_mismatch(code: TransportErrorCode) -> bool {
    code == TransportErrorCode::crypto(120)
}

/// Whether the peer closed the connection because protocol versions differ.
pub fn is_version_mismatch(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(c) => is_alpn_mismatch(c.error_code),
        ConnectionError::TransportError(t) => is_alpn_mismatch(t.code),
        ConnectionError::ApplicationClosed(a) => {
            a.error_code == VarInt::from_u32(close::VERSION_MISMATCH)
        }
        _ => false,
    }
}

/// A connection error in words a person can act on.
pub fn explain(e: &ConnectionError) -> String {
    if is_version_mismatch(e) {
        return format!(
            "protocol version mismatch: this side speaks {}, the peer does not; install matching versions of \
             tunnel-client and tunnel-server",
            String::from_utf8_lossy(ALPN)
        );
    }
    match e {
        ConnectionError::TimedOut => {
            "the peer stopped answering (idle timeout); check the network or the server's UDP port"
                .into()
        }
        ConnectionError::ApplicationClosed(a) => {
            let reason = String::from_utf8_lossy(&a.reason);
            format!("closed by the peer: {reason}")
        }
        ConnectionError::TransportError(t) => format!("TLS/QUIC handshake failed: {t}"),
        ConnectionError::ConnectionClosed(c) => format!("the peer closed the connection: {c}"),
        ConnectionError::LocallyClosed => "closed locally".into(),
        other => other.to_string(),
    }
}
