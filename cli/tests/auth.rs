//! Capabilities end to end: the owner's first run, `ron key` and `ron cap`, and every 401,
//! 403 and 429 through the CLI, reqwest and curl.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{BIN, Node, data, ok_stdout};
use tokio::process::Command;
use tokio::time::{Instant, sleep};

/// `curl -s -o - -w '\n%{http_code}'` with extra args; returns (status, body, headers).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "/dev/stderr", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).to_lowercase(),
    )
}

/// Runs `ron` with only the given environment (no token found by accident).
async fn ron(node: &Node, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RON_NODE", &node.url)
        .env_remove("RON_TOKEN")
        .env("RON_DATA_DIR", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

/// One line on stderr with the code and status, and a failing exit.
fn refused(out: &std::process::Output, code: &str, status: u16) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(code) && err.contains(&format!("HTTP {status}")),
        "{err}"
    );
}

async fn mint(node: &Node, args: &[&str]) -> String {
    let data_dir = node.data_dir.to_str().unwrap();
    let mut all = vec!["cap", "mint", "--data-dir", data_dir];
    all.extend_from_slice(args);
    ok_stdout(&ron(node, &all, &[]).await)
}

async fn put_with(node: &Node, token: Option<&str>, bytes: Vec<u8>) -> (u16, Value, String) {
    let mut req = node
        .anonymous()
        .post(format!("{}/put", node.url))
        .body(bytes);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body, retry)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn first_run_gives_the_owner_a_token_and_strangers_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir, &[]).await;
    for secret in ["owner.token", "identity.key"] {
        assert_eq!(mode(&data_dir.join(secret)), 0o600, "{secret}");
    }
    for key in std::fs::read_dir(data_dir.join("keys")).unwrap() {
        assert_eq!(mode(&key.unwrap().path()), 0o600);
    }

    // The owner: `ron put` finds owner.token in the data dir, no flags.
    let file = dir.path().join("f");
    std::fs::write(&file, data(100_000, 1)).unwrap();
    let owner_env = [("RON_DATA_DIR", data_dir.to_str().unwrap())];
    let addr = ok_stdout(&ron(&node, &["put", file.to_str().unwrap()], &owner_env).await);
    assert!(addr.starts_with("b3:"));
    ok_stdout(&ron(&node, &["pin", &addr], &owner_env).await);
    // ... and through ./ron-data in the working directory.
    let out = Command::new(BIN)
        .args(["unpin", &addr])
        .env("RON_NODE", &node.url)
        .env_remove("RON_TOKEN")
        .env_remove("RON_DATA_DIR")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "no ./ron-data here yet");
    std::fs::rename(&data_dir, dir.path().join("ron-data")).unwrap();
    let out = Command::new(BIN)
        .args(["unpin", &addr])
        .env("RON_NODE", &node.url)
        .env_remove("RON_TOKEN")
        .env_remove("RON_DATA_DIR")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    ok_stdout(&out);
    std::fs::rename(dir.path().join("ron-data"), &data_dir).unwrap();

    // A stranger: refused by the CLI with one line, by curl with 401 + WWW-Authenticate.
    refused(
        &ron(&node, &["put", file.to_str().unwrap()], &[]).await,
        "unauthorized",
        401,
    );
    refused(&ron(&node, &["pin", &addr], &[]).await, "unauthorized", 401);
    let url = format!("{}/put", node.url);
    let (status, body, headers) = curl(&["-X", "POST", "--data-binary", "x", &url]);
    assert_eq!(status, 401);
    assert!(headers.contains("www-authenticate: bearer"), "{headers}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "unauthorized");
    let (status, _, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "authorization: Basic dXNlcjpwYXNz",
        "--data-binary",
        "x",
        &url,
    ]);
    assert_eq!(status, 401);
    // Reads stay open.
    let (status, _, _) = curl(&[&format!("{}/o/{addr}", node.url)]);
    assert_eq!(status, 200);
    // The owner through curl.
    let (status, body, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("authorization: Bearer {}", node.token),
        "--data-binary",
        "owner",
        &url,
    ]);
    assert_eq!(status, 201, "{body}");
    assert!(
        node.get("/metrics")
            .await
            .1
            .contains("rejected_total{reason=\"unauthorized\"} 5")
    );
}

