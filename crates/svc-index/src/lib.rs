//! The resolvers: [`Index`], object address -> manifest, and [`Names`], a signed name ->
//! the address it points at (see the `names` module).
//!
//! The index is a bounded read-through cache in
//! front of the store's metadata. Manifests never change for an address, so a cached one is
//! always right while the object exists; the cache is cleared when garbage collection may
//! have removed objects.
//!
//! A library, not an actor: a lookup is a cache hit or one short read transaction, made
//! by the overlay actor's tasks; a queue in front of it would cost more than the lookup.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = svc_storage::Store::in_memory().unwrap();
//! let mut w = store.writer(Default::default());
//! w.write(b"indexed").await.unwrap();
//! let addr = w.finish().await.unwrap().address;
//!
//! let index = svc_index::Index::new(store, 1024);
//! assert_eq!(index.resolve(&addr).await.unwrap().unwrap().size, 7);
//! assert_eq!(index.stats().hits, 0);
//! index.resolve(&addr).await.unwrap();
//! assert_eq!(index.stats().hits, 1);
//! # });
//! ```
#![forbid(unsafe_code)]

mod names;

pub use names::{NameFailure, NamePolicy, Names, Published};

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use ron_proto::{Address, Manifest};
use svc_storage::{Store, StoreError};

/// Cache effectiveness counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
    /// Manifests cached now.
    pub cached: usize,
}

/// A cheap-to-clone handle on the resolver.
#[derive(Clone)]
pub struct Index {
    store: Store,
    cache: Arc<Mutex<LruCache<Address, Arc<Manifest>>>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Index {
    /// A resolver over `store` caching at most `capacity` manifests (at least 1).
    pub fn new(store: Store, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            store,
            cache: Arc::new(Mutex::new(LruCache::new(capacity))),
            hits: Arc::new(AtomicU64::new(0)),
            misses: Arc::new(AtomicU64::new(0)),
        }
    }

    fn cache(&self) -> MutexGuard<'_, LruCache<Address, Arc<Manifest>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manifest of `addr`, from the cache or the store; `None` if not stored.
    /// Absence is not cached (the object may arrive any moment).
    pub async fn resolve(&self, addr: &Address) -> Result<Option<Arc<Manifest>>, StoreError> {
        if let Some(hit) = self.cache().get(addr).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(hit));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let Some(manifest) = self.store.manifest(addr).await? else {
            return Ok(None);
        };
        let manifest = Arc::new(manifest);
        self.cache().put(*addr, manifest.clone());
        Ok(Some(manifest))
    }

    /// Drops one cached manifest.
    pub fn forget(&self, addr: &Address) {
        self.cache().pop(addr);
    }

    /// Drops every cached manifest (after a garbage collection).
    pub fn clear(&self) {
        self.cache().clear();
    }

    /// Hits, misses and size.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cached: self.cache().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put(store: &Store, bytes: &[u8]) -> Address {
        let mut w = store.writer(Default::default());
        w.write(bytes).await.unwrap();
        w.finish().await.unwrap().address
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_reads_through() {
        let store = Store::in_memory().unwrap();
        let index = Index::new(store.clone(), 2);
        let addrs = [
            put(&store, b"a").await,
            put(&store, b"b").await,
            put(&store, b"c").await,
        ];
        for a in &addrs {
            assert_eq!(index.resolve(a).await.unwrap().unwrap().address, *a);
        }
        assert_eq!(
            index.stats(),
            IndexStats {
                hits: 0,
                misses: 3,
                cached: 2
            }
        );
        // "a" was evicted (least recently used); "c" is cached.
        index.resolve(&addrs[2]).await.unwrap();
        index.resolve(&addrs[0]).await.unwrap();
        assert_eq!(
            index.stats(),
            IndexStats {
                hits: 1,
                misses: 4,
                cached: 2
            }
        );
    }

    #[tokio::test]
    async fn absence_is_not_cached_and_clear_forgets() {
        let store = Store::in_memory().unwrap();
        let index = Index::new(store.clone(), 8);
        let missing = Address::of(b"later");
        assert!(index.resolve(&missing).await.unwrap().is_none());
        assert_eq!(put(&store, b"later").await, missing);
        assert!(index.resolve(&missing).await.unwrap().is_some());
        store.set_pinned(&missing, false).await.unwrap();
        store.gc().await.unwrap();
        index.clear();
        assert!(index.resolve(&missing).await.unwrap().is_none());
    }
}
