//! Payment on a real node: credits granted by the owner pay for reads at the configured price,
//! a read without them is `402 payment_required` with the price and the balance, the ledger
//! stays balanced through `kill -9` during a storm of charged reads, and anonymous reads with
//! `payment.anonymous = "pow"` need a proof of work that `ron get` solves and that is
//! accepted once.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::{BIN, Node, ok_stdout};
use tokio::time::Instant;

/// The usage rows of `identity` (hourly), summed: (requests, bytes out), once the roll-up
/// (every second) has them and they reach `at_least` requests (bounded: 20 s).
async fn usage_of(node: &Node, identity: &str, at_least: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get_as(
            node,
            Some(&node.token),
            &format!("/usage?of={identity}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().unwrap();
        let requests: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        let out: u64 = rows.iter().map(|r| r["bytes_out"].as_u64().unwrap()).sum();
        if requests >= at_least || Instant::now() > deadline {
            return (requests, out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A user key (written to `dir/alice.key`), its public text, and a token it mints for reads.
async fn alice(dir: &Path) -> (String, String) {
    let key = dir.join("alice.key");
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(BIN)
            .args(args)
            .output()
            .await
            .unwrap()
    };
    let public = ok_stdout(
        &run(vec![
            "key".into(),
            "gen".into(),
            "--out".into(),
            key.display().to_string(),
        ])
        .await,
    );
    let token = ok_stdout(
        &run(vec![
            "cap".into(),
            "mint".into(),
            "--key".into(),
            key.display().to_string(),
            "--method".into(),
            "get".into(),
            "--method".into(),
            "account".into(),
        ])
        .await,
    );
    (public, token)
}

async fn get_as(node: &Node, token: Option<&str>, path: &str, pow: Option<&str>) -> (u16, Value) {
    let mut req = node.anonymous().get(format!("{}{path}", node.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(p) = pow {
        req = req.header("ron-pow", p);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn balance(node: &Node, of: &str) -> i64 {
    let (status, body) = get_as(
        node,
        Some(&node.token),
        &format!("/credits/balance?of={of}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["balance"].as_i64().unwrap()
}

/// A user's `ron` run against `node`, with `token` (none: anonymous, and no data dir with an
/// owner token either).
async fn ron_as(node: &Node, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("RON_NODE", &node.url)
        .env("RON_DATA_DIR", empty.path())
        .env_remove("RON_TOKEN");
    if let Some(t) = token {
        cmd.env("RON_TOKEN", t);
    }
    cmd.output().await.unwrap()
}

#[tokio::test]
async fn three_credits_pay_for_three_reads_and_the_fourth_is_402() {
    let dir = tempfile::tempdir().unwrap();
    let (public, token) = alice(dir.path()).await;
    let data_dir = dir.path().join("node");
    support::config(
        &data_dir,
        &format!(
            "[auth]\ntrusted_roots = [\"{public}\"]\n[payment]\nper_request = {{ get = 1 }}\n"
        ),
    );
    let node = Node::start(&data_dir, &[]).await;
    let addr = node.put(support::data(1024, 1)).await;
    let path = format!("/o/{addr}");

    // Not granted anything yet: refused, with the price and the balance.
    let (status, body) = get_as(&node, Some(&token), &path, None).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["code"], "payment_required");
    assert_eq!(body["payment"]["price"], 1);
    assert_eq!(body["payment"]["balance"], 0);

    let out = node.cli(&["credits", "grant", "--to", &public, "3"]).await;
    assert!(ok_stdout(&out).contains("balance 3"));
    // Only the owner grants.
    let out = ron_as(
        &node,
        Some(&token),
        &["credits", "grant", "--to", &public, "5"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{out:?}"
    );

    for _ in 0..3 {
        let (status, body) = get_as(&node, Some(&token), &path, None).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = get_as(&node, Some(&token), &path, None).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["payment"]["balance"], 0);
    // `ron get` with the token says so in one line, and exits non-zero.
    let out = ron_as(&node, Some(&token), &["get", &addr, "-o", "-"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("payment_required, HTTP 402"),
        "{out:?}"
    );

    // The owner and anonymous readers are not charged.
    assert_eq!(get_as(&node, Some(&node.token), &path, None).await.0, 200);
    assert_eq!(get_as(&node, None, &path, None).await.0, 200);

    // Alice sees her own account; the ledger is balanced.
    let out = ron_as(&node, Some(&token), &["credits", "balance"]).await;
    assert_eq!(
        ok_stdout(&out),
        format!("{public}: 0 credits (0 available, 0 reserved)")
    );
    let out = ron_as(&node, Some(&token), &["credits", "history"]).await;
    let history = ok_stdout(&out);
    assert_eq!(history.lines().count(), 4, "{history}");
    assert_eq!(
        history
            .lines()
            .filter(|l| l.contains(" -1 get posted"))
            .count(),
        3,
        "{history}"
    );
    assert!(
        history.lines().last().unwrap().contains(" +3 grant posted"),
        "{history}"
    );
    // She cannot read the node's accounts.
    let (status, _) = get_as(
        &node,
        Some(&token),
        "/credits/balance?of=node/revenue",
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(balance(&node, "node/issuance").await, -3);
    assert_eq!(balance(&node, "node/revenue").await, 3);
    assert_eq!(balance(&node, &public).await, 0);
    assert_eq!(node.metric("payment_refused_total").await, 3.0);

    // Usage: the three reads served to alice (from the ledger), the anonymous one by address.
    assert_eq!(usage_of(&node, &public, 3).await, (3, 3 * 1024));
    assert_eq!(usage_of(&node, "anon/127.0.0.1", 1).await, (1, 1024));
    let out = ron_as(&node, Some(&token), &["usage"]).await;
    let rows = ok_stdout(&out);
    assert!(
        rows.contains(&format!(
            "{public} 3 requests, 0 B in, 3072 B out, 0 messages"
        )),
        "{rows}"
    );
    // Alice sees only her own.
    let (status, _) = get_as(&node, Some(&token), "/usage?of=anon/127.0.0.1", None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn an_hourly_quota_is_429_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    support::config(&data_dir, "[accounting]\nquota_requests_per_hour = 2\n");
    let node = Node::start(&data_dir, &[]).await;
    let addr = node.put(support::data(100, 5)).await;
    let path = format!("/o/{addr}");
    for _ in 0..2 {
        assert_eq!(get_as(&node, None, &path, None).await.0, 200);
    }
    let res = node
        .anonymous()
        .get(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded");
    // The owner has no quota.
    assert_eq!(get_as(&node, Some(&node.token), &path, None).await.0, 200);
    assert_eq!(usage_of(&node, "anon/127.0.0.1", 2).await.0, 2);
}

#[tokio::test]
async fn the_ledger_stays_balanced_through_kill_9_during_charged_reads() {
    kill_storm(true).await;
}

/// With `durable_charges = false` a crash may lose the charges of the last milliseconds'
/// reads (served, not charged), and the ledger is balanced all the same.
#[tokio::test]
async fn charges_committed_every_10_ms_survive_kill_9_balanced() {
    kill_storm(false).await;
}

async fn kill_storm(durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (public, token) = alice(dir.path()).await;
    let data_dir = dir.path().join("node");
    support::config(
        &data_dir,
        &format!(
            "[auth]\ntrusted_roots = [\"{public}\"]\n[payment]\nper_request = {{ get = 1 }}\ndurable_charges = {durable}\n"
        ),
    );
    let mut node = Node::start(&data_dir, &[]).await;
    let addr = node.put(support::data(1024, 2)).await;
    let granted = 100_000;
    ok_stdout(
        &node
            .cli(&["credits", "grant", "--to", &public, &granted.to_string()])
            .await,
    );
    let mut served_total = 0;
    for round in 0..3 {
        // 32 readers for a while, then kill -9 with reads in flight.
        let served = Arc::new(AtomicU64::new(0));
        let stop = Instant::now() + Duration::from_millis(700);
        let mut readers = Vec::new();
        for _ in 0..32 {
            let (client, url, token, served) = (
                node.anonymous(),
                format!("{}/o/{addr}", node.url),
                token.clone(),
                served.clone(),
            );
            readers.push(tokio::spawn(async move {
                for _ in 0..10_000 {
                    if Instant::now() > stop {
                        break;
                    }
                    match client.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status() == 200 => {
                            if r.bytes().await.is_ok_and(|b| b.len() == 1024) {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => panic!("a charged read answered {}", r.status()),
                        Err(_) => break,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        node.signal("-KILL");
        for r in readers {
            r.await.unwrap();
        }
        let _ = node.child.wait().await;
        served_total += served.load(Ordering::Relaxed);
        node = Node::start(&data_dir, &[]).await;
        // Every read served was charged; at most the reads in flight at the kill were charged
        // and not received.
        let charged = balance(&node, "node/revenue").await;
        let left = balance(&node, &public).await;
        assert_eq!(balance(&node, "node/issuance").await, -granted);
        assert_eq!(
            left + charged,
            granted,
            "round {round}: the ledger is balanced"
        );
        let served = i64::try_from(served_total).unwrap();
        // Durable: every read served was charged first. Otherwise the last milliseconds'
        // charges may be lost.
        assert!(
            !durable || charged >= served,
            "round {round}: {served} served, {charged} charged"
        );
        assert!(
            charged <= served + 32 * (round + 1),
            "round {round}: {served} served, {charged} charged"
        );
        // Usage is read from the ledger: exactly what was charged, never twice after a crash.
        let (requests, bytes_out) = usage_of(&node, &public, u64::try_from(charged).unwrap()).await;
        assert_eq!(requests, u64::try_from(charged).unwrap(), "round {round}");
        assert_eq!(bytes_out, requests * 1024);
        println!(
            "round {round}: {served} reads served, {charged} credits charged, {requests} requests metered"
        );
    }
    assert!(served_total > 0);
}

#[tokio::test]
async fn anonymous_reads_need_a_proof_of_work_that_ron_get_solves() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    support::config(&data_dir, "[payment]\nanonymous = \"pow\"\npow_bits = 12\n");
    let node = Node::start(&data_dir, &[]).await;
    let bytes = support::data(4096, 3);
    let addr = node.put(bytes.clone()).await;
    let path = format!("/o/{addr}");

    // curl: 402, and the JSON says what to do.
    let (status, body) = get_as(&node, None, &path, None).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["code"], "pow_required");
    assert!(
        body["message"].as_str().unwrap().contains("ron-pow"),
        "{body}"
    );
    let challenge = &body["payment"]["pow"];
    assert_eq!(challenge["bits"], 12);

    // An answer is accepted once.
    let mut c = [0u8; 32];
    hex::decode_to_slice(challenge["challenge"].as_str().unwrap(), &mut c).unwrap();
    let answer = ron_proto::pow::answer(&c, ron_proto::pow::solve(&c, 12, u64::MAX).unwrap());
    let (status, _) = get_as(&node, None, &path, Some(&answer)).await;
    assert_eq!(status, 200);
    let (status, body) = get_as(&node, None, &path, Some(&answer)).await;
    assert_eq!(status, 402);
    assert!(
        body["message"].as_str().unwrap().contains("used already"),
        "{body}"
    );
    // Nor does it open another object.
    let other = node.put(support::data(10, 4)).await;
    let (status, body) = get_as(&node, None, &format!("/o/{other}"), Some(&answer)).await;
    assert_eq!(status, 402);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not answer"),
        "{body}"
    );

    // `ron get` solves it by itself.
    let out_file = dir.path().join("got");
    let out = ron_as(
        &node,
        None,
        &["get", &addr, "-o", out_file.to_str().unwrap()],
    )
    .await;
    ok_stdout(&out);
    assert_eq!(std::fs::read(&out_file).unwrap(), bytes);
    // The owner needs no work.
    assert_eq!(get_as(&node, Some(&node.token), &path, None).await.0, 200);
    assert!(node.metric("pow_accepted_total").await >= 2.0);
    assert!(node.metric("pow_refused_total").await >= 2.0);
}

/// Answers no peer: the freeloader only takes.
struct Nothing;

impl svc_dht::Source for Nothing {
    fn size(&self, _: ron_proto::Address) -> futures_util::future::BoxFuture<'static, Option<u64>> {
        Box::pin(async { None })
    }

    fn encoded(
        &self,
        _: ron_proto::Address,
        _: u64,
        _: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<(u64, bytes::Bytes)>, String>> {
        Box::pin(async { Ok(None) })
    }
}

/// `keypair`'s cheque of `cumulative` credits in all to `to`.
fn cheque(
    keypair: &svc_dht::identity::Keypair,
    to: &svc_dht::PeerId,
    cumulative: u64,
) -> ron_proto::oap::settle::Cheque {
    let issuer = svc_payment::peer_key(&keypair.public().to_peer_id()).unwrap();
    let beneficiary = svc_payment::peer_key(to).unwrap();
    let message = ron_proto::oap::settle::signed_bytes(&issuer, &beneficiary, cumulative);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&keypair.sign(&message).unwrap());
    ron_proto::oap::settle::Cheque {
        issuer,
        beneficiary,
        cumulative,
        signature,
    }
}

/// The node's ledger balance of `account`, once two ticks of the committer have passed (ranges
/// reach the ledger each second).
async fn settled_balance(node: &Node, account: &str) -> i64 {
    tokio::time::sleep(Duration::from_millis(2100)).await;
    balance(node, account).await
}

#[tokio::test]
async fn peers_settle_ranges_with_cheques_and_forged_ones_are_refused() {
    use svc_dht::{TransferReply, TransferRequest};
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 1 credit per MiB, a cheque at 16 owed, refused at 64 owed.
    let origin = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = origin.p2p_addr().await;
    let origin_id: svc_dht::PeerId = seed.rsplit('/').next().unwrap().parse().unwrap();
    let reader = Node::start(&dir.path().join("n2"), &["--bootstrap", &seed]).await;
    let reader_id: String = reader.status().await["p2p"]["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    reader
        .wait_status("a peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;

    // Node 2 fetches 100 MiB from node 1, paying as it goes.
    let bytes = support::data(100 << 20, 19);
    let addr = origin.put_announced(bytes.clone()).await;
    let (status, got) = reader.get_bytes(&format!("/o/{addr}")).await;
    assert_eq!(status, 200);
    assert!(got == bytes, "the 100 MiB arrived whole");
    // The last cheque may still be on its way.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sent = loop {
        let sent = reader.metric("payment_cheques_sent_total").await;
        let cashed = origin.metric("payment_cheques_cashed_total").await;
        if sent == cashed {
            break sent;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 wrote {sent} cheques, node 1 cashed {cashed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sent >= 5.0,
        "100 MiB at a cheque per 16 owed: {sent} cheques"
    );
    assert_eq!(origin.metric("payment_peer_refused_total").await, 0.0);
    // The two ledgers agree: what node 1 says node 2 owes, node 2 says it owes node 1.
    let at_origin = settled_balance(&origin, &format!("peer/{reader_id}")).await;
    let at_reader = balance(&reader, &format!("peer/{origin_id}")).await;
    assert_eq!(
        at_origin, -at_reader,
        "both nodes count the same ranges and cheques"
    );
    assert!(
        (0..16).contains(&at_reader),
        "node 2 owes less than a cheque: {at_reader}"
    );
    let paid = -balance(&origin, "node/cheques-in").await;
    assert_eq!(paid, balance(&reader, "node/cheques-out").await);
    assert!(
        (84..=100).contains(&paid),
        "100 MiB paid but the last few: {paid}"
    );
    let (ranges, out) = usage_of(&origin, &format!("peer/{reader_id}"), 190).await;
    assert!(
        out >= 99 << 20,
        "node 1's usage shows node 2's ranges: {ranges} ranges, {out} bytes"
    );
    let peers = ok_stdout(&origin.cli(&["credits", "peers"]).await);
    assert!(peers.contains(&reader_id), "{peers}");

    // A peer that takes ranges and never pays is refused once it owes 64.
    // A libp2p peer in this process: it takes ranges and settles nothing by itself.
    let (thief, key, _stop) = support::in_process_peer(&seed, Arc::new(Nothing));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !thief.connected().await.unwrap().contains(&origin_id) {
        assert!(Instant::now() < deadline, "the freeloader never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: ron_proto::Address = addr.parse().unwrap();
    let range = |i: u64| TransferRequest::Range {
        addr,
        start: i * (512 << 10),
        end: (i + 1) * (512 << 10),
    };
    let mut served = 0;
    let refusal = loop {
        match thief.request(origin_id, range(served)).await.unwrap() {
            TransferReply::Range { .. } => served += 1,
            TransferReply::Error { kind, body } => break (kind, body),
            other => panic!("{other:?}"),
        }
        assert!(served <= 200, "never refused");
    };
    assert_eq!(served, 128, "64 MiB served, then refused");
    assert_eq!(refusal.0, ron_proto::ErrorKind::RateLimited);
    assert_eq!(
        refusal.1.payment.unwrap().price,
        Some(64),
        "{}",
        refusal.1.message
    );

    // Its cheques: forged (a bad signature; another key's), then a good one, then replayed and lower.
    let cash = |c: ron_proto::oap::settle::Cheque| {
        let thief = thief.clone();
        async move {
            thief
                .request(origin_id, TransferRequest::Cheque(c))
                .await
                .unwrap()
        }
    };
    let mut bad = cheque(&key, &origin_id, 64);
    bad.signature[0] ^= 1;
    let other = svc_dht::identity::Keypair::generate_ed25519();
    for forged in [bad, cheque(&other, &origin_id, 64)] {
        let r = cash(forged).await;
        assert!(
            matches!(
                r,
                TransferReply::ChequeRefused {
                    kind: ron_proto::ErrorKind::Forbidden,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    assert!(
        matches!(
            thief.request(origin_id, range(served)).await.unwrap(),
            TransferReply::Error { .. }
        ),
        "still refused"
    );
    let good = cheque(&key, &origin_id, 64);
    assert_eq!(
        cash(good.clone()).await,
        TransferReply::Cashed(ron_proto::oap::settle::Cashed {
            cumulative: 64,
            credited: 64
        })
    );
    for stale in [good, cheque(&key, &origin_id, 10)] {
        let r = cash(stale).await;
        assert!(
            matches!(
                r,
                TransferReply::ChequeRefused {
                    kind: ron_proto::ErrorKind::Conflict,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    assert!(
        matches!(
            thief.request(origin_id, range(served)).await.unwrap(),
            TransferReply::Range { .. }
        ),
        "settled: served again"
    );
    assert_eq!(origin.metric("payment_cheques_forged_total").await, 2.0);
    assert_eq!(origin.metric("payment_cheques_stale_total").await, 2.0);
    assert!(origin.metric("payment_peer_refused_total").await >= 2.0);
    println!(
        "100 MiB between two nodes settled with {sent} cheques ({paid} credits); a freeloader refused at 64 owed; 2 forged and 2 stale cheques refused"
    );
}

/// Storage in usage: each minute the node stores an upload, its bytes count for the uploader
/// (byte-hours: a sixtieth of a byte-minute). An object deleted before the tally counts
/// nothing. Waits for a minute to end (up to about a minute).
#[tokio::test]
async fn storage_is_tallied_in_byte_hours_for_the_uploader() {
    let dir = tempfile::tempdir().unwrap();
    let (public, _) = alice(dir.path()).await;
    let data_dir = dir.path().join("node");
    support::config(
        &data_dir,
        &format!("[auth]\ntrusted_roots = [\"{public}\"]\n"),
    );
    let node = Node::start(&data_dir, &[]).await;
    let key = dir.path().join("alice.key").display().to_string();
    let out = tokio::process::Command::new(BIN)
        .args(["cap", "mint", "--key", &key, "--method", "put"])
        .output()
        .await
        .unwrap();
    let put_token = ok_stdout(&out);
    let upload = |len: usize, seed: u64| {
        let (node, token) = (&node, put_token.clone());
        async move {
            let res = node
                .anonymous()
                .post(format!("{}/put", node.url))
                .bearer_auth(token)
                .body(support::data(len, seed))
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success(), "{}", res.status());
            let body: Value = res.json().await.unwrap();
            body["address"].as_str().unwrap().to_owned()
        }
    };
    // Uploaded and deleted well inside one minute, so no tally falls between them.
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if second >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
    upload(1 << 20, 41).await;
    let gone = upload(3 << 20, 42).await;
    let res = node
        .anonymous()
        .delete(format!("{}/o/{gone}", node.url))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());

    let deadline = Instant::now() + Duration::from_secs(130);
    let row = loop {
        let (status, body) = get_as(
            &node,
            Some(&node.token),
            &format!("/usage?of={public}&window=minute"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let stored = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["byte_hours"].as_f64().unwrap() > 0.0)
            .cloned();
        if let Some(row) = stored {
            break row;
        }
        assert!(Instant::now() < deadline, "no storage tallied: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // One minute of the 1 MiB object; the deleted one counts nothing.
    assert_eq!(
        row["byte_hours"].as_f64().unwrap(),
        f64::from(1u32 << 20) / 60.0
    );
    let out = node.cli(&["usage", "--of", &public, "--minute"]).await;
    assert!(ok_stdout(&out).contains("GiB-hours stored"));
}
