//! The binaries as a user runs them: real processes, embedded defaults
//! (except port 0), the client finding the dev certificate by itself.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Stdio;

use support::bins::*;
use support::*;
use tokio::process::Command;

#[tokio::test]
async fn quickstart_with_real_processes() {
    let home = tempfile::tempdir().unwrap();
    let backend = Backend::start("laptop-app").await;
    let mut server = Proc::spawn(
        Command::new(server_bin())
            .args(["--http", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("TUNNEL_STATE_DIR"),
    );
    let ready = server.line().await;
    assert!(ready.starts_with("tunnel-server ready: "), "{ready}");
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_owned()
    };
    let http: std::net::SocketAddr = field("http=").parse().unwrap();
    let quic = field("quic=");
    assert!(home
        .path()
        .join(".local/state/tunnel-server/cert.pem")
        .exists());

    // No certificate flags: the client finds the dev server's certificate.
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .args([
                "--server",
                &quic,
                "--expose",
                &backend.addr.port().to_string(),
            ])
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("TUNNEL_STATE_DIR"),
    );
    let url_line = client.line().await;
    let (url, local) = url_line.split_once(" -> ").expect("URL line");
    assert!(
        url.starts_with("http://") && url.ends_with(&format!(".localhost:{}", http.port())),
        "{url_line}"
    );
    assert_eq!(local, format!("http://localhost:{}", backend.addr.port()));

    let raw = raw_exchange(
        http,
        format!("GET /hello HTTP/1.1\r\nHost: {}\r\n\r\n", host_of(url)).as_bytes(),
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body, b"hello from laptop-app");

    let (status, log) = client.terminate().await;
    assert!(status.success(), "client exit {status:?}: {log}");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "server exit {status:?}: {log}");
    assert!(log.contains("server stopped"), "{log}");
    backend.stop().await;
}

#[tokio::test]
async fn wrong_token_exits_non_zero_with_a_message() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(server_cmd(home.path()).env("TUNNEL_TOKENS", "sesame,other"));
    let ready = server.line().await;
    let quic = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("quic="))
        .unwrap()
        .to_owned();
    let out = tokio::time::timeout(
        WAIT,
        client_cmd()
            .await
            .args(["--server", &quic, "--expose", "9", "--server-cert"])
            .arg(home.path().join("cert.pem"))
            .env("TUNNEL_TOKEN", "not-sesame")
            .output(),
    )
    .await
    .expect("the client gave up without retrying")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: the server rejected the token"),
        "{stderr}"
    );
    let _ = server.terminate().await;
}

#[tokio::test]
async fn public_listener_without_token_refuses_to_start() {
    let out = Command::new(server_bin())
        .args(["--http", "0.0.0.0:0", "--quic", "127.0.0.1:0"])
        .env_remove("TUNNEL_TOKENS")
        .env("HOME", tempfile::tempdir().unwrap().path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without a token") && stderr.contains("--token"),
        "{stderr}"
    );
}

/// Issue 22, deploy files: the example's placeholder, or a short token, on
/// a public listener is refused with how to make a good one.
#[tokio::test]
async fn public_listener_with_a_weak_token_refuses_to_start() {
    for token in ["change-me-to-a-long-random-string", "short"] {
        let out = Command::new(server_bin())
            .args(["--http", "0.0.0.0:0", "--quic", "127.0.0.1:0"])
            .env("TUNNEL_TOKENS", token)
            .env("HOME", tempfile::tempdir().unwrap().path())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{token}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("weak token") && stderr.contains("openssl rand -hex 32"),
            "{token}: {stderr}"
        );
    }
}

