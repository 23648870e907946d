//! The overlay owns an object's whole life on a node: upload (streamed, checked against an
//! expected address), read (verified, local or fetched from peers and streamed as it
//! verifies), stat, pin and unpin, announcing and withdrawing, the fetch cache's budget and
//! eviction, the readers peers use, and repair of damaged local copies from peers. The HTTP
//! gateway and the OAP/1 listener are thin edges over [`OverlayHandle`]: they decode,
//! authorise, call one method and encode; every failure is an [`OverlayError`], described once
//! for both encodings through [`ron_proto::Failure`].
//!
//! Commands that touch the store (open, stat, pin, collect garbage) travel over a bounded
//! queue to the overlay actor ([`run`]), which the supervisor restarts if it crashes (the
//! queue survives, so handles stay valid); it runs each as its own task, at most
//! `max_in_flight` at once, so one slow `stat` (which hashes the whole object) does not hold
//! up the others. Uploads do not hop through the queue piece by piece: [`OverlayHandle::put`]
//! hands out a streaming [`Upload`], admitted by a semaphore. Hashing and disk work run on the
//! store's bounded CPU pool either way.
//!
//! Fetches from peers run one flight per object: requests for an object already being
//! fetched join it, and it goes on (storing the copy, unpinned) whoever leaves.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use svc_overlay::{Got, PutRequest};
//!
//! let (overlay, actor) = svc_overlay::in_memory(4).unwrap();
//! tokio::spawn(actor);
//! let mut upload = overlay.put(PutRequest::default()).unwrap();
//! upload.write(b"hello world").await.unwrap();
//! let stored = upload.finish().await.unwrap();
//! let Got::Stored(object) = overlay.get(stored.address).await.unwrap() else { unreachable!() };
//! assert_eq!(&object.read_verified(0, 5).await.unwrap()[..], b"hello");
//! # });
//! ```
#![forbid(unsafe_code)]

mod actor;
mod cache;
mod collections;
mod durability;
mod error;
mod fetch;
mod handle;
mod metrics;
mod source;

pub use actor::run;
pub use collections::Resolved;
pub use durability::{Durability, LAYOUT_MEDIA_TYPE, State, guard};
pub use error::OverlayError;
pub use fetch::{Done, Incoming};
pub use handle::{Command, Got, Object, OverlayHandle, OverlaySetup, PutRequest, Upload};
pub use svc_storage::{GcReport, Listed, ObjectStat, StoreStats, Stored};

/// An overlay over an in-memory store with no peers (amnesia-style), and its actor's future
/// to run: for tests and examples of the edges.
pub fn in_memory(
    max_uploads: usize,
) -> Result<
    (
        OverlayHandle,
        impl std::future::Future<Output = Result<(), OverlayError>>,
    ),
    OverlayError,
> {
    let store = svc_storage::Store::in_memory()?;
    let index = svc_index::Index::new(store.clone(), 64);
    let (tx, mailbox) = supervisor::mailbox(16);
    let config = ron_kernel::Config::builder()
        .build()
        .map_err(|e| svc_storage::StoreError::Internal(e.to_string()))?;
    let handle = OverlayHandle::new(OverlaySetup {
        tx,
        store: store.clone(),
        index: index.clone(),
        max_uploads,
        config,
        max_object: std::sync::Arc::new(|| u64::MAX),
        dht: None,
        peers_may_read: std::sync::Arc::new(|| true),
        circuits: supervisor::Board::default(),
        disk_circuit: OverlaySetup::DISK_CIRCUIT,
    });
    let actor = run(
        tokio_util::sync::CancellationToken::new(),
        mailbox,
        store,
        index,
        max_uploads.max(1),
    );
    Ok((handle, actor))
}
