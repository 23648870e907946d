//! The peer network on 127.0.0.1: five nodes joined through the first, an object PUT on one
//! node and read on another (found through the DHT, fetched and verified), an object nobody
//! has, and what `/status` shows.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Node, data};
use tokio::time::{Instant, sleep};

/// The node's first p2p listen address (with `/p2p/<id>`), once it has one.
async fn p2p_addr(node: &Node) -> String {
    let status = node
        .wait_status("a p2p listen address", |s| {
            s["p2p"]["listen"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    status["p2p"]["listen"][0].as_str().unwrap().to_owned()
}

async fn peers(node: &Node) -> usize {
    node.status().await["p2p"]["peers"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn five_nodes_find_and_verify_each_others_objects() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = p2p_addr(&first).await;
    assert!(
        seed.starts_with("/ip4/127.0.0.1/tcp/") && seed.contains("/p2p/12D3KooW"),
        "{seed}"
    );
    let mut nodes = vec![first];
    for i in 2..=5 {
        let mut flags = vec!["--bootstrap", seed.as_str()];
        if i == 3 {
            // Node 3 also speaks OAP/1: what is put there is announced too.
            flags.extend(["--tls-self-signed", "--gateway-tls", "127.0.0.1:0"]);
            flags.extend(["--oap-listen", "127.0.0.1:0"]);
        }
        let n = Node::start(&dir.path().join(format!("n{i}")), &flags).await;
        nodes.push(n);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers(&nodes[0]).await < 4 {
        assert!(
            Instant::now() < deadline,
            "the seed never saw all four others"
        );
        sleep(Duration::from_millis(100)).await;
    }

    // `ron peers` on the seed: its id, its addresses, and four peers.
    let out = support::ok_stdout(&nodes[0].cli(&["peers"]).await);
    assert!(out.starts_with("peer_id 12D3KooW"), "{out}");
    assert!(out.lines().any(|l| l == format!("listen {seed}")), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("peer ")).count(),
        4,
        "{out}"
    );

    // PUT on node 2, GET on node 5: found through the DHT, fetched, verified, identical.
    let bytes = data(3 << 20, 11);
    let addr = nodes[1].put(bytes.clone()).await;
    let url = format!("{}/o/{addr}", nodes[4].url);
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.is_none() {
        let res = nodes[4].anonymous().get(&url).send().await.unwrap();
        match res.status().as_u16() {
            200 => got = Some(res.bytes().await.unwrap()),
            404 if Instant::now() < deadline => sleep(Duration::from_millis(200)).await,
            other => panic!("GET on node 5: {other} {}", res.text().await.unwrap()),
        }
    }
    assert!(got.unwrap() == bytes, "node 5 served node 2's bytes");
    // Node 5 now holds a copy (unpinned) and provides it too.
    let stat: Value = nodes[4]
        .anonymous()
        .get(format!("{}/stat/{addr}", nodes[4].url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stat["pinned"], false, "{stat}");

    // PUT over OAP/1 on node 3, GET over HTTP on node 1.
    let file = dir.path().join("oap-object");
    let oap_bytes = data(700_000, 12);
    std::fs::write(&file, &oap_bytes).unwrap();
    let oap = nodes[2].oap_addr.clone().unwrap();
    let out = nodes[2]
        .cli(&["put", "--oap", &oap, "--insecure", file.to_str().unwrap()])
        .await;
    let oap_addr = support::ok_stdout(&out).trim().to_owned();
    let url = format!("{}/o/{oap_addr}", nodes[0].url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = nodes[0].anonymous().get(&url).send().await.unwrap();
        match res.status().as_u16() {
            200 => {
                assert!(res.bytes().await.unwrap() == oap_bytes);
                break;
            }
            404 if Instant::now() < deadline => sleep(Duration::from_millis(200)).await,
            other => panic!("GET on node 1: {other} {}", res.text().await.unwrap()),
        }
    }

    // Node 5 (which cached the 3 MiB object) leaves and node 2 restarts on a new port: node 4,
    // which never held the object, still gets it, from the restarted node 2.
    let gone = nodes.remove(4);
    drop(gone);
    let mut old = nodes.remove(1);
    let data_dir = old.data_dir.clone();
    old.child.kill().await.unwrap(); // and waits: its store must be closed before it reopens
    drop(old);
    let restarted = Node::start(&data_dir, &["--bootstrap", &seed]).await;
    nodes.insert(1, restarted);
    let url = format!("{}/o/{addr}", nodes[3].url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = nodes[3].anonymous().get(&url).send().await.unwrap();
        match res.status().as_u16() {
            200 => {
                assert!(res.bytes().await.unwrap() == bytes);
                break;
            }
            404 | 503 | 504 if Instant::now() < deadline => sleep(Duration::from_millis(300)).await,
            other => panic!(
                "GET on node 4 after the restart: {other} {}",
                res.text().await.unwrap()
            ),
        }
    }

    // An object no node has: the lookups finish and the answer is 404, not a hang.
    let nobody = ron_proto::Address::of(b"no node has this");
    let started = Instant::now();
    let res = nodes[2]
        .anonymous()
        .get(format!("{}/o/{nobody}", nodes[2].url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    println!(
        "five nodes: 3 MiB PUT on node 2 read on node 5, and on node 4 after node 2 restarted; \
         a missing object answered 404 in {:?}",
        started.elapsed()
    );
}
