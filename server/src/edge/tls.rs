//! The https listener's connections: read the ClientHello (one deadline for
//! the whole handshake), decide by its SNI, then either terminate TLS and
//! serve HTTP/1 over the session, or pass the raw bytes through to a TLS
//! tunnel's client, or refuse.
//!
//! The ClientHello is read into our own buffer and copied into a rustls
//! `Acceptor`, so the raw bytes are still there for passthrough; a
//! terminated connection continues from the same `Accepted`
//! (`StartHandshake::from_parts`), so nothing is parsed twice.
//!
//! [`alpn_protocols`] is the one place where the application protocol is
//! decided: `h2` first (HTTP/2, `super::http2`), `http/1.1`, `acme-tls/1`
//! for validations, and `tunnel-tcp/1` for tunnel clients on the TCP
//! transport (their session is handed to the relay, [`link`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::StartHandshake;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use tunnel_lib::http1::normalise_host;
use tunnel_lib::io::LeanRead;
use tunnel_lib::limits::FIRST_REQUEST_GRACE;
use tunnel_lib::proto::{StreamKind, TunnelKind};
use tunnel_lib::quic::relay;

use super::{serve_stream, Scheme};
use crate::certs::ACME_TLS_ALPN;
use crate::state::State;
use crate::upstream;

/// Largest ClientHello we wait for (post-quantum key shares make them a
/// few KiB; a record is at most 16 KiB).
const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// A fatal `unrecognized_name` alert (RFC 6066 §3), in a plaintext record:
/// what a ClientHello for a name we neither serve nor hold a certificate
/// for gets.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// The application protocols the https listener offers, in preference
/// order.
pub(crate) fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        ACME_TLS_ALPN.to_vec(),
        relay::ALPN.to_vec(),
    ]
}

/// One https visitor connection, from accept to close.
pub(crate) async fn serve(
    state: Arc<State>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    soft: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = state.tls.clone() else { return };
    // Wait for the first byte as the plain edge does (no buffer held),
    // then one deadline for the whole handshake.
    let mut buf = BytesMut::new();
    let first = tokio::select! {
        r = tokio::time::timeout(state.config.timeouts.first_byte, tcp.read_lean(&mut buf, 2048)) => Some(r),
        _ = soft.cancelled() => None,
    };
    // Stopping before it spoke: it may have been accepted a moment ago.
    let first = match first {
        Some(r) => r,
        None => tokio::time::timeout(FIRST_REQUEST_GRACE, tcp.read_lean(&mut buf, 2048)).await,
    };
    if !matches!(first, Ok(Ok(n)) if n > 0) {
        return;
    }
    // Until here the task is this small future; the handshake's state is
    // allocated once the visitor speaks.
    Box::pin(handshake(state, tls, tcp, buf, peer, soft)).await;
}

