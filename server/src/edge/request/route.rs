//! Routing a request head by its Host, for HTTP/1 and HTTP/2 alike: the
//! server's own page (404, offline, 308, 421, ACME HTTP-01), or the head
//! rendered for the tunnel with the policy's gate and edits.

use std::net::SocketAddr;

use bytes::BytesMut;
use tunnel_lib::http1::{normalise_host, BodyKind, Forwarded, RequestHead};
use tunnel_lib::proto::TunnelKind;

use super::super::Scheme;
use super::{Action, Facts};
use crate::registry::{Offline, Rule};
use crate::respond::{self, ErrorPage};
use crate::state::State;

/// What routing a request needs of the connection it came on: the
/// server, who asks, and how (HTTP/1 and HTTP/2 alike).
pub(in crate::edge) struct Front<'a> {
    pub(in crate::edge) state: &'a State,
    pub(in crate::edge) peer: SocketAddr,
    /// The listener's scheme: `X-Forwarded-Proto`, and whether plain
    /// requests are redirected to https.
    pub(in crate::edge) scheme: Scheme,
    /// The TLS server name: a request for another host on this session is
    /// misdirected (421), never served under the other name's certificate.
    pub(in crate::edge) sni: Option<&'a str>,
}

/// Routes a head by its Host: the server's own page, or the forwarded
/// head rendered for the tunnel.
pub(in crate::edge) fn route(
    front: &Front<'_>,
    head: RequestHead,
    may_hold: bool,
) -> (Facts, Action) {
    let facts = Facts {
        body: head.body,
        keep_alive: head.keep_alive,
        is_head: head.is_head(),
        upgrade_websocket: head.upgrade_websocket,
        replayable: head.body == BodyKind::None
            && !head.upgrade_websocket
            && matches!(
                head.method(),
                b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
            ),
        http10: head.version() == tunnel_lib::http1::Version::Http10,
    };
    if front.scheme == Scheme::Http {
        if let Some(page) = plain_only(front, &head) {
            return (facts, Action::Answer(page));
        }
    }
    if let Some(sni) = &front.sni {
        if normalise_host(head.host()).is_some_and(|h| *h != **sni) {
            return (
                facts,
                Action::Answer(respond::misdirected(&host_text(&head), sni)),
            );
        }
    }
    let action = match front.state.directory.route(head.host()) {
        None => {
            let offline = normalise_host(head.host())
                .and_then(|h| Some((front.state.directory.offline(&h)?, h)));
            match offline {
                Some((Offline::Reconnecting, h)) if may_hold => {
                    let h: Box<str> = h.as_ref().into();
                    return (facts, Action::AwaitOwner(Box::new(head), h));
                }
                Some((_, h)) => Action::Answer(respond::client_gone(&h)),
                None => Action::Answer(respond::not_found(&host_text(&head))),
            }
        }
        Some((rule, None)) => Action::Answer(respond::client_gone(&rule.host)),
        // A passthrough tunnel is reached by its SNI only.
        Some((rule, _)) if rule.kind() == TunnelKind::Tls => Action::Answer(match front.scheme {
            Scheme::Http if front.state.https_port.is_some() => {
                respond::to_https(front.state.https_url(&head))
            }
            _ => respond::passthrough_only(&rule.host),
        }),
        Some((rule, _)) if front.scheme == Scheme::Http && redirects(front, &rule) => {
            Action::Answer(respond::to_https(front.state.https_url(&head)))
        }
        Some((rule, Some(session))) => {
            let mut forwarded = Forwarded::plain(front.peer.ip(), front.scheme.as_str());
            if let Some(p) = rule.policy() {
                // The tunnel's gate, before any stream is opened.
                if let Err(page) = p.admit(
                    &rule.host,
                    front.peer.ip(),
                    head.header_values("authorization").next(),
                ) {
                    return (facts, Action::Answer(page));
                }
                forwarded.host = p.host.as_deref();
                forwarded.remove = &p.remove;
                forwarded.add = &p.add;
            }
            let mut fwd = BytesMut::new();
            head.write_forwarded(&mut fwd, &forwarded);
            let line = front.state.access_log.as_ref().map(|_| {
                format!(
                    "{} {}",
                    String::from_utf8_lossy(head.method()),
                    String::from_utf8_lossy(head.target())
                )
                .into_boxed_str()
            });
            Action::Forward(fwd.freeze(), rule, session, line)
        }
    };
    (facts, action)
}

/// What only the plain listener answers: ACME HTTP-01 challenges.
fn plain_only(front: &Front<'_>, head: &RequestHead) -> Option<ErrorPage> {
    let token = head
        .target()
        .strip_prefix(b"/.well-known/acme-challenge/")?;
    let tls = front.state.tls.as_ref()?;
    let token = std::str::from_utf8(token).ok()?;
    tls.store
        .http01_response(token)
        .map(respond::acme_challenge)
}

/// Whether a request for `rule` on the plain listener gets a 308 to
/// https: with an https listener, unless the tunnel opted out.
fn redirects(front: &Front<'_>, rule: &Rule) -> bool {
    front.state.https_port.is_some() && !rule.plain_http()
}

fn host_text(head: &RequestHead) -> String {
    match normalise_host(head.host()) {
        Some(h) => h.into_owned(),
        None => String::from_utf8_lossy(head.host()).into_owned(),
    }
}
