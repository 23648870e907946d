//! The store: metadata in redb, bytes in [`Blobs`], and the in-flight registry that keeps
//! garbage collection and concurrent uploads from stepping on each other.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use ron_proto::{Address, Manifest};
use serde::Serialize;

use crate::blobs::{Blobs, Kind};
use crate::meta::{
    BYTES_LEASED, BYTES_LOGICAL, BYTES_STORED, CACHE_SEQ, CACHED, CHUNKS, INTENTS, LEASES, OBJECTS,
    PINS, PROGRESS, RECORDS, RELEASED, STORED_AT, TOTALS, WATCHED,
};
use crate::{CpuPool, Lease, ObjectReader, ObjectWriter, PutOptions, ReadError, StoreError};

pub(crate) struct Inner {
    pub(crate) db: Database,
    pub(crate) blobs: Arc<Blobs>,
    pub(crate) pool: CpuPool,
    inflight: Mutex<HashMap<(Kind, Address), usize>>,
    /// Damaged blobs replaced by verified bytes since the store opened.
    pub(crate) repaired: std::sync::atomic::AtomicU64,
}

/// A cheap-to-clone handle on one node's store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("blobs", &self.inner.blobs)
            .finish_non_exhaustive()
    }
}

/// What `/stat` reports about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectStat {
    /// The object's address.
    pub address: Address,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, if one was given.
    pub media_type: Option<String>,
    /// How many chunks it has.
    pub chunks: usize,
    /// Whether it is pinned (kept by garbage collection).
    pub pinned: bool,
    /// Whether its stored bytes fail verification or are missing.
    pub damaged: bool,
}

/// An upload waiting to be protected: the object and its scheme's `(k, m)`.
pub type Intent = (Address, (u8, u8));

/// A record kept with [`Store::put_record`]: its key and value.
pub type KeptRecord = (Vec<u8>, Vec<u8>);

/// One object in a listing (`GET /objects`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// The object's address.
    pub address: Address,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, if one was given.
    pub media_type: Option<String>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// When it was first stored here (Unix seconds); `None` for objects stored by a version
    /// that did not record it.
    pub stored_at: Option<u64>,
    /// For a blob kept for peers (a shard or a layout), when its lease ends (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<u64>,
}

/// Store-wide figures for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Objects stored.
    pub objects: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Bytes of distinct chunks on disk.
    pub bytes_stored: u64,
    /// Bytes of all objects, as if each were stored whole.
    pub bytes_logical: u64,
    /// Bytes saved by deduplication (`bytes_logical - bytes_stored`).
    pub bytes_saved: u64,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Unpinned objects removed.
    pub objects: u64,
    /// Chunks no object referenced any more, removed.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Registration of a blob an upload is working with. While one exists, garbage collection
/// leaves the blob's file alone; when the last one for a blob goes away and no committed
/// metadata references the blob, its file is removed (so an abandoned upload leaves nothing).
pub(crate) struct Inflight {
    inner: Arc<Inner>,
    key: (Kind, Address),
}

impl Inflight {
    pub(crate) fn new(inner: &Arc<Inner>, kind: Kind, addr: Address) -> Self {
        *inner.inflight().entry((kind, addr)).or_insert(0) += 1;
        Self {
            inner: inner.clone(),
            key: (kind, addr),
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut inflight = self.inner.inflight();
        let last = match inflight.get_mut(&self.key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                inflight.remove(&self.key);
                true
            }
        };
        if last {
            let (kind, addr) = self.key;
            match self.inner.referenced(kind, &addr) {
                Ok(false) => {
                    if let Err(e) = self.inner.blobs.remove(kind, &addr) {
                        tracing::warn!(%addr, error = %e, "cannot remove an abandoned blob; it will be swept later");
                    }
                }
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot check an abandoned blob; it will be swept later")
                }
            }
        }
    }
}

