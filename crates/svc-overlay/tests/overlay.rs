//! The overlay actor through its handle: commands, admission, backpressure, supervision.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::time::Duration;

use ron_kernel::health::Duty;
use ron_kernel::{Bus, HealthState, Metrics};
use ron_proto::Address;
use supervisor::{Policy, Supervisor, mailbox};
use svc_index::Index;
use svc_overlay::{OverlayError, OverlayHandle};
use svc_storage::{PutOptions, Store};

fn overlay(max_uploads: usize) -> (OverlayHandle, Supervisor) {
    let store = Store::in_memory().unwrap();
    let index = Index::new(store.clone(), 64);
    let (tx, mb) = mailbox(8);
    let handle = OverlayHandle::new(tx, store.clone(), index.clone(), max_uploads);
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

async fn put(h: &OverlayHandle, bytes: &[u8]) -> Address {
    let mut up = h.writer(PutOptions::default()).unwrap();
    up.writer.write(bytes).await.unwrap();
    up.writer.finish().await.unwrap().address
}

#[tokio::test]
async fn commands_resolve_through_the_index_and_gc_forgets() {
    let (h, sup) = overlay(4);
    let addr = put(&h, b"through the overlay").await;
    let reader = h.open(addr).await.unwrap().unwrap();
    assert_eq!(&reader.read_verified(0, 7).await.unwrap()[..], b"through");
    h.open(addr).await.unwrap().unwrap();
    let stats = h.index().stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 1),
        "a small object is then served from memory"
    );

    // A large object goes through the actor and the index each time.
    let big: Vec<u8> = (0..(200u32 << 10)).map(|i| (i % 251) as u8).collect();
    let big_addr = put(&h, &big).await;
    for _ in 0..2 {
        let r = h.open(big_addr).await.unwrap().unwrap();
        assert_eq!(r.inline_len(), 0);
        assert_eq!(
            &r.read_verified(1000, 2000).await.unwrap()[..],
            &big[1000..2000]
        );
    }
    assert_eq!(h.index().stats().hits, 1);
    assert!(h.stat(addr).await.unwrap().unwrap().pinned);
    assert!(h.open(Address::of(b"absent")).await.unwrap().is_none());

    assert!(h.set_pinned(addr, false).await.unwrap());
    let report = h.gc().await.unwrap();
    assert_eq!(report.objects, 1);
    assert!(
        h.open(addr).await.unwrap().is_none(),
        "a collected object is not served from the cache"
    );
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn uploads_are_admitted_up_to_the_limit() {
    let (h, sup) = overlay(1);
    let first = h.writer(PutOptions::default()).unwrap();
    assert!(matches!(
        h.writer(PutOptions::default()),
        Err(OverlayError::Busy)
    ));
    drop(first);
    assert!(h.writer(PutOptions::default()).is_ok());
    assert!(sup.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_stopped_overlay_answers_unavailable_at_once() {
    let (h, sup) = overlay(1);
    assert!(sup.shutdown(Duration::from_secs(5)).await);
    let err = h.open(Address::of(b"x")).await.unwrap_err();
    assert!(matches!(err, OverlayError::Unavailable), "{err:?}");
    assert_eq!(err.kind(), ron_proto::ErrorKind::Overloaded);
}
