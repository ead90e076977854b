//! Issue 26: HTTP/2 for visitors. Real processes throughout: the server,
//! the client, a Node origin (HTTP/1.1, chunked bodies with trailers, an
//! echo), and clients nobody here wrote: curl (h2 by ALPN, h2c with prior
//! knowledge), h2load (nghttp2) for 100 streams on one connection, and
//! Python's `h2` (Debian's python3-h2) sending the attacks frame by frame.

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Stdio;

use support::bins::*;
use support::*;
use tokio::process::Command;

/// The Node origin: `/trailers` answers chunked with `grpc-status` and
/// `grpc-message` trailers; `/echo` sends the request body back (chunked);
/// `/slow` sends its headers and the rest after 30 s (a request the
/// visitor gives up on; the origin logs `closed /slow` when its connection
/// is cut); `/ticks` 20 lines 100 ms apart; `/big` 64 MiB; `/page` a page of 100 assets (`/asset/N`,
/// `asset N;` a thousand times); anything else a small fixed body.
const ORIGIN: &str = r#"
const http = require('http');
const s = http.createServer((req, res) => {
  if (req.url.startsWith('/trailers')) {
    res.writeHead(200, {'Content-Type': 'application/grpc', 'Trailer': 'grpc-status, grpc-message'});
    res.write('part1;');
    res.addTrailers({'grpc-status': '0', 'grpc-message': 'all good'});
    res.end('part2');
  } else if (req.url.startsWith('/echo')) {
    res.writeHead(200, {'Content-Type': 'application/octet-stream'});
    req.pipe(res);
  } else if (req.url.startsWith('/slow')) {
    req.socket.on('close', () => console.log('closed /slow'));
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.flushHeaders();
    setTimeout(() => res.end('late'), 30000);
  } else if (req.url === '/ticks') {
    console.log('ticking');
    res.writeHead(200, {'Content-Type': 'text/plain'});
    let n = 0;
    const t = setInterval(() => { res.write('tick ' + n + '\n'); if (++n === 20) { clearInterval(t); res.end(); } }, 100);
  } else if (req.url === '/page') {
    let html = '<!doctype html><title>assets</title>';
    for (let i = 0; i < 100; i++) html += '<link rel="preload" as="fetch" crossorigin href="/asset/' + i + '">';
    res.writeHead(200, {'Content-Type': 'text/html', 'Content-Length': Buffer.byteLength(html)});
    res.end(html);
  } else if (req.url.startsWith('/asset/')) {
    const body = ('asset ' + req.url.slice(7) + ';').repeat(1000);
    res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': body.length, 'Cache-Control': 'no-store'});
    res.end(body);
  } else if (req.url.startsWith('/big')) {
    res.writeHead(200, {'Content-Length': 64 * 1024 * 1024});
    const chunk = Buffer.alloc(1024 * 1024, 120);
    let left = 64;
    const more = () => { while (left > 0) { left--; if (!res.write(chunk)) { res.once('drain', more); return; } } res.end(); };
    more();
  } else {
    const body = 'node says ' + req.method + ' ' + req.url + ' host=' + req.headers.host +
      ' proto=' + req.headers['x-forwarded-proto'] + ' cookie=' + req.headers.cookie;
    res.writeHead(200, {'Content-Length': Buffer.byteLength(body)});
    res.end(body);
  }
});
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
"#;

struct Rig {
    server: Proc,
    client: Proc,
    origin: Proc,
    /// `https://NAME.localhost:PORT` and the plain listener's address.
    https_port: String,
    http: String,
    name: String,
    _home: tempfile::TempDir,
}

impl Rig {
    /// A server with https, the Node origin, and a client exposing it
    /// (plain http allowed too, for h2c).
    async fn start() -> Rig {
        Rig::with(ORIGIN, &["--allow-http"]).await
    }