impl Inner {
    fn inflight(&self) -> MutexGuard<'_, HashMap<(Kind, Address), usize>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether committed metadata references the blob.
    fn referenced(&self, kind: Kind, addr: &Address) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(match kind {
            Kind::Chunk => txn.open_table(CHUNKS)?.get(addr.as_bytes())?.is_some(),
            Kind::Outboard => txn.open_table(OBJECTS)?.get(addr.as_bytes())?.is_some(),
        })
    }

    pub(crate) fn manifest(&self, addr: &Address) -> Result<Option<Manifest>, StoreError> {
        let txn = self.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let Some(bytes) = objects.get(addr.as_bytes())? else {
            return Ok(None);
        };
        Manifest::decode(bytes.value())
            .map(Some)
            .map_err(|source| StoreError::Manifest {
                address: *addr,
                source,
            })
    }

    /// Removes blob files no metadata references and no upload is using.
    fn sweep(&self) -> Result<u64, StoreError> {
        let mut removed = 0;
        for kind in [Kind::Chunk, Kind::Outboard] {
            for addr in self.blobs.list(kind)? {
                let inflight = self.inflight();
                if !inflight.contains_key(&(kind, addr)) && !self.referenced(kind, &addr)? {
                    self.blobs.remove(kind, &addr)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(OBJECTS)?;
        txn.open_table(CHUNKS)?;
        txn.open_table(PINS)?;
        txn.open_table(CACHED)?;
        txn.open_table(TOTALS)?;
        txn.open_table(STORED_AT)?;
        txn.open_table(RELEASED)?;
        txn.open_table(RECORDS)?;
        txn.open_table(LEASES)?;
        txn.open_table(WATCHED)?;
        txn.open_table(PROGRESS)?;
        txn.open_table(INTENTS)?;
    }
    txn.commit()?;
    Ok(())
}

impl Store {
    /// Opens (creating) the store under `dir`: `meta.redb`, `chunks/`, `outboards/`. Files left
    /// by uploads that never committed (a crash) are swept.
    pub fn open(dir: &Path, pool: CpuPool) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        // The store is the node's alone (a store made by an older version is tightened too).
        crate::blobs::private_dirs(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(StoreError::io(format!("create {}", dir.display())))?;
        let blobs = Blobs::open_disk(dir)?;
        let meta = dir.join("meta.redb");
        let db = Database::create(&meta)?;
        std::fs::set_permissions(&meta, std::fs::Permissions::from_mode(0o600))
            .map_err(StoreError::io(format!("chmod {}", meta.display())))?;
        create_tables(&db)?;
        let store = Self::from_parts(db, blobs, pool);
        let swept = store.inner.sweep()?;
        if swept > 0 {
            tracing::info!(swept, "removed files of uploads that never committed");
        }
        Ok(store)
    }

    /// A store held entirely in memory (amnesia mode): nothing touches the disk.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::in_memory_with(CpuPool::default())
    }

    /// [`Store::in_memory`] with a given pool.
    pub fn in_memory_with(pool: CpuPool) -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        create_tables(&db)?;
        Ok(Self::from_parts(db, Blobs::memory(), pool))
    }

    fn from_parts(db: Database, blobs: Blobs, pool: CpuPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                blobs: Arc::new(blobs),
                pool,
                inflight: Mutex::new(HashMap::new()),
                repaired: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Damaged chunk files replaced by verified bytes (an upload or fetch of the same
    /// content) since the store opened.
    pub fn repaired_chunks(&self) -> u64 {
        self.inner
            .repaired
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pool this store runs its blocking work on.
    pub fn pool(&self) -> &CpuPool {
        &self.inner.pool
    }

    /// Starts an upload.
    pub fn writer(&self, options: PutOptions) -> ObjectWriter {
        ObjectWriter::new(self.inner.clone(), options)
    }

    /// The manifest of `addr`, if stored.
    pub async fn manifest(&self, addr: &Address) -> Result<Option<Manifest>, StoreError> {
        let (inner, addr) = (self.inner.clone(), *addr);
        self.inner.pool.run(move || inner.manifest(&addr)).await?
    }

    /// A verified reader of `addr`, if stored. Fails when its outboard is missing.
    pub async fn reader(&self, addr: &Address) -> Result<Option<ObjectReader>, ReadError> {
        let (inner, addr) = (self.inner.clone(), *addr);
        self.inner
            .pool
            .run(move || -> Result<Option<ObjectReader>, ReadError> {
                let Some(manifest) = inner.manifest(&addr)? else {
                    return Ok(None);
                };
                ObjectReader::open(inner.clone(), manifest).map(Some)
            })
            .await?
    }

    /// A verified reader for an object whose manifest the caller already has (from a cache).
    /// Fails with [`ReadError::MissingChunk`] naming the object itself when its outboard is
    /// gone (the object was collected).
    pub async fn reader_for(&self, manifest: &Manifest) -> Result<ObjectReader, ReadError> {
        let (inner, manifest) = (self.inner.clone(), manifest.clone());
        self.inner
            .pool
            .run(move || ObjectReader::open(inner, manifest))
            .await?
    }

    /// Size, media type, chunks, pin, and whether every stored byte still verifies (this reads
    /// and hashes the whole object).
    pub async fn stat(&self, addr: &Address) -> Result<Option<ObjectStat>, StoreError> {
        let (inner, addr) = (self.inner.clone(), *addr);
        // Manifest and pin in one read transaction, the reader opened on the pool too.
        let found = self
            .inner
            .pool
            .run(move || -> Result<_, StoreError> {
                let txn = inner.db.begin_read()?;
                let Some(bytes) = txn.open_table(OBJECTS)?.get(addr.as_bytes())? else {
                    return Ok(None);
                };
                let manifest =
                    Manifest::decode(bytes.value()).map_err(|source| StoreError::Manifest {
                        address: addr,
                        source,
                    })?;
                let pinned = txn.open_table(PINS)?.get(addr.as_bytes())?.is_some();
                let reader = ObjectReader::open(inner.clone(), manifest.clone());
                Ok(Some((manifest, pinned, reader)))
            })
            .await??;
        let Some((manifest, pinned, reader)) = found else {
            return Ok(None);
        };
        let damaged = match reader {
            Ok(reader) => match reader.verify_all().await {
                Ok(()) => false,
                Err(ReadError::Store(e)) => return Err(e),
                Err(_) => true,
            },
            Err(ReadError::Store(e)) => return Err(e),
            Err(_) => true,
        };
        Ok(Some(ObjectStat {
            address: manifest.address,
            size: manifest.size,
            media_type: manifest.media_type,
            chunks: manifest.chunks.len(),
            pinned,
            damaged,
        }))
    }

    /// Pins (`true`) or unpins a stored object; `Ok(false)` when the object is not stored.
    pub async fn set_pinned(&self, addr: &Address, pinned: bool) -> Result<bool, StoreError> {
        let (inner, addr) = (self.inner.clone(), *addr);
        self.inner
            .pool
            .run(move || -> Result<bool, StoreError> {
                let txn = inner.db.begin_write()?;
                let found = {
                    let objects = txn.open_table(OBJECTS)?;
                    let mut pins = txn.open_table(PINS)?;
                    let mut cached = txn.open_table(CACHED)?;
                    let mut totals = txn.open_table(TOTALS)?;
                    let mut released = txn.open_table(RELEASED)?;
                    let found = objects.get(addr.as_bytes())?.is_some();
                    // The owner's word replaces a peer's lease either way.
                    if found
                        && let Some((_, size)) = txn
                            .open_table(LEASES)?
                            .remove(addr.as_bytes())?
                            .map(|v| v.value())
                    {
                        add(&mut totals, BYTES_LEASED, -i128::from(size))?;
                    }
                    if found && pinned {
                        pins.insert(addr.as_bytes(), ())?;
                        cached.remove(addr.as_bytes())?;
                        released.remove(addr.as_bytes())?;
                    } else if found && pins.remove(addr.as_bytes())?.is_some() {
                        cache(&mut cached, &mut totals, addr.as_bytes())?;
                        released.insert(addr.as_bytes(), ())?;
                    }
                    found
                };
                txn.commit()?;
                Ok(found)
            })
            .await?
    }

    /// Removes every unpinned object, then every chunk no remaining object references, then
    /// any file no metadata references. Never removes a chunk a stored object (or an upload in
    /// progress) uses.
    pub async fn gc(&self) -> Result<GcReport, StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || remove_unpinned(&inner, None).map(|(report, _)| report))
            .await?
    }

    /// Removes unpinned objects, those unpinned (or fetched) longest ago first, until their
    /// bytes are at most `budget`; returns what it removed. Pinned objects are never touched.
    pub async fn evict(&self, budget: u64) -> Result<(GcReport, Vec<Address>), StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || remove_unpinned(&inner, Some(budget)))
            .await?
    }

    /// Removes one object, pinned or not, and the chunks nothing else references;
    /// `Ok(false)` when it is not stored.
    pub async fn remove(&self, addr: &Address) -> Result<bool, StoreError> {
        let (inner, key) = (self.inner.clone(), *addr.as_bytes());
        let (report, _) = self
            .inner
            .pool
            .run(move || {
                remove_objects(&inner, |t| {
                    Ok(t.objects
                        .get(&key)?
                        .map(|v| (key, v.value().to_vec()))
                        .into_iter()
                        .collect())
                })
            })
            .await??;
        Ok(report.objects > 0)
    }

    /// Removes the objects their owner unpinned (not the copies fetched from peers, which the
    /// cache budget keeps), and the chunks nothing else references.
    pub async fn collect_released(&self) -> Result<(GcReport, Vec<Address>), StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || {
                remove_objects(&inner, |t| {
                    let mut victims = Vec::new();
                    for entry in t.released.iter()? {
                        let key = *entry?.0.value();
                        // Pinned again since: kept (pinning clears the mark; this is a guard).
                        if t.pins.get(&key)?.is_some() {
                            continue;
                        }
                        if let Some(v) = t.objects.get(&key)? {
                            victims.push((key, v.value().to_vec()));
                        }
                    }
                    Ok(victims)
                })
            })
            .await?
    }

    /// Up to `limit` objects in address order, starting after `after`: a page of a listing
    /// (pass the last address of one page to get the next).
    pub async fn list(
        &self,
        after: Option<Address>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || -> Result<Vec<Listed>, StoreError> {
                let txn = inner.db.begin_read()?;
                let objects = txn.open_table(OBJECTS)?;
                let pins = txn.open_table(PINS)?;
                let stored_at = txn.open_table(STORED_AT)?;
                let leases = txn.open_table(LEASES)?;
                let start = after.map(|a| *a.as_bytes());
                let range = match &start {
                    Some(key) => objects.range::<&[u8; 32]>((
                        std::ops::Bound::Excluded(key),
                        std::ops::Bound::Unbounded,
                    ))?,
                    None => objects.range::<&[u8; 32]>(..)?,
                };
                let mut page = Vec::with_capacity(limit.min(1024));
                for entry in range.take(limit) {
                    let (key, value) = entry?;
                    let key = *key.value();
                    let address = Address::from_bytes(key);
                    let manifest = Manifest::decode(value.value())
                        .map_err(|source| StoreError::Manifest { address, source })?;
                    page.push(Listed {
                        address,
                        size: manifest.size,
                        media_type: manifest.media_type,
                        pinned: pins.get(&key)?.is_some(),
                        stored_at: stored_at.get(&key)?.map(|v| v.value()),
                        lease_until: leases.get(&key)?.map(|v| v.value().0),
                    });
                }
                Ok(page)
            })
            .await?
    }

    /// Runs `f` in one write transaction on the pool; durable when this returns `Ok`.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || {
                let txn = inner.db.begin_write()?;
                let out = f(&txn)?;
                txn.commit()?;
                Ok(out)
            })
            .await?
    }

    /// Runs `f` in one read transaction on the pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || f(&inner.db.begin_read()?))
            .await?
    }

    /// Keeps `value` under `key` (durable when this returns), replacing what was there.
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.write(move |txn| {
            txn.open_table(RECORDS)?
                .insert(key.as_slice(), value.as_slice())?;
            Ok(())
        })
        .await
    }

    /// The value kept under `key`, if any.
    pub async fn record(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(RECORDS)?;
            Ok(table.get(key.as_slice())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    /// Every record kept, as (key, value).
    pub async fn records(&self) -> Result<Vec<KeptRecord>, StoreError> {
        self.read(|txn| {
            let mut all = Vec::new();
            for entry in txn.open_table(RECORDS)?.iter()? {
                let (k, v) = entry?;
                all.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(all)
        })
        .await
    }

    /// Which of `addrs` this node keeps for peers (or the owner pinned), extending each
    /// lease to end no earlier than `until` (Unix seconds).
    pub async fn renew(&self, addrs: Vec<Address>, until: u64) -> Result<Vec<bool>, StoreError> {
        let asked = addrs.clone();
        let (leases, pinned): (Vec<Option<u64>>, Vec<bool>) = self
            .read(move |txn| {
                let leases = txn.open_table(LEASES)?;
                let pins = txn.open_table(PINS)?;
                let mut out = (Vec::new(), Vec::new());
                for a in &asked {
                    out.0.push(leases.get(a.as_bytes())?.map(|v| v.value().0));
                    out.1.push(pins.get(a.as_bytes())?.is_some());
                }
                Ok(out)
            })
            .await?;
        self.extend(&addrs, &leases, until).await?;
        Ok(leases
            .iter()
            .zip(pinned)
            .map(|(lease, pinned)| lease.is_some() || pinned)
            .collect())
    }

    /// Extends the leases of `addrs` (whose ends are `leases`) to `until`, in one durable
    /// commit, when one of them is due: a renewal that would add less than a quarter of
    /// the lease asked for writes nothing.
    async fn extend(
        &self,
        addrs: &[Address],
        leases: &[Option<u64>],
        until: u64,
    ) -> Result<(), StoreError> {
        let slack = until.saturating_sub(crate::unix_now()) / 4;
        if !leases
            .iter()
            .flatten()
            .any(|ends| until > ends.saturating_add(slack))
        {
            return Ok(());
        }
        let addrs = addrs.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(LEASES)?;
            for addr in &addrs {
                let lease = table.get(addr.as_bytes())?.map(|v| v.value());
                if let Some((ends, size)) = lease
                    && until > ends
                {
                    table.insert(addr.as_bytes(), (until, size))?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Which of `addrs` this node keeps for peers under a lease (not the owner's objects),
    /// extending each lease to end no earlier than `until`.
    pub async fn renew_leased(
        &self,
        addrs: Vec<Address>,
        until: u64,
    ) -> Result<Vec<bool>, StoreError> {
        let asked = addrs.clone();
        let leases: Vec<Option<u64>> = self
            .read(move |txn| {
                let leases = txn.open_table(LEASES)?;
                asked
                    .iter()
                    .map(|a| Ok(leases.get(a.as_bytes())?.map(|v| v.value().0)))
                    .collect()
            })
            .await?;
        self.extend(&addrs, &leases, until).await?;
        Ok(leases.iter().map(Option::is_some).collect())
    }

    /// Removes the blobs kept for peers whose lease ended before `now` (Unix seconds), and
    /// the chunks nothing else references.
    pub async fn expire(&self, now: u64) -> Result<(GcReport, Vec<Address>), StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || {
                remove_objects(&inner, |t| {
                    let mut victims = Vec::new();
                    for entry in t.leases.iter()? {
                        let (key, value) = entry?;
                        let key = *key.value();
                        if value.value().0 < now
                            && let Some(v) = t.objects.get(&key)?
                        {
                            victims.push((key, v.value().to_vec()));
                        }
                    }
                    Ok(victims)
                })
            })
            .await?
    }

    /// Up to `limit` blobs kept for peers, in address order after `after`, with their sizes:
    /// a page of what a scrub reads next.
    pub async fn leased(
        &self,
        after: Option<Address>,
        limit: usize,
    ) -> Result<Vec<(Address, u64)>, StoreError> {
        self.read(move |txn| {
            let leases = txn.open_table(LEASES)?;
            let start = after.map(|a| *a.as_bytes());
            let range = match &start {
                Some(key) => leases.range::<&[u8; 32]>((
                    std::ops::Bound::Excluded(key),
                    std::ops::Bound::Unbounded,
                ))?,
                None => leases.range::<&[u8; 32]>(..)?,
            };
            let mut page = Vec::new();
            for entry in range.take(limit) {
                let (key, value) = entry?;
                page.push((Address::from_bytes(*key.value()), value.value().1));
            }
            Ok(page)
        })
        .await
    }

    /// Whether the owner pinned `addr` (a blob kept under a lease is not the owner's).
    pub async fn owner_pinned(&self, addr: &Address) -> Result<bool, StoreError> {
        let addr = *addr;
        self.read(move |txn| {
            let pinned = txn.open_table(PINS)?.get(addr.as_bytes())?.is_some();
            let leased = txn.open_table(LEASES)?.get(addr.as_bytes())?.is_some();
            Ok(pinned && !leased)
        })
        .await
    }

    /// Bytes kept for peers under leases.
    pub async fn leased_bytes(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            let totals = txn.open_table(TOTALS)?;
            Ok(totals.get(BYTES_LEASED)?.map_or(0, |v| v.value()))
        })
        .await
    }

    /// Watches over `object`, protected by the layout at `layout` (replacing any other).
    pub async fn watch(&self, object: Address, layout: Address) -> Result<(), StoreError> {
        self.write(move |txn| {
            txn.open_table(WATCHED)?
                .insert(object.as_bytes(), layout.as_bytes())?;
            Ok(())
        })
        .await
    }

    /// Records (durably) that `object` is to be protected with `k+m` (`None`: no longer).
    pub async fn intend(
        &self,
        object: Address,
        scheme: Option<(u8, u8)>,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(INTENTS)?;
            match scheme {
                Some(km) => table.insert(object.as_bytes(), km)?,
                None => table.remove(object.as_bytes())?,
            };
            Ok(())
        })
        .await
    }

    /// Every object waiting to be protected, with its `(k, m)`.
    pub async fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        self.read(|txn| {
            let mut all = Vec::new();
            for entry in txn.open_table(INTENTS)?.iter()? {
                let (k, v) = entry?;
                all.push((Address::from_bytes(*k.value()), v.value()));
            }
            Ok(all)
        })
        .await
    }

    /// Stops watching over `object` (and forgets where its repair stopped).
    pub async fn unwatch(&self, object: Address) -> Result<(), StoreError> {
        self.write(move |txn| {
            txn.open_table(WATCHED)?.remove(object.as_bytes())?;
            txn.open_table(PROGRESS)?.remove(object.as_bytes())?;
            Ok(())
        })
        .await
    }

    /// Every object watched over, with its layout's address.
    pub async fn watched(&self) -> Result<Vec<(Address, Address)>, StoreError> {
        self.read(|txn| {
            let mut all = Vec::new();
            for entry in txn.open_table(WATCHED)?.iter()? {
                let (k, v) = entry?;
                all.push((
                    Address::from_bytes(*k.value()),
                    Address::from_bytes(*v.value()),
                ));
            }
            Ok(all)
        })
        .await
    }

    /// Where the repair of `object` stopped (the next chunk), if one is unfinished.
    pub async fn progress(&self, object: Address) -> Result<Option<u64>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(PROGRESS)?;
            Ok(table.get(object.as_bytes())?.map(|v| v.value()))
        })
        .await
    }

    /// Records (durably) that the repair of `object` goes on at chunk `next`, or, with `None`,
    /// that it finished.
    pub async fn set_progress(&self, object: Address, next: Option<u64>) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(PROGRESS)?;
            match next {
                Some(next) => table.insert(object.as_bytes(), next)?,
                None => table.remove(object.as_bytes())?,
            };
            Ok(())
        })
        .await
    }

    /// Bytes of unpinned objects (the cache of fetched copies and unpinned content).
    pub async fn unpinned_bytes(&self) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.inner
            .pool
            .run(move || -> Result<u64, StoreError> {
                let txn = inner.db.begin_read()?;
                Ok(unpinned(
                    &txn.open_table(OBJECTS)?,
                    &txn.open_table(PINS)?,
                    &txn.open_table(CACHED)?,
                )?
                .iter()
                .map(|u| u.size)
                .sum())
            })
            .await?
    }

    /// Store-wide figures.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let this = self.clone();
        self.inner.pool.run(move || this.stats_now()).await?
    }

    /// Keeps `bytes` free on the file system holding the store: writes that would leave less
    /// are refused ([`StoreError::Full`], 507) until there is room again
    /// (`storage.min_free_bytes`; 0: only a full file system refuses them).
    pub fn set_min_free(&self, bytes: u64) {
        self.inner.blobs.set_min_free(bytes);
    }

    /// Whether an upload of `bytes` fits now ([`StoreError::Full`] when it would leave less
    /// than the reserve free): checked before an announced upload reads its body.
    pub fn room_for(&self, bytes: u64) -> Result<(), StoreError> {
        self.inner.blobs.room(bytes)
    }

    /// Bytes free on the file system holding the store (`None` in memory).
    pub fn free_bytes(&self) -> Option<u64> {
        self.inner.blobs.free_bytes()
    }

    /// Writes refused since start because they would have left less than
    /// `storage.min_free_bytes` free.
    pub fn refused_full(&self) -> u64 {
        self.inner.blobs.refused()
    }

    /// For each address, whether the object is held now, in one read transaction (blocking:
    /// call it off the async workers). A store that cannot be read answers every one held:
    /// nothing is dropped on a read error.
    pub fn held_now(&self, addrs: &[Address]) -> Vec<bool> {
        let read = || -> Result<Vec<bool>, StoreError> {
            let txn = self.inner.db.begin_read()?;
            let objects = txn.open_table(OBJECTS)?;
            addrs
                .iter()
                .map(|a| Ok(objects.get(a.as_bytes())?.is_some()))
                .collect()
        };
        read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read which objects are held");
            vec![true; addrs.len()]
        })
    }

    /// Every object held, pinned or cached (blocking: call it off the async workers).
    pub fn addresses(&self) -> Result<Vec<Address>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let mut all = Vec::with_capacity(usize::try_from(objects.len()?).unwrap_or(0));
        for entry in objects.iter()? {
            let (key, _) = entry?;
            all.push(Address::from_bytes(*key.value()));
        }
        Ok(all)
    }

    /// Store-wide figures, read inline: one short read transaction of four counters, cheap
    /// enough for a metrics scrape.
    pub fn stats_now(&self) -> Result<StoreStats, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let totals = txn.open_table(TOTALS)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(totals.get(k)?.map_or(0, |v| v.value())) };
        let (bytes_stored, bytes_logical) = (get(BYTES_STORED)?, get(BYTES_LOGICAL)?);
        Ok(StoreStats {
            objects: txn.open_table(OBJECTS)?.len()?,
            chunks: txn.open_table(CHUNKS)?.len()?,
            bytes_stored,
            bytes_logical,
            bytes_saved: bytes_logical.saturating_sub(bytes_stored),
        })
    }
}

