//! Storage for a RustyOnions node: objects cut into content-defined chunks (FastCDC, 1 to
//! 4 MiB), each chunk stored once under its own `b3:` address, all metadata (manifests, chunk
//! reference counts, pins) in one redb database, and a BLAKE3 outboard per object so every
//! byte read can be verified against the object's address in 16 KiB groups.
//!
//! A library, not an actor: the overlay actor owns the object's life and calls the store,
//! whose blocking work runs on its own bounded [`CpuPool`]; a queue of its own would only add
//! a hop to every chunk.
//!
//! Durability: a chunk or outboard file is written to a temporary file, fsynced, renamed into
//! place and its directory fsynced; an object becomes visible only when the redb transaction
//! recording it commits (fsynced), after all its files are durable. A crash at any point leaves
//! either the whole object or none of it; orphaned files are swept when the store opens.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use svc_storage::{PutOptions, Store};
//!
//! let store = Store::in_memory().unwrap();
//! let mut writer = store.writer(PutOptions::default());
//! writer.write(b"hello world").await.unwrap();
//! let put = writer.finish().await.unwrap();
//! assert_eq!(put.address.to_string(), "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24");
//!
//! let reader = store.reader(&put.address).await.unwrap().unwrap();
//! assert_eq!(&reader.read_verified(0, 5).await.unwrap()[..], b"hello");
//! # });
//! ```
#![forbid(unsafe_code)]

mod blobs;
mod chunker;
mod config;
pub mod erasure;
mod error;
mod meta;
mod pool;
mod reader;
mod store;
mod writer;

pub use chunker::Chunker;
pub use config::StorageSection;
pub use error::{PutError, ReadError, StoreError};
pub use pool::{CpuPool, Faults};
pub use reader::{GROUP_BYTES, MAX_WINDOW, ObjectReader};
pub use store::{GcReport, Intent, KeptRecord, Listed, ObjectStat, Store, StoreStats};
pub use writer::{Lease, ObjectWriter, PutOptions, Stored};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