    /// A server with https, the Node origin `script` (which prints its
    /// port), and a client exposing it with `flags` after `http PORT`.
    async fn with(script: &str, flags: &[&str]) -> Rig {
        let home = tempfile::tempdir().unwrap();
        let mut origin = Proc::spawn(Command::new("node").args(["-e", script]));
        let port = origin.line().await;
        let (server, ready) = https_server(home.path(), &[]).await;
        let (quic, http) = (field(&ready, "quic="), field(&ready, "http="));
        let https_port = field(&ready, "https=")
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let mut client = Proc::spawn(
            client_cmd()
                .await
                .args(["--server", &quic])
                .args(["http", &format!("127.0.0.1:{port}")])
                .args(flags)
                .env("HOME", home.path())
                .env("TUNNEL_STATE_DIR", home.path()),
        );
        let url = client.line().await;
        let host = host_of(url.split(" -> ").next().unwrap());
        let name = host.split(':').next().unwrap().to_owned();
        Rig {
            server,
            client,
            origin,
            https_port,
            http,
            name,
            _home: home,
        }
    }

    /// curl over https to the tunnel, with `args` before the URL path.
    fn curl(&self, args: &[&str], path: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sSk", "--max-time", "60"])
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.name, self.https_port))
            .args(args)
            .arg(format!("https://{}:{}{path}", self.name, self.https_port));
        c
    }

    async fn stop(self) {
        for p in [self.client, self.server, self.origin] {
            let _ = p.terminate().await;
        }
    }
}

async fn output(c: &mut Command) -> String {
    let out = c.output().await.unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// curl negotiates h2 by ALPN and gets the body (the request went out as
/// HTTP/1.1 with the same forwarded facts); with prior knowledge on the
/// plain port too; split cookies are joined again.
#[tokio::test]
async fn curl_gets_h2_by_alpn_and_h2c_by_prior_knowledge() {
    let rig = Rig::start().await;
    let got = output(&mut rig.curl(
        &[
            "--http2",
            "-w",
            "\n%{http_version}",
            "-H",
            "cookie: a=1",
            "-H",
            "cookie: b=2",
        ],
        "/hello?x=1",
    ))
    .await;
    assert_eq!(
        got,
        format!(
            "node says GET /hello?x=1 host={}:{} proto=https cookie=a=1; b=2\n2",
            rig.name, rig.https_port
        )
    );
    let plain_port = rig.http.rsplit(':').next().unwrap();
    let got = output(
        Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}"])
            .arg("--resolve")
            .arg(format!("{}:{plain_port}:127.0.0.1", rig.name))
            .arg(format!("http://{}:{plain_port}/plain", rig.name)),
    )
    .await;
    assert!(
        got.starts_with("node says GET /plain")
            && got.contains("proto=http ")
            && got.ends_with("\n2"),
        "{got}"
    );
    // An HTTP/1.1 visitor on the same https port still gets HTTP/1.1.
    let got = output(&mut rig.curl(&["--http1.1", "-w", "\n%{http_version}"], "/one")).await;
    assert!(got.ends_with("\n1.1"), "{got}");
    rig.stop().await;
}

/// A chunked response's trailers arrive as HTTP/2 trailers (what gRPC's
/// status needs); 20 MiB go up and come back intact, both ways at once.
#[tokio::test]
async fn trailers_become_h2_trailers_and_bodies_stream_both_ways() {
    let mut rig = Rig::start().await;
    let got = output(&mut rig.curl(&["--http2", "-D", "-"], "/trailers")).await;
    assert!(got.starts_with("HTTP/2 200"), "{got}");
    let (_, after) = got.split_once("part1;part2").expect("the body");
    assert!(
        after.contains("grpc-status: 0") && after.contains("grpc-message: all good"),
        "the trailers after the body: {got}"
    );
    // Headers of the local hop never reach an HTTP/2 visitor.
    assert!(
        !got.to_ascii_lowercase().contains("transfer-encoding"),
        "{got}"
    );
    // The client's inspector shows the exchange as HTTP/2, with its trailers.
    let inspector = Inspector::of(&mut rig.client).await;
    let list = inspector.get("/api/requests").await;
    let ex = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/trailers")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(ex["protocol"], "HTTP/2", "{ex}");
    let detail = inspector.get(&format!("/api/requests/{}", ex["id"])).await;
    let trailers = detail["response_trailers"].as_str().unwrap();
    assert!(
        trailers.contains("grpc-status: 0") && trailers.contains("grpc-message: all good"),
        "{detail}"
    );
    // Replaying the HTTP/2 visitor's exchange from the inspector works (the
    // app speaks HTTP/1.1: the capture is what it got).
    let replayed = inspector.replay(&ex["id"]).await;
    assert_eq!(replayed["status"], 200, "{replayed}");
    assert_eq!(replayed["replay_of"], ex["id"], "{replayed}");
    assert!(
        replayed["response_trailers"]
            .as_str()
            .is_some_and(|t| t.contains("grpc-status: 0")),
        "{replayed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up.bin");
    tokio::fs::write(&file, pattern(0, 20 << 20)).await.unwrap();
    let mut c = rig.curl(
        &[
            "--http2",
            "--data-binary",
            &format!("@{}", file.display()),
            "-H",
            "content-type: application/octet-stream",
        ],
        "/echo",
    );
    let out = c.output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 20 << 20);
    assert!(out.stdout == pattern(0, 20 << 20), "the echo differs");
    rig.stop().await;
}