fn add(totals: &mut redb::Table<'_, &str, u64>, key: &str, delta: i128) -> Result<(), StoreError> {
    let now = totals.get(key)?.map_or(0, |v| v.value());
    let next = u64::try_from((i128::from(now) + delta).max(0)).unwrap_or(u64::MAX);
    totals.insert(key, next)?;
    Ok(())
}

/// Records a new object (or re-pins an existing one) in one transaction.
pub(crate) fn commit_object(
    inner: &Inner,
    manifest: &Manifest,
    encoded: &[u8],
    pin: bool,
    lease: Option<Lease>,
) -> Result<bool, StoreError> {
    let key = manifest.address.as_bytes();
    let txn = inner.db.begin_write()?;
    let created = {
        let mut objects = txn.open_table(OBJECTS)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut pins = txn.open_table(PINS)?;
        let mut totals = txn.open_table(TOTALS)?;
        let mut leases = txn.open_table(LEASES)?;
        let stored = objects.get(key)?.map(|v| v.value().to_vec());
        let created = stored.is_none();
        let held = leases.get(key)?.map(|v| v.value());
        // Kept for a peer: within the budget, unless the owner pinned it (it stays theirs).
        let owners = !created && held.is_none() && pins.get(key)?.is_some();
        match lease {
            Some(lease) if !owners => {
                if held.is_none() {
                    let used = totals.get(BYTES_LEASED)?.map_or(0, |v| v.value());
                    if used.saturating_add(manifest.size) > lease.budget {
                        return Err(StoreError::NoRoom {
                            budget: lease.budget,
                        });
                    }
                    add(&mut totals, BYTES_LEASED, i128::from(manifest.size))?;
                }
                let until = held.map_or(lease.until, |(ends, _)| ends.max(lease.until));
                leases.insert(key, (until, manifest.size))?;
            }
            Some(_) => {}
            None if pin => {
                if let Some((_, size)) = held {
                    leases.remove(key)?;
                    add(&mut totals, BYTES_LEASED, -i128::from(size))?;
                }
            }
            None => {}
        }
        if let Some(stored) = stored
            && manifest.media_type.is_some()
        {
            // The same bytes again with a media type: the stored object takes it (the chunks
            // are the same; only the manifest's type changes).
            let mut current = Manifest::decode(&stored).map_err(|source| StoreError::Manifest {
                address: manifest.address,
                source,
            })?;
            if current.media_type != manifest.media_type {
                current.media_type.clone_from(&manifest.media_type);
                let updated = current
                    .encode()
                    .map_err(|e| StoreError::Internal(format!("manifest: {e}")))?;
                objects.insert(key, updated.as_slice())?;
            }
        }
        if created {
            objects.insert(key, encoded)?;
            txn.open_table(STORED_AT)?.insert(key, crate::unix_now())?;
            let unique: BTreeSet<_> = manifest.chunks.iter().map(|c| (c.address, c.len)).collect();
            for (addr, len) in unique {
                let existing = chunks.get(addr.as_bytes())?.map(|v| v.value());
                match existing {
                    Some((refs, len)) => chunks.insert(addr.as_bytes(), (refs + 1, len))?,
                    None => {
                        add(&mut totals, BYTES_STORED, i128::from(len))?;
                        chunks.insert(addr.as_bytes(), (1, len))?
                    }
                };
            }
            add(&mut totals, BYTES_LOGICAL, i128::from(manifest.size))?;
        }
        let mut cached = txn.open_table(CACHED)?;
        if pin || lease.is_some() {
            pins.insert(key, ())?;
            cached.remove(key)?;
            txn.open_table(RELEASED)?.remove(key)?;
        } else if created {
            cache(&mut cached, &mut totals, key)?;
        }
        created
    };
    txn.commit()?;
    Ok(created)
}

