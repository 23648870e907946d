//! Directory trees as collections, through real nodes: `ron put -r` / `ron get -r` byte-exact
//! on the node that holds the tree and on another that fetches it from peers, paths over
//! HTTP with raw (unnormalised) traversal attempts, malformed collections refused, media
//! types guessed and retyped.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{Node, data, ok_stdout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep};

/// A tree of 200 files: nested folders, unicode names, empty files, duplicates, one 50 MiB
/// file.
fn make_tree(root: &Path) {
    let folders = [
        "",
        "docs",
        "docs/日本語",
        "docs/日本語/深い",
        "src/a/b/c/d",
        "emoji 🎉",
        "empty-folder-sibling",
    ];
    for f in folders {
        std::fs::create_dir_all(root.join(f)).unwrap();
    }
    let mut n = 0;
    while n < 199 {
        let folder = folders[n % folders.len()];
        let name = match n % 5 {
            0 => format!("file {n}.txt"),
            1 => format!("résumé-{n}.md"),
            2 => format!("données_{n}.bin"),
            3 => format!("empty-{n}"),
            _ => format!("page-{n}.html"),
        };
        let bytes = match n % 5 {
            3 => Vec::new(),
            // Identical contents under different names: stored once.
            4 => b"<!doctype html><h1>same</h1>".to_vec(),
            _ => data(1 + (n * 997) % 70_000, n as u64),
        };
        std::fs::write(root.join(folder).join(name), bytes).unwrap();
        n += 1;
    }
    std::fs::write(root.join("src/a/big.bin"), data(50 << 20, 50)).unwrap();
}

fn diff(a: &Path, b: &Path) {
    let out = std::process::Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .expect("diff is installed");
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_tree_round_trips_on_its_node_and_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    assert_eq!(count_files(&tree), 200);

    let a = Node::start(&dir.path().join("a"), &[]).await;
    let seed = a.p2p_addr().await;
    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &seed]).await;

    let out = a.cli(&["put", "-r", tree.to_str().unwrap()]).await;
    let root = ok_stdout(&out);
    assert!(root.starts_with("b3:"), "{root}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("stored 200 files"), "{said}");
    // The same tree again: the same root.
    let again = ok_stdout(&a.cli(&["put", "-r", tree.to_str().unwrap()]).await);
    assert_eq!(again, root);

    let from_a = dir.path().join("from-a");
    ok_stdout(
        &a.cli(&["get", "-r", &root, "-o", from_a.to_str().unwrap()])
            .await,
    );
    diff(&tree, &from_a);

    // Node B holds nothing: every collection and file is found through the DHT and fetched.
    let from_b = dir.path().join("from-b");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = b
            .cli(&["get", "-r", &root, "-o", from_b.to_str().unwrap()])
            .await;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B never got the tree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sleep(Duration::from_millis(500)).await;
    }
    diff(&tree, &from_b);
    // Nothing half-written is left beside the files.
    let parts = std::process::Command::new("find")
        .arg(&from_b)
        .args(["-name", "*.ron-part"])
        .output()
        .unwrap();
    assert!(parts.stdout.is_empty());

    // The same paths over HTTP on both nodes.
    let path = format!("/o/{root}/docs/%E6%97%A5%E6%9C%AC%E8%AA%9E/");
    for node in [&a, &b] {
        let res = node
            .anonymous()
            .get(format!("{}{path}", node.url))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let listing: Value = res.json().await.unwrap();
        assert!(
            listing["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "深い" && e["kind"] == "folder"),
            "{listing}"
        );
    }
}

