//! The overlay actor through its handle: commands, admission, backpressure, supervision, and
//! damage answered as damage, a stalled disk failed fast by its circuit.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ron_kernel::health::Duty;
use ron_kernel::{Bus, Config, HealthState, Metrics};
use ron_proto::{Address, ErrorKind, Failure};
use supervisor::circuit::State;
use supervisor::{Board, CircuitPolicy, Policy, Supervisor, mailbox};
use svc_index::Index;
use svc_overlay::{Got, OverlayError, OverlayHandle, OverlaySetup, PutRequest};
use svc_storage::{CpuPool, Faults, Store};

fn overlay_over(store: Store, max_uploads: usize) -> (OverlayHandle, Supervisor) {
    guarded_overlay(
        store,
        max_uploads,
        &Board::default(),
        OverlaySetup::DISK_CIRCUIT,
    )
}

fn guarded_overlay(
    store: Store,
    max_uploads: usize,
    circuits: &Board,
    disk_circuit: CircuitPolicy,
) -> (OverlayHandle, Supervisor) {
    let index = Index::new(store.clone(), 64);
    let (tx, mb) = mailbox(8);
    let handle = OverlayHandle::new(OverlaySetup {
        tx,
        store: store.clone(),
        index: index.clone(),
        max_uploads,
        config: Config::builder().build().unwrap(),
        max_object: Arc::new(|| 64 << 20),
        dht: None,
        peers_may_read: Arc::new(|| true),
        circuits: circuits.clone(),
        disk_circuit,
    });
    let mut sup = Supervisor::new(
        Bus::new(64),
        Metrics::new(),
        HealthState::new(),
        Policy::default(),
    );
    sup.spawn_actor("overlay", Duty::ReadsAndWrites, mb, move |ctx, mb| {
        svc_overlay::run(ctx.shutdown, mb, store.clone(), index.clone(), 4)
    });
    (handle, sup)
}

fn overlay(max_uploads: usize) -> (OverlayHandle, Supervisor) {
    overlay_over(Store::in_memory().unwrap(), max_uploads)
}

async fn put(h: &OverlayHandle, bytes: &[u8]) -> Address {
    let mut up = h.put(PutRequest::default()).unwrap();
    up.write(bytes).await.unwrap();
    up.finish().await.unwrap().address
}

