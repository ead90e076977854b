//! What the server says when it will not start, or starts with a file:
//! refused tokens and settings, each naming the flag and the fix; the
//! config file and its precedence; the deploy unit.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use support::bins::*;
use support::*;
use tokio::process::Command;

#[tokio::test]
async fn wrong_token_exits_non_zero_with_a_message() {
    let home = tempfile::tempdir().unwrap();
    let mut server = Proc::spawn(server_cmd(home.path()).env("TUNNEL_TOKENS", "sesame,other"));
    let ready = server.line().await;
    let quic = field(&ready, "quic=");
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "EX_NOPERM: {stderr}");
    assert!(
        stderr.contains("error: the server rejected the token"),
        "{stderr}"
    );
    let _ = server.terminate().await;
}

/// Issue 24: the client's exit code says what stopped it (README's table),
/// so a script can tell "fix the settings" from "the server is not there".
#[tokio::test]
async fn client_exit_codes_say_what_stopped_it() {
    // A UDP port that is bound and never answers: no server there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap().to_string();
    let fingerprint = "ab".repeat(32);
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &[
                "--server",
                &server,
                "--server-fingerprint",
                &fingerprint,
                "--give-up-after",
                "1",
                "--expose",
                "9",
            ],
            69,
            "--give-up-after",
        ),
        (
            &["--config", "/nonexistent/client.toml", "--expose", "9"],
            78,
            "/nonexistent/client.toml",
        ),
        (
            &["--expose", "9", "--local-timeout", "soon"],
            2,
            "--local-timeout",
        ),
        (&["http", "eighty"], 78, "expected a port"),
    ];
    let home = tempfile::tempdir().unwrap();
    for (args, code, says) in cases {
        let mut cmd = client_cmd().await;
        cmd.args(args).env("XDG_CONFIG_HOME", home.path());
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("the client stopped by itself")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?} should say {says:?}: {stderr}"
        );
    }
    drop(silent);
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