/// h2load: 100 000 requests on 20 connections × 20 streams, then 100
/// concurrent streams on each of 4 connections, every request answered
/// (the tunnel opens a stream per request; the client pools the local
/// connections).
#[tokio::test]
async fn h2load_with_100_streams_per_connection_has_no_failures() {
    if !tool("h2load") {
        return;
    }
    let rig = Rig::start().await;
    // `n` requests on `c` connections × `m` streams: every one answered.
    let h2load = |n: &'static str, c: &'static str, m: &'static str| {
        let mut cmd = Command::new("h2load");
        cmd.args(["-n", n, "-c", c, "-m", m, "-H"])
            .arg(format!(":authority: {}:{}", rig.name, rig.https_port))
            .arg(format!("https://127.0.0.1:{}/load", rig.https_port));
        async move {
            let got = output(&mut cmd).await;
            eprintln!("{got}");
            assert!(
                got.contains(&format!("{n} succeeded, 0 failed, 0 errored, 0 timeout")),
                "{got}"
            );
            got
        }
    };
    h2load("100000", "20", "20").await;
    let got = h2load("4000", "4", "100").await;
    assert!(got.contains("status codes: 4000 2xx"), "{got}");
    assert!(got.contains("h2"), "{got}");
    rig.stop().await;
}

/// Whether a tool the test needs is here (CI installs it; with
/// TUNNEL_TEST_REQUIRE_UI set, a missing one fails the test).
fn tool(name: &str) -> bool {
    needed(
        name,
        std::process::Command::new("sh").args(["-c", &format!("command -v {name}")]),
    )
}

/// Whether `check` succeeds: `what` is installed. Where it is not, the test
/// is skipped, or fails when TUNNEL_TEST_REQUIRE_UI is set (CI).
fn needed(what: &str, check: &mut std::process::Command) -> bool {
    let found = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("TUNNEL_TEST_REQUIRE_UI").is_none(),
            "{what} is required here (TUNNEL_TEST_REQUIRE_UI is set)"
        );
        eprintln!("SKIPPED: {what} is not installed");
    }
    found
}

/// Runs one mode of `support/h2_attacks.py` against the rig with Debian's
/// Python (where python3-h2 lives); its one line of output.
async fn attack(rig: &Rig, mode: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/h2_attacks.py");
    let authority = format!("{}:{}", rig.name, rig.https_port);
    let out = Command::new(PYTHON_H2)
        .args([script, mode, &rig.https_port, &authority])
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{mode} failed");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("{mode}: {text}");
    text
}

/// A client's inspector, through its JSON API (with curl).
struct Inspector(String);

impl Inspector {
    /// From the client's log line that says where it listens.
    async fn of(client: &mut Proc) -> Inspector {
        let line = client.log_until("inspector: http://").await;
        Inspector(line.split("inspector: ").nth(1).unwrap().trim().to_owned())
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let got = output(Command::new("curl").args(["-sS", &format!("{}{path}", self.0)])).await;
        serde_json::from_str(&got).unwrap()
    }

