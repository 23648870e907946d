//! A network of many nodes in one process, on 127.0.0.1 (heavy tier, ignored by default):
//! lookup cost and latency against log2(N).
//!
//!   cargo test -p svc-dht --release --test sim -- --ignored --nocapture
//!   RON_SIM_NODES=300 cargo test -p svc-dht --release --test sim -- --ignored --nocapture
//!   RON_SIM_LISTEN=/ip4/127.0.0.1/tcp/0 RON_SIM_NODES=60 ...   (TCP; fewer nodes fit the fds)
//!   RON_SIM_PING_MS=3000 ...   (each node's ping interval; 30 s here, 3 s in a node by default)
//!
//! Each node listens on QUIC (one socket per node: TCP would take two descriptors per
//! connection, and hundreds of nodes in one process run out) and joins through up to three
//! random earlier nodes. 64 objects are announced by
//! random nodes; then 200 lookups (`RON_SIM_LOOKUPS`) from random nodes, each of which must name the object's
//! provider, and 20 of the objects are fetched and verified. Reported: peers the Kademlia
//! query had asked when the answer came (Kademlia asks 3 at a time, so rounds ~ asked / 3),
//! and the latency distribution.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{address_of, node_with};
use ron_proto::Address;
use svc_dht::P2pSection;
use tokio::sync::mpsc;