async fn handshake(
    state: Arc<State>,
    tls: Arc<crate::state::EdgeTls>,
    mut tcp: TcpStream,
    mut buf: BytesMut,
    peer: SocketAddr,
    soft: CancellationToken,
) {
    let deadline = Instant::now() + state.config.timeouts.tls_handshake;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let accepted = loop {
        let mut rest = &buf[fed..];
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        fed = buf.len() - rest.len();
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => {}
            Err((e, mut alert)) => {
                debug!(%peer, "bad ClientHello: {e}");
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = tcp.write_all(&out).await;
                return;
            }
        }
        if buf.len() > MAX_CLIENT_HELLO {
            debug!(%peer, "ClientHello larger than {MAX_CLIENT_HELLO} bytes");
            return;
        }
        match timeout_at(deadline, tcp.read_lean(&mut buf, 4096)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                debug!(%peer, "TLS handshake not complete within {:?}", state.config.timeouts.tls_handshake);
                return;
            }
        }
    };
    let hello = accepted.client_hello();
    let sni = hello
        .server_name()
        .and_then(|n| normalise_host(n.as_bytes()))
        .map(|n| n.into_owned());
    let validation = hello
        .alpn()
        .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
    // A tunnel client on the TCP transport: known by its ALPN, before any
    // name is looked at (its SNI is the server's own).
    let client = hello
        .alpn()
        .is_some_and(|mut a| a.any(|p| p == relay::ALPN));
    if let (Some(name), false, false) = (&sni, validation, client) {
        match state.directory.route(name.as_bytes()) {
            Some((rule, session)) if rule.kind() == TunnelKind::Tls => {
                if let Some(session) = session {
                    passthrough(&rule, &session.conn, tcp, buf, peer, &state.metrics).await;
                }
                return;
            }
            None if !tls.store.covers(name) => {
                debug!(%peer, sni = %name, "unrecognized_name: no tunnel and no certificate");
                let _ = tcp.write_all(&UNRECOGNIZED_NAME).await;
                return;
            }
            _ => {}
        }
    }
    let stream = match timeout_at(
        deadline,
        StartHandshake::from_parts(accepted, tcp).into_stream(tls.edge.clone()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake not complete within {:?}", state.config.timeouts.tls_handshake);
            return;
        }
    };
    match stream.get_ref().1.alpn_protocol() {
        // A validation only needs the handshake.
        Some(p) if p == ACME_TLS_ALPN => {}
        Some(p) if p == relay::ALPN => link(&state, stream, peer),
        Some(b"h2") => {
            let sni = sni.map(String::into_boxed_str);
            Box::pin(super::http2::serve(
                state,
                stream,
                peer,
                Scheme::Https,
                sni,
                soft,
            ))
            .await;
        }
        // `http/1.1` or none: HTTP/1.
        _ => {
            let (rd, wr) = tokio::io::split(stream);
            Box::pin(serve_stream(
                state,
                rd,
                wr,
                BytesMut::new(),
                peer,
                Scheme::Https,
                sni.map(String::into_boxed_str),
                soft,
            ))
            .await;
        }
    }
}

/// Hands a tunnel client's TLS session to the relay: its QUIC packets go
/// to the endpoint, which takes it as any client (token, budgets, limits).
/// The link runs on its own tracker, not as a visitor: sessions run over
/// it while visitors drain, and it stops after the endpoint is idle.
fn link(state: &Arc<State>, stream: tokio_rustls::server::TlsStream<TcpStream>, peer: SocketAddr) {
    let links = &state.links;
    let Ok(slot) = links.per_source.admit(peer.ip()) else {
        debug!(%peer, "refusing a TCP-transport client: its address holds as many links as one may");
        return;
    };
    let Ok(permit) = links.permits.clone().try_acquire_owned() else {
        debug!(%peer, "refusing a TCP-transport client: as many links as clients and handshakes allowed");
        return;
    };
    let (hub, stop) = (state.relay.clone(), links.stop.clone());
    links.tracker.spawn(async move {
        tokio::select! {
            r = hub.serve(stream, peer) => {
                if let Err(e) = r {
                    debug!(%peer, "TCP-transport link ended: {e}");
                }
            }
            _ = stop.cancelled() => {}
        }
        drop((permit, slot));
    });
}

/// Splices a visitor's raw TLS bytes (the ClientHello first) to the client
/// of a TLS tunnel, whose local service terminates TLS itself.
async fn passthrough(
    rule: &crate::registry::Rule,
    conn: &quinn::Connection,
    tcp: TcpStream,
    hello: BytesMut,
    peer: SocketAddr,
    metrics: &crate::metrics::Metrics,
) {
    let Ok((mut send, mut recv)) = upstream::open(conn, rule, metrics).await else {
        return;
    };
    let first = upstream::prefaced(StreamKind::Tls, rule, peer, &hello);
    if send.write_chunk(first).await.is_err() {
        return;
    }
    // No page can be shown inside someone else's TLS: a failed dial closes.
    let Ok(rest) = upstream::read_reply(&mut recv, &rule.host).await else {
        return;
    };
    tokio::select! {
        r = tunnel_lib::io::splice(tcp, &mut send, &mut recv, rest) => {
            if let Err(e) = r {
                debug!(host = %rule.host, "passthrough ended: {e}");
            }
        }
        // The client is gone: so is this connection (even half-closed).
        _ = conn.closed() => {}
    }
}
