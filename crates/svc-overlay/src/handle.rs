//! The handle callers hold: every operation on an object, local or from peers.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ron_kernel::Config;
use ron_proto::Address;
use ron_proto::collection::{self, Collection};
use ron_proto::layout::Scheme;
use supervisor::circuit::{Board, Breaker, CircuitPolicy};
use svc_dht::DhtHandle;
use svc_index::Index;
use svc_storage::{
    GcReport, ObjectReader, ObjectStat, ObjectWriter, PutOptions, Store, StoreStats, Stored,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::OverlayError;
use crate::cache::{SMALL_OBJECT, SmallCache};
use crate::fetch::{Incoming, Net};

/// How long a caller waits for room in a full queue before giving up with
/// [`OverlayError::Busy`].
const ENQUEUE_DEADLINE: Duration = Duration::from_secs(2);

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

/// What an upload asks for.
#[derive(Debug, Clone, Default)]
pub struct PutRequest {
    /// The object's media type.
    pub media_type: Option<String>,
    /// The address the client expects; on mismatch nothing is stored (422).
    pub expect: Option<Address>,
    /// How to protect it across nodes: `Some(Some(scheme))`, `Some(None)` not at all, `None`
    /// as `storage.durability` says.
    pub durability: Option<Option<Scheme>>,
}

/// An object being uploaded. Dropping it before [`Upload::finish`] leaves nothing behind.
#[derive(Debug)]
pub struct Upload {
    writer: ObjectWriter,
    /// The bytes of an upload declared a collection, checked before it commits.
    collection: Option<Vec<u8>>,
    /// A media type was given: an object already stored takes it.
    typed: bool,
    /// The scheme it is protected with once committed.
    scheme: Option<Scheme>,
    overlay: OverlayHandle,
    _permit: OwnedSemaphorePermit,
}

impl Upload {
    /// Takes the next piece of the upload.
    ///
    /// # Cancel safety
    /// Not resumable: after a cancelled call drop the upload (which cleans up).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), OverlayError> {
        if let Some(held) = &mut self.collection {
            let limit = collection::MAX_COLLECTION_BYTES;
            if (held.len() + data.len()) as u64 > limit {
                return Err(OverlayError::TooLarge { limit });
            }
            held.extend_from_slice(data);
        }
        let writer = &mut self.writer;
        self.overlay
            .on_disk(async move { Ok(writer.write(data).await?) })
            .await
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.writer.size()
    }

    /// Commits the object (durable when this returns `Ok`), pinned, and announces it to the
    /// peer network. The address is always the BLAKE3 of the bytes that arrived. A protected
    /// upload is recorded as such before this returns; the guard then cuts it into shards
    /// and places them.
    ///
    /// An upload declared a collection ([`collection::COLLECTION_MEDIA_TYPE`]) commits only
    /// if it is a valid one ([`OverlayError::InvalidCollection`]).
    pub async fn finish(self) -> Result<Stored, OverlayError> {
        if let Some(held) = &self.collection {
            Collection::decode(held).map_err(OverlayError::InvalidCollection)?;
        }
        let overlay = self.overlay.clone();
        let stored = overlay
            .on_disk_untimed(async { Ok(self.writer.finish().await?) })
            .instrument(tracing::debug_span!("storage.commit"))
            .await?;
        if !stored.created && self.typed {
            // Its manifest may have a new media type: read it afresh.
            self.overlay.small().remove(&stored.address);
            self.overlay.index.forget(&stored.address);
        }
        self.overlay.announce(stored.address).await;
        if let Some(scheme) = self.scheme {
            // Durable with the object: the guard computes its layout and places its shards
            // once enough peers are known.
            let km = (scheme.k, scheme.m);
            self.overlay.store.intend(stored.address, Some(km)).await?;
            self.overlay.guard.wake();
        }
        Ok(stored)
    }
}

/// Whether a media type declares a collection (its essence, any case, parameters ignored).
fn is_collection(media_type: Option<&str>) -> bool {
    media_type.is_some_and(|mt| {
        mt.split(';').next().is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case(collection::COLLECTION_MEDIA_TYPE)
        })
    })
}

