//! `ron node` as a user runs it: a real process on 127.0.0.1, probed over HTTP.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{BIN, Node};
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

#[tokio::test]
async fn admin_endpoints_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;

    assert_eq!(node.get("/healthz").await, (200, "ok\n".to_owned()));
    let status = node
        .wait_status("services running", |s| {
            s["services"]["gateway"]["state"] == "running"
                && s["services"]["config"]["state"] == "running"
        })
        .await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["config"]["version"], 1);
    assert!(status["uptime_s"].is_u64());

    assert_eq!(
        node.get("/readyz").await,
        (
            200,
            r#"{"degraded":false,"reads":true,"writes":true}"#.to_owned()
        )
    );
    assert_eq!(node.get("/readyz?writes=1").await.0, 200);

    let (code, metrics) = node.get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "bus_lagged_total 0",
        "bus_overflow_dropped_total 0",
        "config_version 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // Every family has HELP and TYPE.
    let types: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for family in &types {
        assert!(
            metrics.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
    }
    for family in [
        "bus_lagged",
        "bus_overflow_dropped",
        "service_restarts",
        "request_latency_seconds",
        "rejected",
    ] {
        assert!(types.contains(&family), "{family} not exported: {types:?}");
    }

    let (code, body) = node.get("/no/such/route").await;
    assert_eq!(code, 404);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "not_found");
    let (code, body) = node.get("/o/nothing-here").await;
    assert_eq!(code, 400);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "bad_input");
}

/// Waits until the node reports a refused config reload naming `needle`.
async fn wait_refusal(node: &Node, needle: &str) -> Value {
    node.wait_status(needle, |s| {
        s["config"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(needle))
    })
    .await
}

#[tokio::test]
async fn config_edits_apply_live_and_bad_ones_keep_the_running_version() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("ron.toml");
    std::fs::write(&file, "[gateway]\nrequest_timeout_ms = 5000\n").unwrap();
    let node = Node::start(dir.path(), &[]).await;
    node.wait_status("config service running", |s| {
        s["services"]["config"]["state"] == "running"
    })
    .await;

    // A valid edit bumps the version. The watcher may still be starting: rewrite until seen.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut timeout_ms = 6000;
    loop {
        std::fs::write(
            &file,
            format!("[gateway]\nrequest_timeout_ms = {timeout_ms}\n[log]\nlevel = \"debug\"\n"),
        )
        .unwrap();
        sleep(Duration::from_millis(500)).await;
        if node.status().await["config"]["version"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "config edit never applied");
        timeout_ms += 1;
    }

    // An invalid value: refused by field name, version unchanged, node alive.
    std::fs::write(&file, "[gateway]\nrequest_timeout_ms = \"soon\"\n").unwrap();
    let s = wait_refusal(&node, "gateway.request_timeout_ms").await;
    assert_eq!(s["config"]["version"], 2);
    assert_eq!(node.get("/healthz").await.0, 200);

    // An unknown section is refused too.
    std::fs::write(&file, "[gatewya]\nrequest_timeout_ms = 1\n").unwrap();
    wait_refusal(&node, "gatewya").await;

    // A setting that cannot change live is refused by name.
    std::fs::write(&file, "[kernel]\nbus_capacity = 16\n").unwrap();
    let s = wait_refusal(&node, "kernel.bus_capacity").await;
    assert_eq!(s["config"]["version"], 2);

    // Fixing the file applies it.
    std::fs::write(&file, "[gateway]\nrequest_timeout_ms = 7000\n").unwrap();
    node.wait_status("version 3", |s| {
        s["config"]["version"] == 3 && s["config"]["last_error"].is_null()
    })
    .await;
    let (_, metrics) = node.get("/metrics").await;
    assert!(metrics.contains("config_version 3"), "{metrics}");
    assert!(
        metrics.contains(r#"config_rejected_total{field="gateway.request_timeout_ms"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    node.wait_status("running", |s| {
        s["services"]["gateway"]["state"] == "running"
    })
    .await;
    node.signal("-TERM");
    let status = timeout(Duration::from_secs(30), node.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Stopped accepting: the port no longer answers.
    assert!(reqwest::get(format!("{}/healthz", node.url)).await.is_err());
}

