//! The peer network through a user-space fault proxy (`support/faults.rs`): nodes on
//! 127.0.0.1 speaking QUIC to each other through proxies that delay, reorder, lose and stall
//! datagrams. A fetch completes under 200 ms of jitter and 10% loss each way (in order: QUIC
//! over such a link moves ~17 KB/s, so the object is one range); a provider that stalls
//! mid-transfer leaves the transfer to another; a TCP connection reset mid-transfer is
//! survived.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/faults.rs"]
mod faults;
#[path = "support/node.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use faults::{FaultProxy, socket, through};
use support::{Node, config, data};
use tokio::time::{Instant, sleep};

const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

/// A node speaking QUIC only, and its p2p address.
async fn quic_node(dir: &std::path::Path, extra: &[&str]) -> (Node, String) {
    let mut flags = vec!["--p2p-listen", QUIC];
    flags.extend_from_slice(extra);
    let node = Node::start(dir, &flags).await;
    let addr = node.p2p_addr().await;
    assert!(addr.contains("/quic-v1/"), "{addr}");
    (node, addr)
}

/// GETs `/o/{addr}` on `node` until it answers 200 (bounded), returning the bytes.
async fn get_whole(node: &Node, addr: &str, within: Duration) -> Vec<u8> {
    let url = format!("{}/o/{addr}", node.url);
    let deadline = Instant::now() + within;
    loop {
        let res = node
            .anonymous()
            .get(&url)
            .timeout(within)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => return res.bytes().await.unwrap().to_vec(),
            404 | 503 | 504 if Instant::now() < deadline => sleep(Duration::from_millis(500)).await,
            other => panic!("GET {addr}: {other} {}", res.text().await.unwrap()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_completes_under_200_ms_of_jitter_and_10_percent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (provider, provider_addr) = quic_node(&dir.path().join("provider"), &[]).await;
    let proxy = FaultProxy::udp(socket(&provider_addr)).await;
    proxy
        .faults
        .delay(Duration::from_millis(10), Duration::from_millis(200));
    proxy.faults.loss(100);
    let via = through(&provider_addr, &proxy);
    // The answer takes longer than the reader's read-idle limit: a client waiting for a slow
    // answer is not idle (it was cut at read_idle_ms before, the body short).
    config(
        &dir.path().join("reader"),
        "[limits]\nread_idle_ms = 3000\n",
    );
    let (reader, _) = quic_node(&dir.path().join("reader"), &["--bootstrap", &via]).await;
    reader
        .wait_status("the provider as a peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    let bytes = data(128 << 10, 71);
    let addr = provider.put_announced(bytes.clone()).await;
    let started = Instant::now();
    let got = get_whole(&reader, &addr, Duration::from_secs(120)).await;
    let took = started.elapsed();
    assert!(got == bytes, "the reader got the object's own bytes");
    let (through_proxy, lost) = (
        proxy.faults.delivered_bytes.load(Ordering::Relaxed),
        proxy.faults.lost.load(Ordering::Relaxed),
    );
    assert!(
        through_proxy >= 128 << 10,
        "the transfer went through the proxy ({through_proxy} bytes)"
    );
    assert!(lost > 0, "the proxy lost datagrams");
    println!(
        "128 KiB through 10-210 ms of delay and 10% loss each way: {took:?}; {lost} datagrams lost, \
         {through_proxy} bytes delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_stalls_mid_transfer_leaves_it_to_another() {
    let dir = tempfile::tempdir().unwrap();
    // Providers send one peer at most 2 MiB/s (after a one-second burst): 12 MiB takes seconds.
    let paced = "[p2p]\npeer_bytes_per_sec = 2097152\nfetch_timeout_ms = 120000\n";
    for n in ["one", "two", "reader"] {
        config(&dir.path().join(n), paced);
    }
    let (one, one_addr) = quic_node(&dir.path().join("one"), &[]).await;
    let (two, two_addr) = quic_node(&dir.path().join("two"), &["--bootstrap", &one_addr]).await;
    let (proxy_one, proxy_two) = (
        FaultProxy::udp(socket(&one_addr)).await,
        FaultProxy::udp(socket(&two_addr)).await,
    );
    let (via_one, via_two) = (
        through(&one_addr, &proxy_one),
        through(&two_addr, &proxy_two),
    );
    let (reader, _) = quic_node(
        &dir.path().join("reader"),
        &["--bootstrap", &via_one, "--bootstrap", &via_two],
    )
    .await;
    reader
        .wait_status("both providers as peers", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| p.len() >= 2)
        })
        .await;
    let bytes = data(12 << 20, 72);
    let addr = one.put_announced(bytes.clone()).await;
    assert_eq!(two.put_announced(bytes.clone()).await, addr);

    let (url, client) = (format!("{}/o/{addr}", reader.url), reader.anonymous());
    let get = tokio::spawn(async move {
        let res = client.get(url).send().await.unwrap();
        (res.status().as_u16(), res.bytes().await.unwrap())
    });
    // Once both providers have sent something, provider one goes silent for good.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy_one.faults.delivered_bytes.load(Ordering::Relaxed) < 1 << 20
        || proxy_two.faults.delivered_bytes.load(Ordering::Relaxed) < 1 << 20
    {
        assert!(
            Instant::now() < deadline,
            "the transfer never used both providers"
        );
        sleep(Duration::from_millis(20)).await;
    }
    proxy_one.faults.stall(true);
    let stalled_at = Instant::now();
    let at_stall = proxy_two.faults.delivered_bytes.load(Ordering::Relaxed);
    let (status, got) = tokio::time::timeout(Duration::from_secs(120), get)
        .await
        .expect("the transfer finished")
        .unwrap();
    let took = stalled_at.elapsed();
    assert_eq!(status, 200);
    assert!(got == bytes, "identical bytes, finished by provider two");
    let after = proxy_two.faults.delivered_bytes.load(Ordering::Relaxed) - at_stall;
    assert!(
        after >= 2 << 20,
        "provider two carried the rest ({after} bytes after the stall)"
    );
    drop(two);
    println!("12 MiB: provider one stalled mid-transfer; provider two finished it {took:?} later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_transfer_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let paced = "[p2p]\npeer_bytes_per_sec = 2097152\nfetch_timeout_ms = 120000\n";
    for n in ["provider", "reader"] {
        config(&dir.path().join(n), paced);
    }
    let provider = Node::start(&dir.path().join("provider"), &[]).await;
    let provider_addr = provider.p2p_addr().await;
    let proxy = FaultProxy::tcp(socket(&provider_addr)).await;
    proxy
        .faults
        .delay(Duration::from_millis(5), Duration::from_millis(20));
    let via = through(&provider_addr, &proxy);
    let reader = Node::start(&dir.path().join("reader"), &["--bootstrap", &via]).await;
    reader
        .wait_status("the provider as a peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    let bytes = data(8 << 20, 73);
    let addr = provider.put_announced(bytes.clone()).await;
    let (url, client) = (format!("{}/o/{addr}", reader.url), reader.anonymous());
    let get = tokio::spawn(async move {
        let res = client.get(url).send().await.unwrap();
        (res.status().as_u16(), res.bytes().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.faults.delivered_bytes.load(Ordering::Relaxed) < 2 << 20 {
        assert!(
            Instant::now() < deadline,
            "the transfer never went through the proxy"
        );
        sleep(Duration::from_millis(20)).await;
    }
    proxy.faults.reset();
    let reset_at = Instant::now();
    let (status, got) = tokio::time::timeout(Duration::from_secs(120), get)
        .await
        .expect("the transfer finished")
        .unwrap();
    assert_eq!(status, 200);
    assert!(got == bytes, "identical bytes after the reset");
    let dead = reader.metric("p2p_peer_faults_total{fault=\"dead\"}").await;
    assert!(
        dead >= 1.0,
        "the reset cut requests in flight ({dead} dead)"
    );
    println!(
        "8 MiB: the connection was reset 2 MiB in; the transfer finished {:?} later",
        reset_at.elapsed()
    );
}