    /// Replays exchange `id` as captured; the replay's detail.
    async fn replay(&self, id: &serde_json::Value) -> serde_json::Value {
        let csrf = format!("{}: 1", tunnel_client::inspector::CSRF_HEADER);
        let url = format!("{}/api/requests/{id}/replay", self.0);
        let got = output(Command::new("curl").args(["-sS", "-X", "POST", "-H", &csrf, &url])).await;
        serde_json::from_str(&got).unwrap()
    }
}

/// Debian's interpreter, which has python3-h2 (a pyenv one may not).
const PYTHON_H2: &str = "/usr/bin/python3";

fn python_h2() -> bool {
    needed(
        "python3-h2",
        std::process::Command::new(PYTHON_H2).args(["-c", "import h2, hpack, hyperframe"]),
    )
}

/// A `kB` field of the server's `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
fn memory(p: &Proc, field: &str) -> u64 {
    tunnel_testkit::procfs::status_kib(p.child.id().unwrap(), field)
}

/// A visitor that is not attacking is served while and after each attack.
async fn still_serves(rig: &Rig) {
    let got = output(&mut rig.curl(&["--http2", "-w", "\n%{time_total}"], "/after")).await;
    assert!(got.starts_with("node says GET /after"), "{got}");
    // The figure for the note: a visitor's whole request (a new TLS
    // connection included) right after each attack.
    eprintln!(
        "a visitor's request: {} s",
        got.rsplit('\n').next().unwrap_or("?")
    );
}

/// Each attack of the h2 CVEs is stopped: rapid reset and MadeYouReset end
/// the connection with ENHANCE_YOUR_CALM, a CONTINUATION flood is cut
/// before 1 MiB, streams past 100 are refused, a header list over 64 KiB
/// gets 431; PING and SETTINGS floods and a window that never opens cost
/// the server a bounded amount of memory; other visitors are served
/// throughout.
#[tokio::test]
async fn the_h2_attacks_are_refused_and_cost_bounded_memory() {
    if !python_h2() {
        return;
    }
    let rig = Rig::start().await;
    still_serves(&rig).await;
    let before = memory(&rig.server, "VmRSS:");
    assert!(before > 0);
    // From here the peak counts (a spike freed again counts too).
    tunnel_testkit::procfs::reset_peak(rig.server.child.id().unwrap());

    let said = attack(&rig, "rapid-reset").await;
    assert!(said.starts_with("GOAWAY:ENHANCE_YOUR_CALM"), "{said}");
    still_serves(&rig).await;

    let said = attack(&rig, "made-you-reset").await;
    assert!(said.starts_with("GOAWAY:ENHANCE_YOUR_CALM"), "{said}");
    still_serves(&rig).await;

    let said = attack(&rig, "continuation").await;
    let sent: u64 = said.trim_start_matches("sent ").parse().unwrap();
    assert!(sent < 1 << 20, "the CONTINUATION flood ran to {sent} bytes");
    still_serves(&rig).await;

    let said = attack(&rig, "too-many-streams").await;
    assert_eq!(said, "answered 100 refused 50", "{said}");
    still_serves(&rig).await;

    let said = attack(&rig, "huge-headers").await;
    assert!(said.contains("STATUS:431"), "{said}");
    still_serves(&rig).await;

    for flood in ["ping-flood", "settings-flood", "stalled-window"] {
        attack(&rig, flood).await;
        still_serves(&rig).await;
    }
    let peak = memory(&rig.server, "VmHWM:");
    eprintln!("server RSS {before} KiB before the attacks, peak {peak} KiB during them");
    assert!(
        peak < before + 32 * 1024,
        "the attacks cost {} KiB",
        peak - before
    );
    rig.stop().await;
}