/// An object's verified bytes: a stored copy that repairs itself from peers when its bytes
/// are found damaged, before giving up with [`OverlayError::Damaged`].
#[derive(Debug, Clone)]
pub struct Object {
    reader: Arc<Mutex<ObjectReader>>,
    overlay: OverlayHandle,
}

impl Object {
    fn reader(&self) -> ObjectReader {
        self.reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The object's address.
    pub fn address(&self) -> Address {
        self.reader().address()
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.reader().size()
    }

    /// Its media type, if one was given.
    pub fn media_type(&self) -> Option<String> {
        self.reader().manifest().media_type.clone()
    }

    /// Bytes `start..end` (clamped to the size), each checked against the address before it
    /// is returned. Damage found on the way is repaired from peers (once per object) and the
    /// bytes read again; without a verified copy anywhere, [`OverlayError::Damaged`].
    pub async fn read_verified(&self, start: u64, end: u64) -> Result<Bytes, OverlayError> {
        let reader = self.reader();
        match self.overlay.read(&reader, start, end).await {
            Err(OverlayError::Damaged(address)) => {
                let fresh = self.overlay.repaired(address).await?;
                *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                self.overlay.read(&fresh, start, end).await
            }
            read => read,
        }
    }
}

/// A GET's answer: the stored copy, or the object arriving from peers as it verifies.
#[derive(Debug)]
pub enum Got {
    /// This node holds the object.
    Stored(Object),
    /// Fetched from peers: its size is proven, its bytes follow (see [`Incoming`]).
    Arriving(Incoming),
}

/// What builds an [`OverlayHandle`].
#[derive(Clone)]
pub struct OverlaySetup {
    /// The sender of the actor's mailbox.
    pub tx: mpsc::Sender<Command>,
    /// The node's store.
    pub store: Store,
    /// The resolver in front of it.
    pub index: Index,
    /// Uploads (and fetches) admitted at once.
    pub max_uploads: usize,
    /// The node's configuration (`[p2p]` is read live for fetches).
    pub config: Config,
    /// The largest object the node takes, read live (`gateway.max_put_bytes`).
    pub max_object: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The peer network, when the node runs one.
    pub dht: Option<DhtHandle>,
    /// Whether peers may read this node's objects now (read live). While it says no (the
    /// node's reads need a capability, `auth.protect_reads`), no object is served to a peer
    /// and none is announced: a read refused over HTTP is refused on the peer network too.
    pub peers_may_read: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The node's circuit breakers: the overlay adds the disk's (`storage`).
    pub circuits: Board,
    /// When the disk's circuit opens ([`OverlaySetup::DISK_CIRCUIT`] in a node).
    pub disk_circuit: CircuitPolicy,
}

impl OverlaySetup {
    /// The disk's circuit in a node: 5 failures in a row (I/O errors, or operations slower
    /// than 5 s), or one operation still running after 15 s, open it; it is probed after
    /// 1 s, then up to 30 s.
    pub const DISK_CIRCUIT: CircuitPolicy = CircuitPolicy {
        failures: 5,
        slow: Duration::from_secs(5),
        stall: Duration::from_secs(15),
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(30),
    };
}

impl std::fmt::Debug for OverlaySetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySetup")
            .field("max_uploads", &self.max_uploads)
            .field("dht", &self.dht.is_some())
            .finish_non_exhaustive()
    }
}

/// A cheap-to-clone handle on the overlay.
#[derive(Clone)]
pub struct OverlayHandle {
    tx: mpsc::Sender<Command>,
    pub(crate) store: Store,
    index: Index,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    small: Arc<Mutex<SmallCache>>,
    max_object: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub(crate) net: Option<Arc<Net>>,
    pub(crate) guard: Arc<crate::durability::Guard>,
    /// The disk's circuit breaker: what reads, writes and opens go through (cached small
    /// objects do not touch it).
    disk: Breaker,
}

impl std::fmt::Debug for OverlayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayHandle")
            .field("max_uploads", &self.max_uploads)
            .field("peers", &self.net.is_some())
            .finish_non_exhaustive()
    }
}

