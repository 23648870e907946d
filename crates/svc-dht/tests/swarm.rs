//! Swarms on 127.0.0.1 in one process: a chain bootstrapped one from the next, provider
//! lookups across it, objects fetched and verified group by group, a missing object, a
//! provider that lies part-way through an object, and one that dies mid-transfer.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{address_of, node};
use ron_proto::Address;
use svc_dht::{DhtError, DhtHandle, GROUP_BYTES, Transferred};
use tokio::sync::mpsc;

/// Fetches `addr` from `providers`; `on_bytes` sees the running count of bytes received.
async fn fetch_with(
    from: &DhtHandle,
    providers: &[libp2p::PeerId],
    addr: Address,
    mut on_bytes: impl FnMut(usize) + Send + 'static,
) -> Result<(Vec<u8>, Transferred), DhtError> {
    let probe = from.probe(addr, providers, 1 << 30).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let collect = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(bytes) = rx.recv().await {
            got.extend_from_slice(&bytes);
            on_bytes(got.len());
        }
        got
    });
    let transferred = from.transfer(probe, providers, tx).await?;
    let got = collect.await.unwrap();
    // Every fetch (also those past a liar or a dead provider) hands back the object's whole
    // outboard, assembled from the pairs that verified: the one hashing the bytes would give.
    let block = bao_tree::BlockSize::from_chunk_log(ron_proto::oap::GROUP_CHUNK_LOG);
    let outboard = bao_tree::io::outboard::PostOrderMemOutboard::create(&got[..], block);
    assert_eq!(outboard.root.as_bytes(), addr.as_bytes());
    assert!(
        transferred.outboard == outboard.data,
        "the assembled outboard differs"
    );
    Ok((got, transferred))
}

async fn fetch(
    from: &DhtHandle,
    providers: &[libp2p::PeerId],
    addr: Address,
) -> Result<(Vec<u8>, Transferred), DhtError> {
    fetch_with(from, providers, addr, |_| {}).await
}

