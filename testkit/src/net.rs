//! Ports on loopback.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 free for both TCP and UDP now (the kernel's pick),
/// for a program that needs its port in its configuration.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Blocks until something accepts on `addr` (10 s at most; the load
/// harness, outside any runtime, for peers that print no ready line).
#[allow(clippy::disallowed_methods)]
pub fn wait_addr(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