/// A visitor's RST_STREAM cancels the local request: the local service's
/// connection is cut (Node sees it close) instead of running to its end.
#[tokio::test]
async fn a_visitor_reset_cancels_the_local_request() {
    if !python_h2() {
        return;
    }
    let mut rig = Rig::start().await;
    let said = attack(&rig, "cancel").await;
    assert_eq!(said, "reset");
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            let l = rig.origin.line().await;
            if l.contains("closed /slow") {
                return l;
            }
        }
    })
    .await
    .expect("the local request was cut");
    assert_eq!(closed, "closed /slow");
    still_serves(&rig).await;
    rig.stop().await;
}

/// Headless Chromium loads a page of 100 assets through the tunnel: the
/// page and every asset over h2 (the DevTools protocol's
/// `nextHopProtocol`), each asset intact.
#[tokio::test]
async fn chromium_loads_a_page_of_100_assets_over_h2() {
    let rig = Rig::start().await;
    let Some(mut browser) =
        support::cdp::Browser::launch_with(800, 600, &["--ignore-certificate-errors"]).await
    else {
        assert!(
            std::env::var_os("TUNNEL_TEST_REQUIRE_UI").is_none(),
            "chromium is required here (TUNNEL_TEST_REQUIRE_UI is set)"
        );
        eprintln!("SKIPPED: chromium is not installed");
        return;
    };
    browser
        .goto(&format!("https://{}:{}/page", rig.name, rig.https_port))
        .await;
    let nav = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(nav, "h2");
    let intact = browser
        .eval(
            "Promise.all([...Array(100).keys()].map(i => fetch('/asset/' + i).then(r => r.text()) \
               .then(t => t === ('asset ' + i + ';').repeat(1000)))).then(all => all.filter(x => x).length)",
        )
        .await;
    assert_eq!(intact, 100, "assets intact");
    let protocols = browser
        .until(
            "100 resource entries",
            "(() => { const e = performance.getEntriesByType('resource'); \
               return e.length >= 100 && e.map(x => x.nextHopProtocol); })()",
        )
        .await;
    let protocols = protocols.as_array().unwrap();
    assert!(
        protocols.iter().all(|p| p == "h2"),
        "every asset over h2: {protocols:?}"
    );
    browser.close().await;
    rig.stop().await;
}

