//! The limits both sides share, each with its reason; config fields default
//! to these values. A limit that belongs to one room lives beside the code
//! it bounds (the edge's timeouts in the server's `config::Timeouts`, the
//! handshake budgets in `session`, the UDP flow caps in each side's `udp`):
//! ARCHITECTURE.md lists where.

use std::time::Duration;

/// Largest control frame (hello, register, ...). Control messages are small;
/// anything larger is a confused or hostile peer.
pub const MAX_CONTROL_FRAME: usize = 16 * 1024;

/// Largest subdomain label we assign or accept (DNS label limit).
pub const MAX_SUBDOMAIN_LEN: usize = 63;

/// Deadline for a QUIC handshake plus the hello exchange.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for the answer to one registration: the server may first get
/// the name a certificate from its ACME CA (which bounds that at 90 s).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);

/// After this long without an answer to a registration, the client says
/// it is waiting.
pub const REGISTER_NOTICE: Duration = Duration::from_secs(2);

/// Deadline for the per-stream preface to arrive at the client.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for the client to dial the local service.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for a free stream slot towards a client before
/// answering 503 (the client's concurrent-stream limit is reached).
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC keep-alive and idle timeout: a silent peer is known dead after
/// `QUIC_IDLE_TIMEOUT`. The keep-alive also bounds how soon a client learns
/// that its server restarted: its next packet draws the new server's
/// stateless reset (a PING is about 40 bytes every 1.5 s, only when idle).
/// Each end sends one and answers the other's, so a live peer is heard from
/// at least every 1.5 s; a peer silent for more than three keep-alive
/// intervals (a frozen client, a laptop's lid, a dead path) is given up
/// after 5 s. That is the bound README promises a visitor: the first one
/// to reach a frozen client gets its 502 within it (it waited 20 s with a
/// 20 s timeout), and later ones wait at most `OWNER_HOLD` for the client
/// to come back. A shorter partition survives (`faults.rs` holds a 3 s
/// one), and 20 % loss each way misses six packets in a row about once in
/// 16 000 windows.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_millis(1500);
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a visitor's request for a name reserved for a reconnecting
/// client waits for it (a server restart, a client's network blip) before
/// the "client is offline" page.
pub const OWNER_HOLD: Duration = Duration::from_secs(5);

/// Once the server is stopping, a visitor connection that has not sent its
/// first request yet (accepted a moment before the signal, or taken from the
/// backlog) has this long to send it before it is closed.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Streams the server may have open towards one client at once: one per
/// proxied visitor connection. Past it, `open_bi` waits (bounded by
/// `OPEN_STREAM_TIMEOUT`).
pub const MAX_STREAMS_PER_CLIENT: u32 = 4096;

/// QUIC flow-control windows: the ceiling on bytes buffered per stream and
/// per connection, whatever the body size. The connection windows hold 64
/// streams' windows: while a connection-level limit binds, quinn wakes
/// every blocked writer at once, last blocked first, so which stream gets
/// the freed room is a lottery and download times spread out (p99 six to
/// nine times p50 with 50 downloads at 16 MiB; BENCHMARKS.md, issue 12,
/// lever 8).
/// Memory follows what is in flight: at most one stream window per active
/// stream, and 64 MiB per client connection on each side.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
pub const CONNECTION_RECEIVE_WINDOW: u32 = 64 * 1024 * 1024;
pub const SEND_WINDOW: u64 = 64 * 1024 * 1024;

/// Send order between the streams of one connection ([`crate::io::SendOrder`]):
/// a stream that wrote more than `BULK_AFTER` bytes recently (the count
/// halves every `BULK_HALF_LIFE`: about 320 KiB/s and more, sustained) is
/// *bulk*, and every other stream is sent first. Bulk streams take turns of
/// `BULK_TURN` bytes, oldest turn first.
pub const BULK_AFTER: u64 = 64 * 1024;
pub const BULK_HALF_LIFE: Duration = Duration::from_millis(100);
pub const BULK_TURN: u64 = 256 * 1024;

/// Largest chunk read from a QUIC stream or a TCP socket at once.
pub const IO_CHUNK: usize = 64 * 1024;

/// First read buffer of a TCP connection: most request heads and small
/// responses fit; a read that fills it doubles the next one (up to
/// [`IO_CHUNK`]). Held only while bytes are expected (`io::read_lean`).
pub const FIRST_READ: usize = 2048;

/// Listen backlog for the public HTTP listener: absorbs bursts of new
/// visitor connections.
pub const LISTEN_BACKLOG: u32 = 4096;

/// How long shutdown waits for in-flight work before cutting it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// UDP socket buffers for the QUIC endpoints. The kernel default (about
/// 208 KiB) overflows under bulk transfer: dropped datagrams, congestion
/// back-off and retransmits. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`.
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Idle local connections the client keeps per tunnel for reuse, and how
/// long one may sit idle before it is no longer trusted (many app servers
/// close idle keep-alive connections after a few seconds; gunicorn after 2).
pub const LOCAL_POOL_MAX: usize = 64;
pub const LOCAL_POOL_IDLE: Duration = Duration::from_millis(1500);
