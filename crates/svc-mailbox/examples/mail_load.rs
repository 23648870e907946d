//! Load for one node's mailboxes (the perf rig `testing/perf/mail.sh` runs it):
//!
//! ```text
//! mail_load URL TOKEN [--senders 64] [--recipients 100] [--messages 100000] [--soak N --pid PID]
//! ```
//!
//! Registers `recipients` fresh keys on the node, seals `messages` envelopes of 1 KiB (the
//! smallest bucket) to them before the clock starts, then sends them from `senders`
//! concurrent HTTP/1.1 connections (each answer is a durable 201) and prints sends/s with the
//! p50/p99 of send-to-ack; then drains every mailbox (fetch 1,000, ack them) and prints
//! deliveries/s. With `--soak N`, sends N more while receivers fetch and acknowledge at the
//! same time, sealing as it goes, and prints the node's resident memory (`/proc/PID`) every
//! tenth of the way.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a load generator: a panic is a report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ron_auth::SigningKey;
use svc_mailbox::envelope::{self, Lane, MAX_BUCKET, MailKey};
use svc_mailbox::record::{MailRecord, MailboxNode};
use svc_mailbox::{now_ms, proof};

struct Args {
    url: String,
    token: String,
    senders: usize,
    recipients: usize,
    messages: usize,
    soak: usize,
    pid: Option<u32>,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let url = it.next().expect("URL");
    let token = it.next().expect("TOKEN");
    let mut a = Args {
        url,
        token,
        senders: 64,
        recipients: 100,
        messages: 100_000,
        soak: 0,
        pid: None,
    };
    while let Some(flag) = it.next() {
        let v = it.next().expect("a value");
        match flag.as_str() {
            "--senders" => a.senders = v.parse().unwrap(),
            "--recipients" => a.recipients = v.parse().unwrap(),
            "--messages" => a.messages = v.parse().unwrap(),
            "--soak" => a.soak = v.parse().unwrap(),
            "--pid" => a.pid = Some(v.parse().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Registers a fresh key on the node: the key and its mail key's public half.
async fn register(http: &reqwest::Client, a: &Args, node: &MailboxNode) -> (SigningKey, [u8; 32]) {
    let key = SigningKey::generate();
    let enc = MailKey::derive(&key).public();
    let record = MailRecord::sign(&key, enc, vec![node.clone()], 1).unwrap();
    let res = http
        .put(format!("{}/mail/register", a.url))
        .bearer_auth(&a.token)
        .body(record.encode().unwrap())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "register: {}", res.status());
    (key, enc)
}

fn seal(from: &SigningKey, to: &(SigningKey, [u8; 32]), n: usize) -> Vec<u8> {
    let text = format!("{n:08} {}", "x".repeat(700));
    envelope::seal(
        from,
        &to.0.public_bytes(),
        &to.1,
        Lane::Message,
        now_ms(),
        text.as_bytes(),
        MAX_BUCKET,
    )
    .unwrap()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Sends every envelope of `work` from `senders` tasks: the latencies (µs) of the 201s, and
/// how many were refused.
async fn send_all(url: &str, senders: usize, work: Arc<Vec<Vec<u8>>>) -> (Vec<u64>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (work, next, url) = (work.clone(), next.clone(), format!("{url}/mail/send"));
        tasks.spawn(async move {
            let http = reqwest::Client::builder().http1_only().build().unwrap();
            let (mut lat, mut refused) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(env) = work.get(i) else { break };
                let t = Instant::now();
                let res = http.post(&url).body(env.clone()).send().await.unwrap();
                if res.status() == 201 {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    refused += 1;
                }
                let _ = res.bytes().await;
            }
            (lat, refused)
        });
    }
    let (mut lat, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (l, f) = r.unwrap();
        lat.extend(l);
        refused += f;
    }
    lat.sort_unstable();
    (lat, refused)
}

/// Fetches and acknowledges `key`'s messages until a fetch comes back empty (or, while
/// `more` is set, keeps polling): how many were delivered.
async fn drain(url: String, key: Arc<SigningKey>, more: Arc<AtomicBool>) -> usize {
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut delivered = 0;
    loop {
        let target = "/mail/fetch?limit=1000";
        let h = proof::sign(&key, "POST", target, now_ms() / 1000, b"");
        let res = http
            .post(format!("{url}{target}"))
            .header(proof::HEADER, h)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        let ids: Vec<serde_json::Value> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let _ = b64.decode(m["envelope"].as_str().unwrap()).unwrap();
                m["id"].clone()
            })
            .collect();
        if ids.is_empty() {
            if more.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            return delivered;
        }
        delivered += ids.len();
        let ack = serde_json::to_vec(&serde_json::json!({ "ids": ids })).unwrap();
        let h = proof::sign(&key, "POST", "/mail/ack", now_ms() / 1000, &ack);
        let res = http
            .post(format!("{url}/mail/ack"))
            .header(proof::HEADER, h)
            .body(ack)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn drain_all(url: &str, keys: &[Arc<SigningKey>], more: Arc<AtomicBool>) -> (usize, f64) {
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        tasks.spawn(drain(url.to_owned(), key.clone(), more.clone()));
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    (total, t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    // One rustls provider for the process (the HTTP client's TLS, unused on http://).
    ron_transport::install_default_provider();
    let a = args();
    let http = reqwest::Client::new();
    let node: serde_json::Value = http
        .get(format!("{}/mail/node", a.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = MailboxNode {
        peer: node["peer"].as_str().unwrap().to_owned(),
        addrs: vec![],
    };
    let mut recipients = Vec::new();
    for _ in 0..a.recipients {
        recipients.push(register(&http, &a, &node).await);
    }
    let senders: Vec<SigningKey> = (0..a.senders).map(|_| SigningKey::generate()).collect();
    let work: Vec<Vec<u8>> = (0..a.messages)
        .map(|n| seal(&senders[n % a.senders], &recipients[n % a.recipients], n))
        .collect();
    let t = Instant::now();
    let (lat, refused) = send_all(&a.url, a.senders, Arc::new(work)).await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "send: {} durable sends in {secs:.2} s = {:.0}/s from {} senders; p50 {:.2} ms, p99 {:.2} ms; {refused} refused",
        lat.len(),
        lat.len() as f64 / secs,
        a.senders,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    let keys: Vec<Arc<SigningKey>> = recipients.into_iter().map(|(k, _)| Arc::new(k)).collect();
    let (n, secs) = drain_all(&a.url, &keys, Arc::new(AtomicBool::new(false))).await;
    println!(
        "deliver: {n} fetched and acknowledged in {secs:.2} s = {:.0}/s",
        n as f64 / secs
    );
    if a.soak > 0 {
        soak(&a, &keys, &senders).await;
    }
}

/// Sends `a.soak` messages while the recipients fetch and acknowledge, printing the node's
/// memory every tenth.
async fn soak(a: &Args, keys: &[Arc<SigningKey>], senders: &[SigningKey]) {
    let more = Arc::new(AtomicBool::new(true));
    let receivers = {
        let (url, keys, more) = (a.url.clone(), keys.to_vec(), more.clone());
        tokio::spawn(async move { drain_all(&url, &keys, more).await })
    };
    let recipients: Vec<(SigningKey, [u8; 32])> = keys
        .iter()
        .map(|k| {
            let key = SigningKey::from_text(&k.to_text()).unwrap();
            let enc = MailKey::derive(&key).public();
            (key, enc)
        })
        .collect();
    let t = Instant::now();
    let step = a.soak.div_ceil(10);
    let mut sent = 0;
    println!("soak: {:>9} sent, node RSS {:.0} MiB", 0, rss_mib(a.pid));
    while sent < a.soak {
        let n = step.min(a.soak - sent);
        let work: Vec<Vec<u8>> = (sent..sent + n)
            .map(|i| {
                seal(
                    &senders[i % senders.len()],
                    &recipients[i % recipients.len()],
                    i,
                )
            })
            .collect();
        let (_, refused) = send_all(&a.url, a.senders, Arc::new(work)).await;
        sent += n;
        println!(
            "soak: {sent:>9} sent, node RSS {:.0} MiB, {refused} refused, {:.0} s",
            rss_mib(a.pid),
            t.elapsed().as_secs_f64()
        );
    }
    more.store(false, Ordering::Relaxed);
    let (delivered, _) = receivers.await.unwrap();
    println!(
        "soak: {sent} sent, {delivered} delivered while sending, in {:.0} s",
        t.elapsed().as_secs_f64()
    );
}
