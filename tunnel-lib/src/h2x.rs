//! What both ends need to carry HTTP between HTTP/1.1 on a tunnel stream
//! and HTTP/2 (the server's h2 visitors, the client's local h2 services),
//! written once: fields to and from their HTTP/1 lines, the fields of one
//! hop, and DATA sent within the peer's window.

use std::future::poll_fn;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// Fields that belong to one connection and never cross into HTTP/2 (RFC
/// 9113 §8.2.2), nor out of it into HTTP/1.1 (`te` other than `trailers`).
pub fn is_connection_specific(name: &str, value: &[u8]) -> bool {
    match name {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => true,
        "te" => !value.eq_ignore_ascii_case(b"trailers"),
        _ => false,
    }
}

/// Field lines (`name: value\r\n`, as in a trailer section) as a map, the
/// names lowercased; lines that do not parse are dropped.
pub fn fields(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut with_end = BytesMut::with_capacity(lines.len() + 2);
    with_end.put_slice(lines);
    with_end.put_slice(b"\r\n");
    let mut storage = [httparse::EMPTY_HEADER; 64];
    if let Ok(httparse::Status::Complete((_, parsed))) =
        httparse::parse_headers(&with_end, &mut storage)
    {
        for h in parsed.iter() {
            append(&mut map, h.name, h.value);
        }
    }
    map
}

/// `name: value` into `map` when both are valid, the name lowercased.
pub fn append(map: &mut HeaderMap, name: &str, value: &[u8]) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
        HeaderValue::from_bytes(value),
    ) {
        map.append(n, v);
    }
}

/// `map` as HTTP/1 field lines.
pub fn write_fields(out: &mut BytesMut, map: &HeaderMap) {
    for (name, value) in map {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// The last chunk of a chunked body with `trailers`.
pub fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let mut end = BytesMut::from(&b"0\r\n"[..]);
    if let Some(t) = trailers {
        write_fields(&mut end, t);
    }
    end.put_slice(b"\r\n");
    end.freeze()
}

/// The peer stopped taking DATA: reset, or its window stayed shut.
#[derive(Debug)]
pub struct Stalled;

/// Sends `data` within the peer's flow-control window, waiting for it to
/// open (so the sender waits with it: back-pressure end to end). A window
/// that stays shut for `idle` resets the stream.
pub async fn send_data(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    idle: Duration,
) -> Result<(), Stalled> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        // Capacity, or the peer's reset while waiting for it (a window
        // that never opens again would otherwise hold the wait for `idle`).
        let room = poll_fn(|c| {
            if stream.poll_reset(c).is_ready() {
                return std::task::Poll::Ready(None);
            }
            stream.poll_capacity(c)
        });
        let granted = match tokio::time::timeout(idle, room).await {
            Ok(Some(Ok(n))) => n,
            Err(_) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(Stalled);
            }
            _ => return Err(Stalled),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        stream.send_data(piece, false).map_err(|_| Stalled)?;
    }
    Ok(())
}
