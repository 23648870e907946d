//! Durability across eight nodes on 127.0.0.1: a protected upload is cut into 4+2 shards on
//! six distinct peers; rotten shards are found and replaced; it outlives its uploader, a
//! shard holder and its repairer killed mid-repair (any node rebuilds it from shards, byte
//! for byte, and the next repairer brings every chunk back to six live, distinct holders); and
//! once more than two holders of a chunk are gone the object is `lost`, which a GET answers
//! with a clear error, never wrong bytes.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Node, config, data, ok_stdout};
use tokio::time::{Instant, sleep};

const NODES: usize = 8;
/// Shards a node placed on peers.
const PLACED: &str = "durability_shards_placed_total";
/// A pass a second; repair paced at 8 MiB/s, so that a repairer can be caught mid-repair.
const CONFIG: &str = "[storage]\nrepair_interval_s = 1\nrepair_bytes_per_s = 8388608\n";

/// Polls `/stat/{addr}` on `node` until its durability satisfies `done` (bounded: 120 s).
async fn until(node: &Node, addr: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = node.get(&format!("/stat/{addr}")).await;
        let stat: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == 200 && done(&stat["durability"]) {
            return stat;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: on {} still {status} {body}",
            node.url
        );
        sleep(Duration::from_millis(500)).await;
    }
}

/// Flips a byte in every shard-sized chunk file under `data_dir`: the files it damaged.
fn damage_shards(data_dir: &Path) -> Vec<PathBuf> {
    let mut damaged = Vec::new();
    let chunks = data_dir.join("store").join("chunks");
    for fan in std::fs::read_dir(&chunks).unwrap() {
        let fan = fan.unwrap().path();
        if !fan.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&fan).unwrap() {
            let file = file.unwrap().path();
            let mut bytes = std::fs::read(&file).unwrap();
            // Shards of this object are 256 KiB to 1 MiB; its layout is a few KiB.
            if bytes.len() < 64 << 10 {
                continue;
            }
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&file, &bytes).unwrap();
            damaged.push(file);
        }
    }
    damaged
}

/// Whether `file` (a chunk file named by its address) still holds bytes that are not it.
fn still_damaged(file: &Path) -> bool {
    let Ok(bytes) = std::fs::read(file) else {
        return false;
    };
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    !name.starts_with(&blake3::hash(&bytes).to_hex().to_string())
}

/// Rots every shard `holder` keeps on disk and waits until its scrub has dropped them all
/// and the repairer has placed each again.
async fn rot_and_replace(nodes: &[Option<Node>], holder: usize) {
    let placed_before = placed(nodes, PLACED).await;
    let rotten = damage_shards(&node(nodes, holder).data_dir);
    assert!(!rotten.is_empty(), "node {holder} holds no shard");
    let deadline = Instant::now() + Duration::from_secs(120);
    while rotten.iter().any(|f| still_damaged(f)) {
        assert!(
            Instant::now() < deadline,
            "damaged shards still kept: {rotten:?}"
        );
        sleep(Duration::from_millis(250)).await;
    }
    // (`/stat` may answer from the last pass, before the damage: count placements.)
    while placed(nodes, PLACED).await < placed_before + rotten.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "the {} dropped shards were not all placed again",
            rotten.len()
        );
        sleep(Duration::from_millis(250)).await;
    }
}

/// Kills the uploader (node 0) and a shard holder (node 1), then the node that starts
/// repairing, after its first placement and before it is done. Returns each node's
/// placement count from before.
async fn kill_the_repairer_mid_repair(nodes: &mut [Option<Node>], chunks: u64) -> Vec<f64> {
    let mut placed_before = Vec::with_capacity(NODES);
    for n in nodes.iter() {
        placed_before.push(n.as_ref().unwrap().metric(PLACED).await);
    }
    for i in [0, 1] {
        let mut gone = nodes[i].take().unwrap();
        gone.child.kill().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (repairer, placed) = 'found: loop {
        for (i, before) in placed_before.iter().enumerate().skip(2) {
            let placed = node(nodes, i).metric(PLACED).await - before;
            if placed > 0.0 {
                break 'found (i, placed);
            }
        }
        assert!(Instant::now() < deadline, "no node started repairing");
        sleep(Duration::from_millis(20)).await;
    };
    let mut gone = nodes[repairer].take().unwrap();
    gone.child.kill().await.unwrap();
    assert!(
        placed < chunks as f64,
        "node {repairer} had placed {placed} shards of {chunks} chunks: not mid-repair"
    );
    placed_before
}

fn state(d: &Value) -> &str {
    d["state"].as_str().unwrap_or_default()
}

/// The sum of `series` over the live nodes.
async fn placed(nodes: &[Option<Node>], series: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes.iter().flatten() {
        sum += n.metric(series).await;
    }
    sum
}

