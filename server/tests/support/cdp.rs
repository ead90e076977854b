//! A headless Chromium driven over the DevTools protocol (CDP): enough to
//! load a page, read and click its elements, and take screenshots. Our own
//! small driver (a WebSocket and JSON), so the tests need nothing but
//! Debian's `chromium`.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::WAIT;

pub struct Browser {
    child: Child,
    ws: WebSocketStream<TcpStream>,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

/// The browser binary: `$CHROMIUM`, else the first of Debian's names found.
fn binary() -> Option<String> {
    if let Ok(b) = std::env::var("CHROMIUM") {
        return Some(b);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).exists()))
        })
        .map(str::to_owned)
}

impl Browser {
    /// Starts a headless browser with an empty page; `None` when none is
    /// installed.
    pub async fn launch(width: u32, height: u32) -> Option<Browser> {
        Browser::launch_with(width, height, &[]).await
    }

    /// [`launch`](Self::launch) with more command-line flags.
    pub async fn launch_with(width: u32, height: u32, extra: &[&str]) -> Option<Browser> {
        let bin = binary()?;
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Ok(Some(l)) = err.next_line().await {
                if let Some(u) = l.strip_prefix("DevTools listening on ") {
                    return Some(u.trim().to_owned());
                }
            }
            None
        })
        .await
        .expect("chromium printed its DevTools address")
        .expect("chromium started");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
        let addr = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_owned();
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next: 0,
            _profile: profile,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b.call("Page.enable", json!({})).await;
        Some(b)
    }

    /// One command (on the page's session once attached); its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        tokio::time::timeout(WAIT, async {
            while let Some(m) = self.ws.next().await {
                let Ok(Message::Text(t)) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == json!(id) {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
            }
            panic!("the browser closed the DevTools connection");
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer in time"))
    }

    /// Evaluates `expr` in the page (promises awaited); its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (the page updates on its own).
    pub async fn until(&mut self, what: &str, expr: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.eval(expr).await;
            let truthy =
                !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("{what}: not seen in time; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.until(
            "the page loaded",
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        )
        .await;
    }

    /// Saves a PNG of the page.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.child.kill().await;
    }
}