/// gRPC end to end with grpcio (PyPI) on both sides: a gRPC server behind
/// `--upstream h2c`, called through the https edge (h2 by ALPN) and the
/// plain one (h2c): the four call kinds, an error status with details, a
/// deadline, a 4 MiB message, metadata both ways, and a cancelled
/// streaming call that the local server sees cancelled.
#[tokio::test]
async fn grpc_calls_of_every_kind_over_h2_and_h2c() {
    if !grpcio() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_calls.py");
    let home = tempfile::tempdir().unwrap();
    let mut origin = Proc::spawn(Command::new("python3").args(["-u", script, "serve"]));
    let port = origin.line().await;
    let domain = std::ffi::OsStr::new("--domain");
    let (server, ready) =
        https_server(home.path(), &[domain, std::ffi::OsStr::new("grpc.test")]).await;
    let quic = field(&ready, "quic=");
    let (https, http) = (field(&ready, "https="), field(&ready, "http="));
    let mut client = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &quic, "--subdomain", "api"])
            .args(["http", &format!("127.0.0.1:{port}"), "--allow-http"])
            .args(["--upstream", "h2c"])
            .env("HOME", home.path())
            .env("TUNNEL_STATE_DIR", home.path()),
    );
    let url = client.line().await;
    assert!(url.starts_with("https://api.grpc.test:"), "{url}");
    let ca = home.path().join("cert.pem");
    let port_of = |a: &str| a.rsplit(':').next().unwrap().to_owned();
    for (addr, tls) in [(&https, true), (&http, false)] {
        let authority = format!("api.grpc.test:{}", port_of(addr));
        let mut call = Command::new("python3");
        call.args(["-u", script, "call", addr, &authority]);
        if tls {
            call.arg(&ca);
        }
        let said = output(&mut call).await;
        eprintln!("{said}");
        for kind in [
            "ok unary and metadata both ways",
            "ok server streaming",
            "ok client streaming",
            "ok bidirectional",
            "ok error status with details",
            "ok deadline exceeded",
            "ok 4 MiB message",
            "ok cancelled a streaming call",
        ] {
            assert!(said.contains(kind), "{kind} (tls: {tls}):\n{said}");
        }
        // The local server saw the visitor's cancel.
        let seen = tokio::time::timeout(WAIT, async {
            loop {
                if origin.line().await.contains("endless: cancelled") {
                    return;
                }
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "the cancel did not reach the local service (tls: {tls})"
        );
    }
    // The inspector replays a gRPC call to the HTTP/2 service (as HTTP/2,
    // through the client's pool) and shows its trailers.
    let inspector = Inspector::of(&mut client).await;
    let list = inspector.get("/api/requests").await;
    let mut replayable = None;
    for e in list.as_array().unwrap() {
        if e["path"] != "/t.S/Unary" {
            continue;
        }
        let d = inspector.get(&format!("/api/requests/{}", e["id"])).await;
        let ok = d["response_trailers"]
            .as_str()
            .is_some_and(|t| t.contains("grpc-status: 0"));
        if ok && d["replayable"] == true {
            replayable = Some(d);
            break;
        }
    }
    let original = replayable.expect("a replayable unary call in the inspector");
    let replayed = inspector.replay(&original["id"]).await;
    assert_eq!(replayed["status"], 200, "{replayed}");
    assert!(
        replayed["response_trailers"]
            .as_str()
            .is_some_and(|t| t.contains("grpc-status: 0")),
        "{replayed}"
    );
    assert_eq!(
        replayed["response_body"], original["response_body"],
        "{replayed}"
    );
    for p in [client, server, origin] {
        let _ = p.terminate().await;
    }
}

fn grpcio() -> bool {
    needed(
        "grpcio (pip install grpcio)",
        std::process::Command::new("python3").args(["-c", "import grpc"]),
    )
}

/// The server's drain reaches HTTP/2 visitors: a response in flight when
/// it is told to stop runs to its end (20 ticks over 2 s), and the server
/// exits once it has.
#[tokio::test]
async fn a_drain_lets_an_h2_response_in_flight_finish() {
    let mut rig = Rig::start().await;
    let download = rig.curl(&["--http2"], "/ticks").output();
    let download = tokio::spawn(download);
    // The request reached the app: stop the server now.
    while rig.origin.line().await != "ticking" {}
    let pid = rig.server.child.id().unwrap().to_string();
    assert!(run(&["kill", "-TERM", &pid]).await);
    let out = download.await.unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 20, "{text}");
    assert!(text.ends_with("tick 19\n"), "{text}");
    let status = tokio::time::timeout(WAIT, rig.server.child.wait())
        .await
        .expect("the server exited after the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = rig.client.terminate().await;
    let _ = rig.origin.terminate().await;
}

/// A local HTTP/2 service that resets a stream mid-response: the reset
/// reaches the visitor as a stream error (curl reports it), after the
/// bytes sent before it; the visitor's connection serves the next request.
#[tokio::test]
async fn a_local_reset_reaches_the_visitor() {
    const SCRIPT: &str = r#"
const http2 = require('http2');
const s = http2.createServer();
s.on('stream', (stream, headers) => {
  if (headers[':path'] === '/reset') {
    stream.respond({':status': 200});
    stream.write('partial;');
    stream.on('error', () => {});
    // An error destroys the stream with RST_STREAM INTERNAL_ERROR.
    setTimeout(() => stream.destroy(new Error('boom')), 100);
  } else {
    stream.respond({':status': 200});
    stream.end('whole');
  }
});
s.listen(0, '127.0.0.1', () => console.log(s.address().port));
"#;
    let rig = Rig::with(SCRIPT, &["--upstream", "h2c"]).await;
    let out = rig.curl(&["--http2"], "/reset").output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "curl took a reset stream as whole");
    // curl: "(92) HTTP/2 stream 1 was not closed cleanly: INTERNAL_ERROR".
    assert!(err.contains("not closed cleanly"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partial;");
    let whole = output(&mut rig.curl(&["--http2"], "/whole")).await;
    assert_eq!(whole, "whole");
    rig.stop().await;
}