fn node(nodes: &[Option<Node>], i: usize) -> &Node {
    nodes[i].as_ref().unwrap()
}

#[tokio::test]
async fn a_protected_object_outlives_its_uploader_is_repaired_and_is_lost_only_past_m() {
    // Kept with RON_TEST_LOG set, for the nodes' logs.
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("RON_TEST_LOG").is_some())
        .tempdir()
        .unwrap();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    let mut seed = String::new();
    for i in 0..NODES {
        let data_dir = dir.path().join(format!("n{i}"));
        config(&data_dir, CONFIG);
        let node = if i == 0 {
            Node::start(&data_dir, &[]).await
        } else {
            Node::start(&data_dir, &["--bootstrap", &seed]).await
        };
        if i == 0 {
            seed = node.p2p_addr().await;
        }
        nodes.push(Some(node));
    }
    node(&nodes, 0)
        .wait_status("seven peers", |s| {
            s["p2p"]["peers"]
                .as_array()
                .is_some_and(|p| p.len() >= NODES - 1)
        })
        .await;

    // 20 MiB, protected 4+2 (the default) on node 0: six distinct holders per chunk.
    let bytes = data(20 << 20, 17);
    let file = dir.path().join("object");
    std::fs::write(&file, &bytes).unwrap();
    let addr = ok_stdout(
        &node(&nodes, 0)
            .cli(&["put", "--durability", "4+2", file.to_str().unwrap()])
            .await,
    );
    let stat = until(node(&nodes, 0), &addr, "protected", |d| {
        state(d) == "protected" && d["min_holders"] == 6
    })
    .await;
    assert_eq!(stat["durability"]["scheme"], "4+2");
    let chunks = stat["durability"]["chunks"].as_u64().unwrap();
    assert!(chunks >= 5, "{stat}");
    // `ron stat` shows it too.
    let shown = ok_stdout(&node(&nodes, 0).cli(&["stat", &addr]).await);
    assert!(shown.contains("\"protected\""), "{shown}");

    // A holder whose shards rot on disk: its scrub finds them, drops them, and the
    // repairer places them again; the object is whole again on six holders.
    rot_and_replace(&nodes, 7).await;
    until(node(&nodes, 0), &addr, "damaged shards replaced", |d| {
        state(d) == "protected" && d["min_holders"] == 6
    })
    .await;

    // The uploader and one shard holder go; the live holder of the layout closest to the
    // object starts repairing (paced: `repair_bytes_per_s`) and is killed mid-repair, once
    // it has placed a shard. A fresh node joins; the next repairer takes over.
    // The uploader never keeps a shard of its own object, not even when another node
    // places one.
    assert_eq!(
        node(&nodes, 0).metric("durability_shards_kept_total").await,
        0.0
    );
    let placed_before = kill_the_repairer_mid_repair(&mut nodes, chunks).await;
    let live: Vec<usize> = (2..NODES).filter(|i| nodes[*i].is_some()).collect();
    let data_dir = dir.path().join("n8");
    config(&data_dir, CONFIG);
    let seed = node(&nodes, live[0]).p2p_addr().await;
    nodes.push(Some(Node::start(&data_dir, &["--bootstrap", &seed]).await));
    let (reader, watcher) = (live[0], live[1]);

    // Three nodes gone, none of them with a full copy: another rebuilds the object from
    // shards, byte for byte.
    let out = dir.path().join("got");
    let got = node(&nodes, reader)
        .cli(&["get", &addr, "-o", out.to_str().unwrap()])
        .await;
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == bytes,
        "rebuilt bytes differ"
    );

    // Repair resumed by another node: every chunk back on six live, distinct holders (six
    // nodes are live), which the repairers' counters show they placed.
    until(node(&nodes, watcher), &addr, "repaired", |d| {
        state(d) == "protected" && d["min_holders"] == 6
    })
    .await;
    let mut resumed = 0.0;
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            resumed += n.metric(PLACED).await - placed_before.get(i).unwrap_or(&0.0);
        }
    }
    assert!(
        resumed > 0.0,
        "no live node placed a shard after the repairer died"
    );

    // The reader's rebuilt copy goes; then three more holders: fewer than k of some chunk.
    let res = node(&nodes, reader)
        .http
        .delete(format!("{}/o/{addr}", node(&nodes, reader).url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let doomed: Vec<usize> = (2..nodes.len())
        .filter(|i| nodes[*i].is_some() && *i != reader && *i != watcher)
        .take(3)
        .collect();
    assert_eq!(doomed.len(), 3);
    for i in doomed {
        let mut gone = nodes[i].take().unwrap();
        gone.child.kill().await.unwrap();
    }
    until(node(&nodes, watcher), &addr, "lost", |d| state(d) == "lost").await;
    let res = node(&nodes, reader)
        .http
        .get(format!("{}/o/{addr}", node(&nodes, reader).url))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("lost"), "{body}");
}
