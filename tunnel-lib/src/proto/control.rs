//! Control-stream messages.

use bytes::{BufMut, BytesMut};

use super::codec::{decode_frame, patch_len, put_string, Reader};
use crate::auth::Secret;
use crate::error::ProtoError;
use crate::limits::MAX_CONTROL_FRAME;

/// Why a request on the control stream failed. Carried on the wire as a
/// `u16`; unknown codes from a newer peer survive as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The token was missing or wrong. Fatal: the client exits.
    Unauthorized,
    /// Protocol versions differ. Fatal.
    VersionMismatch,
    /// The requested subdomain is held by a live session or reserved for
    /// another token.
    NameTaken,
    /// The requested subdomain is not a valid DNS label.
    InvalidName,
    /// A server limit (tunnels per client, clients) was reached.
    LimitReached,
    /// The peer sent something out of order or malformed.
    ProtocolError,
    /// Anything else went wrong on the server.
    Internal,
    /// The server (or this token) has as many clients as it takes: retry
    /// later. Older clients read it as `Other(8)` and retry too.
    Busy,
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Unauthorized => 1,
            Self::VersionMismatch => 2,
            Self::NameTaken => 3,
            Self::InvalidName => 4,
            Self::LimitReached => 5,
            Self::ProtocolError => 6,
            Self::Internal => 7,
            Self::Busy => 8,
            Self::Other(c) => c,
        }
    }
    pub fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::Unauthorized,
            2 => Self::VersionMismatch,
            3 => Self::NameTaken,
            4 => Self::InvalidName,
            5 => Self::LimitReached,
            6 => Self::ProtocolError,
            7 => Self::Internal,
            8 => Self::Busy,
            c => Self::Other(c),
        }
    }
}

/// What a tunnel carries, chosen at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelKind {
    /// HTTP: the server terminates TLS (if any) and parses requests.
    #[default]
    Http,
    /// TLS passthrough: the server routes by the ClientHello's SNI and
    /// splices the raw bytes; the local service holds the certificate.
    Tls,
    /// Raw TCP: the server gives the tunnel a public port of its own and
    /// splices each connection to it.
    Tcp,
    /// UDP: a public UDP port whose datagrams travel as QUIC DATAGRAM
    /// frames, one flow per visitor address ([`crate::proto::datagram`]).
    Udp,
}

impl TunnelKind {
    pub fn to_u8(self) -> u8 {
        match self {
            TunnelKind::Http => 1,
            TunnelKind::Tls => 2,
            TunnelKind::Tcp => 3,
            TunnelKind::Udp => 4,
        }
    }
    pub fn from_u8(b: u8) -> Result<Self, ProtoError> {
        match b {
            1 => Ok(TunnelKind::Http),
            2 => Ok(TunnelKind::Tls),
            3 => Ok(TunnelKind::Tcp),
            4 => Ok(TunnelKind::Udp),
            t => Err(ProtoError::UnknownType(t)),
        }
    }
}

