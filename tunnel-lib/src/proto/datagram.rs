//! UDP tunnels' datagrams, carried in QUIC DATAGRAM frames (unreliable, no
//! head-of-line blocking): `u32 tunnel_id | u32 flow_id | payload`. A flow
//! is one visitor address on the server's public port; the client keeps
//! one local socket per flow. Nothing is fragmented: a datagram that does
//! not fit the connection's current maximum is dropped (and counted).

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before the payload.
pub const HEADER: usize = 8;

/// Writes the header into the first [`HEADER`] bytes of `buf` (which the
/// payload follows, read in place: no copy).
pub fn put_header(buf: &mut [u8], tunnel_id: u32, flow_id: u32) {
    buf[..4].copy_from_slice(&tunnel_id.to_be_bytes());
    buf[4..HEADER].copy_from_slice(&flow_id.to_be_bytes());
}

/// A datagram with `payload` (a copy; the hot paths read in place with
/// [`put_header`]).
pub fn encode(tunnel_id: u32, flow_id: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.put_u32(tunnel_id);
    b.put_u32(flow_id);
    b.put_slice(payload);
    b.freeze()
}

/// `(tunnel_id, flow_id, payload)`; `None` for a datagram too short to
/// carry a header.
pub fn decode(mut d: Bytes) -> Option<(u32, u32, Bytes)> {
    if d.len() < HEADER {
        return None;
    }
    let tunnel = u32::from_be_bytes(d[..4].try_into().ok()?);
    let flow = u32::from_be_bytes(d[4..HEADER].try_into().ok()?);
    let payload = d.split_off(HEADER);
    Some((tunnel, flow, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_datagrams() {
        let d = encode(7, 9, b"wg");
        assert_eq!(decode(d), Some((7, 9, Bytes::from_static(b"wg"))));
        assert_eq!(decode(Bytes::from_static(b"1234567")), None);
        let mut raw = [0u8; 10];
        put_header(&mut raw, 1, 2);
        raw[8..].copy_from_slice(b"hi");
        assert_eq!(
            decode(Bytes::copy_from_slice(&raw)),
            Some((1, 2, Bytes::from_static(b"hi")))
        );
    }
}