/// What `tunnel-server` prints for a configuration it refuses.
async fn refused(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        WAIT,
        Command::new(server_bin())
            .args(["--http", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .args(args)
            .env("HOME", home.path())
            .env_remove("TUNNEL_STATE_DIR")
            .output(),
    )
    .await
    .expect("it exits at once")
    .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn bad_https_settings_name_the_flag_and_the_fix() {
    let e = refused(&["--acme"]).await;
    assert!(e.contains("--acme needs --https"), "{e}");
    let e = refused(&["--edge-cert", "/x.pem", "--edge-key", "/x.key"]).await;
    assert!(e.contains("--edge-cert needs --https"), "{e}");
    let e = refused(&[
        "--https",
        "127.0.0.1:0",
        "--edge-cert",
        "/nonexistent/edge.pem",
        "--edge-key",
        "/nonexistent/edge.key",
    ])
    .await;
    assert!(
        e.contains("--edge-cert") && e.contains("cannot read /nonexistent/edge.pem"),
        "{e}"
    );
    let e = refused(&["--acme-dns-hook", "/bin/true"]).await;
    assert!(e.contains("add --acme"), "{e}");
    let e = refused(&[
        "--https",
        "127.0.0.1:0",
        "--acme",
        "--acme-email",
        "not an address",
    ])
    .await;
    assert!(e.contains("--acme-email"), "{e}");
    let e = refused(&["--allow-domain", "x=*.example.com"]).await;
    assert!(
        e.contains("--allow-domain") && e.contains("position of a --token"),
        "{e}"
    );
}

/// [`server_cmd`] with an https listener and `extra` arguments; returns it
/// once its ready line is read.
async fn https_server(home: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (Proc, String) {
    let mut server = Proc::spawn(
        server_cmd(home)
            .args(["--https", "127.0.0.1:0"])
            .args(extra),
    );
    let ready = server.line().await;
    (server, ready)
}

#[tokio::test]
async fn sighup_reloads_the_edge_certificate_under_an_open_connection() {
    let home = tempfile::tempdir().unwrap();
    let one = support::tls::Made::new(&["edge.test", "*.edge.test"]);
    let two = support::tls::Made::new(&["edge.test", "*.edge.test"]);
    let (cert, key) = one.write(home.path(), "edge");
    let (mut server, ready) = https_server(
        home.path(),
        &[
            "--domain".as_ref(),
            "edge.test".as_ref(),
            "--edge-cert".as_ref(),
            cert.as_os_str(),
            "--edge-key".as_ref(),
            key.as_os_str(),
        ],
    )
    .await;
    let https: std::net::SocketAddr = field(&ready, "https=").parse().unwrap();
    let visitor = support::tls::visitor(&[&one.cert_pem, &two.cert_pem]);
    let get = "GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n";
    let mut open = support::tls::connect(https, "edge.test", visitor.clone())
        .await
        .unwrap();
    assert_eq!(support::tls::presented(&open), one.fingerprint());
    assert_eq!(support::tls::request(&mut open, get).await.status, 404);

    // New files with the old modification times: only SIGHUP can tell.
    let stamp = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (tc, tk) = (stamp(&cert), stamp(&key));
    two.write(home.path(), "edge");
    for (p, t) in [(&cert, tc), (&key, tk)] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let pid = server.child.id().unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    server.log_until("reloaded the certificate").await;
    let fresh = support::tls::connect(https, "edge.test", visitor.clone())
        .await
        .unwrap();
    assert_eq!(support::tls::presented(&fresh), two.fingerprint());
    // The connection opened before the reload is still served.
    assert_eq!(support::tls::request(&mut open, get).await.status, 404);
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn a_failing_dns_hook_is_reported_with_its_flag() {
    let pebble =
        support::tls::Pebble::start(support::tls::free_port(), support::tls::free_port()).await;
    let home = tempfile::tempdir().unwrap();
    let (mut server, _) = https_server(
        home.path(),
        &[
            "--domain".as_ref(),
            "tunnel.test".as_ref(),
            "--acme".as_ref(),
            "--acme-directory".as_ref(),
            pebble.directory.as_ref(),
            "--acme-root".as_ref(),
            pebble.tls_root.as_os_str(),
            "--acme-dns-hook".as_ref(),
            "/bin/false".as_ref(),
        ],
    )
    .await;
    let line = server.log_until("--acme-dns-hook").await;
    assert!(
        line.contains("--acme-dns-hook /bin/false") && line.contains("exited with"),
        "{line}"
    );
    assert!(
        line.contains("set|clear NAME VALUE"),
        "the message says how the hook is run: {line}"
    );
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn client_commands_take_connection_flags_before_or_after() {
    let home = tempfile::tempdir().unwrap();
    let (server, ready) = https_server(home.path(), &[]).await;
    let (quic, https) = (field(&ready, "quic="), field(&ready, "https="));
    let https_port = https.rsplit(':').next().unwrap().to_owned();
    let cert = home.path().join("cert.pem");
    // Flags before the command, --subdomain after it.
    let mut http = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &quic, "--server-cert"])
            .arg(&cert)
            .args(["http", "127.0.0.1:9", "--subdomain", "cli"]),
    );
    assert_eq!(
        http.line().await,
        format!("https://cli.localhost:{https_port} -> http://127.0.0.1:9")
    );
    // Everything after the command.
    let mut tls = Proc::spawn(
        client_cmd()
            .await
            .args([
                "tls",
                "8443",
                "--subdomain",
                "secure",
                "--server",
                &quic,
                "--server-cert",
            ])
            .arg(&cert),
    );
    assert_eq!(
        tls.line().await,
        format!("tls://secure.localhost:{https_port} -> localhost:8443")
    );
    // Both ways of saying what to expose at once: a clear refusal.
    let out = client_cmd()
        .await
        .args(["--expose", "8080", "http", "8080"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass one"));
    for p in [http, tls] {
        let (status, log) = p.terminate().await;
        assert!(status.success(), "{log}");
    }
    let _ = server.terminate().await;
}

/// Issue 9, restart recovery: a server killed with SIGKILL and started again
/// on the same ports is serving the old client again within seconds, not
/// after the client's 20 s idle timeout: the stateless-reset key persists in
/// the state directory, so the restarted server's resets are recognised.
#[tokio::test]
async fn a_killed_server_restarted_on_its_ports_is_back_within_seconds() {
    let home = tempfile::tempdir().unwrap();
    let start = |args: Vec<String>| {
        Proc::spawn(
            Command::new(server_bin())
                .args(&args)
                .arg("--state-dir")
                .arg(home.path()),
        )
    };
    let mut first = start(vec![
        "--http".into(),
        "127.0.0.1:0".into(),
        "--quic".into(),
        "127.0.0.1:0".into(),
    ]);
    let ready = first.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));
    let backend = Backend::start("again").await;
    let mut config = tunnel_client::Config {
        server: quic.clone(),
        dev_state_dir: Some(home.path().to_owned()),
        backoff_base: std::time::Duration::from_millis(100),
        backoff_cap: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    config.tunnels.push(tunnel_client::TunnelSpec {
        local: backend.addr.to_string(),
        subdomain: Some("again".into()),
        ..Default::default()
    });
    let mut client = TestClient::start(config);
    client.online(1).await;

    let pid = first.child.id().unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let _ = first.child.wait().await;
    let mut second = start(vec![
        "--http".into(),
        http.clone(),
        "--quic".into(),
        quic.clone(),
    ]);
    second.line().await;
    let restarted = std::time::Instant::now();
    client.online(2).await;
    let back = restarted.elapsed();
    assert!(
        back < std::time::Duration::from_secs(5),
        "back after {back:?}: the old connection was not reset"
    );
    let r = raw_exchange(
        http.parse().unwrap(),
        b"GET /hello HTTP/1.1\r\nHost: again.localhost\r\n\r\n",
    )
    .await;
    assert_eq!(r.body, b"hello from again", "the same URL serves again");
    eprintln!("serving again {back:?} after the restarted server was ready");
    client.stop().await;
    let _ = second.terminate().await;
    backend.stop().await;
}

/// Issue 9, secrets: at `trace`, neither binary writes a token anywhere, and
/// a log that is not a terminal carries no colour codes.
#[tokio::test]
async fn tokens_never_reach_the_logs_even_at_trace() {
    const TOKEN: &str = "s3cret-token-that-must-not-leak";
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        server_cmd(home.path())
            .env("TUNNEL_TOKENS", format!("{TOKEN},another-{TOKEN}"))
            .env("RUST_LOG", "trace"),
    );
    let ready = server.line().await;
    let quic = field(&ready, "quic=");
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &quic, "--expose", "9", "--server-cert"])
            .arg(home.path().join("cert.pem"))
            .env("TUNNEL_TOKEN", TOKEN)
            .env("RUST_LOG", "trace"),
    );
    client.line().await;
    // A wrong token too: the refusal is logged, the tokens are not.
    let wrong = client_cmd()
        .await
        .args(["--server", &quic, "--expose", "9", "--server-cert"])
        .arg(home.path().join("cert.pem"))
        .env("TUNNEL_TOKEN", format!("wrong-{TOKEN}"))
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(!wrong.status.success());
    let (_, client_log) = client.terminate().await;
    let (_, server_log) = server.terminate().await;
    let wrong_log = String::from_utf8_lossy(&wrong.stderr).into_owned();
    for (who, log) in [
        ("server", &server_log),
        ("client", &client_log),
        ("wrong client", &wrong_log),
    ] {
        assert!(log.lines().count() > 10, "{who} logged at trace: {log}");
        assert!(!log.contains(TOKEN), "the {who} log holds a token");
        assert!(!log.contains('\u{1b}'), "the {who} log holds ANSI escapes");
    }
    assert!(
        server_log.contains("wrong or missing token"),
        "{server_log}"
    );
}