#[tokio::test]
async fn bad_tokens_are_401_and_narrow_ones_403() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let node_id = ok_stdout(&ron(&node, &["key", "show", "--node"], &[]).await);
    assert_eq!(node.status().await["node_id"], node_id.as_str());
    assert!(node_id.starts_with("12D3KooW"));

    // Tampered: one character of the owner's token changed.
    let mut tampered = node.token.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), "not-a-token", "x"] {
        let (status, body, _) = put_with(&node, Some(bad), b"x".to_vec()).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    }
    // Expired.
    let short = mint(&node, &["--ttl", "1s"]).await;
    sleep(Duration::from_millis(2100)).await;
    let (status, body, _) = put_with(&node, Some(&short), b"x".to_vec()).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // Method, path, audience: valid tokens that do not allow this are 403.
    let get_only = mint(&node, &["--method", "get", "--method", "stat"]).await;
    let pin_one = mint(&node, &["--path", "/pin/b3:0000"]).await;
    let elsewhere = mint(
        &node,
        &[
            "--audience",
            "12D3KooWA1B2C3D4E5F6G7H8J9K1L2M3N4P5Q6R7S8T9U1V2W3X4",
        ],
    )
    .await;
    for token in [&get_only, &pin_one, &elsewhere] {
        let (status, body, _) = put_with(&node, Some(token), b"x".to_vec()).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    }
    let file = dir.path().join("f");
    std::fs::write(&file, b"hello").unwrap();
    refused(
        &ron(
            &node,
            &["put", "--token", &get_only, file.to_str().unwrap()],
            &[],
        )
        .await,
        "forbidden",
        403,
    );
    // The right audience and method work.
    let mine = mint(
        &node,
        &["--audience", &node_id, "--method", "put", "--ttl", "1h"],
    )
    .await;
    let out = ron(
        &node,
        &["put", file.to_str().unwrap()],
        &[("RON_TOKEN", &mine)],
    )
    .await;
    assert!(ok_stdout(&out).starts_with("b3:"));

    // Byte budget: 1000 bytes in total, whatever the number of uploads.
    let budget = mint(&node, &["--max-bytes", "1000"]).await;
    let (status, _, _) = put_with(&node, Some(&budget), data(600, 2)).await;
    assert_eq!(status, 201);
    let (status, body, _) = put_with(&node, Some(&budget), data(600, 3)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    assert!(
        body["message"].as_str().unwrap().contains("budget"),
        "{body}"
    );
    // A chunked upload (no length) is cut off as it passes the budget; nothing is stored.
    let stream = futures_util::stream::iter(
        (0..4).map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(data(200, 10 + i)))),
    );
    let res = node
        .anonymous()
        .post(format!("{}/put", node.url))
        .bearer_auth(&budget)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let (status, _, _) = put_with(&node, Some(&budget), data(400, 4)).await;
    assert_eq!(status, 201, "the refused uploads were refunded");

    // An attenuated token (offline) narrows: owner -> put only -> refused for pin.
    let narrowed = ok_stdout(
        &ron(
            &node,
            &[
                "cap",
                "attenuate",
                &node.token,
                "--method",
                "put",
                "--ttl",
                "5m",
            ],
            &[],
        )
        .await,
    );
    let (status, _, _) = put_with(&node, Some(&narrowed), b"narrow".to_vec()).await;
    assert_eq!(status, 201);
    let res = node
        .anonymous()
        .post(format!("{}/pin/b3:{}", node.url, "0".repeat(64)))
        .bearer_auth(&narrowed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let inspected = ok_stdout(&ron(&node, &["cap", "inspect", &narrowed], &[]).await);
    assert_eq!(inspected.matches("revocation id").count(), 2, "{inspected}");
    assert!(inspected.contains("operation($op)"), "{inspected}");
    let metrics = node.get("/metrics").await.1;
    assert!(metrics.contains("rejected_total{reason=\"forbidden\"}"));
}

