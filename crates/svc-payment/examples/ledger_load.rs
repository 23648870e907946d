//! Load generator for the ledger (`testing/perf/payment.sh` runs it): `SENDERS` concurrent
//! tasks charge reads through the payment service on a file-backed ledger (every answer
//! waits for its batch's fsync), then the proof-of-work check is timed.
//!
//!   cargo run --release -p svc-payment --example ledger_load -- DIR [SENDERS] [TRANSFERS]
//!
//! Prints `ledger: N durable transfers in S s = R/s from K senders; p50 X ms, p99 Y ms;
//! C transfers per commit` and `pow: verify N ns, challenge M ns (bits B)`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench tool: a panic is its error

use std::time::{Duration, Instant};

use ron_auth::Holder;
use ron_kernel::{Config, Metrics};
use svc_payment::ledger::Ledger;
use svc_payment::pow::Puzzles;
use svc_payment::{Payment, PaymentSection, Priced};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: ledger_load DIR [SENDERS] [TRANSFERS]"),
    );
    let senders: usize = args.get(2).map_or(64, |a| a.parse().unwrap());
    let transfers: usize = args.get(3).map_or(200_000, |a| a.parse().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.redb");
    let _ = std::fs::remove_file(&path);
    let config = Config::builder()
        .register::<PaymentSection>()
        .set("payment.per_request.get", 1)
        .build()
        .unwrap();
    let payment = Payment::new(Ledger::open(&path).unwrap(), config);
    let metrics = Metrics::new();
    payment.metrics().register(&metrics);
    let stop = CancellationToken::new();
    let service = tokio::spawn(payment.clone().run(stop.clone()));
    let users: Vec<Holder> = (0..senders).map(|i| Holder::Key([i as u8; 32])).collect();
    for u in &users {
        payment.grant(&u.account(), transfers as u64).await.unwrap();
    }
    let commits_before = commits(&metrics);
    let each = transfers / senders;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for u in users {
        let p = payment.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                p.admit(Some(u), None, Priced::Get, "/o/x", 1024)
                    .await
                    .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    let commits = commits(&metrics) - commits_before;
    println!(
        "ledger: {} durable transfers in {secs:.2} s = {:.0}/s from {senders} senders; p50 {:.2} ms, p99 {:.2} ms; {:.1} transfers per commit",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        lat.len() as f64 / commits.max(1.0)
    );
    let audit = payment.ledger().audit(u64::MAX / 2).unwrap();
    assert!(audit.holds(), "{audit:?}");
    stop.cancel();
    service.await.unwrap().unwrap();

    // Proof of work: the node's side of one anonymous read.
    let puzzles = Puzzles::default();
    let bits = 8;
    let n = 20_000;
    let answers: Vec<String> = (0..n)
        .map(|_| {
            let c = puzzles.challenge("/o/b3:00", bits, 0);
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&c.challenge, &mut bytes).unwrap();
            ron_proto::pow::answer(
                &bytes,
                ron_proto::pow::solve(&bytes, bits, u64::MAX).unwrap(),
            )
        })
        .collect();
    let t = Instant::now();
    for a in &answers {
        assert_eq!(
            puzzles.check(a, "/o/b3:00", 1),
            svc_payment::pow::Verdict::Accepted
        );
    }
    let verify = t.elapsed().as_nanos() / n as u128;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(puzzles.challenge("/o/b3:00", 16, 0));
    }
    let issue = t.elapsed().as_nanos() / n as u128;
    println!(
        "pow: verify {verify} ns, challenge {issue} ns (bits {bits} verified, each answer remembered)"
    );
}

fn commits(metrics: &Metrics) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("payment_commits_total ")?.parse().ok())
        .unwrap_or(0.0)
}
