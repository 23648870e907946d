//! Mutable names across three nodes on 127.0.0.1: a name published on one node resolves on
//! another (which serves the site it points at, fetched from peers), moves when it is
//! published again with a higher sequence, and refuses forged, foreign and stale records.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use ron_auth::SigningKey;
use ron_auth::name::NameRecord;
use serde_json::Value;
use support::{Node, ok_stdout};
use tokio::time::{Instant, sleep};

fn site(dir: &Path, version: &str) -> String {
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("index.html"), format!("<h1>{version}</h1>")).unwrap();
    std::fs::write(dir.join("docs/notes.txt"), format!("notes {version}")).unwrap();
    dir.to_str().unwrap().to_owned()
}

/// Polls `GET path` on `node` until the body satisfies `done` (bounded: 60 s).
async fn until(node: &Node, path: &str, done: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = node.get(path).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {}: still {status} {body}",
            node.url
        );
        sleep(Duration::from_millis(250)).await;
    }
}

/// `ron name publish` on `node` with a TTL of one second: the name.
async fn publish(node: &Node, key: &Path, target: &str) -> String {
    let key = key.to_str().unwrap();
    ok_stdout(
        &node
            .cli(&["name", "publish", "--key", key, "--ttl", "1", target])
            .await,
    )
}

async fn put_record(node: &Node, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let res = node
        .http
        .put(format!("{}/names/{name}", node.url))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_name_resolves_everywhere_moves_on_republish_and_refuses_forgeries() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]).await;
    let seed = a.p2p_addr().await;
    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &seed]).await;
    let c = Node::start(&dir.path().join("c"), &["--bootstrap", &seed]).await;
    a.wait_status("two peers", |s| {
        s["p2p"]["peers"].as_array().is_some_and(|p| p.len() >= 2)
    })
    .await;

    let key_file = dir.path().join("alice.key");
    let name = ok_stdout(
        &a.cli(&["key", "gen", "--out", key_file.to_str().unwrap()])
            .await,
    );
    assert!(name.starts_with("ed25519/"), "{name}");
    // Nothing published yet.
    assert_eq!(c.get(&format!("/names/{name}")).await.0, 404);

    let v1 = ok_stdout(
        &a.cli(&["put", "-r", &site(&dir.path().join("v1"), "v1")])
            .await,
    );
    assert_eq!(publish(&a, &key_file, &v1).await, name);

    // Node C resolves it through the DHT, and serves the site it points at (fetched from A).
    let record = until(&c, &format!("/names/{name}"), |s, _| s == 200).await;
    let record: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["target"], v1.as_str());
    // Peers kept it because it is a valid name (the node's record policy).
    let kept = b.metric("p2p_records_total{outcome=\"stored\"}").await
        + c.metric("p2p_records_total{outcome=\"stored\"}").await;
    assert!(kept >= 1.0, "no peer kept the record");
    let page = until(&c, &format!("/n/{name}/"), |s, _| s == 200).await;
    assert_eq!(page, "<h1>v1</h1>");
    let res = c
        .anonymous()
        .get(format!("{}/n/{name}/docs/notes.txt", c.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "public, max-age=1");
    assert_eq!(res.headers()["x-ron-target"], v1.as_str());
    assert_eq!(res.text().await.unwrap(), "notes v1");
    assert_eq!(
        ok_stdout(&b.cli(&["name", "resolve", &name]).await),
        v1,
        "resolved on B too"
    );

    // Published again: the name moves, on every node once the TTL has run out.
    let v2 = ok_stdout(
        &a.cli(&["put", "-r", &site(&dir.path().join("v2"), "v2")])
            .await,
    );
    publish(&a, &key_file, &v2).await;
    until(&c, &format!("/n/{name}/"), |s, body| {
        s == 200 && body == "<h1>v2</h1>"
    })
    .await;
    until(&b, &format!("/names/{name}"), |_, body| body.contains(&v2)).await;

    // Refused: a record signed by another key, one for another name, an older one.
    let key = SigningKey::read(&key_file).unwrap();
    let mallory = SigningKey::generate();
    let mut forged = NameRecord::sign(&mallory, v1.parse().unwrap(), u64::MAX, 60).unwrap();
    forged.key = name.clone();
    let (status, body) = put_record(&b, &name, serde_ipld_dagcbor::to_vec(&forged).unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_name_record")),
        "{body}"
    );
    let theirs = NameRecord::sign(&mallory, v1.parse().unwrap(), 1, 60).unwrap();
    let (status, body) = put_record(&b, &name, theirs.encode().unwrap()).await;
    assert_eq!(status, 400, "{body}");
    let stale = NameRecord::sign(&key, v1.parse().unwrap(), 1, 60).unwrap();
    let (status, body) = put_record(&a, &name, stale.encode().unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("stale_name_record")),
        "{body}"
    );
    let (status, _) = put_record(&a, &name, b"not a record".to_vec()).await;
    assert_eq!(status, 400);
    // Without a token, nothing is published.
    let res = c
        .anonymous()
        .put(format!("{}/names/{name}", c.url))
        .body(stale.encode().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // The name still points at v2 everywhere.
    sleep(Duration::from_millis(1100)).await;
    for node in [&a, &b, &c] {
        assert_eq!(ok_stdout(&node.cli(&["name", "resolve", &name]).await), v2);
    }
    // Unknown and malformed names.
    let nobody = ron_auth::public_text(&SigningKey::generate().public());
    assert_eq!(c.get(&format!("/n/{nobody}/")).await.0, 404);
    assert_eq!(c.get("/n/ed25519/1234/").await.0, 400);
}