#[tokio::test]
async fn rate_caveats_are_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let token = mint(&node, &["--rate", "2/1h"]).await;
    for i in 0..2 {
        let (status, _, _) = put_with(&node, Some(&token), data(10, i)).await;
        assert_eq!(status, 201);
    }
    let (status, body, retry) = put_with(&node, Some(&token), data(10, 9)).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    let ms = body["retry_after_ms"].as_u64().unwrap();
    assert!((1_700_000..=1_800_000).contains(&ms), "{ms}");
    assert_eq!(retry, ms.div_ceil(1000).to_string());
    let file = dir.path().join("f");
    std::fs::write(&file, b"more").unwrap();
    refused(
        &ron(
            &node,
            &["put", "--token", &token, file.to_str().unwrap()],
            &[],
        )
        .await,
        "rate_limited",
        429,
    );
    // Through curl: the header a client backs off by.
    let (status, _, headers) = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("authorization: Bearer {token}"),
        "--data-binary",
        "x",
        &format!("{}/put", node.url),
    ]);
    assert_eq!(status, 429);
    assert!(headers.contains("retry-after: "), "{headers}");
}

#[tokio::test]
async fn revocation_and_trusted_roots_apply_live() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let config = data_dir.join("ron.toml");
    std::fs::write(&config, "").unwrap();
    let node = Node::start(&data_dir, &[]).await;
    node.wait_status("config service running", |s| {
        s["services"]["config"]["state"] == "running"
    })
    .await;

    // A user key the node does not trust yet.
    let user_key = dir.path().join("user.key");
    let user_pub = ok_stdout(
        &ron(
            &node,
            &["key", "gen", "--out", user_key.to_str().unwrap()],
            &[],
        )
        .await,
    );
    assert_eq!(mode(&user_key), 0o600);
    assert_eq!(
        ok_stdout(&ron(&node, &["key", "show", user_key.to_str().unwrap()], &[]).await),
        user_pub
    );
    let user_token = ok_stdout(
        &ron(
            &node,
            &[
                "cap",
                "mint",
                "--key",
                user_key.to_str().unwrap(),
                "--method",
                "put",
            ],
            &[],
        )
        .await,
    );
    let (status, _, _) = put_with(&node, Some(&user_token), b"u".to_vec()).await;
    assert_eq!(status, 401, "untrusted root");

    // Trust it (the watcher may still be starting: rewrite until the version moves).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::fs::write(
            &config,
            format!("[auth]\ntrusted_roots = [\"{user_pub}\"]\n"),
        )
        .unwrap();
        sleep(Duration::from_millis(300)).await;
        if put_with(&node, Some(&user_token), b"u".to_vec()).await.0 == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "trusted root never applied");
    }

    // Revoke it: refused once the file changes (measured; bounded at 10 s).
    let ids = ok_stdout(&ron(&node, &["cap", "inspect", &user_token], &[]).await);
    let id = ids
        .lines()
        .find_map(|l| l.split_once("revocation id ").map(|(_, id)| id.trim()))
        .unwrap()
        .to_owned();
    let (status, _, _) = put_with(&node, Some(&node.token), b"before".to_vec()).await;
    assert_eq!(status, 201);
    std::fs::write(
        &config,
        format!("[auth]\ntrusted_roots = [\"{user_pub}\"]\nrevoked = [\"{id}\"]\n"),
    )
    .unwrap();
    let changed = Instant::now();
    loop {
        let (status, body, _) = put_with(&node, Some(&user_token), b"u2".to_vec()).await;
        if status == 401 {
            assert!(body["message"].as_str().unwrap().contains("revoked"));
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "revocation never applied"
        );
        sleep(Duration::from_millis(10)).await;
    }
    println!(
        "revocation applied {} ms after the file changed",
        changed.elapsed().as_millis()
    );
    // The owner is unaffected.
    let (status, _, _) = put_with(&node, Some(&node.token), b"after".to_vec()).await;
    assert_eq!(status, 201);

    // anonymous_put opens writes on purpose.
    std::fs::write(&config, "[auth]\nanonymous_put = true\n").unwrap();
    let changed = Instant::now();
    while put_with(&node, None, b"anon".to_vec()).await.0 != 201 {
        assert!(changed.elapsed() < Duration::from_secs(10));
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rotation_keeps_old_tokens_in_grace_and_renews_the_owner_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir, &[]).await;
    let before = node.status().await["auth"]["signing_key"]["id"].clone();
    let old_owner = node.token.clone();
    let old_minted = mint(&node, &["--method", "put"]).await;

    let out = ron(
        &node,
        &["key", "rotate", "--data-dir", data_dir.to_str().unwrap()],
        &[],
    )
    .await;
    let new_public = ok_stdout(&out);
    let new_owner = std::fs::read_to_string(data_dir.join("owner.token"))
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(new_owner, old_owner, "owner.token renewed");
    // The running node picks the key up within its key check (5 s).
    let status = node
        .wait_status("new signing key", |s| {
            s["auth"]["signing_key"]["id"] != before
        })
        .await;
    assert_eq!(
        status["auth"]["signing_key"]["public_key"],
        new_public.as_str()
    );
    for (i, token) in [&old_owner, &old_minted, &new_owner]
        .into_iter()
        .enumerate()
    {
        let (status, _, _) = put_with(&node, Some(token), data(10, 70 + i as u64)).await;
        assert_eq!(
            status, 201,
            "tokens of the retired key work during the grace window"
        );
    }
    let fresh = mint(&node, &[]).await;
    let seen = ok_stdout(&ron(&node, &["cap", "inspect", &fresh], &[]).await);
    let new_id = status["auth"]["signing_key"]["id"].to_string();
    assert!(seen.contains(&format!("root key id: {new_id}")), "{seen}");
}