/// One HTTP/1.1 request with its path exactly as given (clients normalise `..` away): the
/// status and body.
async fn raw_get(node: &Node, path: &str) -> (u16, String) {
    let host = node.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn paths_index_pages_listings_and_refusals_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("site");
    std::fs::create_dir_all(tree.join("blog/2026")).unwrap();
    std::fs::create_dir_all(tree.join("assets")).unwrap();
    std::fs::write(tree.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(tree.join("blog/index.html"), "<h1>blog</h1>").unwrap();
    std::fs::write(tree.join("blog/2026/a post.txt"), "words").unwrap();
    std::fs::write(tree.join("assets/style.css"), "h1{color:red}").unwrap();
    std::fs::write(tree.join("secret.txt"), "outside").unwrap();
    let node = Node::start(&dir.path().join("n"), &[]).await;
    let root = ok_stdout(&node.cli(&["put", "-r", tree.to_str().unwrap()]).await);
    let http = node.anonymous();
    let url = |p: &str| format!("{}/o/{root}/{p}", node.url);

    let res = http.get(url("")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("sandbox"),
        "user pages run sandboxed"
    );
    assert_eq!(res.text().await.unwrap(), "<h1>home</h1>");
    let res = http.get(url("assets/style.css")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/css");
    let res = http
        .get(url("blog/2026/a%20post.txt"))
        .header("range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.text().await.unwrap(), "ord");
    // A folder without its slash is sent to it (reqwest follows), then its index page.
    let res = http.get(url("blog")).send().await.unwrap();
    assert_eq!(res.url().path(), format!("/o/{root}/blog/"));
    assert_eq!(res.text().await.unwrap(), "<h1>blog</h1>");
    // No index page: a listing, HTML for a browser, JSON on request.
    let res = http
        .get(url("blog/2026/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let page = res.text().await.unwrap();
    assert!(page.contains("href=\"./a%20post.txt\""), "{page}");
    assert!(!page.contains("<script"), "{page}");
    let res = http
        .get(url("assets/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let listing: Value = res.json().await.unwrap();
    assert_eq!(listing["entries"][0]["name"], "style.css");
    assert_eq!(listing["entries"][0]["media_type"], "text/css");
    assert_eq!(listing["path"], "/assets/");

    // Traversal, as sent: every spelling is refused, and the file beside the tree is never read.
    for bad in [
        "blog/../secret.txt",
        "blog/%2e%2e/secret.txt",
        "blog/%2E%2E/%2E%2E/x",
        "blog%2F..%2Fsecret.txt",
        "./index.html",
        "blog//index.html",
        "%00",
    ] {
        let (status, body) = raw_get(&node, &format!("/o/{root}/{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"code\":\"invalid_path\""), "{bad}: {body}");
    }
    let (status, _) = raw_get(&node, &format!("/o/{root}/nothing/here")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn malformed_collections_are_refused_and_media_types_follow_names() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n"), &[]).await;
    let put = |bytes: Vec<u8>| {
        node.http
            .post(format!("{}/put", node.url))
            .header("content-type", "application/vnd.ron.collection+cbor")
            .body(bytes)
            .send()
    };
    // Garbage, and a well-formed record with a traversal name (written without the checks).
    let res = put(b"not cbor at all".to_vec()).await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("invalid_collection"));
    let evil = ron_proto::collection::Collection::new(vec![ron_proto::collection::Entry::file(
        "..",
        ron_proto::Address::of(b"x"),
        1,
        None,
    )]);
    let bytes = serde_ipld_dagcbor::to_vec(&evil).unwrap();
    let res = put(bytes.clone()).await.unwrap();
    assert_eq!(res.status(), 400);
    let addr = ron_proto::Address::of(&bytes);
    // Nothing was stored.
    let (status, _) = node.get(&format!("/o/{addr}")).await;
    assert_eq!(status, 404);
    // Stored some other way (as plain bytes), it is still no collection to walk or get.
    node.put(bytes).await;
    let (status, body) = node.get(&format!("/o/{addr}/x")).await;
    assert_eq!(
        (status, body.contains("not_a_collection")),
        (400, true),
        "{body}"
    );
    let out = node
        .cli(&[
            "get",
            "-r",
            &addr.to_string(),
            "-o",
            dir.path().join("x").to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid collection"));

    // `ron put` guesses the type from the name; `--type` on stored bytes retypes them.
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "a note").unwrap();
    let addr = ok_stdout(&node.cli(&["put", file.to_str().unwrap()]).await);
    let res = node
        .anonymous()
        .get(format!("{}/o/{addr}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/plain");
    let again = ok_stdout(
        &node
            .cli(&["put", "--type", "text/markdown", file.to_str().unwrap()])
            .await,
    );
    assert_eq!(again, addr);
    let res = node
        .anonymous()
        .get(format!("{}/o/{addr}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/markdown");
    let stat: Value = serde_json::from_str(&node.get(&format!("/stat/{addr}")).await.1).unwrap();
    assert_eq!(stat["media_type"], "text/markdown");

    // A tree with a symlink is refused before anything is stored; so is `-r` on a file.
    let tree = dir.path().join("linked");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("real"), "x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("link")).unwrap();
    let out = node.cli(&["put", "-r", tree.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not a regular file"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    let out = node.cli(&["put", "-r", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
}