impl OverlayHandle {
    /// A handle on the overlay described by `setup`. Made inside a tokio runtime, the
    /// overlay runs its fetches from peers there, whichever thread asks for them.
    pub fn new(setup: OverlaySetup) -> Self {
        let max_uploads = setup.max_uploads.max(1);
        Self {
            tx: setup.tx,
            store: setup.store,
            index: setup.index,
            uploads: Arc::new(Semaphore::new(max_uploads)),
            max_uploads,
            small: Arc::new(Mutex::new(SmallCache::default())),
            max_object: setup.max_object,
            net: setup
                .dht
                .map(|dht| Arc::new(Net::new(dht, setup.config, setup.peers_may_read))),
            guard: Arc::default(),
            disk: setup.circuits.breaker("storage", setup.disk_circuit),
        }
    }

    /// Runs `call` on the disk through its circuit: refused at once while it is open, cut
    /// short when the disk stalls. I/O and database errors count against the disk.
    pub(crate) async fn on_disk<T>(
        &self,
        call: impl Future<Output = Result<T, OverlayError>>,
    ) -> Result<T, OverlayError> {
        self.disk.run(call, OverlayError::is_disk_fault).await?
    }

    /// Like [`OverlayHandle::on_disk`], for work whose length grows with the object (a
    /// commit, a stat that hashes every byte, a collection): refused while the circuit is
    /// open and its I/O errors counted, but neither timed nor cut short.
    pub(crate) async fn on_disk_untimed<T>(
        &self,
        call: impl Future<Output = Result<T, OverlayError>>,
    ) -> Result<T, OverlayError> {
        let ticket = self.disk.admit()?;
        let result = call.await;
        match &result {
            Ok(_) => ticket.succeeded(),
            Err(e) if e.is_disk_fault() => ticket.failed(),
            // Not the disk's doing: counts for nothing.
            Err(_) => drop(ticket),
        }
        result
    }

    /// Bytes `start..end` of `reader`, verified: from memory for a cached small object,
    /// else from the disk through its circuit.
    pub(crate) async fn read(
        &self,
        reader: &ObjectReader,
        start: u64,
        end: u64,
    ) -> Result<Bytes, OverlayError> {
        if reader.inline_len() > 0 {
            return Ok(reader.read_verified(start, end).await?);
        }
        self.on_disk(async { Ok(reader.read_verified(start, end).await?) })
            .await
    }

    fn small(&self) -> MutexGuard<'_, SmallCache> {
        self.small.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// The stored copy's reader, verified small objects from memory; `None` when this node
    /// does not hold it.
    pub(crate) async fn reader(
        &self,
        address: Address,
    ) -> Result<Option<ObjectReader>, OverlayError> {
        if let Some(hit) = self.small().get(&address) {
            return Ok(Some(hit));
        }
        let opened = self.on_disk(async {
            let Some(reader) = self.ask(|reply| Command::Open { address, reply }).await? else {
                return Ok(None);
            };
            if reader.size() > SMALL_OBJECT {
                return Ok(Some(reader));
            }
            Ok(Some(reader.into_inline().await?))
        });
        let Some(reader) = opened.await? else {
            return Ok(None);
        };
        if reader.size() <= SMALL_OBJECT {
            self.small().insert(address, reader.clone());
        }
        Ok(Some(reader))
    }

    /// This node's copy of `address`, or `None` if it holds none. A copy that cannot even be
    /// opened (its outboard damaged or gone) is repaired from peers first.
    pub async fn open(&self, address: Address) -> Result<Option<Object>, OverlayError> {
        let reader = match self.reader(address).await {
            Ok(Some(reader)) => reader,
            Ok(None) => return Ok(None),
            Err(OverlayError::Damaged(_)) => self.repaired(address).await?,
            Err(e) => return Err(e),
        };
        Ok(Some(self.object(reader)))
    }

    fn object(&self, reader: ObjectReader) -> Object {
        Object {
            reader: Arc::new(Mutex::new(reader)),
            overlay: self.clone(),
        }
    }

