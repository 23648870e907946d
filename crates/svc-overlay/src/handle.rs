//! The handle callers hold, and the commands it sends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ron_proto::{Address, ErrorKind};
use svc_index::Index;
use svc_storage::{
    GcReport, ObjectReader, ObjectStat, ObjectWriter, PutOptions, ReadError, Store, StoreError,
    StoreStats,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Objects up to this size are kept, verified, in the small-object cache.
const SMALL_OBJECT: u64 = 64 << 10;
/// Bytes the small-object cache may hold.
const SMALL_CACHE_BYTES: usize = 16 << 20;

/// Verified small objects in memory, least recently used evicted first, bounded by bytes.
#[derive(Debug)]
struct SmallCache {
    entries: lru::LruCache<Address, ObjectReader>,
    bytes: usize,
}

impl SmallCache {
    fn get(&mut self, addr: &Address) -> Option<ObjectReader> {
        self.entries.get(addr).cloned()
    }

    fn insert(&mut self, addr: Address, reader: ObjectReader) {
        self.bytes += reader.inline_len();
        if let Some(old) = self.entries.put(addr, reader) {
            self.bytes -= old.inline_len();
        }
        while self.bytes > SMALL_CACHE_BYTES {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.inline_len(),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// How long a caller waits for room in a full queue before giving up with
/// [`OverlayError::Busy`].
const ENQUEUE_DEADLINE: Duration = Duration::from_secs(2);

/// Why an overlay operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// The overlay is down (restarting, quarantined or stopped); the command was not run, or
    /// was lost with the incarnation that was running it.
    #[error("object service unavailable")]
    Unavailable,
    /// Too many operations are waiting; retry later.
    #[error("object service busy")]
    Busy,
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OverlayError {
    /// The shared error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable | Self::Busy => ErrorKind::Overloaded,
            Self::Read(e) => e.kind(),
            Self::Store(e) => e.kind(),
        }
    }
}

/// A command for the overlay actor.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// Open a verified reader.
    Open {
        /// The object.
        address: Address,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Option<ObjectReader>, OverlayError>>,
    },
    /// Stat an object (verifies every stored byte).
    Stat {
        /// The object.
        address: Address,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Option<ObjectStat>, OverlayError>>,
    },
    /// Pin or unpin.
    SetPinned {
        /// The object.
        address: Address,
        /// Pin (`true`) or unpin.
        pinned: bool,
        /// `Ok(false)` when the object is not stored.
        reply: oneshot::Sender<Result<bool, OverlayError>>,
    },
    /// Collect garbage: unpinned objects, oldest first, until the rest fit the budget.
    Gc {
        /// Bytes of unpinned objects to keep (0: remove them all).
        budget: u64,
        /// What was removed.
        reply: oneshot::Sender<Result<(GcReport, Vec<Address>), OverlayError>>,
    },
}

/// An admitted upload: the store's writer plus the permit that counts it.
#[derive(Debug)]
pub struct Upload {
    /// The writer; see [`ObjectWriter`].
    pub writer: ObjectWriter,
    _permit: OwnedSemaphorePermit,
}

/// A cheap-to-clone handle on the overlay.
#[derive(Debug, Clone)]
pub struct OverlayHandle {
    tx: mpsc::Sender<Command>,
    store: Store,
    index: Index,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    small: Arc<Mutex<SmallCache>>,
}

impl OverlayHandle {
    /// A handle sending to `tx` (the mailbox's sender), admitting `max_uploads` at once.
    pub fn new(tx: mpsc::Sender<Command>, store: Store, index: Index, max_uploads: usize) -> Self {
        Self {
            tx,
            store,
            index,
            uploads: Arc::new(Semaphore::new(max_uploads.max(1))),
            max_uploads: max_uploads.max(1),
            small: Arc::new(Mutex::new(SmallCache {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
            })),
        }
    }

    fn small(&self) -> MutexGuard<'_, SmallCache> {
        self.small.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OverlayError>>) -> Command,
    ) -> Result<T, OverlayError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.send_timeout(make(reply), ENQUEUE_DEADLINE).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => return Err(OverlayError::Busy),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(OverlayError::Unavailable),
        }
        rx.await.map_err(|_| OverlayError::Unavailable)?
    }

    /// A verified reader of `address`, or `None` if it is not stored.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call's answer is discarded.
    pub async fn open(&self, address: Address) -> Result<Option<ObjectReader>, OverlayError> {
        if let Some(hit) = self.small().get(&address) {
            return Ok(Some(hit));
        }
        let Some(reader) = self.ask(|reply| Command::Open { address, reply }).await? else {
            return Ok(None);
        };
        if reader.size() > SMALL_OBJECT {
            return Ok(Some(reader));
        }
        let reader = reader.into_inline().await?;
        self.small().insert(address, reader.clone());
        Ok(Some(reader))
    }

    /// Size, media type, chunks, pin and damage of `address`.
    pub async fn stat(&self, address: Address) -> Result<Option<ObjectStat>, OverlayError> {
        self.ask(|reply| Command::Stat { address, reply }).await
    }

    /// Pins or unpins; `Ok(false)` when the object is not stored.
    pub async fn set_pinned(&self, address: Address, pinned: bool) -> Result<bool, OverlayError> {
        self.ask(|reply| Command::SetPinned {
            address,
            pinned,
            reply,
        })
        .await
    }

    /// Removes unpinned objects and unreferenced chunks.
    pub async fn gc(&self) -> Result<GcReport, OverlayError> {
        self.evict(0).await.map(|(report, _)| report)
    }

    /// Removes unpinned objects, those cached or unpinned longest ago first, until the rest
    /// take at most `budget` bytes, and unreferenced chunks; returns what it removed.
    pub async fn evict(&self, budget: u64) -> Result<(GcReport, Vec<Address>), OverlayError> {
        let report = self.ask(|reply| Command::Gc { budget, reply }).await;
        if report
            .as_ref()
            .map_or(true, |(_, removed)| !removed.is_empty())
        {
            // Collected objects must not be served from memory either.
            self.small().clear();
        }
        report
    }

    /// Starts an upload if fewer than `max_uploads` are running, else [`OverlayError::Busy`].
    pub fn writer(&self, options: PutOptions) -> Result<Upload, OverlayError> {
        let permit = self
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| OverlayError::Busy)?;
        Ok(Upload {
            writer: self.store.writer(options),
            _permit: permit,
        })
    }

    /// Store-wide figures.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.store.stats().await
    }

    /// The resolver's cache counters.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The store behind the overlay.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commands waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Uploads admitted and not yet finished.
    pub fn uploads_in_progress(&self) -> usize {
        self.max_uploads - self.uploads.available_permits()
    }

    /// Bytes held by the small-object cache.
    pub fn small_cache_bytes(&self) -> usize {
        self.small().bytes
    }

    /// Shows queue depth, uploads, cache and storage figures in `metrics`.
    pub fn register_metrics(&self, metrics: &ron_kernel::Metrics) {
        metrics.register_collector(Box::new(crate::metrics::OverlayCollector {
            handle: self.clone(),
        }));
    }
}
