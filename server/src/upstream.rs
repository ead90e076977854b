//! The upstream step, shared by the HTTP edge and TLS passthrough: open a
//! data stream to a tunnel's client, start it with its preface, read the
//! client's reply, and say what went wrong as the page the visitor gets.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::time::timeout;
use tracing::{debug, info};

use tunnel_lib::io::{read_message, StreamError};
use tunnel_lib::limits::OPEN_STREAM_TIMEOUT;
use tunnel_lib::proto::{Preface, Reply, ReplyCode, StreamKind};

use crate::registry::Rule;
use crate::respond::{self, ErrorPage};

/// How long the client may take to dial the local service and answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a data stream to the client serving `rule`. The error is the page
/// to answer with: the client is gone (502) or has no free stream (503).
pub(crate) async fn open(
    conn: &quinn::Connection,
    rule: &Rule,
    metrics: &crate::metrics::Metrics,
) -> Result<(SendStream, RecvStream), ErrorPage> {
    let r = open_stream(conn, rule).await;
    match &r {
        Ok(_) => metrics.streams_opened.inc(),
        Err(_) => metrics.stream_failures.inc(),
    };
    r
}

async fn open_stream(
    conn: &quinn::Connection,
    rule: &Rule,
) -> Result<(SendStream, RecvStream), ErrorPage> {
    match timeout(OPEN_STREAM_TIMEOUT, conn.open_bi()).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => {
            debug!(host = %rule.host, "cannot open a stream to the client: {e}");
            Err(respond::client_gone(&rule.host))
        }
        Err(_) => {
            info!(host = %rule.host, "503: no free stream towards the client within {OPEN_STREAM_TIMEOUT:?}");
            Err(respond::client_busy(&rule.host))
        }
    }
}

/// A new stream's first chunk: the preface, then `data` (sent together).
pub(crate) fn prefaced(kind: StreamKind, rule: &Rule, visitor: SocketAddr, data: &[u8]) -> Bytes {
    let mut first = BytesMut::with_capacity(64 + data.len());
    Preface {
        kind,
        tunnel_id: rule.tunnel_id,
        visitor,
    }
    .encode(&mut first);
    first.extend_from_slice(data);
    first.freeze()
}

/// Reads the client's reply on a new stream: the bytes that followed it
/// (the start of the local service's answer) when the local service was
/// reached, else the page every request on this stream gets.
pub(crate) async fn read_reply(recv: &mut RecvStream, host: &str) -> Result<Bytes, ErrorPage> {
    let mut buf = BytesMut::new();
    let reply = timeout(REPLY_TIMEOUT, read_message(recv, &mut buf, Reply::decode)).await;
    match reply {
        Ok(Ok(Some(Reply::Connected))) => Ok(buf.freeze()),
        Ok(Ok(Some(Reply::Failed { code, message }))) => {
            // The client's words (its local address, the OS error) stay in
            // its log, its inspector and ours: a public visitor reads what
            // happened, not where.
            debug!(%host, reason = ?message, "502 from the client");
            Err(match code {
                ReplyCode::Refused => respond::local_refused(
                    host,
                    "nothing is listening at the address the client forwards to",
                ),
                ReplyCode::TimedOut => respond::local_failed(
                    host,
                    "the local service did not accept the connection in time",
                ),
                ReplyCode::TlsFailed => respond::local_failed(
                    host,
                    "the tunnel client could not open TLS to the local https service (most \
                     often its certificate is not trusted: the client's log says which, and \
                     --upstream-ca FILE or --upstream-insecure is the fix)",
                ),
                ReplyCode::CircuitOpen => respond::local_failed(
                    host,
                    "the local service failed its last connection attempts, so the tunnel \
                     answers at once for a few seconds (circuit open); retry shortly",
                ),
                _ => {
                    respond::local_failed(host, "the client could not connect to the local service")
                }
            })
        }
        Ok(Ok(None)) | Ok(Err(StreamError::Truncated)) => {
            info!(%host, "502: the tunnel client closed the stream without answering");
            Err(respond::client_gone(host))
        }
        Ok(Err(e)) => {
            info!(%host, "502: tunnel stream failed: {e}");
            Err(respond::client_gone(host))
        }
        Err(_) => {
            info!(%host, "504: the tunnel client did not answer in time");
            Err(respond::tunnel_timeout(host))
        }
    }
}
