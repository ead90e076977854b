//! Responses the server writes itself: short pages that say what happened
//! and what to do, plus an `X-Tunnel-Error` code for scripts.

use bytes::{BufMut, Bytes, BytesMut};

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A response the server writes itself: what went wrong, for the page and
/// the `X-Tunnel-Error` header (or, for the few answers that are not
/// errors, a redirect or an ACME challenge's key authorization).
#[derive(Debug, Clone)]
pub struct ErrorPage {
    pub status: u16,
    /// Machine-readable code, e.g. `tunnel-not-found`, `local-refused`.
    pub code: &'static str,
    pub title: &'static str,
    /// One or two sentences, already HTML-escaped.
    pub detail_html: String,
    /// A `text/plain` body instead of the HTML page (ACME HTTP-01).
    pub text: Option<String>,
    /// One more header line (`Location`, `WWW-Authenticate`, `Retry-After`).
    /// Boxed: rare, and every `Result<_, ErrorPage>` carries the size.
    pub header: Option<Box<(&'static str, String)>>,
}

impl ErrorPage {
    pub fn new(status: u16, code: &'static str, title: &'static str, detail_html: String) -> Self {
        ErrorPage {
            status,
            code,
            title,
            detail_html,
            text: None,
            header: None,
        }
    }

    /// The whole response. `close`: add `Connection: close`. `head`: the
    /// request was HEAD (headers only).
    /// The page's body and its content type (every HTTP version).
    pub fn body(&self) -> (String, &'static str) {
        match &self.text {
            Some(t) => (t.clone(), "text/plain"),
            None => (self.html(), "text/html; charset=utf-8"),
        }
    }

