//! Verified small objects in memory, least recently used evicted first, bounded by bytes.

use ron_proto::Address;
use svc_storage::ObjectReader;

/// Objects up to this size are kept, verified, in the small-object cache.
pub(crate) const SMALL_OBJECT: u64 = 64 << 10;
/// Bytes the small-object cache may hold.
const SMALL_CACHE_BYTES: usize = 16 << 20;

#[derive(Debug)]
pub(crate) struct SmallCache {
    entries: lru::LruCache<Address, ObjectReader>,
    bytes: usize,
}

impl Default for SmallCache {
    fn default() -> Self {
        Self {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
        }
    }
}

impl SmallCache {
    pub(crate) fn get(&mut self, addr: &Address) -> Option<ObjectReader> {
        self.entries.get(addr).cloned()
    }

    pub(crate) fn insert(&mut self, addr: Address, reader: ObjectReader) {
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

    /// Forgets `addr` (its stored copy was found damaged, or it was removed).
    pub(crate) fn remove(&mut self, addr: &Address) {
        if let Some(old) = self.entries.pop(addr) {
            self.bytes -= old.inline_len();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}
