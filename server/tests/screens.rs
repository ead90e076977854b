//! What a person sees from the client: the status screen in a real
//! terminal (tmux), the plain lines when stdout is not a terminal, and the
//! inspector in a real browser (headless Chromium, `support::cdp`).

// #[tokio::test] expands to a block_on outside any runtime: allowed in tests.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::bins::*;
use support::*;
use tokio::process::Command;

/// A missing tool skips the test, except where `TUNNEL_TEST_REQUIRE_UI` is
/// set (CI installs both).
fn skip(what: &str) {
    assert!(
        std::env::var_os("TUNNEL_TEST_REQUIRE_UI").is_none(),
        "{what} is required here (TUNNEL_TEST_REQUIRE_UI is set)"
    );
    eprintln!("SKIPPED: {what} is not installed");
}

/// Where the tests put what they saw (the README's pictures come from here).
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `probe` every 50 ms until it gives `Ok`, for up to `WAIT`: a
/// terminal screen and a file written by a shell have no readiness signal
/// to wait on. `Err` carries what was seen, for the failure message.
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) if tokio::time::Instant::now() > deadline => {
                panic!("{what}: not seen in time; last seen:\n{seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The status of `GET path` for `host` on the server's plain listener.
async fn status_of(server: &TestServer, host: &str, path: &str) -> u16 {
    raw_exchange(
        server.http,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await
    .status
}

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    async fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .await
            .is_ok_and(|o| o.status.success())
    }

    async fn new(command: &str, width: u16, height: u16) -> Tmux {
        let socket = format!("tunnel-test-{}", std::process::id());
        let t = Tmux { socket };
        let ok = t
            .run(&[
                "new-session",
                "-d",
                "-s",
                "main",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .await;
        assert!(ok.status.success(), "{ok:?}");
        // Keep the pane (and its last screen) after the client exits.
        t.run(&["set-option", "-t", "main", "remain-on-exit", "on"])
            .await;
        t.run(&["respawn-pane", "-k", "-t", "main", command]).await;
        t
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .await
            .unwrap()
    }

    async fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "main"]).await.stdout)
            .into_owned()
    }

    /// Polls the pane until `ok` holds (the screen redraws on its own).
    async fn until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        poll(what, || async {
            let s = self.screen().await;
            if ok(&s) {
                Ok(s)
            } else {
                Err(s)
            }
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[tokio::test]
async fn the_status_screen_shows_the_tunnel_and_its_requests_and_q_quits() {
    if !Tmux::available().await {
        skip("tmux (apt-get install tmux)");
        return;
    }
    let backend = Backend::start("screen").await;
    let server = TestServer::start().await;
    let exit_file = server.state_dir.path().join("client-exit");
    let command = format!(
        "sh -c '{} --server {} --server-cert {} --subdomain screen --inspect 127.0.0.1:0 http {}; echo $? > {}'",
        client_bin().await.display(),
        server.quic,
        server.state_dir.path().join("cert.pem").display(),
        backend.addr.port(),
        exit_file.display(),
    );
    let tmux = Tmux::new(&command, 100, 30).await;
    let url = format!("http://screen.localhost:{}", server.http.port());
    let first = tmux
        .until("online session", |s| {
            s.contains("Session Status") && s.contains("online") && s.contains(&url)
        })
        .await;
    // Whole, in the wide column (it was cut to "(none ye").
    assert!(first.contains("(none yet)"), "{first}");
    for path in ["/hello", "/hello", "/bytes/2048"] {
        assert_eq!(status_of(&server, "screen.localhost", path).await, 200);
    }
    assert_eq!(status_of(&server, "screen.localhost", "/nope").await, 404);
    let shown = tmux
        .until("the requests", |s| {
            s.contains("/bytes/2048") && s.contains("/nope") && s.matches("/hello").count() == 2
        })
        .await;
    let line = shown.lines().find(|l| l.contains("/nope")).unwrap();
    assert!(
        line.contains("GET") && line.contains("404") && line.contains("ms"),
        "{line}"
    );
    assert!(shown.contains("RTT") && shown.contains(" ms"), "{shown}");
    assert!(
        shown.contains("Web Interface") && shown.contains("http://127.0.0.1:"),
        "{shown}"
    );
    // The connections row: 4 streams so far.
    let counts = shown
        .lines()
        .skip_while(|l| !l.contains("Connections"))
        .nth(1)
        .unwrap();
    assert_eq!(counts.split_whitespace().next(), Some("4"), "{counts}");
    std::fs::write(screenshots().join("status-screen.txt"), &shown).unwrap();

    // The app goes away: three refused dials open the circuit, and the
    // session line says so.
    let port = backend.addr.port();
    backend.stop().await;
    for _ in 0..3 {
        assert_eq!(status_of(&server, "screen.localhost", "/hello").await, 502);
    }
    let open = tmux
        .until("the open circuit", |s| {
            s.contains("circuit open for localhost:")
        })
        .await;
    assert!(
        open.contains(&format!("circuit open for localhost:{port}")),
        "{open}"
    );
    // The refused requests are listed with the 502 the visitor got, not
    // only counted.
    let refused = open
        .lines()
        .filter(|l| l.contains("/hello") && l.contains("502"))
        .count();
    assert!(refused >= 1, "no refused request listed:\n{open}");

    tmux.run(&["send-keys", "-t", "main", "q"]).await;
    // The shell around the client writes its exit status (tmux's own
    // `pane_dead_status` is not reliable here: it may never reap the child).
    let status = poll("the client's exit after q", || async {
        match tokio::fs::read_to_string(&exit_file).await {
            Ok(s) if s.ends_with('\n') => Ok(s),
            _ => Err(tmux.screen().await),
        }
    })
    .await;
    assert_eq!(status.trim(), "0", "the client's exit status");
    // The session ended as a goodbye: the name is offline at once, not held.
    tokio::time::timeout(WAIT, async {
        while !server.registry.sessions().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the session ended");
    drop(tmux);
    server.stop().await;
}

#[tokio::test]
async fn without_a_terminal_the_client_prints_plain_lines_and_back_online() {
    let (backend, server, mut client) = client_process("plain").await;
    let metrics = client.log_until("metrics: http://").await;
    let metrics: std::net::SocketAddr = metrics
        .split("http://")
        .nth(1)
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap()
        .parse()
        .unwrap();
    let url = client.line().await;
    assert_eq!(
        url,
        format!(
            "http://plain.localhost:{} -> http://localhost:{}",
            server.http.port(),
            backend.addr.port()
        )
    );
    // The client's own metrics: the request it forwarded, its connection.
    assert_eq!(status_of(&server, "plain.localhost", "/hello").await, 200);
    let scrape = raw_exchange(
        metrics,
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8(scrape.body).unwrap();
    for line in [
        r#"tunnel_client_requests_total{tunnel="plain.localhost",class="2xx"} 1"#,
        "tunnel_client_online 1",
        "tunnel_client_streams_total 1",
        "tunnel_client_request_duration_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l.trim_end_matches(".0") == line),
            "{line} in:\n{text}"
        );
    }
    assert!(text.contains("tunnel_client_rtt_seconds "), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    // The connection is lost (not a goodbye): the client comes back by itself.
    for s in server.registry.sessions() {
        s.conn
            .close(quinn::VarInt::from_u32(99), b"test: connection lost");
    }
    let back = client.log_until("back online").await;
    assert!(
        back.contains("s offline") && back.contains("http://plain.localhost:"),
        "{back}"
    );
    assert!(
        !back.contains('\u{1b}'),
        "no ANSI codes when stderr is not a terminal: {back:?}"
    );
    let (status, log) = client.terminate().await;
    assert!(status.success(), "{log}");
    server.stop().await;
    backend.stop().await;
}

/// A backend, a server in this process and a client process (no terminal;
/// its inspector on a free port) exposing the backend as `name`.
async fn client_process(name: &'static str) -> (Backend, TestServer, Proc) {
    let backend = Backend::start(name).await;
    let server = TestServer::start().await;
    let client = Proc::spawn(
        client_cmd()
            .await
            .args(["--server", &server.quic.to_string(), "--server-cert"])
            .arg(server.state_dir.path().join("cert.pem"))
            .args(["--metrics", "127.0.0.1:0"])
            .args([
                "--subdomain",
                name,
                "http",
                &backend.addr.port().to_string(),
            ]),
    );
    (backend, server, client)
}

/// The inspector's URL, from the client's log.
async fn inspector_url(client: &mut Proc) -> String {
    let line = client.log_until("inspector: http://").await;
    line.split("inspector: ").nth(1).unwrap().trim().to_owned()
}

/// `document.querySelector(sel).innerText`, or "" while it is absent.
fn text_of(sel: &str) -> String {
    format!("(document.querySelector({sel:?}) || {{innerText: ''}}).innerText")
}

#[tokio::test]
async fn the_inspector_in_a_browser_lists_requests_live_and_replays_them() {
    let Some(mut browser) = support::cdp::Browser::launch(1280, 800).await else {
        skip("chromium (apt-get install chromium)");
        return;
    };
    let (backend, server, mut client) = client_process("inspected").await;
    let inspector = inspector_url(&mut client).await;
    client.line().await; // online

    browser.goto(&inspector).await;
    browser
        .until(
            "the empty list",
            &format!("{}.includes('no requests yet')", text_of("#count")),
        )
        .await;
    // A request made through the tunnel appears without a reload (SSE).
    let r = raw_exchange(
        server.http,
        b"POST /headers?from=browser-test HTTP/1.1\r\nHost: inspected.localhost\r\n\
          Authorization: Bearer s3cret-token\r\nContent-Type: application/json\r\n\
          Content-Length: 13\r\n\r\n{\"answer\":42}",
    )
    .await;
    assert_eq!(r.status, 200);
    browser
        .until(
            "the request in the list",
            "document.querySelectorAll('#list li').length === 1 && \
             document.querySelector('#list li').innerText.includes('/headers?from=browser-test')",
        )
        .await;
    browser
        .eval("document.querySelector('#list li').click()")
        .await;
    let head = browser
        .until("the request's head", &text_of("#original-req-head"))
        .await;
    let head = head.as_str().unwrap();
    assert!(
        head.contains("POST /headers?from=browser-test HTTP/1.1"),
        "{head}"
    );
    assert!(head.contains("X-Forwarded-For: 127.0.0.1"), "{head}");
    assert!(!head.contains("s3cret"), "Authorization is masked: {head}");
    assert!(head.contains("Authorization: •••"), "{head}");
    let body = browser
        .until("the pretty JSON body", &text_of("#original-req-body.json"))
        .await;
    assert_eq!(body, "{\n  \"answer\": 42\n}");
    let shots = screenshots();
    browser.screenshot(&shots.join("inspector.png")).await;

    // Replay: the local service gets the request again, real token included.
    let before = backend.requests.load(std::sync::atomic::Ordering::SeqCst);
    browser
        .eval("document.querySelector('#replay').click()")
        .await;
    let replayed = browser
        .until("the replayed response", &text_of("#replayed-resp-head"))
        .await;
    assert!(
        replayed.as_str().unwrap().starts_with("HTTP/1.1 200"),
        "{replayed}"
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    let echoed = browser.eval(&text_of("#replayed-resp-body")).await;
    let echoed = echoed.as_str().unwrap().to_ascii_lowercase();
    assert!(
        echoed.contains("authorization: bearer s3cret-token"),
        "the replay sent the real value: {echoed}"
    );
    browser
        .until(
            "the replay in the list, marked",
            "document.querySelectorAll('#list li').length === 2 && \
             document.querySelector('#list li').innerText.includes('replay of #')",
        )
        .await;
    browser
        .screenshot(&shots.join("inspector-replay.png"))
        .await;

    // Replay with edits: another path, another body.
    browser
        .eval("document.querySelector('#replay-edit').click()")
        .await;
    browser
        .until(
            "the editor",
            "document.querySelector('#edit').value.startsWith('POST /headers')",
        )
        .await;
    browser
        .eval(
            "(() => { const e = document.querySelector('#edit'); \
             e.value = e.value.replace('POST /headers?from=browser-test', 'PUT /headers?edited=1') \
                              .replace('{\"answer\":42}', 'edited body'); \
             document.querySelector('#send-edit').click(); return true; })()",
        )
        .await;
    let edited = browser
        .until(
            "the edited replay",
            &format!(
                "{}.includes('PUT /headers?edited=1') && {}",
                text_of("#replayed-req-head"),
                text_of("#replayed-resp-head")
            ),
        )
        .await;
    assert!(
        edited.as_str().unwrap().starts_with("HTTP/1.1 200"),
        "{edited}"
    );
    let echoed = browser.eval(&text_of("#replayed-resp-body")).await;
    assert!(
        echoed.as_str().unwrap().contains("PUT /headers?edited=1"),
        "{echoed}"
    );
    assert!(
        echoed.as_str().unwrap().contains("content-length: 11"),
        "re-framed body: {echoed}"
    );

    browser.close().await;
    let (status, log) = client.terminate().await;
    assert!(status.success(), "{log}");
    server.stop().await;
    backend.stop().await;
}

/// Issue 22, item 1: a web page from another origin (here the app's own
/// loopback origin) cannot read the inspector's secrets through DNS
/// rebinding, cannot make it replay a request, and cannot frame it. On the
/// old inspector the `no-cors` POST below replayed the captured request
/// (a second replay in the list) and the rebinding request read the cookie.
#[tokio::test]
async fn another_site_cannot_use_the_inspector() {
    let Some(mut browser) = support::cdp::Browser::launch(800, 600).await else {
        skip("chromium (apt-get install chromium)");
        return;
    };
    let (backend, server, mut client) = client_process("guarded").await;
    let inspector = inspector_url(&mut client).await;
    let addr: std::net::SocketAddr = inspector.trim_start_matches("http://").parse().unwrap();
    client.line().await; // online
    let r = raw_exchange(
        server.http,
        b"GET /headers HTTP/1.1\r\nHost: guarded.localhost\r\nCookie: session=victim-cookie\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let list = poll("the exchange in the inspector", || async {
        let r = raw_exchange(
            addr,
            format!("GET /api/requests HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        match v[0]["id"].as_u64() {
            Some(id) => Ok((id, r.head)),
            None => Err(format!("{v}")),
        }
    })
    .await;
    let (id, head) = list;
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");

    // DNS rebinding: the attacker's name resolves to 127.0.0.1.
    let rebound = raw_exchange(
        addr,
        format!(
            "GET /api/requests/{id}?secrets=1 HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(rebound.status, 421, "{rebound:?}");
    assert!(!String::from_utf8_lossy(&rebound.body).contains("victim-cookie"));

    // A page of another loopback origin fires a simple cross-origin POST
    // (text/plain, no-cors: no preflight) and an edited one with a preflight.
    browser
        .goto(&format!("http://{}/hello", backend.addr))
        .await;
    let sent = browser
        .eval(&format!(
            "(async () => {{ \
               await fetch('{inspector}/api/requests/{id}/replay', {{method: 'POST', mode: 'no-cors', \
                 headers: {{'Content-Type': 'text/plain'}}, body: ''}}); \
               try {{ await fetch('{inspector}/api/requests/{id}/replay', {{method: 'POST', \
                 headers: {{'X-Tunnel-Inspector': '1'}}, body: 'DELETE /x HTTP/1.1\\nHost: a\\n\\n'}}); \
                 return 'read'; }} catch (e) {{ return 'blocked'; }} \
             }})()"
        ))
        .await;
    assert_eq!(sent, "blocked", "CORS must refuse the preflighted request");
    // The inspector's own page still replays (and the app counts that one).
    browser.goto(&inspector).await;
    let own = browser
        .eval(&format!(
            "(async () => (await fetch('/api/requests/{id}/replay', {{method: 'POST', \
               headers: {{'X-Tunnel-Inspector': '1'}}, body: ''}})).status)()"
        ))
        .await;
    assert_eq!(own, 200);
    // Every replay is recorded, marked as one: only the page's own is there.
    // (The app's request count would also see the browser's favicon.)
    let list = raw_exchange(
        addr,
        format!("GET /api/requests HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let replays = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["replay_of"].as_u64() == Some(id))
        .count();
    assert_eq!(replays, 1, "only the inspector's own page replayed: {list}");
    // Masked by pattern, not by a fixed list.
    let detail = raw_exchange(
        addr,
        format!(
            "GET /api/requests/{id} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(detail.status, 200);
    let detail: serde_json::Value = serde_json::from_slice(&detail.body).unwrap();
    let head = detail["request_head"].as_str().unwrap();
    assert!(
        !head.contains("victim-cookie") && head.contains("Cookie: •••"),
        "{head}"
    );

    browser.close().await;
    let (status, log) = client.terminate().await;
    assert!(status.success(), "{log}");
    server.stop().await;
    backend.stop().await;
}