/// A network namespace with a veth pair to this one, removed on drop.
struct Netns {
    name: String,
    /// `10.213.N`: the host side is `.1`, the namespace starts on `.2`.
    net: String,
    inner: String,
}

impl Netns {
    /// `None` (with a message) where namespaces cannot be made.
    async fn make() -> Option<Netns> {
        let id = std::process::id();
        let name = format!("tnl-mig-{id}");
        let net = format!("10.213.{}", id % 250 + 1);
        let (outer, inner) = (
            format!("tmo{}", id % 100_000),
            format!("tmi{}", id % 100_000),
        );
        let ns = Netns {
            name: name.clone(),
            net: net.clone(),
            inner: inner.clone(),
        };
        if !run(&["ip", "netns", "add", &name]).await {
            eprintln!("SKIPPED: cannot create a network namespace here (needs root and iproute2)");
            return None;
        }
        let steps: Vec<Vec<String>> = [
            format!("ip link add {outer} type veth peer name {inner}"),
            format!("ip link set {inner} netns {name}"),
            format!("ip addr add {net}.1/24 dev {outer}"),
            format!("ip link set {outer} up"),
            format!("ip netns exec {name} ip link set lo up"),
            // Deleting the first address must keep the second.
            format!("ip netns exec {name} sysctl -qw net.ipv4.conf.all.promote_secondaries=1"),
            format!("ip netns exec {name} sysctl -qw net.ipv4.conf.{inner}.promote_secondaries=1"),
            format!("ip netns exec {name} ip addr add {net}.2/24 dev {inner}"),
            format!("ip netns exec {name} ip link set {inner} up"),
        ]
        .iter()
        .map(|s| s.split(' ').map(String::from).collect())
        .collect();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            assert!(run(&args).await, "{step:?} failed");
        }
        Some(ns)
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }

    /// The namespace's address moves from `.2` to `.3`.
    async fn move_address(&self) {
        let ip = |a: &str| format!("{}.{a}/24", self.net);
        for (op, a) in [("add", "3"), ("del", "2")] {
            let ok = run(&[
                "ip",
                "netns",
                "exec",
                &self.name,
                "ip",
                "addr",
                op,
                &ip(a),
                "dev",
                &self.inner,
            ])
            .await;
            assert!(ok, "ip addr {op} {a} failed");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

async fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Issue 9, active migration: the client's address changes in the middle
/// of a 50 MiB download (a laptop changing networks). The client notices,
/// moves to a new socket, QUIC migrates; the body is intact and the client
/// never reconnects.
#[tokio::test]
async fn the_client_migrates_when_its_address_changes_mid_download() {
    let Some(ns) = Netns::make().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(
        Command::new(server_bin())
            .args([
                "--http",
                "127.0.0.1:0",
                "--quic",
                &format!("{}.1:0", ns.net),
            ])
            // Not loopback: a token is required.
            .env("TUNNEL_TOKENS", "migration-token-0123456789")
            .arg("--state-dir")
            .arg(home.path()),
    );
    let ready = server.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));
    let fingerprint = field(&ready, "fingerprint=");

    // The local app lives in the namespace: a file server for a 50 MiB file.
    const N: usize = 50 << 20;
    let files = tempfile::tempdir().unwrap();
    tokio::fs::write(files.path().join("big.bin"), pattern(0, N))
        .await
        .unwrap();
    let mut app = Proc::spawn(
        ns.exec()
            .args([
                "python3",
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(files.path()),
    );
    let serving = app.line().await;
    let port = serving
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .unwrap_or_else(|| panic!("no port in {serving:?}"))
        .to_owned();

    let mut client = Proc::spawn(
        ns.exec()
            .env("TUNNEL_INSPECT", "127.0.0.1:0")
            .arg(client_bin().await)
            .args([
                "--server",
                &quic,
                "--server-fingerprint",
                &fingerprint,
                "--token",
                "migration-token-0123456789",
                "--expose",
                &format!("127.0.0.1:{port}"),
            ]),
    );
    let url_line = client.line().await;
    let host = host_of(url_line.split(" -> ").next().unwrap());

    let mut tcp = tokio::net::TcpStream::connect(&http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::with_capacity(N + 4096);
    let mut chunk = vec![0u8; 1 << 16];
    let mut moved = false;
    let mut moved_at = None;
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the download kept moving")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
        if !moved && got.len() > 10 << 20 {
            moved = true;
            ns.move_address().await;
            moved_at = Some(std::time::Instant::now());
            let said = client.log_until("migrating the connection").await;
            eprintln!(
                "{said} ({:?} after the address moved)",
                moved_at.unwrap().elapsed()
            );
        }
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
        if head_end.is_some_and(|h| got.len() >= h + 4 + N) {
            break;
        }
    }
    let h = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got[..h].starts_with(b"HTTP/1.") && got[9..12] == *b"200",
        "{:?}",
        String::from_utf8_lossy(&got[..h])
    );
    assert!(moved, "the download ended before the address moved");
    assert_eq!(got.len() - h, N, "the body was cut");
    assert!(
        got[h..] == pattern(0, N),
        "the body differs after the migration"
    );
    eprintln!(
        "50 MiB intact; the rest took {:?} after the address moved",
        moved_at.unwrap().elapsed()
    );

    let (_, log) = client.terminate().await;
    assert!(
        !log.contains("reconnecting") && !log.contains("retrying"),
        "the client reconnected instead of migrating:\n{log}"
    );
    let _ = app.terminate().await;
    let _ = server.terminate().await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Issue 9: a client killed with `kill -9` while visitors have streams open
/// costs the server nothing once the QUIC idle timeout has passed: its
/// session ends, the visitors are answered or closed, and the server's
/// file descriptors are back to their count before the client came.
#[tokio::test]
async fn a_killed_client_leaves_nothing_behind_on_the_server() {
    let home = tempfile::tempdir().unwrap();
    let backend = Backend::start("doomed").await;
    let (server, http, quic) = ready_server(&mut server_cmd(home.path())).await;
    let pid = server.child.id().unwrap();
    let baseline = open_fds(pid);

    let (mut client, url_line) =
        exposing_client(home.path(), &quic, &backend.addr.to_string()).await;
    let host = host_of(url_line.split(" -> ").next().unwrap());
    // Visitors with streams open and data in flight.
    let mut visitors = Vec::new();
    for _ in 0..8 {
        let mut v = visitor(http.parse().unwrap()).await;
        let resp = v
            .send_request(get(&host, &format!("/bytes/{}", 100 << 20)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        visitors.push((v, resp));
    }
    let busy = open_fds(pid);
    assert!(
        busy >= baseline + 8,
        "{busy} fds with 8 visitors, {baseline} before"
    );

    let killed = std::time::Instant::now();
    assert!(run(&["kill", "-KILL", &client.child.id().unwrap().to_string()]).await);
    let _ = client.child.wait().await;
    drop(visitors);
    // The server only learns from silence: up to the idle timeout (20 s).
    // Then the name is held for its owner: a visitor waits `OWNER_HOLD`
    // for it and reads that the tunnel's client is offline.
    let limit = std::time::Duration::from_secs(40);
    let request = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let gone = loop {
        // A request towards a session not yet known dead hangs: bounded.
        let probe = raw_exchange(http.parse().unwrap(), request.as_bytes());
        let hold = std::time::Duration::from_secs(8);
        if tokio::time::timeout(hold, probe)
            .await
            .is_ok_and(|r| r.status == 502 && String::from_utf8_lossy(&r.body).contains("offline"))
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < limit,
            "the session still stands {limit:?} after kill -9"
        );
    };
    // The probes' own connections close with them; then the count is back.
    let back = loop {
        let now = open_fds(pid);
        if now <= baseline {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < limit + std::time::Duration::from_secs(10),
            "{now} fds, baseline {baseline}"
        );
        // Polling a count that has no event to wait on.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    eprintln!("session gone {gone:?} after kill -9 (idle timeout + hold)");
    eprintln!("fds back to {baseline} and the session gone {back:?} after kill -9");
    let _ = server.terminate().await;
    backend.stop().await;
}

/// Issue 10, the server's config file: keys mirror the flags, flags win,
/// `--check` prints the effective configuration with secrets masked, and
/// every mistake names its key and line.
#[tokio::test]
async fn the_config_file_is_checked_and_flags_win() {
    const TOKEN: &str = "file-token-that-must-not-be-printed";
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("server.toml");
    tokio::fs::write(
        &good,
        format!(
            "# the team's server\ndomain = \"file.example.com\"\nhttp = \"127.0.0.1:0\"\n\
             tokens = [\"{TOKEN}\"]\ntcp_ports = \"40000-40099\"\nmax_visitors_per_ip = 64\n\n\
             [[token]]\nsecret = \"alice-{TOKEN}\"\ntcp_ports = \"40010-40019\"\ndomains = [\"*.alice.example\"]\n"
        ),
    )
    .await
    .unwrap();
    let out = Command::new(server_bin())
        .arg("--config")
        .arg(&good)
        .args(["--check", "--domain", "flag.example.com"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("\"flag.example.com\""),
        "the flag wins:\n{stdout}"
    );
    assert!(stdout.contains("max_visitors_per_ip: 64"), "{stdout}");
    assert!(stdout.contains("40000..=40099"), "{stdout}");
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("Secret(***)"), "{stdout}");
    assert!(
        stdout.contains("40010..=40019"),
        "the token's own range: {stdout}"
    );
    assert!(
        stdout.contains("alice.example"),
        "the token's grant: {stdout}"
    );

    for (text, expect) in [
        ("domain = \"a.example\"\n\nmax_visitor = 5\n", "line 3"),
        ("http = \"nowhere\"\n", "line 1"),
        ("\n\ntcp_ports = \"9-1\"\n", "line 3: tcp_ports"),
        ("acme_challenge = \"dns-01\"\n", "line 1: acme_challenge"),
        (
            "tcp_ports = \"40000-40099\"\n[[token]]\nsecret = \"x\"\ntcp_ports = \"39000-39001\"\n",
            "line 4: token.tcp_ports",
        ),
        ("[[token]]\nsecret = \"x\"\nports = 1\n", "line 3"),
    ] {
        let bad = dir.path().join("bad.toml");
        tokio::fs::write(&bad, text).await.unwrap();
        let out = Command::new(server_bin())
            .arg("--config")
            .arg(&bad)
            .arg("--check")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(&format!("bad.toml {expect}")),
            "{text:?} should say {expect:?}: {stderr}"
        );
    }
}

/// Issue 10: one client config file with two HTTP tunnels, a TCP and a UDP one,
/// run by `tunnel-client start` over one connection; each local service
/// sees only its own traffic. `login` saves the server and token (0600) so
/// a later run needs no flags.
#[tokio::test]
async fn start_runs_every_tunnel_of_the_config_file_and_login_saves_the_server() {
    let home = tempfile::tempdir().unwrap();
    let web = Backend::start("web").await;
    let api = Backend::start("api").await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let echo_task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let udp_echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp_echo.local_addr().unwrap();
    let udp_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp_echo.recv_from(&mut buf).await {
            let _ = udp_echo.send_to(&buf[..n], from).await;
        }
    });
    let first = support::tls::free_port();
    let udp_first = support::tls::free_port();
    let mut server = Proc::spawn(
        server_cmd(home.path())
            .args(["--tcp-ports", &format!("{first}-{}", first + 3)])
            .args(["--udp-ports", &format!("{udp_first}-{}", udp_first + 3)])
            .env("TUNNEL_TOKENS", "team-token"),
    );
    let ready = server.line().await;
    let (http, quic) = (field(&ready, "http="), field(&ready, "quic="));

    // login, then a file that only adds tunnels.
    let cfg = home.path().join("client.toml");
    let out = client_cmd()
        .await
        .arg("--config")
        .arg(&cfg)
        .args(["login", "--server", &quic, "--token", "team-token"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token's file is private");
    let mut text = tokio::fs::read_to_string(&cfg).await.unwrap();
    assert!(
        text.contains(&quic) && text.contains("team-token"),
        "{text}"
    );
    text.push_str(&format!(
        "\n[tunnels.web]\nlocal = \"{}\"\nsubdomain = \"web\"\n\n[tunnels.api]\nlocal = \"{}\"\nsubdomain = \"api\"\n\n\
         [tunnels.echo]\nkind = \"tcp\"\nlocal = \"{echo_addr}\"\n\n[tunnels.game]\nkind = \"udp\"\nlocal = \"{udp_addr}\"\n",
        web.addr, api.addr
    ));
    tokio::fs::write(&cfg, text).await.unwrap();

    // No --server, no --token: they come from the file.
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .arg("--config")
            .arg(&cfg)
            .arg("start")
            .env("HOME", home.path())
            .env("TUNNEL_STATE_DIR", home.path()),
    );
    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push(client.line().await);
    }
    lines.sort();
    assert!(lines[0].starts_with("http://api.localhost:"), "{lines:?}");
    assert!(lines[1].starts_with("http://web.localhost:"), "{lines:?}");
    assert!(lines[2].starts_with("tcp://localhost:"), "{lines:?}");
    assert!(lines[3].starts_with("udp://localhost:"), "{lines:?}");
    let udp_port: u16 = lines[3]
        .split(" -> ")
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let visitor_udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    visitor_udp.connect(("127.0.0.1", udp_port)).await.unwrap();
    visitor_udp.send(b"datagram").await.unwrap();
    let mut dbuf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, visitor_udp.recv(&mut dbuf))
        .await
        .expect("the udp echo through the tunnel")
        .unwrap();
    assert_eq!(&dbuf[..n], b"datagram");

    let http: std::net::SocketAddr = http.parse().unwrap();
    for (name, n) in [("web", 3), ("api", 2)] {
        for _ in 0..n {
            let r = raw_exchange(
                http,
                format!("GET /hello HTTP/1.1\r\nHost: {name}.localhost\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(r.body, format!("hello from {name}").as_bytes());
        }
    }
    assert_eq!(web.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(api.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let port: u16 = lines[2]
        .split(" -> ")
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");

    // With a TCP connection still open through it, the client stops.
    let (status, log) = client.terminate().await;
    assert!(status.success(), "{log}");
    drop(tcp);
    assert!(
        !log.contains("team-token"),
        "the token reached the log: {log}"
    );
    let _ = server.terminate().await;
    echo_task.abort();
    udp_task.abort();
    web.stop().await;
    api.stop().await;
}

/// The systemd unit of deploy/ as an operator installs it: `systemd-analyze
/// verify` accepts it (ExecStart pointed at the binary under test), and it
/// loads the tokens file the guide creates, never a token from the example.
#[tokio::test]
async fn the_deploy_unit_verifies() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let unit = tokio::fs::read_to_string(deploy.join("tunnel-server.service"))
        .await
        .unwrap();
    assert!(unit.contains("LoadCredential=tokens:/etc/tunnel-server/tokens"));
    let guide = tokio::fs::read_to_string(deploy.join("VPS.md"))
        .await
        .unwrap();
    assert!(guide.contains("openssl rand -hex 32 > /etc/tunnel-server/tokens"));
    let example = tokio::fs::read_to_string(deploy.join("tunnel-server.env.example"))
        .await
        .unwrap();
    assert!(
        !example.lines().any(|l| l.starts_with("TUNNEL_TOKENS=")),
        "the example ships no token"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tunnel-server.service");
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/tunnel-server",
        &format!("ExecStart={}", server_bin().display()),
    );
    tokio::fs::write(&path, unit).await.unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .await
        .expect("systemd-analyze (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("tunnel-server.service:"), "{stderr}");
}
