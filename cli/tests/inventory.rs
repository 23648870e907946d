//! What a node holds, through a real node: `ron ls` and `GET /objects` (paged), `ron rm` and
//! `DELETE /o/{addr}` (chunks shared with another object survive), `ron gc`, the periodic
//! collection of unpinned uploads, and the owner-only rule for all of them.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Node, config, data, ok_stdout};
use tokio::time::{Instant, sleep};

async fn json(node: &Node, path: &str) -> (u16, Value) {
    let (status, body) = node.get(path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn list_remove_and_collect() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n"), &[]).await;
    let shared = data(3 << 20, 1);
    let mut longer = shared.clone();
    longer.extend(data(3 << 20, 2));
    let a = ok_stdout(
        &node
            .cli(&["put", &file(dir.path(), "a.txt", b"alpha")])
            .await,
    );
    let x = ok_stdout(
        &node
            .cli(&["put", &file(dir.path(), "x.bin", &shared)])
            .await,
    );
    let y = ok_stdout(
        &node
            .cli(&["put", &file(dir.path(), "y.bin", &longer)])
            .await,
    );

    // `ron ls`: one line per object, pinned, with its time and type.
    let listed = ok_stdout(&node.cli(&["ls"]).await);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let line = listed.lines().find(|l| l.starts_with(&a)).unwrap();
    assert!(line.contains(" 5  pinned  20"), "{line}");
    assert!(line.ends_with("text/plain"), "{line}");
    let lines = ok_stdout(&node.cli(&["ls", "--json"]).await);
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(
        first["stored_at"].as_u64().unwrap() > 1_700_000_000,
        "{first}"
    );

    // Pages in address order, `next` until the last.
    let (status, page) = json(&node, "/objects?limit=2").await;
    assert_eq!(status, 200);
    let objects = page["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2);
    assert!(objects[0]["address"].as_str() < objects[1]["address"].as_str());
    let next = page["next"].as_str().unwrap();
    assert_eq!(next, objects[1]["address"].as_str().unwrap());
    let (_, rest) = json(&node, &format!("/objects?limit=2&after={next}")).await;
    assert_eq!(rest["objects"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    for bad in ["limit=0", "limit=1001", "after=b3:zz", "limit=x"] {
        let (status, body) = json(&node, &format!("/objects?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "bad_input", "{bad}");
    }

    // Owner only: no token, no listing and no removal, whatever reads allow.
    let anon = node.anonymous();
    let res = anon
        .get(format!("{}/objects", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = anon
        .delete(format!("{}/o/{a}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = anon.post(format!("{}/gc", node.url)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let data_dir = node.data_dir.to_str().unwrap().to_owned();
    let reader = ok_stdout(
        &node
            .cli(&["cap", "mint", "--data-dir", &data_dir, "--method", "get"])
            .await,
    );
    let res = anon
        .delete(format!("{}/o/{a}", node.url))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // `ron rm`: the longer object goes; the chunks it shared with the other stay.
    let before = node.status().await["storage"]["bytes_stored"]
        .as_u64()
        .unwrap();
    ok_stdout(&node.cli(&["rm", &y]).await);
    assert_eq!(node.get(&format!("/o/{y}")).await.0, 404);
    let after = node.status().await["storage"]["bytes_stored"]
        .as_u64()
        .unwrap();
    assert!(after < before, "{before} -> {after}");
    assert!(after >= shared.len() as u64, "{after}");
    let res = node
        .http
        .get(format!("{}/o/{x}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap(), shared);
    let out = node.cli(&["rm", &y]).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("not_found") && said.contains("HTTP 404"),
        "{said}"
    );

    // `ron gc`: pinned objects stay; what the owner unpinned goes.
    assert_eq!(
        ok_stdout(&node.cli(&["gc"]).await),
        "removed 0 objects, 0 chunks, 0 bytes"
    );
    ok_stdout(&node.cli(&["unpin", &x]).await);
    let said = ok_stdout(&node.cli(&["gc"]).await);
    assert!(said.starts_with("removed 1 objects, "), "{said}");
    assert_eq!(node.get(&format!("/o/{x}")).await.0, 404);
    assert_eq!(node.get(&format!("/o/{a}")).await.0, 200);
    let listed = ok_stdout(&node.cli(&["ls"]).await);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert_eq!(node.status().await["storage"]["bytes_stored"], 5);
}

#[tokio::test]
async fn unpinned_uploads_are_collected_every_gc_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("n");
    config(&data_dir, "[storage]\ngc_interval_s = 1\n");
    let node = Node::start(&data_dir, &[]).await;
    let kept = node.put(b"kept".to_vec()).await;
    let dropped = node.put(b"dropped".to_vec()).await;
    ok_stdout(&node.cli(&["unpin", &dropped]).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.get(&format!("/o/{dropped}")).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the unpinned upload was never collected"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.get(&format!("/o/{kept}")).await.0, 200);
}