#[tokio::test]
async fn key_and_cap_commands_refuse_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "ed25519-private/zz").unwrap();
    for args in [
        vec!["key", "show", bad_key.to_str().unwrap()],
        vec!["key", "show"],
        vec!["cap", "inspect", "garbage"],
        vec!["cap", "attenuate", "garbage", "--ttl", "1m"],
        vec!["cap", "attenuate", &node.token],
        vec![
            "cap",
            "mint",
            "--rate",
            "0/1s",
            "--data-dir",
            node.data_dir.to_str().unwrap(),
        ],
        vec!["cap", "mint", "--method", "delete"],
        vec!["cap", "mint", "--data-dir", "/nonexistent"],
    ] {
        let out = ron(&node, &args, &[]).await;
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = ron(&node, &["key", "gen"], &[]).await;
    let secret = ok_stdout(&out);
    assert!(secret.starts_with("ed25519-private/"));
}

/// A CPU profile of the node, only for a token that allows `profile`: pprof's protobuf, one
/// at a time, the length bounded.
#[tokio::test]
async fn a_cpu_profile_needs_a_token_that_allows_it() {
    use pprof::protos::Message;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let mint = |method: &'static str| {
        let node = &node;
        async move {
            ok_stdout(
                &node
                    .cli(&[
                        "cap",
                        "mint",
                        "--method",
                        method,
                        "--data-dir",
                        node.data_dir.to_str().unwrap(),
                    ])
                    .await,
            )
        }
    };
    let (profiler, reader) = (mint("profile").await, mint("get").await);
    let url = |seconds: u64| format!("{}/debug/pprof/profile?seconds={seconds}", node.url);
    let status = |token: Option<String>, seconds: u64| {
        let (client, url) = (node.anonymous(), url(seconds));
        async move {
            let mut req = client.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(status(None, 1).await, 401);
    assert_eq!(status(Some(reader.clone()), 1).await, 403);
    assert_eq!(status(Some(profiler.clone()), 0).await, 400);
    assert_eq!(status(Some(profiler.clone()), 61).await, 400);

    // While one is taken, another is refused; the node keeps serving meanwhile.
    let taking = tokio::spawn({
        let (client, url, token) = (node.anonymous(), url(2), profiler.clone());
        async move {
            let res = client.get(url).bearer_auth(token).send().await.unwrap();
            (res.status().as_u16(), res.bytes().await.unwrap())
        }
    });
    sleep(Duration::from_millis(500)).await;
    assert_eq!(status(Some(profiler.clone()), 1).await, 409);
    for i in 0..20 {
        node.put(data(64 << 10, 300 + i)).await;
    }
    let (code, body) = taking.await.unwrap();
    assert_eq!(code, 200);
    let profile = pprof::protos::Profile::decode(&body[..]).expect("a pprof protobuf");
    assert!(!profile.sample_type.is_empty(), "{profile:?}");
    assert!(
        profile
            .string_table
            .iter()
            .any(|s| s == "cpu" || s == "samples"),
        "{:?}",
        &profile.string_table[..profile.string_table.len().min(10)]
    );
    assert!(
        profile.duration_nanos >= 2_000_000_000,
        "{}",
        profile.duration_nanos
    );

    // `ron profile` writes one with the owner's token.
    let out = dir.path().join("ron.pprof");
    let run = node
        .cli(&["profile", "--seconds", "1", "-o", out.to_str().unwrap()])
        .await;
    assert!(ok_stdout(&run).contains("go tool pprof"));
    assert!(pprof::protos::Profile::decode(&std::fs::read(&out).unwrap()[..]).is_ok());
}

/// Secrets never reach the log: at trace level for the node's own crates (debug for the
/// libraries), a node given good, forged and refused
/// tokens, asked to grant credits and to take uploads and reads, logs none of its tokens
/// (nor their first 24 characters) and neither of its secret keys.
#[tokio::test]
async fn secrets_never_appear_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let filter = "debug,ron=trace,ron_auth=trace,ron_transport=trace,ron_kernel=trace,\
                  svc_gateway=trace,svc_overlay=trace,svc_payment=trace,svc_accounting=trace";
    let node = Node::start_logged(&data_dir, &[], filter).await;
    let reader = ok_stdout(
        &node
            .cli(&[
                "cap",
                "mint",
                "--method",
                "get",
                "--data-dir",
                node.data_dir.to_str().unwrap(),
            ])
            .await,
    );
    let mut forged = node.token.clone();
    forged.replace_range(40..44, "AAAA");
    let addr = node.put(data(256 << 10, 77)).await;
    for token in [&node.token, &reader, &forged] {
        for path in [
            format!("/o/{addr}"),
            "/status".to_owned(),
            "/objects".to_owned(),
        ] {
            let _ = node
                .anonymous()
                .get(format!("{}{path}", node.url))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
        }
        let _ = node
            .anonymous()
            .post(format!("{}/put", node.url))
            .bearer_auth(token)
            .body(data(1024, 78))
            .send()
            .await
            .unwrap();
    }
    let out = node
        .cli(&[
            "credits",
            "grant",
            "--to",
            &format!("ed25519/{}", "ab".repeat(32)),
            "5",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    sleep(Duration::from_millis(500)).await;

    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap();
    assert!(
        log.contains("node started") && log.lines().count() > 10,
        "the log was written: {log:.2000}"
    );
    let key_hex = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        text.trim().rsplit('/').next().unwrap().to_owned()
    };
    let mut secrets = vec![
        ("the owner token", node.token.clone()),
        ("a minted token", reader),
        ("a forged token", forged),
        ("the identity key", key_hex(&data_dir.join("identity.key"))),
    ];
    for entry in std::fs::read_dir(data_dir.join("keys")).unwrap() {
        secrets.push(("a signing key", key_hex(&entry.unwrap().path())));
    }
    for (what, secret) in secrets {
        assert!(secret.len() >= 32, "{what}: {secret}");
        assert!(!log.contains(&secret), "{what} is in the log");
        assert!(
            !log.contains(&secret[..24]),
            "the start of {what} is in the log"
        );
    }
}