/// What the server enforces on an HTTP tunnel's visitors before a stream is
/// opened, and the edits it makes to what reaches the local service. Set by
/// the client at registration; the server validates it (bad CIDRs, header
/// names or credentials are refused with the field named).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// `user:password` or `user:sha256:<hex of the password's SHA-256>`:
    /// visitors must present one (HTTP Basic). Empty: no authentication.
    pub basic_auth: Vec<Secret>,
    /// CIDRs a visitor's address must be in (empty: any).
    pub allow: Vec<String>,
    /// CIDRs a visitor's address must not be in.
    pub deny: Vec<String>,
    /// New requests per second one visitor address may make (bursts of
    /// twice that); past it `429`. 0: no limit.
    pub rate_per_ip: u32,
    /// The `Host` the local service sees: empty keeps the visitor's,
    /// `rewrite` sends the local address, anything else is sent as is.
    pub host_header: String,
    /// Header lines added to every request (after removals).
    pub add_request_headers: Vec<(String, String)>,
    /// Header names removed from every request.
    pub remove_request_headers: Vec<String>,
    /// Header lines added to every response (after removals).
    pub add_response_headers: Vec<(String, String)>,
    /// Header names removed from every response.
    pub remove_response_headers: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    fn encode(&self, dst: &mut BytesMut) {
        put_list(dst, &self.basic_auth, |d, s| put_string(d, s.expose()));
        put_list(dst, &self.allow, |d, s| put_string(d, s));
        put_list(dst, &self.deny, |d, s| put_string(d, s));
        dst.put_u32(self.rate_per_ip);
        put_string(dst, &self.host_header);
        put_list(dst, &self.add_request_headers, |d, (k, v)| {
            put_string(d, k);
            put_string(d, v);
        });
        put_list(dst, &self.remove_request_headers, |d, s| put_string(d, s));
        put_list(dst, &self.add_response_headers, |d, (k, v)| {
            put_string(d, k);
            put_string(d, v);
        });
        put_list(dst, &self.remove_response_headers, |d, s| put_string(d, s));
    }

    fn decode(r: &mut Reader<'_>) -> Result<Policy, ProtoError> {
        Ok(Policy {
            basic_auth: get_list(r, |r| Ok(Secret::from(r.string()?)))?,
            allow: get_list(r, Reader::string)?,
            deny: get_list(r, Reader::string)?,
            rate_per_ip: r.u32()?,
            host_header: r.string()?,
            add_request_headers: get_list(r, |r| Ok((r.string()?, r.string()?)))?,
            remove_request_headers: get_list(r, Reader::string)?,
            add_response_headers: get_list(r, |r| Ok((r.string()?, r.string()?)))?,
            remove_response_headers: get_list(r, Reader::string)?,
        })
    }
}

/// Lists in a policy: at most this many items each.
const MAX_LIST: usize = 64;

fn put_list<T>(dst: &mut BytesMut, items: &[T], mut put: impl FnMut(&mut BytesMut, &T)) {
    let n = items.len().min(MAX_LIST);
    dst.put_u8(n as u8);
    for item in &items[..n] {
        put(dst, item);
    }
}

fn get_list<'a, T>(
    r: &mut Reader<'a>,
    mut get: impl FnMut(&mut Reader<'a>) -> Result<T, ProtoError>,
) -> Result<Vec<T>, ProtoError> {
    let n = usize::from(r.u8()?);
    if n > MAX_LIST {
        return Err(ProtoError::Malformed {
            what: "policy list length",
        });
    }
    (0..n).map(|_| get(r)).collect()
}

/// One control-stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Client → server, first message. `client_id` is random per client
    /// process: a reconnect from the same process may take over its own
    /// stale session at once.
    Hello {
        version: u16,
        token: Secret,
        client_id: [u8; 16],
        agent: String,
    },
    /// Server → client: authenticated.
    Welcome { version: u16, session_id: u64 },
    /// Client → server: expose one tunnel. `subdomain` empty means "assign
    /// one"; a name with a dot is a full host name (a custom domain, or a
    /// wildcard rule `*.preview.example.com`) the token must be allowed.
    /// `local` is what the client forwards to, for display and logs.
    /// `plain_http`: serve plain-HTTP visitors too instead of redirecting
    /// them to https. `remote_port`: the public port a TCP tunnel asks for
    /// (0: any from the server's range; ignored for other kinds).
    Register {
        request_id: u32,
        subdomain: String,
        local: String,
        kind: TunnelKind,
        plain_http: bool,
        remote_port: u16,
        /// Visitor policy and request edits (HTTP tunnels).
        policy: Policy,
    },
    /// Server → client: the tunnel is live at `url`; data streams for it carry
    /// `tunnel_id`.
    Registered {
        request_id: u32,
        tunnel_id: u32,
        hostname: String,
        url: String,
    },
    /// Either way: a request failed (`request_id` 0 for the session itself).
    Error {
        request_id: u32,
        code: ErrorCode,
        message: String,
    },
    /// Server → client: the server is shutting down; reconnect with backoff.
    GoingAway { reason: String },
}