fn pick(rng: &mut u64, n: usize) -> usize {
    // xorshift: reproducible without another dependency.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng % n as u64) as usize
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    sorted[((sorted.len() * p).div_ceil(100)).max(1) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: hundreds of swarms; cargo test -p svc-dht --release --test sim -- --ignored --nocapture"]
async fn lookups_across_hundreds_of_nodes_take_about_log2_n_rounds() {
    let n: usize = std::env::var("RON_SIM_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // Every node pings each peer it is connected to; in one process nearly every node ends up
    // connected to every other, so at 200 nodes the default 3 s would be ~13,000 pings a second
    // on two cores. Nodes of a real network each do their own 1/N of that.
    let ping_ms: u64 = std::env::var("RON_SIM_PING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let objects: Vec<Bytes> = (0..64u32)
        .map(|i| Bytes::from(format!("object {i} of the simulation").repeat(40)))
        .collect();
    // Which node holds which object.
    let holder: Vec<usize> = (0..objects.len())
        .map(|_| 1 + pick(&mut rng, n - 1))
        .collect();

    let started = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    let mut addrs: Vec<libp2p::Multiaddr> = Vec::with_capacity(n);
    for i in 0..n {
        let held: Vec<Bytes> = (0..objects.len())
            .filter(|&o| holder[o] == i)
            .map(|o| objects[o].clone())
            .collect();
        let bootstrap: Vec<_> = if i == 0 {
            Vec::new()
        } else {
            (0..3.min(i))
                .map(|_| addrs[pick(&mut rng, i)].clone())
                .collect()
        };
        let section = P2pSection {
            listen: vec![
                std::env::var("RON_SIM_LISTEN")
                    .unwrap_or_else(|_| "/ip4/127.0.0.1/udp/0/quic-v1".into()),
            ],
            ping_interval_ms: ping_ms,
            ..P2pSection::default()
        };
        let node = node_with(section, &held, None, 0, &bootstrap);
        addrs.push(address_of(&node.handle).await);
        nodes.push(node);
    }
    println!("{n} nodes listening after {:?}", started.elapsed());
    // Let the routing tables fill (each node's bootstrap query runs when it first connects)
    // and the connection storm of the start settle: a second per 10 nodes.
    tokio::time::sleep(Duration::from_secs(5 + n as u64 / 10)).await;
    for (o, object) in objects.iter().enumerate() {
        nodes[holder[o]]
            .handle
            .provide(Address::of(object))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut asked = Vec::new();
    let mut millis = Vec::new();
    let (mut hedged, mut retried, mut timeouts) = (0, 0, 0);
    let lookups: usize = std::env::var("RON_SIM_LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for i in 0..lookups {
        if i % 50 == 0 {
            println!("lookup {i} of {lookups} after {:?}", started.elapsed());
        }
        let (from, o) = (pick(&mut rng, n), pick(&mut rng, objects.len()));
        if from == holder[o] {
            continue;
        }
        let want = nodes[holder[o]].handle.peer_id();
        // A lookup that ends empty or times out is asked again (as a GET would be), at most
        // 4 times.
        let mut found = None;
        for attempt in 0..5 {
            if attempt > 0 {
                retried += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match nodes[from].handle.lookup(Address::of(&objects[o])).await {
                Ok(f) if f.providers.contains(&want) => {
                    found = Some(f);
                    break;
                }
                Ok(f) => found = Some(f),
                Err(svc_dht::DhtError::Timeout) => timeouts += 1,
                Err(e) => panic!("lookup: {e}"),
            }
        }
        let found = found.unwrap_or_else(|| panic!("node {from}: every lookup of {o} timed out"));
        if !found.providers.contains(&want) {
            // Which nodes do find it (and by asking how many): where the record went.
            let mut others = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                if let Ok(f) = node.handle.lookup(Address::of(&objects[o])).await
                    && !f.providers.is_empty()
                {
                    others.push((i, f.asked));
                }
            }
            let status = nodes[from].handle.status().await.unwrap();
            panic!(
                "node {from} (peers {}) looking for object {o} found {:?}; others: {others:?}",
                status.peers.len(),
                found.providers
            );
        }
        asked.push(f64::from(found.asked));
        millis.push(found.elapsed.as_secs_f64() * 1000.0);
        hedged += usize::from(found.hedged);
    }
    // The first lookups pay for dialling peers while the process is still busy with the
    // start; the rest show the network settled.
    let mut settled = millis[millis.len().min(50)..].to_vec();
    asked.sort_by(f64::total_cmp);
    millis.sort_by(f64::total_cmp);
    settled.sort_by(f64::total_cmp);
    let log2 = (n as f64).log2();
    let mean = asked.iter().sum::<f64>() / asked.len() as f64;
    println!(
        "| {n} nodes, {} lookups | p50 | p95 | p99 | max | mean |",
        asked.len()
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| peers asked | {} | {} | {} | {} | {mean:.1} |",
        pct(&asked, 50),
        pct(&asked, 95),
        pct(&asked, 99),
        asked[asked.len() - 1]
    );
    println!(
        "| rounds (asked / 3) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        pct(&asked, 50) / 3.0,
        pct(&asked, 95) / 3.0,
        pct(&asked, 99) / 3.0,
        asked[asked.len() - 1] / 3.0,
        mean / 3.0
    );
    println!(
        "| latency ms | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        pct(&millis, 50),
        pct(&millis, 95),
        pct(&millis, 99),
        millis[millis.len() - 1],
        millis.iter().sum::<f64>() / millis.len() as f64
    );
    if !settled.is_empty() {
        println!(
            "| latency ms, lookups after the 50th | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pct(&settled, 50),
            pct(&settled, 95),
            pct(&settled, 99),
            settled[settled.len() - 1],
            settled.iter().sum::<f64>() / settled.len() as f64
        );
    }
    println!(
        "log2(N) = {log2:.2}; hedged lookups: {hedged}; lookups asked again: {retried} \
         ({timeouts} after a timeout)"
    );
    // A few end-to-end fetches: found, transferred, every group verified (asked again once
    // when a request times out in a saturated process).
    let mut fetched = 0;
    for o in 0..20 {
        let from = (holder[o] + 1) % n;
        let handle = &nodes[from].handle;
        for _ in 0..2 {
            let Ok(providers) = handle.providers(Address::of(&objects[o])).await else {
                continue;
            };
            let Ok(probe) = handle
                .probe(Address::of(&objects[o]), &providers, 1 << 20)
                .await
            else {
                continue;
            };
            let (tx, mut rx) = mpsc::channel::<Bytes>(4);
            let collect = tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(b) = rx.recv().await {
                    got.extend_from_slice(&b);
                }
                got
            });
            if handle.transfer(probe, &providers, tx).await.is_ok() {
                assert!(
                    collect.await.unwrap() == objects[o],
                    "verified bytes are the object"
                );
                fetched += 1;
                break;
            }
        }
    }
    println!("{fetched} of 20 objects fetched and verified");
    assert!(fetched >= 18, "fetches failed");
    // Kademlia's bound, generously: the rounds stay within a small multiple of log2(N).
    assert!(
        pct(&asked, 95) / 3.0 <= 2.0 * log2,
        "lookups grew past O(log N)"
    );
}