#[tokio::test]
async fn commands_resolve_through_the_index_and_gc_forgets() {
    let (h, sup) = overlay(4);
    let addr = put(&h, b"through the overlay").await;
    let object = h.open(addr).await.unwrap().unwrap();
    assert_eq!(&object.read_verified(0, 7).await.unwrap()[..], b"through");
    h.open(addr).await.unwrap().unwrap();
    let stats = h.index().stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 1),
        "a small object is then served from memory"
    );
    assert!(h.small_cache_bytes() > 0);

    // A large object goes through the actor and the index each time.
    let big: Vec<u8> = (0..(200u32 << 10)).map(|i| (i % 251) as u8).collect();
    let big_addr = put(&h, &big).await;
    for _ in 0..2 {
        let Got::Stored(object) = h.get(big_addr).await.unwrap() else {
            panic!("stored here")
        };
        assert_eq!(
            &object.read_verified(1000, 2000).await.unwrap()[..],
            &big[1000..2000]
        );
    }
    assert_eq!(h.index().stats().hits, 1);
    assert!(h.stat(addr).await.unwrap().unwrap().pinned);
    assert!(h.open(Address::of(b"absent")).await.unwrap().is_none());
    let absent = h.get(Address::of(b"absent")).await.unwrap_err();
    assert_eq!(
        absent.kind(),
        ErrorKind::NotFound,
        "no peers: nobody else holds it"
    );

    h.unpin(addr).await.unwrap();
    let report = h.gc().await.unwrap();
    assert_eq!(report.objects, 1);
    assert!(
        h.open(addr).await.unwrap().is_none(),
        "a collected object is not served from the cache"
    );
    assert!(matches!(
        h.unpin(addr).await,
        Err(OverlayError::NotFound(_))
    ));
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn uploads_are_admitted_up_to_the_limit_and_held_to_the_largest_object() {
    let (h, sup) = overlay(1);
    let first = h.put(PutRequest::default()).unwrap();
    assert!(matches!(
        h.put(PutRequest::default()),
        Err(OverlayError::Busy)
    ));
    drop(first);
    let mut up = h.put(PutRequest::default()).unwrap();
    let err = up.write(&vec![0u8; (64 << 20) + 1]).await.unwrap_err();
    assert!(
        matches!(err, OverlayError::TooLarge { limit } if limit == 64 << 20),
        "{err:?}"
    );
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_stopped_overlay_answers_unavailable_at_once() {
    let (h, sup) = overlay(1);
    assert!(sup.shutdown(Duration::from_secs(5)).await);
    let err = h.open(Address::of(b"x")).await.unwrap_err();
    assert!(matches!(err, OverlayError::Unavailable), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Overloaded);
}

fn chunk_file(dir: &Path, chunk: &Address) -> std::path::PathBuf {
    let hex = &chunk.to_string()[3..];
    dir.join("chunks").join(&hex[..2]).join(hex)
}

#[tokio::test]
async fn damage_without_peers_is_a_damaged_error_and_memory_tells_the_same_story() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let (h, sup) = overlay_over(store.clone(), 4);
    // A small object, read once so it sits verified in memory.
    let bytes = b"small and cached".to_vec();
    let addr = put(&h, &bytes).await;
    h.open(addr).await.unwrap().unwrap();
    assert!(h.small_cache_bytes() > 0);
    let manifest = store.manifest(&addr).await.unwrap().unwrap();
    let path = chunk_file(dir.path(), &manifest.chunks[0].address);
    let mut raw = std::fs::read(&path).unwrap();
    raw[0] ^= 1;
    std::fs::write(&path, raw).unwrap();

    // stat verifies the stored bytes, finds the damage, and the memory copy is dropped.
    assert!(h.stat(addr).await.unwrap().unwrap().damaged);
    assert_eq!(h.small_cache_bytes(), 0);
    // A small object is verified whole as it is opened: the open itself is the refusal.
    let err = h.open(addr).await.unwrap_err();
    assert!(
        matches!(err, OverlayError::Damaged(a) if a == addr),
        "{err:?}"
    );
    let body = err.body();
    assert_eq!((err.kind().status(), body.code.as_ref()), (503, "damaged"));

    // The true bytes again repair it, and it is served (and stat'ed) whole.
    assert_eq!(put(&h, &bytes).await, addr);
    assert!(!h.stat(addr).await.unwrap().unwrap().damaged);
    let object = h.open(addr).await.unwrap().unwrap();
    assert_eq!(&object.read_verified(0, 100).await.unwrap()[..], &bytes[..]);
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

/// Waits at most 10 s for `f` (a hang is a failure, not a slow pass).
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_opens_the_storage_circuit_and_cached_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let store = Store::open(dir.path(), CpuPool::new(2).with_faults(faults.clone())).unwrap();
    let board = Board::default();
    let policy = CircuitPolicy {
        failures: 3,
        slow: Duration::from_secs(5),
        stall: Duration::from_millis(300),
        open_for: Duration::from_millis(200),
        max_open_for: Duration::from_secs(1),
    };
    let (h, sup) = guarded_overlay(store, 4, &board, policy);
    let small = vec![7u8; 1024];
    let large: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (small_addr, large_addr) = (put(&h, &small).await, put(&h, &large).await);
    // Read once: the small object is now cached in memory, verified; the large one is not.
    let read_all = |addr| {
        let h = h.clone();
        async move {
            let object = h.open(addr).await?.expect("stored");
            object.read_verified(0, object.size()).await
        }
    };
    assert_eq!(read_all(small_addr).await.unwrap(), small);
    assert_eq!(read_all(large_addr).await.unwrap(), large);

    faults.stall();
    // The large object needs the disk: the read is released once it has waited past the
    // stall threshold, with the circuit's error, not left hanging.
    let stalled = within("a read on a stalled disk", read_all(large_addr)).await;
    let Err(OverlayError::CircuitOpen(open)) = stalled else {
        panic!("a stalled read answered {stalled:?}");
    };
    assert_eq!(open.dependency, "storage");
    assert_eq!(h.disk_circuit().state(), State::Open);
    // Open: what needs the disk fails fast, an upload included; /status's figures too.
    for _ in 0..3 {
        let again = within("a read while open", read_all(large_addr)).await;
        assert!(
            matches!(again, Err(OverlayError::CircuitOpen(_))),
            "{again:?}"
        );
    }
    let refused = h.put(PutRequest::default()).unwrap_err();
    assert!(matches!(refused, OverlayError::CircuitOpen(_)), "{refused}");
    let body = refused.body();
    assert_eq!(
        (refused.kind().status(), body.code.as_ref()),
        (503, "circuit_open")
    );
    assert!(body.retry_after_ms.is_some_and(|ms| ms >= 1000), "{body:?}");
    assert!(matches!(
        within("stats while open", h.stats()).await,
        Err(OverlayError::CircuitOpen(_))
    ));
    // The cached small object is served all along, verified, from memory.
    for _ in 0..50 {
        assert_eq!(
            within("a cached read", read_all(small_addr)).await.unwrap(),
            small
        );
    }
    let status = board.status();
    assert_eq!((status[0].dependency, status[0].opened), ("storage", 1));
    let metrics = Metrics::new();
    board.register_metrics(&metrics);
    assert!(
        metrics
            .encode()
            .contains(r#"circuit_transitions_total{dependency="storage",to="open"} 1"#),
        "{}",
        metrics.encode()
    );

    // The disk comes back: a probe goes through once the circuit allows one, and closes it.
    faults.heal();
    let healed = within("recovery", async {
        loop {
            match read_all(large_addr).await {
                Err(OverlayError::CircuitOpen(open)) => tokio::time::sleep(open.retry_after).await,
                other => break other,
            }
        }
    })
    .await;
    assert_eq!(healed.unwrap(), large);
    assert_eq!(h.disk_circuit().state(), State::Closed);
    let again = put(&h, b"written after the disk came back").await;
    assert_eq!(
        &read_all(again).await.unwrap()[..],
        b"written after the disk came back"
    );
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_opens_the_circuit_after_failures_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let store = Store::open(dir.path(), CpuPool::new(2).with_faults(faults.clone())).unwrap();
    let policy = CircuitPolicy {
        failures: 3,
        open_for: Duration::from_millis(200),
        ..OverlaySetup::DISK_CIRCUIT
    };
    let (h, sup) = guarded_overlay(store, 4, &Board::default(), policy);
    let large: Vec<u8> = vec![3u8; 256 << 10];
    let addr = put(&h, &large).await;
    faults.fail();
    for _ in 0..3 {
        let failed = h.open(addr).await.unwrap_err();
        assert!(matches!(failed, OverlayError::Store(_)), "{failed}");
        assert_eq!(failed.kind().status(), 500);
    }
    let failed = h.open(addr).await.unwrap_err();
    assert!(matches!(failed, OverlayError::CircuitOpen(_)), "{failed}");
    // A missing object is not the disk failing: nothing is counted for it.
    faults.heal();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(h.open(Address::of(b"absent")).await.unwrap().is_none());
    assert_eq!(h.disk_circuit().state(), State::Closed);
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}