/// Marks `key` as cached now: the newest in eviction order.
fn cache(
    cached: &mut redb::Table<'_, &[u8; 32], u64>,
    totals: &mut redb::Table<'_, &str, u64>,
    key: &[u8; 32],
) -> Result<(), StoreError> {
    let seq = totals.get(CACHE_SEQ)?.map_or(0, |v| v.value());
    totals.insert(CACHE_SEQ, seq + 1)?;
    cached.insert(key, seq)?;
    Ok(())
}

/// An unpinned object, in eviction order.
struct Unpinned {
    key: [u8; 32],
    seq: u64,
    size: u64,
    encoded: Vec<u8>,
}

fn unpinned(
    objects: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    pins: &impl ReadableTable<&'static [u8; 32], ()>,
    cached: &impl ReadableTable<&'static [u8; 32], u64>,
) -> Result<Vec<Unpinned>, StoreError> {
    let mut all = Vec::new();
    for entry in objects.iter()? {
        let (key, value) = entry?;
        let key = *key.value();
        if pins.get(&key)?.is_some() {
            continue;
        }
        let encoded = value.value().to_vec();
        let address = Address::from_bytes(key);
        let size = Manifest::decode(&encoded)
            .map_err(|source| StoreError::Manifest { address, source })?
            .size;
        // Unpinned before the cache order was kept: oldest.
        let seq = cached.get(&key)?.map_or(0, |v| v.value());
        all.push(Unpinned {
            key,
            seq,
            size,
            encoded,
        });
    }
    all.sort_by_key(|u| u.seq);
    Ok(all)
}