    /// The whole object: this node's copy, or, when it holds none, the object fetched from
    /// peers (one flight per object, stored unpinned as it verifies), its bytes handed on as
    /// they arrive.
    pub async fn get(&self, address: Address) -> Result<Got, OverlayError> {
        let span = tracing::debug_span!("overlay.get", %address);
        self.get_here_or_from_peers(address).instrument(span).await
    }

    async fn get_here_or_from_peers(&self, address: Address) -> Result<Got, OverlayError> {
        if let Some(object) = self.open(address).await? {
            return Ok(Got::Stored(object));
        }
        let Some(net) = &self.net else {
            return Err(OverlayError::NotFound(address));
        };
        match net.stream(self, address, false).await {
            Ok(incoming) => Ok(Got::Arriving(incoming)),
            Err(e) => Ok(Got::Stored(self.rebuilt(address, e).await?)),
        }
    }

    /// When no full copy could be fetched (`failed`), the object rebuilt from its shards, if
    /// it is protected; else `failed`.
    async fn rebuilt(
        &self,
        address: Address,
        failed: OverlayError,
    ) -> Result<Object, OverlayError> {
        if !matches!(
            failed,
            OverlayError::NotFound(_) | OverlayError::FetchFailed(_) | OverlayError::FetchTimeout
        ) {
            return Err(failed);
        }
        match self.rebuild(address).await {
            Ok(()) => self
                .open(address)
                .await?
                .ok_or(OverlayError::NotFound(address)),
            // Not protected: the fetch's own failure says what happened.
            Err(OverlayError::NotFound(_)) => Err(failed),
            Err(e) => Err(e),
        }
    }

    /// A stored copy: this node's, or one fetched from peers and committed first (for range
    /// requests and pins).
    pub async fn get_stored(&self, address: Address) -> Result<Object, OverlayError> {
        if let Some(object) = self.open(address).await? {
            return Ok(object);
        }
        if let Err(e) = self.fetched(address, false).await {
            return self.rebuilt(address, e).await;
        }
        match self.open(address).await? {
            Some(object) => Ok(object),
            None => Err(OverlayError::NotFound(address)),
        }
    }