    pub fn render(&self, close: bool, head: bool) -> Bytes {
        let (body, content_type) = self.body();
        let mut out = BytesMut::with_capacity(body.len() + 240);
        out.put_slice(
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\n",
                self.status,
                reason(self.status),
                body.len(),
            )
            .as_bytes(),
        );
        if self.text.is_none() {
            out.put_slice(format!("X-Tunnel-Error: {}\r\n", self.code).as_bytes());
        }
        if let Some((name, value)) = self.header.as_deref() {
            out.put_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if close {
            out.put_slice(b"Connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        if !head {
            out.put_slice(body.as_bytes());
        }
        out.freeze()
    }

    fn html(&self) -> String {
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{s} {t}</title></head>\n\
             <body><h1>{t}</h1>\n<p>{d}</p>\n<hr><p><small>tunnel-server &middot; {s} {r}</small></p></body></html>\n",
            s = self.status,
            t = self.title,
            d = self.detail_html,
            r = reason(self.status),
        )
    }
}

pub fn not_found(host: &str) -> ErrorPage {
    ErrorPage::new(
        404,
        "tunnel-not-found",
        "Tunnel not found",
        format!(
            "No tunnel is registered for <code>{}</code>. Check the URL that tunnel-client printed; \
             the tunnel may have been stopped.",
            escape(host)
        ),
    )
}

pub fn unauthorized(host: &str) -> ErrorPage {
    let mut p = ErrorPage::new(
        401,
        "auth-required",
        "Sign in to this tunnel",
        format!(
            "The tunnel <code>{}</code> asks for a user name and password (its owner set them \
             with <code>tunnel-client http --basic-auth</code>).",
            escape(host)
        ),
    );
    p.header = Some(Box::new((
        "WWW-Authenticate",
        "Basic realm=\"tunnel\", charset=\"UTF-8\"".into(),
    )));
    p
}

pub fn forbidden(host: &str) -> ErrorPage {
    ErrorPage::new(
        403,
        "address-denied",
        "Your address may not use this tunnel",
        format!(
            "The owner of <code>{}</code> lets only some addresses in (<code>--allow</code> / \
             <code>--deny</code>), and yours is not one of them.",
            escape(host)
        ),
    )
}

pub fn rate_limited(host: &str) -> ErrorPage {
    let mut p = ErrorPage::new(
        429,
        "rate-limited",
        "Too many requests",
        format!(
            "Your address sent requests to <code>{}</code> faster than its owner allows. Retry in a \
             moment.",
            escape(host)
        ),
    );
    p.header = Some(Box::new(("Retry-After", "1".into())));
    p
}

pub fn bad_request(status: u16, what: &str) -> ErrorPage {
    let code = match status {
        408 => "request-timeout",
        413 => "body-too-large",
        414 => "uri-too-long",
        431 => "headers-too-large",
        505 => "version-not-supported",
        _ => "bad-request",
    };
    ErrorPage::new(status, code, reason(status), format!("{}.", escape(what)))
}

pub fn local_refused(host: &str, detail: &str) -> ErrorPage {
    ErrorPage::new(
        502,
        "local-refused",
        "The local service refused the connection",
        format!(
            "The tunnel <code>{}</code> is connected, but the service it forwards to is not answering: {}. \
             Start your app (or check the port given to <code>tunnel-client --expose</code>) and reload.",
            escape(host),
            escape(detail)
        ),
    )
}

pub fn local_failed(host: &str, detail: &str) -> ErrorPage {
    ErrorPage::new(
        502,
        "local-error",
        "The local service failed",
        format!(
            "The tunnel <code>{}</code> could not get a response from the local service: {}.",
            escape(host),
            escape(detail)
        ),
    )
}

pub fn client_gone(host: &str) -> ErrorPage {
    ErrorPage::new(
        502,
        "tunnel-offline",
        "The tunnel's client is offline",
        format!(
            "The tunnel <code>{}</code> exists, but its tunnel-client is not connected right now. \
             If it is reconnecting, retry in a few seconds.",
            escape(host)
        ),
    )
}

pub fn client_busy(host: &str) -> ErrorPage {
    ErrorPage::new(
        503,
        "tunnel-busy",
        "The tunnel is at capacity",
        format!(
            "The tunnel <code>{}</code> has too many open connections right now. Retry shortly.",
            escape(host)
        ),
    )
}

pub fn tunnel_timeout(host: &str) -> ErrorPage {
    ErrorPage::new(
        504,
        "tunnel-timeout",
        "The tunnel did not answer",
        format!(
            "The tunnel client for <code>{}</code> did not answer in time.",
            escape(host)
        ),
    )
}

/// `308` from the plain listener to the same URL over https.
pub fn to_https(location: String) -> ErrorPage {
    let mut p = ErrorPage::new(
        308,
        "https-redirect",
        "Moved to https",
        format!(
            "This tunnel is served over https: <a href=\"{0}\">{0}</a>.",
            escape(&location)
        ),
    );
    p.header = Some(Box::new(("Location", location)));
    p
}

/// The key authorization of an ACME HTTP-01 challenge.
pub fn acme_challenge(key_authorization: String) -> ErrorPage {
    let mut p = ErrorPage::new(200, "acme-challenge", "OK", String::new());
    p.text = Some(key_authorization);
    p
}

/// `421`: a TLS session established for one name carried a request for
/// another.
pub fn misdirected(host: &str, sni: &str) -> ErrorPage {
    ErrorPage::new(
        421,
        "misdirected-request",
        "Misdirected request",
        format!(
            "This TLS connection was opened for <code>{}</code>, not for <code>{}</code>. \
             Open a new connection to that host.",
            escape(sni),
            escape(host)
        ),
    )
}

/// An HTTP request for a TLS-passthrough tunnel (no SNI, or plain http on a
/// server without https).
pub fn passthrough_only(host: &str) -> ErrorPage {
    ErrorPage::new(
        421,
        "tls-passthrough-only",
        "Misdirected request",
        format!(
            "<code>{}</code> is a TLS passthrough tunnel: connect with TLS and the name \
             <code>{0}</code> as SNI (for example https://{0}/).",
            escape(host)
        ),
    )
}