/// The tables an object's removal touches, open in one write transaction.
struct Tables<'t> {
    objects: redb::Table<'t, &'static [u8; 32], &'static [u8]>,
    chunks: redb::Table<'t, &'static [u8; 32], (u64, u64)>,
    pins: redb::Table<'t, &'static [u8; 32], ()>,
    cached: redb::Table<'t, &'static [u8; 32], u64>,
    totals: redb::Table<'t, &'static str, u64>,
    stored_at: redb::Table<'t, &'static [u8; 32], u64>,
    released: redb::Table<'t, &'static [u8; 32], ()>,
    leases: redb::Table<'t, &'static [u8; 32], (u64, u64)>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            objects: txn.open_table(OBJECTS)?,
            chunks: txn.open_table(CHUNKS)?,
            pins: txn.open_table(PINS)?,
            cached: txn.open_table(CACHED)?,
            totals: txn.open_table(TOTALS)?,
            stored_at: txn.open_table(STORED_AT)?,
            released: txn.open_table(RELEASED)?,
            leases: txn.open_table(LEASES)?,
        })
    }

    /// Forgets one object: its manifest, pin, cache place and timestamps; each of its chunks
    /// loses a reference, and those left with none are returned (their files go after the
    /// commit).
    fn drop_object(
        &mut self,
        key: &[u8; 32],
        encoded: &[u8],
        report: &mut GcReport,
    ) -> Result<Vec<Address>, StoreError> {
        let address = Address::from_bytes(*key);
        let manifest =
            Manifest::decode(encoded).map_err(|source| StoreError::Manifest { address, source })?;
        self.objects.remove(key)?;
        self.pins.remove(key)?;
        self.cached.remove(key)?;
        self.stored_at.remove(key)?;
        self.released.remove(key)?;
        if let Some((_, size)) = self.leases.remove(key)?.map(|v| v.value()) {
            add(&mut self.totals, BYTES_LEASED, -i128::from(size))?;
        }
        add(&mut self.totals, BYTES_LOGICAL, -i128::from(manifest.size))?;
        let mut dead = Vec::new();
        let unique: BTreeSet<_> = manifest.chunks.iter().map(|c| c.address).collect();
        for chunk in unique {
            let Some((refs, len)) = self.chunks.get(chunk.as_bytes())?.map(|v| v.value()) else {
                continue;
            };
            if refs <= 1 {
                self.chunks.remove(chunk.as_bytes())?;
                add(&mut self.totals, BYTES_STORED, -i128::from(len))?;
                dead.push(chunk);
                report.chunks += 1;
                report.bytes += len;
            } else {
                self.chunks.insert(chunk.as_bytes(), (refs - 1, len))?;
            }
        }
        report.objects += 1;
        Ok(dead)
    }
}

