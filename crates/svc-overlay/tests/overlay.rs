//! The overlay actor through its handle: commands, admission, backpressure, supervision, and
//! damage answered as damage.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ron_kernel::health::Duty;
use ron_kernel::{Bus, Config, HealthState, Metrics};
use ron_proto::{Address, ErrorKind, Failure};
use supervisor::{Policy, Supervisor, mailbox};
use svc_index::Index;
use svc_overlay::{Got, OverlayError, OverlayHandle, OverlaySetup, PutRequest};
use svc_storage::{CpuPool, Store};

fn overlay_over(store: Store, max_uploads: usize) -> (OverlayHandle, Supervisor) {
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
