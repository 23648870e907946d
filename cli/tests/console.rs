//! The web console in a real browser: headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it), driven over the DevTools protocol. The console shows the node id and an
//! object put before; a file chosen in its file input is stored under `b3sum`'s address; an
//! uploaded HTML page opened at `/o/…` can neither read the console's token nor read
//! `/status` nor store anything. A screenshot is kept as `console.png` in the target dir.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Node, b3sum, ok_stdout};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium and one page of it, spoken to over the DevTools protocol.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Browser {
    async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1300,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is installed (apt-get install chromium; .ci/run does it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let browser_ws = timeout(Duration::from_secs(30), async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("chromium's DevTools line");
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
        })
        .await
        .expect("chromium started in time");
        // Keep draining its stderr.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = browser_ws
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let (ws, _) =
            tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap())
                .await
                .unwrap();
        let mut browser = Browser {
            _child: child,
            _profile: profile,
            ws,
            next: 0,
        };
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// One DevTools command and its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        timeout(Duration::from_secs(30), async {
            loop {
                let Some(Ok(Message::Text(text))) = self.ws.next().await else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} answered in time"))
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy (bounded: 30 s); its value.
    async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(expression).await;
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }
}

fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target).unwrap();
    target.join("console.png")
}

/// An uploaded page that tries to act with the node's authority; it reports what it managed
/// in its title.
const EVIL: &str = r#"<!doctype html><title>running</title><script>
(async () => {
  const out = {};
  try { out.storage = sessionStorage.getItem("ron_token") === null ? "empty" : "READ"; }
  catch (e) { out.storage = "blocked"; }
  try { const r = await fetch("/status"); await r.text(); out.status = "READ"; }
  catch (e) { out.status = "blocked"; }
  try {
    const r = await fetch("/put", {method: "POST", body: "planted by a page"});
    out.put = "answered " + r.status;
  } catch (e) { out.put = "blocked"; }
  document.title = JSON.stringify(out);
})();
</script>"#;

#[tokio::test]
async fn the_console_shows_the_node_uploads_and_user_pages_stay_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n"), &[]).await;
    let before = node.put(b"put before the console opened".to_vec()).await;
    let evil = {
        let res = node
            .http
            .post(format!("{}/put", node.url))
            .header("content-type", "text/html")
            .body(EVIL)
            .send()
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        v["address"].as_str().unwrap().to_owned()
    };
    let node_id = node.status().await["node_id"].as_str().unwrap().to_owned();
    let url = ok_stdout(&node.cli(&["console", "--no-open"]).await);
    assert!(url.starts_with(&format!("{}/#token=", node.url)), "{url}");

    let mut browser = Browser::start().await;
    browser.goto(&url).await;
    let shown = browser
        .wait_for(
            "the node id",
            &format!("document.getElementById('node-id').textContent === '{node_id}'"),
        )
        .await;
    assert_eq!(shown, true);
    browser
        .wait_for(
            "the object put before",
            &format!("!!document.querySelector('tr[data-address=\"{before}\"]')"),
        )
        .await;
    // The token left the address bar; it lives in this tab's session storage.
    let href = browser.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains("token"), "{href}");

    // An upload through the page's file input.
    let file = dir.path().join("from the browser.txt");
    std::fs::write(&file, "uploaded by headless chromium\n".repeat(1000)).unwrap();
    let doc = browser.call("DOM.getDocument", json!({})).await;
    let input = browser
        .call(
            "DOM.querySelector",
            json!({"nodeId": doc["root"]["nodeId"], "selector": "#file"}),
        )
        .await;
    browser
        .call(
            "DOM.setFileInputFiles",
            json!({"nodeId": input["nodeId"], "files": [file.to_str().unwrap()]}),
        )
        .await;
    let stored = browser
        .wait_for(
            "the uploaded file's address",
            "document.querySelector('#uploads li[data-address]')?.getAttribute('data-address')",
        )
        .await;
    let stored = stored.as_str().unwrap().to_owned();
    assert_eq!(stored, b3sum(&file));
    assert_eq!(node.get(&format!("/o/{stored}")).await.0, 200);
    browser
        .wait_for(
            "the new object in the list",
            &format!("!!document.querySelector('tr[data-address=\"{stored}\"]')"),
        )
        .await;
    let shot = browser
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(screenshot_path(), png).unwrap();

    // A stored page, opened in the same tab: no token, no reads, no writes.
    let objects_before = node.status().await["storage"]["objects"].as_u64().unwrap();
    browser.goto(&format!("{}/o/{evil}", node.url)).await;
    let title = browser
        .wait_for(
            "the page's report",
            "document.title.startsWith('{') ? document.title : ''",
        )
        .await;
    let report: Value = serde_json::from_str(title.as_str().unwrap()).unwrap();
    assert_eq!(report["storage"], "blocked", "{report}");
    assert_eq!(report["status"], "blocked", "{report}");
    assert_ne!(report["put"], "answered 201", "{report}");
    assert_eq!(
        node.status().await["storage"]["objects"].as_u64().unwrap(),
        objects_before,
        "the page stored nothing"
    );
}