/// Removes the objects `select` picks (as key and encoded manifest) in one transaction, then
/// the files of chunks nothing references any more and of their outboards (unless an upload
/// in flight uses them), then sweeps. Returns what it removed.
fn remove_objects(
    inner: &Arc<Inner>,
    select: impl FnOnce(&Tables<'_>) -> Result<Vec<([u8; 32], Vec<u8>)>, StoreError>,
) -> Result<(GcReport, Vec<Address>), StoreError> {
    let mut report = GcReport::default();
    let mut dead_chunks = Vec::new();
    let mut dead_objects = Vec::new();
    let txn = inner.db.begin_write()?;
    {
        let mut tables = Tables::open(&txn)?;
        let victims = select(&tables)?;
        if victims.is_empty() {
            // Nothing to do: leave the files alone (no sweep).
            return Ok((report, Vec::new()));
        }
        for (key, encoded) in victims {
            dead_chunks.extend(tables.drop_object(&key, &encoded, &mut report)?);
            dead_objects.push(Address::from_bytes(key));
        }
    }
    txn.commit()?;
    {
        let inflight = inner.inflight();
        for chunk in dead_chunks {
            if !inflight.contains_key(&(Kind::Chunk, chunk)) {
                inner.blobs.remove(Kind::Chunk, &chunk)?;
            }
        }
        for object in &dead_objects {
            if !inflight.contains_key(&(Kind::Outboard, *object)) {
                inner.blobs.remove(Kind::Outboard, object)?;
            }
        }
    }
    inner.sweep()?;
    Ok((report, dead_objects))
}

/// Removes every unpinned object, or (with a budget) the oldest until the rest fit it.
fn remove_unpinned(
    inner: &Arc<Inner>,
    budget: Option<u64>,
) -> Result<(GcReport, Vec<Address>), StoreError> {
    if let Some(budget) = budget {
        // Called before every fetch: when all objects together fit the budget (one counter
        // read), the unpinned ones do too, and nothing is scanned, written or swept.
        let txn = inner.db.begin_read()?;
        let logical = txn
            .open_table(TOTALS)?
            .get(BYTES_LOGICAL)?
            .map_or(0, |v| v.value());
        if logical <= budget {
            return Ok((GcReport::default(), Vec::new()));
        }
    }
    remove_objects(inner, |t| {
        let mut unpinned = unpinned(&t.objects, &t.pins, &t.cached)?;
        if let Some(budget) = budget {
            let mut total: u64 = unpinned.iter().map(|u| u.size).sum();
            let mut keep = unpinned.len();
            for (i, u) in unpinned.iter().enumerate() {
                if total <= budget {
                    keep = i;
                    break;
                }
                total -= u.size;
            }
            unpinned.truncate(keep);
        }
        Ok(unpinned.into_iter().map(|u| (u.key, u.encoded)).collect())
    })
}
