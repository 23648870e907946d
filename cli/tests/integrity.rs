//! What a node answers when its stored bytes are damaged, and where addresses come from: a
//! re-upload over a damaged chunk (HTTP and OAP/1) gets `b3sum`'s address and repairs the
//! chunk; a damaged object no peer holds answers 503 `damaged`, never a wrong byte; one a peer
//! holds is repaired from it and served whole; and an OAP/1 GET on one node fetches an object
//! only another node holds, as HTTP does.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Node, b3sum, data, ok_stdout};
use tokio::time::{Instant, sleep};

const TLS: [&str; 5] = [
    "--tls-self-signed",
    "--gateway-tls",
    "127.0.0.1:0",
    "--oap-listen",
    "127.0.0.1:0",
];

/// Every chunk file of `node`'s store.
fn chunk_files(node: &Node) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = node.data_dir.join("store/chunks");
    for sub in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Flips one byte in every 4 KiB of each of `files` (every 16 KiB group then fails).
fn flip(files: &[PathBuf]) {
    for f in files {
        let mut raw = std::fs::read(f).unwrap();
        for at in (0..raw.len()).step_by(4096) {
            raw[at] ^= 0x01;
        }
        std::fs::write(f, raw).unwrap();
    }
}

async fn stat(node: &Node, addr: &str) -> Value {
    let (status, body) = node.get(&format!("/stat/{addr}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn put_file(node: &Node, file: &Path, oap: bool) -> String {
    let path = file.to_str().unwrap();
    let out = match &node.oap_addr {
        Some(at) if oap => node.cli(&["put", "--oap", at, "--insecure", path]).await,
        _ => node.cli(&["put", path]).await,
    };
    ok_stdout(&out).trim().to_owned()
}

#[tokio::test]
async fn a_reupload_over_a_damaged_chunk_gets_the_true_address_over_http_and_oap() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n"), &TLS).await;
    let file = dir.path().join("small");
    std::fs::write(&file, data(5000, 1)).unwrap();
    let truth = b3sum(&file);
    assert_eq!(put_file(&node, &file, false).await, truth);
    for oap in [false, true] {
        flip(&chunk_files(&node));
        // The damage shows, and the object is not served from memory meanwhile.
        assert_eq!(stat(&node, &truth).await["damaged"], true);
        let (status, body) = node.get(&format!("/o/{truth}")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["code"],
            "damaged"
        );
        // The same bytes again: b3sum's address, the chunk replaced, served whole.
        assert_eq!(put_file(&node, &file, oap).await, truth, "oap: {oap}");
        assert_eq!(stat(&node, &truth).await["damaged"], false, "oap: {oap}");
        let res = node
            .anonymous()
            .get(format!("{}/o/{truth}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.bytes().await.unwrap() == std::fs::read(&file).unwrap());
    }
    // Announced with its address (X-Ron-Expect-Address), the client is not blamed either.
    flip(&chunk_files(&node));
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .header("x-ron-expect-address", &truth)
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(stat(&node, &truth).await["damaged"], false);
    let repaired = node.get("/metrics").await.1;
    assert!(
        repaired.contains("storage_chunks_repaired_total 3"),
        "{repaired}"
    );
}

#[tokio::test]
async fn a_damaged_object_is_503_damaged_alone_and_repaired_from_a_peer_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]).await;
    let bytes = data(3 << 20, 2);
    let addr = a.put(bytes.clone()).await;
    // Alone: every chunk damaged, nobody to repair from. 503 `damaged`, never a wrong byte.
    flip(&chunk_files(&a));
    let res = a
        .anonymous()
        .get(format!("{}/o/{addr}", a.url))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    if status == 200 {
        // The head went out before the first window failed: the body must be cut short.
        assert!(
            res.bytes().await.is_err(),
            "a damaged body must not complete"
        );
    } else {
        assert_eq!(status, 503);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "damaged", "{body}");
    }
    let range = a
        .anonymous()
        .get(format!("{}/o/{addr}", a.url))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 503);
    assert_eq!(range.json::<Value>().await.unwrap()["code"], "damaged");

    // B joins and gets the true bytes (put there too); A's next read repairs from B.
    let seed = a.p2p_addr().await;
    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &seed]).await;
    assert_eq!(b.put(bytes.clone()).await, addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = a
            .anonymous()
            .get(format!("{}/o/{addr}", a.url))
            .header("range", "bytes=1000000-1000099")
            .send()
            .await
            .unwrap();
        if res.status() == 206 {
            assert!(res.bytes().await.unwrap() == bytes[1_000_000..1_000_100]);
            break;
        }
        // Until B's announcement has reached A's lookups.
        assert_eq!(res.status(), 503);
        assert!(Instant::now() < deadline, "A was never repaired from B");
        sleep(Duration::from_millis(200)).await;
    }
    let whole = a
        .anonymous()
        .get(format!("{}/o/{addr}", a.url))
        .send()
        .await
        .unwrap();
    assert!(whole.bytes().await.unwrap() == bytes);
    let stat = stat(&a, &addr).await;
    assert_eq!(
        (stat["damaged"].clone(), stat["pinned"].clone()),
        (Value::from(false), Value::from(true))
    );
}

#[tokio::test]
async fn an_oap_get_on_one_node_fetches_what_only_another_node_holds() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]).await;
    let seed = a.p2p_addr().await;
    let mut flags = vec!["--bootstrap", seed.as_str()];
    flags.extend(TLS);
    let b = Node::start(&dir.path().join("b"), &flags).await;
    let bytes = data((2 << 20) + 12_345, 3);
    let addr = a.put(bytes.clone()).await;
    let oap = b.oap_addr.clone().unwrap();
    let back = dir.path().join("back");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = b
            .cli(&[
                "get",
                "--oap",
                &oap,
                "--insecure",
                &addr,
                "-o",
                back.to_str().unwrap(),
            ])
            .await;
        if out.status.success() {
            break;
        }
        // Until A's announcement is found: 404 from B, as over HTTP.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("404"), "{err}");
        assert!(
            Instant::now() < deadline,
            "B never fetched A's object over OAP/1"
        );
        sleep(Duration::from_millis(200)).await;
    }
    assert!(std::fs::read(&back).unwrap() == bytes);
    assert_eq!(b3sum(&back), addr);
}