async fn wait_for_peers(node: &DhtHandle, n: usize) {
    for _ in 0..250 {
        if node.status().await.unwrap().peers.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never connected to {n} peers");
}

fn pattern(n: u32, seed: u32) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| (i.wrapping_mul(seed) % 251) as u8)
            .collect::<Vec<_>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_across_the_network_and_their_bytes_verified() {
    let big = pattern(3_000_000, 7);
    let small = Bytes::from_static(b"hello world");
    let empty = Bytes::new();
    let a = node(&[big.clone(), small.clone(), empty.clone()], None, 0, &[]);
    let b = node(&[], None, 0, &[address_of(&a.handle).await]);
    let c = node(&[], None, 0, &[address_of(&b.handle).await]);
    let (a, c) = (&a.handle, &c.handle);
    wait_for_peers(&b.handle, 2).await;
    a.provide(Address::of(&big)).await.unwrap();
    a.provide(Address::of(&small)).await.unwrap();

    // C learns of A only through B.
    let mut providers = Vec::new();
    for _ in 0..50 {
        providers = c.providers(Address::of(&big)).await.unwrap();
        if !providers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(providers, vec![a.peer_id()]);
    let (got, report) = fetch(c, &providers, Address::of(&big)).await.unwrap();
    assert!(got == big, "3 MB fetched in ranges and verified");
    assert_eq!(report.delivered, vec![(a.peer_id(), 3_000_000)]);
    assert!(c.score(&a.peer_id()) > 0, "verified ranges score up");
    for object in [&small, &empty] {
        let (got, _) = fetch(c, &providers, Address::of(object)).await.unwrap();
        assert_eq!(got, object.to_vec());
    }
    // Over the caller's limit: refused before any byte moves.
    match c.probe(Address::of(&big), &providers, 1_000_000).await {
        Err(DhtError::TooLarge { size, max }) => assert_eq!((size, max), (3_000_000, 1_000_000)),
        other => panic!("{other:?}"),
    }

    // Nobody has this one: the lookup ends with no provider, and asking A directly is 404.
    let nothing = Address::of(b"nobody has this");
    assert_eq!(c.providers(nothing).await.unwrap(), Vec::new());
    match fetch(c, &providers, nothing).await {
        Err(DhtError::Unavailable(message)) => assert!(message.contains("no object"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_lies_part_way_is_caught_at_the_group_and_the_honest_one_finishes() {
    let object = pattern(3_000_000, 13);
    let addr = Address::of(&object);
    // The liar's size proof (the last group) is honest; from byte 600,000 on it lies.
    let liar = node(std::slice::from_ref(&object), Some(600_000), 0, &[]);
    let honest = node(std::slice::from_ref(&object), None, 0, &[]);
    let c = node(
        &[],
        None,
        0,
        &[
            address_of(&liar.handle).await,
            address_of(&honest.handle).await,
        ],
    );
    let c = &c.handle;
    wait_for_peers(c, 2).await;
    let (l, h) = (liar.handle.peer_id(), honest.handle.peer_id());
    let (got, report) = fetch(c, &[l, h], addr).await.unwrap();
    assert!(got == object, "identical bytes despite the liar");
    assert_eq!(report.faults.len(), 1, "{:?}", report.faults);
    assert!(report.faults[0].contains("lie") && report.faults[0].contains("fails verification"));
    let from = |p| report.delivered.iter().find(|(q, _)| *q == p).unwrap().1;
    // What the liar sent before its first bad group (the one holding byte 600,000) was
    // verified and kept; nothing after it; its proof of the size (the last group) too.
    let before_lies = 600_000 / GROUP_BYTES * GROUP_BYTES + 3_000_000 % GROUP_BYTES;
    assert!(
        from(l) > 0 && from(l) <= before_lies,
        "liar delivered {}",
        from(l)
    );
    assert_eq!(from(l) + from(h), 3_000_000);
    assert!(c.score(&l) < 0 && c.score(&h) > 0);

    // Caught, the liar is not asked for this object again: a second fetch takes every byte
    // from the honest peer, and with the liar alone there is nobody to ask.
    let (got, report) = fetch(c, &[l, h], addr).await.unwrap();
    assert!(got == object);
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    assert_eq!(report.delivered, vec![(h, 3_000_000)]);
    match c.probe(addr, &[l], 1 << 30).await {
        Err(DhtError::Unavailable(why)) => assert!(why.contains("lied about this object"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_resumes_from_another_provider_when_one_dies() {
    let object = pattern(6_000_000, 29);
    let addr = Address::of(&object);
    // Both paced at 1 MiB/s per peer: the transfer takes seconds.
    let dying = node(std::slice::from_ref(&object), None, 1 << 20, &[]);
    let other = node(std::slice::from_ref(&object), None, 1 << 20, &[]);
    let c = node(
        &[],
        None,
        0,
        &[
            address_of(&dying.handle).await,
            address_of(&other.handle).await,
        ],
    );
    let c = &c.handle;
    wait_for_peers(c, 2).await;
    let kill = dying.shutdown.clone();
    let (d, o) = (dying.handle.peer_id(), other.handle.peer_id());
    let (got, report) = fetch_with(c, &[d, o], addr, move |n| {
        if n >= 1 << 20 {
            kill.cancel();
        }
    })
    .await
    .unwrap();
    assert!(got == object, "identical bytes after a provider died");
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.contains(&d.to_string()) && f.contains("dead")),
        "{:?}",
        report.faults
    );
    let from = |p| report.delivered.iter().find(|(q, _)| *q == p).unwrap().1;
    assert!(
        from(d) > 0 && from(d) < 6_000_000,
        "died part-way: {}",
        from(d)
    );
    assert!(from(o) > 3_000_000, "the other finished: {}", from(o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_provider_failing_a_request_is_asked_again_after_a_pause() {
    let object = pattern(3_000_000, 17);
    let addr = Address::of(&object);
    let a = node(std::slice::from_ref(&object), None, 0, &[]);
    let c = node(&[], None, 0, &[address_of(&a.handle).await]);
    wait_for_peers(&c.handle, 1).await;
    // Its answer for the first range fails once, as a dropped connection or a failing disk
    // would: the provider is set aside for a second, then asked again, and delivers.
    a.failures.store(1, std::sync::atomic::Ordering::SeqCst);
    let (got, report) = fetch(&c.handle, &[a.handle.peer_id()], addr).await.unwrap();
    assert!(got == object, "identical bytes from the one provider");
    assert_eq!(report.faults.len(), 1, "{:?}", report.faults);
    assert!(report.faults[0].contains("dead"), "{:?}", report.faults);
    assert_eq!(a.failures.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_lookup_is_hedged_and_the_hedge_answers() {
    use libp2p::kad::{KBucketKey, RecordKey};
    let object = pattern(40_000, 3);
    let addr = Address::of(&object);
    let a = node(std::slice::from_ref(&object), None, 0, &[]);
    let b = node(&[], None, 0, &[address_of(&a.handle).await]);
    wait_for_peers(&b.handle, 1).await;
    a.handle.provide(addr).await.unwrap();
    // B holds A's record (B is A's closest peer in a network of two): the hedge asks B.
    for _ in 0..250 {
        if a.handle.metrics().announced() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.handle.metrics().announced(), 1, "A announced to B");
    for _ in 0..100 {
        if b.handle
            .providers(addr)
            .await
            .unwrap()
            .contains(&a.handle.peer_id())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // C knows B, and three peers closer to the key than B or A that never answer: a socket
    // that accepts and stays silent. Kademlia asks those three first and waits on them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let target = KBucketKey::new(RecordKey::new(addr.as_bytes()));
    let bound = [a.handle.peer_id(), b.handle.peer_id()]
        .into_iter()
        .map(|p| KBucketKey::from(p).distance(&target))
        .min()
        .unwrap();
    let mut bootstrap = vec![address_of(&b.handle).await];
    while bootstrap.len() < 4 {
        let fake = libp2p::PeerId::random();
        if KBucketKey::from(fake).distance(&target) < bound {
            bootstrap.push(
                format!("/ip4/127.0.0.1/tcp/{port}/p2p/{fake}")
                    .parse()
                    .unwrap(),
            );
        }
    }
    let c = node(&[], None, 0, &bootstrap);
    wait_for_peers(&c.handle, 1).await;
    let providers = c.handle.providers(addr).await.unwrap();
    assert_eq!(providers, vec![a.handle.peer_id()]);
    assert_eq!(
        c.handle.metrics().hedges(),
        (1, 1),
        "hedged, and the hedge won"
    );
    // The named provider is reachable from what the hedge answer carried.
    let (got, _) = fetch(&c.handle, &providers, addr).await.unwrap();
    assert!(got == object);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_opens_its_circuit_and_is_skipped() {
    let object = pattern(100_000, 5);
    let addr = Address::of(&object);
    let a = node(std::slice::from_ref(&object), None, 0, &[]);
    let b = node(std::slice::from_ref(&object), None, 0, &[]);
    let c = node(
        &[],
        None,
        0,
        &[address_of(&a.handle).await, address_of(&b.handle).await],
    );
    let board = supervisor::Board::default();
    let guarded = c.handle.clone().guarded_by(&board);
    wait_for_peers(&guarded, 2).await;
    let (dead, alive) = (a.handle.peer_id(), b.handle.peer_id());
    let have = || svc_dht::TransferRequest::Have { addr };
    assert!(guarded.request(dead, have()).await.is_ok());
    a.shutdown.cancel();
    // Its requests fail (connection refused) until the fifth in a row opens its circuit.
    let mut failed = 0;
    let open = loop {
        match guarded.request(dead, have()).await {
            Err(DhtError::CircuitOpen(open)) => break open,
            Err(_) => failed += 1,
            Ok(reply) => panic!("a stopped node answered {reply:?}"),
        }
        assert!(failed <= 5, "still asked after {failed} failures");
    };
    assert_eq!((failed, open.dependency), (5, "peer"));
    let status = board.status();
    let peers = status.iter().find(|s| s.dependency == "peer").unwrap();
    assert_eq!((peers.open, peers.opened), (1, 1));
    // A fetch naming both providers goes to the live one, without asking the dead one.
    let (got, report) = fetch(&guarded, &[dead, alive], addr).await.unwrap();
    assert!(got == object);
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    assert_eq!(report.delivered, [(alive, 100_000)]);
    // The other peer's circuit never opened.
    assert!(guarded.request(alive, have()).await.is_ok());
}
