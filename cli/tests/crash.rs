//! Crash-only storage: a node taking concurrent uploads is killed with SIGKILL at random
//! moments and restarted. Every upload that was acknowledged (2xx) must read back and verify;
//! an upload that was not may be absent or complete, never partial.
//!
//! `RON_CRASH_CYCLES=200 cargo test -p ron --test crash -- --nocapture` runs a longer campaign.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ron_proto::Address;
use support::{Node, data};

const WRITERS: u64 = 4;

/// An upload: its bytes are `data(len, seed)`.
#[derive(Debug, Clone, Copy)]
struct Upload {
    seed: u64,
    len: usize,
}

#[derive(Default)]
struct Ledger {
    acked: BTreeMap<Address, Upload>,
    attempted: BTreeMap<Address, Upload>,
}

fn pick(rng: &mut fastrand::Rng) -> Upload {
    let len = match rng.u8(0..4) {
        0 => rng.usize(0..4096),
        1 => rng.usize(4096..(256 << 10)),
        _ => rng.usize((256 << 10)..(5 << 20)),
    };
    Upload {
        seed: rng.u64(..),
        len,
    }
}

/// GETs `addr` and checks it hashes to its address and has the right size.
async fn fetch(node: &Node, addr: &Address) -> Option<Result<usize, String>> {
    let res = node
        .http
        .get(format!("{}/o/{addr}", node.url))
        .send()
        .await
        .ok()?;
    if res.status() == 404 {
        return None;
    }
    if res.status() != 200 {
        return Some(Err(format!("status {}", res.status())));
    }
    match res.bytes().await {
        Ok(body) if Address::of(&body) == *addr => Some(Ok(body.len())),
        Ok(body) => Some(Err(format!(
            "{} bytes that hash to {}",
            body.len(),
            Address::of(&body)
        ))),
        Err(e) => Some(Err(format!("body broke off: {e}"))),
    }
}

async fn verify(node: &Node, ledger: &Ledger, check_all: bool, rng: &mut fastrand::Rng) {
    for (addr, up) in &ledger.acked {
        if !check_all && rng.u8(0..4) != 0 {
            continue; // a sample per cycle; everything at the end
        }
        match fetch(node, addr).await {
            Some(Ok(len)) => assert_eq!(len, up.len, "{addr}"),
            Some(Err(e)) => panic!("acknowledged {addr} reads back wrong: {e}"),
            None => panic!("acknowledged {addr} was lost"),
        }
    }
    for (addr, up) in &ledger.attempted {
        if ledger.acked.contains_key(addr) {
            continue;
        }
        match fetch(node, addr).await {
            None => {}
            Some(Ok(len)) => assert_eq!(len, up.len, "{addr}"),
            Some(Err(e)) => panic!("unacknowledged {addr} is visible but partial: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_sigkill() {
    let cycles: u32 = std::env::var("RON_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // The campaign reads everything back as fast as it can from one address: per-client
    // limits off (this test is about durability, not admission).
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(
        data_dir.join("ron.toml"),
        "[limits]\nper_peer_rps = 0\nper_peer_bytes_per_sec = 0\nper_peer_streams = 0\n",
    )
    .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = fastrand::Rng::with_seed(0x5eed);

    for cycle in 0..cycles {
        let node = Node::start(&data_dir, &[]).await;
        {
            let snapshot = {
                let l = ledger.lock().unwrap();
                Ledger {
                    acked: l.acked.clone(),
                    attempted: l.attempted.clone(),
                }
            };
            verify(&node, &snapshot, false, &mut rng).await;
        }
        let tmp = data_dir.join("store").join("tmp");
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "tmp/ swept at start"
        );

        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (ledger, url, http) = (ledger.clone(), node.url.clone(), node.http.clone());
            let mut wrng = fastrand::Rng::with_seed(u64::from(cycle) * 1000 + w);
            writers.spawn(async move {
                loop {
                    let up = pick(&mut wrng);
                    let bytes = data(up.len, up.seed);
                    let addr = Address::of(&bytes);
                    ledger.lock().unwrap().attempted.insert(addr, up);
                    match http.post(format!("{url}/put")).body(bytes).send().await {
                        Ok(res) if res.status().is_success() => {
                            ledger.lock().unwrap().acked.insert(addr, up);
                        }
                        Ok(res) => panic!("upload refused: {}", res.status()),
                        Err(_) => return, // the node died under us
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..700))).await;
        let mut node = node;
        node.signal("-KILL");
        let status = node.child.wait().await.unwrap();
        assert!(!status.success(), "killed, not exited");
        while writers.join_next().await.is_some() {}
    }

    let node = Node::start(&data_dir, &[]).await;
    let summary = {
        let l = ledger.lock().unwrap();
        Ledger {
            acked: l.acked.clone(),
            attempted: l.attempted.clone(),
        }
    };
    assert!(
        summary.acked.len() as u32 >= cycles,
        "too little load to mean anything: {} acked",
        summary.acked.len()
    );
    verify(&node, &summary, true, &mut rng).await;
    let stat = node.status().await;
    eprintln!(
        "crash test: {cycles} SIGKILLs, {} uploads acknowledged, {} attempted, {} objects stored",
        summary.acked.len(),
        summary.attempted.len(),
        stat["storage"]["objects"]
    );
}
