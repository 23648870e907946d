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
        let n = Node::start(&dir.path().join(format!("n{i}")), &["--bootstrap", &seed]).await;
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
        "five nodes: 3 MiB PUT on node 2 read on node 5; a missing object answered 404 in {:?}",
        started.elapsed()
    );
}