const T_HELLO: u8 = 0x01;
const T_WELCOME: u8 = 0x02;
const T_REGISTER: u8 = 0x03;
const T_REGISTERED: u8 = 0x04;
const T_ERROR: u8 = 0x05;
const T_GOING_AWAY: u8 = 0x06;

impl Control {
    /// Appends this message as one frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32(0);
        match self {
            Control::Hello {
                version,
                token,
                client_id,
                agent,
            } => {
                dst.put_u8(T_HELLO);
                dst.put_u16(*version);
                put_string(dst, token.expose());
                dst.extend_from_slice(client_id);
                put_string(dst, agent);
            }
            Control::Welcome {
                version,
                session_id,
            } => {
                dst.put_u8(T_WELCOME);
                dst.put_u16(*version);
                dst.put_u64(*session_id);
            }
            Control::Register {
                request_id,
                subdomain,
                local,
                kind,
                plain_http,
                remote_port,
                policy,
            } => {
                dst.put_u8(T_REGISTER);
                dst.put_u32(*request_id);
                put_string(dst, subdomain);
                put_string(dst, local);
                dst.put_u8(kind.to_u8());
                dst.put_u8(u8::from(*plain_http));
                dst.put_u16(*remote_port);
                policy.encode(dst);
            }
            Control::Registered {
                request_id,
                tunnel_id,
                hostname,
                url,
            } => {
                dst.put_u8(T_REGISTERED);
                dst.put_u32(*request_id);
                dst.put_u32(*tunnel_id);
                put_string(dst, hostname);
                put_string(dst, url);
            }
            Control::Error {
                request_id,
                code,
                message,
            } => {
                dst.put_u8(T_ERROR);
                dst.put_u32(*request_id);
                dst.put_u16(code.to_u16());
                put_string(dst, message);
            }
            Control::GoingAway { reason } => {
                dst.put_u8(T_GOING_AWAY);
                put_string(dst, reason);
            }
        }
        patch_len(dst, start);
    }

    /// Takes one message off the front of `buf`; `Ok(None)` until a whole
    /// frame is there.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Control>, ProtoError> {
        let Some(frame) = decode_frame(buf, MAX_CONTROL_FRAME)? else {
            return Ok(None);
        };
        let mut r = Reader::new(&frame, "control frame");
        let msg = match r.u8()? {
            T_HELLO => {
                let version = r.u16()?;
                let token = Secret::from(r.string()?);
                let mut client_id = [0u8; 16];
                client_id.copy_from_slice(r.take(16)?);
                let agent = r.string()?;
                Control::Hello {
                    version,
                    token,
                    client_id,
                    agent,
                }
            }
            T_WELCOME => Control::Welcome {
                version: r.u16()?,
                session_id: r.u64()?,
            },
            T_REGISTER => Control::Register {
                request_id: r.u32()?,
                subdomain: r.string()?,
                local: r.string()?,
                kind: TunnelKind::from_u8(r.u8()?)?,
                plain_http: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(ProtoError::Malformed {
                            what: "register flags",
                        })
                    }
                },
                remote_port: r.u16()?,
                policy: Policy::decode(&mut r)?,
            },
            T_REGISTERED => Control::Registered {
                request_id: r.u32()?,
                tunnel_id: r.u32()?,
                hostname: r.string()?,
                url: r.string()?,
            },
            T_ERROR => Control::Error {
                request_id: r.u32()?,
                code: ErrorCode::from_u16(r.u16()?),
                message: r.string()?,
            },
            T_GOING_AWAY => Control::GoingAway {
                reason: r.string()?,
            },
            t => return Err(ProtoError::UnknownType(t)),
        };
        r.finish()?;
        Ok(Some(msg))
    }
}
