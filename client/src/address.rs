//! Server addresses as the user writes them.

/// `--server`: `HOST:PORT`, `[IPv6]:PORT`, or a host alone for port 443
/// (QUIC on UDP 443 beside HTTPS on TCP 443, as a VPS is set up).
pub fn split_server(server: &str) -> Result<(&str, u16), String> {
    let bad = || {
        format!(
            "--server {server:?}: expected HOST, HOST:PORT or [IPv6]:PORT, e.g. tunnel.example.com \
             (port 443) or tunnel.example.com:4433"
        )
    };
    let (host, port) = match server.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, 443),
                p => (
                    host,
                    p.strip_prefix(':')
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(bad)?,
                ),
            }
        }
        None => match server.split_once(':') {
            None => (server, 443),
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host, port))
}