    /// Fetches `address` from peers into the store and waits for the commit. (Boxed: a
    /// fetch's replay reads the stored copy, whose repair fetches: the future is recursive.)
    fn fetched(
        &self,
        address: Address,
        repair: bool,
    ) -> futures_util::future::BoxFuture<'_, Result<(), OverlayError>> {
        Box::pin(async move {
            let Some(net) = &self.net else {
                return Err(OverlayError::NotFound(address));
            };
            let incoming = net.stream(self, address, repair).await?;
            drop(incoming.bytes);
            incoming.done.await
        })
    }

    /// Repairs the stored copy of `address` from peers: the object is fetched again,
    /// verified, and its damaged chunk files (and outboard) replaced by verified bytes.
    /// Returns a fresh reader, or [`OverlayError::Damaged`] when no peer could supply it.
    pub(crate) async fn repaired(&self, address: Address) -> Result<ObjectReader, OverlayError> {
        self.small().remove(&address);
        self.index.forget(&address);
        if self.net.is_none() {
            tracing::error!(%address, "stored object is damaged and this node has no peers to repair it from");
            return Err(OverlayError::Damaged(address));
        }
        match self.fetched(address, true).await {
            Ok(()) => {
                tracing::info!(%address, "repaired a damaged object from peers");
                match self.ask(|reply| Command::Open { address, reply }).await {
                    Ok(Some(reader)) => Ok(reader),
                    Ok(None) => Err(OverlayError::NotFound(address)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => {
                tracing::error!(%address, error = %e, "stored object is damaged and no peer could repair it");
                Err(OverlayError::Damaged(address))
            }
        }
    }

    /// Size, media type, chunks, pin and damage of `address` (every stored byte verified). A
    /// damaged copy is repaired from peers when it can be, and the answer is the state after.
    pub async fn stat(&self, address: Address) -> Result<Option<ObjectStat>, OverlayError> {
        let stat = self
            .on_disk_untimed(self.ask(|reply| Command::Stat { address, reply }))
            .await?;
        if stat.as_ref().is_some_and(|s| s.damaged) {
            // Served from memory no longer: GET and stat tell the same story.
            self.small().remove(&address);
            if self.net.is_some() && self.repaired(address).await.is_ok() {
                return self.ask(|reply| Command::Stat { address, reply }).await;
            }
        }
        Ok(stat)
    }

    /// Pins `address`, fetching it from peers first when this node lacks it, and announces
    /// it.
    pub async fn pin(&self, address: Address) -> Result<(), OverlayError> {
        let set = |pinned| {
            self.on_disk(self.ask(move |reply| Command::SetPinned {
                address,
                pinned,
                reply,
            }))
        };
        if !set(true).await? {
            self.get_stored(address).await?;
            if !set(true).await? {
                return Err(OverlayError::FetchFailed(
                    "the fetched copy was evicted before it was pinned".into(),
                ));
            }
        }
        self.announce(address).await;
        Ok(())
    }

    /// Unpins `address` (garbage collection may then remove it) and stops announcing it.
    pub async fn unpin(&self, address: Address) -> Result<(), OverlayError> {
        let unset = self
            .on_disk(self.ask(|reply| Command::SetPinned {
                address,
                pinned: false,
                reply,
            }))
            .await?;
        if !unset {
            return Err(OverlayError::NotFound(address));
        }
        if let Some(net) = &self.net {
            net.withdraw(address).await;
        }
        Ok(())
    }

    /// Starts an upload if fewer than the maximum are running, else [`OverlayError::Busy`].
    /// The object is pinned when it commits; bytes past the largest object are refused.
    pub fn put(&self, request: PutRequest) -> Result<Upload, OverlayError> {
        if let Some(open) = self.disk.refuses() {
            return Err(open.into());
        }
        let options = PutOptions {
            media_type: request.media_type,
            expect: request.expect,
            max_bytes: Some(self.max_object_bytes()),
            unpinned: false,
            // The store reads the chunks back for the outboard: keep them in the page cache.
            around_cache: false,
            lease: None,
        };
        let collection = is_collection(options.media_type.as_deref()).then(Vec::new);
        let typed = options.media_type.is_some();
        Ok(Upload {
            collection,
            typed,
            scheme: self.scheme_for(request.durability),
            writer: self.store.writer(options),
            _permit: self.admit_upload()?,
            overlay: self.clone(),
        })
    }

    /// Stores `bytes` in one call (an upload of one piece): for small objects a caller
    /// already holds, such as a collection it built.
    pub async fn put_bytes(
        &self,
        bytes: &[u8],
        request: PutRequest,
    ) -> Result<Stored, OverlayError> {
        let mut upload = self.put(request)?;
        upload.write(bytes).await?;
        upload.finish().await
    }

    pub(crate) fn admit_upload(&self) -> Result<OwnedSemaphorePermit, OverlayError> {
        self.uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| OverlayError::Busy)
    }

    /// The largest object this node takes now (`gateway.max_put_bytes`, live).
    pub fn max_object_bytes(&self) -> u64 {
        (self.max_object)()
    }

    /// Whether an upload announcing `bytes` fits on the disk now, keeping
    /// `storage.min_free_bytes` free (507 `insufficient_storage` when not): every edge checks
    /// it before reading an announced body.
    pub fn room_for(&self, bytes: u64) -> Result<(), OverlayError> {
        Ok(self.store.room_for(bytes)?)
    }

    /// Tells the peer network this node holds `address`.
    pub(crate) async fn announce(&self, address: Address) {
        if let Some(net) = &self.net {
            net.announce(address).await;
        }
    }

    /// Removes unpinned objects and unreferenced chunks.
    pub async fn gc(&self) -> Result<GcReport, OverlayError> {
        self.evict(0).await.map(|(report, _)| report)
    }

    /// Removes unpinned objects, those cached or unpinned longest ago first, until the rest
    /// take at most `budget` bytes, and unreferenced chunks; stops announcing what it removed.
    pub async fn evict(&self, budget: u64) -> Result<(GcReport, Vec<Address>), OverlayError> {
        let report = self
            .on_disk_untimed(self.ask(|reply| Command::Gc { budget, reply }))
            .await;
        if report
            .as_ref()
            .map_or(true, |(_, removed)| !removed.is_empty())
        {
            // Collected objects must not be served from memory either.
            self.small().clear();
        }
        if let (Ok((_, removed)), Some(net)) = (&report, &self.net) {
            for addr in removed {
                net.withdraw(*addr).await;
            }
        }
        report
    }

    /// Removes `address` from this node, pinned or not: the chunks nothing else references
    /// are freed and the node stops announcing it. [`OverlayError::NotFound`] when it is not
    /// stored.
    pub async fn delete(&self, address: Address) -> Result<(), OverlayError> {
        let removed = self.on_disk_untimed(async { Ok(self.store.remove(&address).await?) });
        if !removed.await? {
            return Err(OverlayError::NotFound(address));
        }
        // No longer protected from here: the shards' leases run out.
        self.store.intend(address, None).await?;
        self.store.unwatch(address).await?;
        self.small().remove(&address);
        self.index.forget(&address);
        if let Some(net) = &self.net {
            net.withdraw(address).await;
        }
        Ok(())
    }

    /// The periodic collection (`storage.gc_interval_s`, or on demand): objects their owner
    /// unpinned are removed, copies fetched from peers are kept within `p2p.cache_bytes`, and
    /// chunks nothing references are freed. What was removed is no longer announced.
    pub async fn collect(&self) -> Result<GcReport, OverlayError> {
        let (mut report, removed) = self.store.collect_released().await?;
        if !removed.is_empty() {
            self.small().clear();
            self.index.clear();
        }
        if let Some(net) = &self.net {
            for addr in removed {
                net.withdraw(addr).await;
            }
            let (cache, _) = self.evict(net.cache_budget()).await?;
            report.objects += cache.objects;
            report.chunks += cache.chunks;
            report.bytes += cache.bytes;
        }
        Ok(report)
    }

    /// A page of what this node stores, in address order after `after` (see
    /// [`svc_storage::Store::list`]).
    pub async fn list(
        &self,
        after: Option<Address>,
        limit: usize,
    ) -> Result<Vec<svc_storage::Listed>, OverlayError> {
        self.on_disk(async { Ok(self.store.list(after, limit).await?) })
            .await
    }

    /// Announces every object the store holds (a restarted node must say it again: provider
    /// records live in other nodes' memory only for libp2p's TTL).
    pub async fn announce_all(&self) {
        let Some(net) = &self.net else { return };
        let store = self.store.clone();
        let held = match tokio::task::spawn_blocking(move || store.addresses()).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => return tracing::warn!(error = %e, "cannot list stored objects"),
            Err(e) => return tracing::warn!(error = %e, "cannot list stored objects"),
        };
        let n = held.len();
        for addr in held {
            // The DHT actor's bounded mailbox paces this.
            if !net.announce_patiently(addr).await {
                return;
            }
        }
        tracing::info!(objects = n, "announced stored objects to the peer network");
    }

    /// What peers read objects through: the stored copies, verified, readers kept open
    /// between a transfer's range requests.
    pub fn peer_source(&self) -> Arc<dyn svc_dht::Source> {
        Arc::new(crate::source::PeerSource::new(self.clone()))
    }

    /// Store-wide figures (through the disk's circuit: `/status` does not hang on a
    /// stalled disk).
    pub async fn stats(&self) -> Result<StoreStats, OverlayError> {
        self.on_disk(async { Ok(self.store.stats().await?) }).await
    }

    /// The disk's circuit breaker.
    pub fn disk_circuit(&self) -> &Breaker {
        &self.disk
    }

    /// The resolver's cache counters.
    pub fn index(&self) -> &Index {
        &self.index
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
        self.small().bytes()
    }

    /// Shows queue depth, uploads, cache and storage figures in `metrics`.
    pub fn register_metrics(&self, metrics: &ron_kernel::Metrics) {
        metrics.register_collector(Box::new(crate::metrics::OverlayCollector {
            handle: self.clone(),
        }));
    }
}
