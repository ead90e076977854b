//! Real proxies the TCP transport goes through, started by the test.

use std::net::IpAddr;

use tunnel_testkit::process::Proc;

/// tinyproxy listening on `listen` (a free port), taking clients from
/// `allow` (an address or a CIDR), with `extra` configuration lines; its
/// log (stdout) read until it accepts. Returns it and its port.
pub async fn tinyproxy(
    dir: &std::path::Path,
    listen: IpAddr,
    allow: &str,
    extra: &str,
) -> (Proc, u16) {
    let port = tunnel_testkit::net::free_port();
    let conf = dir.join("tinyproxy.conf");
    tokio::fs::write(
        &conf,
        format!(
            "Port {port}\nListen {listen}\nTimeout 60\nLogLevel Info\nMaxClients 20\n\
             Allow {allow}\n{extra}"
        ),
    )
    .await
    .unwrap();
    let mut p = Proc::spawn(
        tokio::process::Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf),
    );
    while !p.line().await.contains("Accepting connections") {}
    (p, port)
}