async fn run_fail(args: &[&str], dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn bad_start_up_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gateway]\nrequest_timeout_ms = 0\n").unwrap();
    let d = dir.path().join("data");
    let d = d.to_str().unwrap();

    let err = run_fail(
        &[
            "node",
            "--gateway",
            "127.0.0.1:0",
            "--data-dir",
            d,
            "--config",
            bad.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ron: error: ") && err.contains("gateway.request_timeout_ms"),
        "{err}"
    );

    let err = run_fail(
        &[
            "node",
            "--gateway",
            "127.0.0.1:0",
            "--data-dir",
            d,
            "--config",
            "/nonexistent/ron.toml",
        ],
        dir.path(),
    )
    .await;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/ron.toml"), "{err}");

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = run_fail(&["node", "--gateway", &addr, "--data-dir", d], dir.path()).await;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
}

#[tokio::test]
async fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("ron {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN)
        .args(["node", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--gateway", "--data-dir", "--config"] {
        assert!(help.contains(flag), "{help}");
    }
}

/// SIGTERM while uploads stream in: the node stops accepting, the uploads in flight go on
/// until the drain's deadline, and each one either completed (answered 201, and there after a
/// restart, byte for byte) or was refused (an error, or its connection cut at the deadline,
/// and never answered 201): nothing is acknowledged that is not stored.
#[tokio::test]
async fn uploads_in_flight_at_sigterm_complete_or_are_refused_never_half_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // A short drain, so the slowest uploads outlast it.
    support::config(&data_dir, "[node]\nshutdown_deadline_ms = 1500\n");
    let mut node = Node::start(&data_dir, &[]).await;
    const PIECE: usize = 64 << 10;
    let mut uploads = Vec::new();
    for i in 0..8u64 {
        let bytes = bytes::Bytes::from(support::data(4 << 20, 100 + i));
        let addr = format!("b3:{}", blake3::hash(&bytes).to_hex());
        // 64 pieces, 5 ms apart for the first upload up to 40 ms for the last: 0.3 to 2.6 s.
        let pause = Duration::from_millis(5 * (i + 1));
        let pieces = futures_util::stream::unfold(0usize, {
            let bytes = bytes.clone();
            move |at| {
                let bytes = bytes.clone();
                async move {
                    if at >= bytes.len() {
                        return None;
                    }
                    sleep(pause).await;
                    let end = (at + PIECE).min(bytes.len());
                    Some((Ok::<_, std::io::Error>(bytes.slice(at..end)), end))
                }
            }
        });
        let request = node
            .http
            .post(format!("{}/put", node.url))
            .body(reqwest::Body::wrap_stream(pieces));
        uploads.push((
            addr,
            bytes,
            tokio::spawn(async move {
                let res = request.send().await?;
                let status = res.status().as_u16();
                Ok::<_, reqwest::Error>((status, res.text().await.unwrap_or_default()))
            }),
        ));
    }
    sleep(Duration::from_millis(150)).await;
    node.signal("-TERM");
    let exit = timeout(Duration::from_secs(30), node.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let node = Node::start(&data_dir, &[]).await;
    let (mut completed, mut refused) = (0, 0);
    for (addr, bytes, upload) in uploads {
        let (status, got) = node.get_bytes(&format!("/o/{addr}")).await;
        match upload.await.unwrap() {
            Ok((201, body)) => {
                completed += 1;
                assert!(body.contains(&addr), "{body}");
                assert_eq!(status, 200, "{addr} was acknowledged: it is stored");
                assert!(got == bytes, "{addr} reads back byte for byte");
            }
            outcome => {
                refused += 1;
                if let Ok((code, body)) = &outcome {
                    assert!(*code >= 400, "{code} {body}");
                    assert!(
                        body.contains("\"code\""),
                        "a refusal in the shared shape: {body}"
                    );
                }
                // Never acknowledged: not there, or (cut after its commit) there whole.
                assert!(status == 404 || got == bytes, "{addr}: {status}");
            }
        }
    }
    assert!(completed >= 1, "the quick uploads finish within the drain");
    assert!(refused >= 1, "the slow ones are cut at the deadline");
    assert_eq!(
        std::fs::read_dir(data_dir.join("store").join("tmp"))
            .unwrap()
            .count(),
        0
    );
    println!("SIGTERM during 8 uploads: {completed} completed, {refused} refused");
}
