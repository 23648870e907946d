//! Durability across nodes: a pinned upload is cut, chunk by chunk, into `k` data and `m`
//! parity shards (its [`Layout`], kept pinned here and pointed at from the DHT), and the
//! shards of each chunk are placed on `k + m` distinct peers, which keep them under a lease.
//! The guard ([`guard`]) watches over every object whose layout this node holds: once per
//! `storage.repair_interval_s` the live holder of the layout closest to the object counts the
//! live, distinct holders of each chunk's shards (a provider lookup, then a `hold` asking each
//! holder, which renews its lease), rebuilds what is missing from `k` survivors (or the full
//! copy, when this node has one) and places it on new peers. Where it stopped is kept in the
//! store, so a crash resumes there. A node that lacks an object and every full copy rebuilds
//! it from any `k` shards of each chunk, each shard and chunk verified against its address,
//! the whole against the object's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use ron_kernel::{Bus, KernelEvent};
use ron_proto::layout::{self, ChunkShards, LAYOUT_VERSION, Layout, Scheme, shard_len};
use ron_proto::{Address, ErrorKind};
use serde::Serialize;
use svc_dht::{DhtHandle, Keep, MAX_KEEP, PeerEvent, PeerId, Role};
use svc_storage::{Lease, PutOptions, StorageSection, StoreError, erasure};
use tokio_util::sync::CancellationToken;

use crate::{OverlayError, OverlayHandle};

/// The media type a layout is stored under.
pub const LAYOUT_MEDIA_TYPE: &str = "application/vnd.ron.layout+cbor";
/// The longest lease this node grants (a week).
const MAX_LEASE_S: u32 = 7 * 24 * 3600;
/// The shortest lease the guard asks for; it asks for 30 repair intervals when that is longer.
const MIN_LEASE_S: u32 = 3600;
/// Passes a node lets go by after it receives a layout before it repairs the object itself
/// (its sender is still placing shards).
const SETTLE_PASSES: u64 = 5;
/// Most bytes of kept blobs the guard reads back (verifies) per pass.
const SCRUB_BYTES: u64 = 64 << 20;
/// How long `/stat` counts holders before it answers with what it has counted.
const CENSUS_BUDGET: Duration = Duration::from_secs(4);
/// Shards whose placement a node remembers.
const PLACED_REMEMBERED: std::num::NonZeroUsize = std::num::NonZeroUsize::new(1 << 16).unwrap();
/// Most peers closer to an object a node asks before it takes the object's repair on.
const ELECTORATE: usize = 20;
/// Chunks `/stat` counts at once.
const CENSUS_AT_ONCE: usize = 16;
/// Chunks a pass works on at once.
const CHUNKS_AT_ONCE: usize = 2;
/// Chunks between two records of a pass's progress (each one a durable commit).
const PROGRESS_EVERY: usize = 16;
/// When a shard fetch has not answered by then, another shard is asked for too.
const HEDGE_AFTER: Duration = Duration::from_millis(1500);
/// Passes a repairer goes on before it holds its election again (a lookup of every holder
/// of the layout): a closer holder appears only where a repairer placed a shard, and then
/// the election is held at the next pass.
const REELECT_PASSES: u32 = 10;
/// Passes between two publications of an object's pointer to its layout by its repairer.
const POINTER_PASSES: u32 = 30;

/// An object's protection, as `/stat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not every chunk has its `k + m` holders, and the node knows too few peers to place
    /// them: it keeps trying.
    Pending,
    /// Every chunk has `k + m` live, distinct holders.
    Protected,
    /// Some chunk has fewer than `k + m` (at least `k`): repair is due.
    Degraded,
    /// Some chunk has fewer than `k`: it cannot be rebuilt from shards.
    Lost,
}

/// What `/stat` says of a protected object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Durability {
    /// `K+M`.
    pub scheme: String,
    /// How protected it is.
    pub state: State,
    /// Its chunks.
    pub chunks: usize,
    /// The fewest live, distinct holders of any chunk's shards.
    pub min_holders: usize,
    /// The chunks whose holders were counted: all of them, unless counting ran out of time
    /// (then `state` and `min_holders` describe those only).
    pub counted: usize,
    /// The layout's address (none yet while the upload waits for peers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Address>,
    /// The object's size.
    #[serde(skip)]
    pub size: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) shards_kept: AtomicU64,
    pub(crate) shards_placed: AtomicU64,
    pub(crate) repairs: AtomicU64,
    pub(crate) repair_bytes_read: AtomicU64,
    pub(crate) repair_bytes_written: AtomicU64,
}

/// The guard's shared state: the last census of each watched object, and its wake-up call.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// The last census of each watched object: when it ended, and how long its pass took.
    states: Mutex<HashMap<Address, (Durability, tokio::time::Instant, Duration)>>,
    /// Where this node placed shards lately (a provider record takes a while to spread: a
    /// census right after a placement asks these peers directly, or it would place the
    /// shard again).
    placed: Mutex<Option<lru::LruCache<Address, Vec<PeerId>>>>,
    /// Where the scrub of kept blobs goes on (the last address it verified).
    scrubbed: Mutex<Option<Address>>,
    /// When the repair worker's bytes so far have been paid for at
    /// `storage.repair_bytes_per_s` (the next chunk's turn waits until then).
    paced: Mutex<Option<tokio::time::Instant>>,
    /// Per watched object, the closer live holder of its layout that repairs it instead of
    /// this node, as the last election found: asked first at the next (one question, no
    /// lookup, while it lives).
    deferred: Mutex<HashMap<Address, PeerId>>,
    /// Objects whose layout arrived lately, and until when their sender places them.
    settling: Mutex<HashMap<Address, tokio::time::Instant>>,
    /// Per watched object, when this node last found itself its repairer (no closer live
    /// holder of the layout).
    elected: Mutex<HashMap<Address, tokio::time::Instant>>,
    /// Per watched object, when this node last published its pointer to the layout.
    published: Mutex<HashMap<Address, tokio::time::Instant>>,
    wake: tokio::sync::Notify,
    pub(crate) counters: Counters,
}

impl Guard {
    /// Watched objects by state (`degraded`, `lost`): for the metrics.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let count = |s| states.values().filter(|(d, ..)| d.state == s).count() as u64;
        (count(State::Degraded), count(State::Lost))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// XOR distance between a peer and an address (the peer as the BLAKE3 of its id's bytes).
fn distance(peer: &PeerId, addr: &Address) -> [u8; 32] {
    let peer = Address::of(&peer.to_bytes());
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = peer.as_bytes()[i] ^ addr.as_bytes()[i];
    }
    d
}

/// The live holders of one chunk's shards.
#[derive(Debug, Clone, Default)]
struct Census {
    /// Per shard, the live peers that hold it.
    live: Vec<Vec<PeerId>>,
    /// Per shard, the holder it is counted for (each peer counted once per chunk).
    counted: Vec<Option<PeerId>>,
}

impl Census {
    fn distinct(&self) -> usize {
        self.counted.iter().flatten().count()
    }

    fn missing(&self) -> Vec<usize> {
        (0..self.counted.len())
            .filter(|i| self.counted[*i].is_none())
            .collect()
    }

    fn holders(&self) -> HashSet<PeerId> {
        self.live.iter().flatten().copied().collect()
    }
}

/// What one pass over an object works with, chunk after chunk.
struct Mend<'a> {
    dht: &'a DhtHandle,
    object: Address,
    layout: &'a Layout,
    layout_addr: Address,
    /// The layout's bytes, for peers that do not have it yet.
    encoded: Bytes,
    /// The full copy, when this node has one (the uploader, or a copy fetched or rebuilt).
    local: Option<crate::Object>,
    /// Whether this node's owner pinned the object (it uploaded or pinned it).
    uploader: bool,
    /// Peers shards may go to (not this node).
    candidates: Vec<PeerId>,
    lease_s: u32,
    /// Peers that got the layout this pass.
    has_layout: Mutex<HashSet<PeerId>>,
}

/// Counts each shard once, on a holder not yet counted for this chunk.
fn assign(live: &[Vec<PeerId>]) -> Vec<Option<PeerId>> {
    let mut used = HashSet::new();
    live.iter()
        .map(|peers| {
            let peer = peers.iter().find(|p| !used.contains(*p)).copied();
            if let Some(p) = peer {
                used.insert(p);
            }
            peer
        })
        .collect()
}

impl OverlayHandle {
    fn dht(&self) -> Option<&DhtHandle> {
        self.net.as_ref().map(|net| net.dht())
    }

    fn storage(&self) -> Option<StorageSection> {
        self.net
            .as_ref()
            .map(|net| (*net.config().get::<StorageSection>()).clone())
    }

    fn repair_interval(&self) -> Duration {
        Duration::from_secs(self.storage().map_or(60, |s| s.repair_interval_s))
    }

    /// Waits for the turn of `bytes` more of repair traffic within
    /// `storage.repair_bytes_per_s` (none set: at once): each turn starts when the bytes
    /// of the turns before it have been paid for at that rate.
    async fn pace(&self, bytes: u64) {
        let rate = self.storage().map_or(0, |s| s.repair_bytes_per_s);
        if rate == 0 || bytes == 0 {
            return;
        }
        let start = {
            let mut paced = self
                .guard
                .paced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = tokio::time::Instant::now();
            let start = paced.filter(|at| *at > now).unwrap_or(now);
            *paced = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// The scheme an upload is protected with: the request's, else `storage.durability`;
    /// `None` without peers, or while peers may not read this node's objects.
    pub(crate) fn scheme_for(&self, request: Option<Option<Scheme>>) -> Option<Scheme> {
        let net = self.net.as_ref()?;
        if !net.peers_may_read() {
            return None;
        }
        request.unwrap_or_else(|| net.config().get::<StorageSection>().scheme())
    }

    /// Protects the stored object `object` with `scheme`: its layout is computed (every
    /// chunk read verified and encoded), stored pinned and watched; the guard then places the
    /// shards. Returns the layout's address.
    pub(crate) async fn protect(
        &self,
        object: Address,
        scheme: Scheme,
    ) -> Result<Address, OverlayError> {
        let Some(copy) = self.open(object).await? else {
            return Err(OverlayError::NotFound(object));
        };
        let manifest = self
            .store
            .manifest(&object)
            .await?
            .ok_or(OverlayError::NotFound(object))?;
        let mut chunks = Vec::with_capacity(manifest.chunks.len());
        let mut at = 0u64;
        for chunk in &manifest.chunks {
            let bytes = copy.read_verified(at, at + chunk.len).await?;
            at += chunk.len;
            let shards = off_pool(move || -> Result<Vec<Address>, String> {
                let shards = erasure::encode(scheme, &bytes).map_err(|e| e.to_string())?;
                Ok(shards.iter().map(Address::of).collect())
            })
            .await?
            .map_err(|e| OverlayError::Store(StoreError::Internal(e)))?;
            chunks.push(ChunkShards {
                address: chunk.address,
                len: chunk.len,
                shards,
            });
        }
        let layout = Layout {
            ron_layout: LAYOUT_VERSION,
            object,
            size: manifest.size,
            scheme,
            chunks,
        };
        let encoded = layout
            .encode()
            .map_err(|e| OverlayError::Store(StoreError::Internal(e.to_string())))?;
        if encoded.len() as u64 > MAX_KEEP {
            return Err(OverlayError::TooLarge { limit: MAX_KEEP });
        }
        let options = PutOptions {
            media_type: Some(LAYOUT_MEDIA_TYPE.into()),
            max_bytes: Some(MAX_KEEP),
            ..PutOptions::default()
        };
        let mut writer = self.store.writer(options);
        writer.write(&encoded).await?;
        let stored = writer.finish().await?;
        self.announce(stored.address).await;
        self.store.watch(object, stored.address).await?;
        self.guard.set(
            object,
            Durability {
                scheme: scheme.to_string(),
                state: State::Pending,
                chunks: layout.chunks.len(),
                min_holders: 0,
                counted: 0,
                layout: Some(stored.address),
                size: layout.size,
            },
            // Pending until the guard's first pass over it ends, however long that takes.
            Duration::from_secs(u64::from(MAX_LEASE_S)),
        );
        Ok(stored.address)
    }

    /// Keeps a shard or a layout `peer` sends, under a lease: refused while peers may not
    /// read this node, on the object's uploader, past `storage.shard_budget_bytes`, or when
    /// the bytes are not what they claim. Durable and announced before the answer: the lease granted.
    pub(crate) async fn keep_for(
        &self,
        peer: PeerId,
        keep: Keep,
    ) -> Result<u32, (ErrorKind, String)> {
        let (Some(net), Some(storage)) = (self.net.as_ref(), self.storage()) else {
            return Err((ErrorKind::Forbidden, "no peer network".into()));
        };
        if keep.role == Role::Mail {
            // Mail goes to the node's mailbox service, which the node wires in front of this.
            return Err((ErrorKind::Forbidden, "this node hosts no mailboxes".into()));
        }
        if !net.peers_may_read() || storage.shard_budget_bytes == 0 {
            return Err((
                ErrorKind::Forbidden,
                "this node keeps no shards for others".into(),
            ));
        }
        // The uploader's copy and a shard of it on one node would fall together: never
        // there (a repairer elsewhere does not know who uploaded; this node does).
        match self.store.owner_pinned(&keep.object).await {
            Ok(false) => {}
            Ok(true) => {
                return Err((
                    ErrorKind::Conflict,
                    "this node holds the owner's copy: its shards go to others".into(),
                ));
            }
            Err(e) => return Err((ErrorKind::Internal, e.to_string())),
        }
        if Address::of(&keep.bytes) != keep.addr {
            return Err((
                ErrorKind::ContentMismatch,
                format!("the bytes are not {}", keep.addr),
            ));
        }
        if keep.role == Role::Layout {
            match Layout::decode(&keep.bytes) {
                Ok(layout) if layout.object == keep.object => {}
                Ok(_) => return Err((ErrorKind::BadInput, "a layout of another object".into())),
                Err(e) => return Err((ErrorKind::BadInput, e.to_string())),
            }
        }
        let lease_s = keep.lease_s.clamp(1, MAX_LEASE_S);
        let options = PutOptions {
            media_type: (keep.role == Role::Layout).then(|| LAYOUT_MEDIA_TYPE.to_string()),
            expect: Some(keep.addr),
            max_bytes: Some(MAX_KEEP),
            unpinned: false,
            around_cache: false,
            lease: Some(Lease {
                until: now() + u64::from(lease_s),
                budget: storage.shard_budget_bytes,
            }),
        };
        let mut writer = self.store.writer(options);
        let stored = async {
            writer.write(&keep.bytes).await?;
            writer.finish().await
        }
        .await
        .map_err(|e| {
            let e = OverlayError::from(e);
            let message = match &e {
                OverlayError::Store(StoreError::NoRoom { .. }) => "no room for shards".into(),
                other => other.to_string(),
            };
            (e.kind(), message)
        })?;
        if keep.role == Role::Layout {
            if let Err(e) = self.store.watch(keep.object, stored.address).await {
                return Err((ErrorKind::Internal, e.to_string()));
            }
            // The sender is placing the object's shards now: this node leaves them to it
            // for a while before it would repair anything itself.
            let grace =
                Duration::from_secs(storage.repair_interval_s.saturating_mul(SETTLE_PASSES));
            self.guard.received(keep.object, grace);
        }
        self.guard
            .counters
            .shards_kept
            .fetch_add(u64::from(keep.role == Role::Shard), Ordering::Relaxed);
        tracing::debug!(%peer, addr = %keep.addr, role = ?keep.role, "keeping a blob for a peer");
        net.announce(stored.address).await;
        Ok(lease_s)
    }

    /// Which of `addrs` this node keeps for peers, each lease renewed to `lease_s` (or the
    /// longest granted); none while peers may not read this node.
    pub(crate) async fn hold_for(&self, addrs: Vec<Address>, lease_s: u32) -> (Vec<bool>, u32) {
        let open = self.net.as_ref().is_some_and(|net| net.peers_may_read());
        if !open {
            return (vec![false; addrs.len()], 0);
        }
        let lease_s = lease_s.min(MAX_LEASE_S);
        match self
            .store
            .renew(addrs.clone(), now() + u64::from(lease_s))
            .await
        {
            Ok(held) => (held, lease_s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer a hold");
                (vec![false; addrs.len()], 0)
            }
        }
    }

    /// The layout of `object`: the one this node watches with, else one the DHT points at
    /// (fetched, checked against the object).
    async fn find_layout(
        &self,
        object: Address,
    ) -> Result<Option<(Address, Layout)>, OverlayError> {
        let mut candidates = Vec::new();
        if let Some((_, addr)) = self
            .store
            .watched()
            .await?
            .into_iter()
            .find(|(o, _)| *o == object)
        {
            candidates.push(addr);
        }
        let Some(dht) = self.dht() else {
            return Ok(None);
        };
        if candidates.is_empty() {
            let records = dht.get_records(layout::record_key(&object)).await;
            for value in records.unwrap_or_default() {
                if let Some((_, addr)) =
                    layout::record_pointer(&layout::record_key(&object), &value)
                    && !candidates.contains(&addr)
                {
                    candidates.push(addr);
                }
            }
        }
        for addr in candidates {
            let bytes = match self.blob(addr, MAX_KEEP).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::debug!(%object, layout = %addr, error = %e, "layout unavailable");
                    continue;
                }
            };
            match Layout::decode(&bytes) {
                Ok(layout) if layout.object == object => return Ok(Some((addr, layout))),
                Ok(_) => tracing::warn!(%object, layout = %addr, "a layout of another object"),
                Err(e) => tracing::warn!(%object, layout = %addr, error = %e, "not a layout"),
            }
        }
        Ok(None)
    }

    /// A small blob's bytes: this node's copy, else fetched from its providers (verified).
    async fn blob(&self, addr: Address, max: u64) -> Result<Bytes, OverlayError> {
        if let Some(copy) = self.open(addr).await? {
            return copy.read_verified(0, copy.size()).await;
        }
        let dht = self.dht().ok_or(OverlayError::NotFound(addr))?;
        let providers = self.providers(dht, addr).await;
        if providers.is_empty() {
            return Err(OverlayError::NotFound(addr));
        }
        dht.fetch_bytes(addr, &providers, max)
            .await
            .map_err(|e| OverlayError::FetchFailed(e.to_string()))
    }

    async fn providers(&self, dht: &DhtHandle, addr: Address) -> Vec<PeerId> {
        let me = dht.peer_id();
        dht.providers(addr)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != me)
            .collect()
    }

    /// Every provider of `addr` a lookup finds (for counting: the first answer may name
    /// only a holder that is gone, while the live one's record sits elsewhere).
    async fn holders(&self, dht: &DhtHandle, addr: Address) -> Vec<PeerId> {
        let me = dht.peer_id();
        dht.holders(addr)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != me)
            .collect()
    }

    /// Asks each peer of `ask` (per shard, who may hold it) which of the shards named for
    /// it it holds, renewing their leases to `lease_s` (and the lease of its copy of the
    /// `layout`, when one is given): per shard, the peers that do.
    async fn probe(
        &self,
        dht: &DhtHandle,
        chunk: &ChunkShards,
        ask: &[Vec<PeerId>],
        lease_s: u32,
        layout: Option<Address>,
    ) -> Vec<Vec<PeerId>> {
        let mut asks: HashMap<PeerId, Vec<usize>> = HashMap::new();
        for (i, peers) in ask.iter().enumerate() {
            for peer in peers {
                asks.entry(*peer).or_default().push(i);
            }
        }
        let probes = asks.into_iter().map(|(peer, shards)| async move {
            let mut addrs: Vec<Address> = shards.iter().map(|i| chunk.shards[*i]).collect();
            addrs.extend(layout);
            // The answer for the layout (last) is not a shard's: `zip` below leaves it.
            let held = dht.hold(peer, addrs, lease_s).await.unwrap_or_default();
            (peer, shards, held)
        });
        let mut live = vec![Vec::new(); chunk.shards.len()];
        for (peer, shards, held) in futures_util::future::join_all(probes).await {
            for (i, yes) in shards.into_iter().zip(held) {
                if yes {
                    live[i].push(peer);
                }
            }
        }
        live
    }

    /// The live holders of chunk `index`'s shards, each asked which it holds (renewing their
    /// leases to `lease_s`; 0 renews nothing). The holders this node knows of (it placed or
    /// counted them lately) are asked first; only shards none of them holds are looked up in
    /// the DHT, so a pass over a whole object costs its holders one question each, and a
    /// lookup only for what moved. This node counts when it keeps a shard itself. With a
    /// `layout`, every holder's copy of it (and this node's) is renewed too: the holders
    /// keep what they need to read the object and to take its repair over.
    async fn census(
        &self,
        dht: &DhtHandle,
        chunk: &ChunkShards,
        lease_s: u32,
        layout: Option<Address>,
    ) -> Census {
        let me = dht.peer_id();
        let remembered: Vec<Vec<PeerId>> = chunk
            .shards
            .iter()
            .map(|shard| {
                let mut peers = self.guard.placed_on(shard);
                peers.retain(|p| *p != me);
                peers
            })
            .collect();
        let mut live = self.probe(dht, chunk, &remembered, lease_s, layout).await;
        let unknown: Vec<usize> = (0..live.len()).filter(|i| live[*i].is_empty()).collect();
        if !unknown.is_empty() {
            let lookups = unknown.iter().map(|i| self.holders(dht, chunk.shards[*i]));
            let mut found = vec![Vec::new(); chunk.shards.len()];
            for (i, mut peers) in unknown
                .iter()
                .zip(futures_util::future::join_all(lookups).await)
            {
                peers.retain(|p| !remembered[*i].contains(p));
                found[*i] = peers;
            }
            let more = self.probe(dht, chunk, &found, lease_s, layout).await;
            for (i, peers) in more.into_iter().enumerate() {
                live[i].extend(peers);
            }
        }
        for (i, peers) in live.iter().enumerate() {
            self.guard.remember(chunk.shards[i], peers.clone());
        }
        // Shards this node keeps for peers count too (a full copy is not a shard holder).
        let until = if lease_s == 0 {
            0
        } else {
            now() + u64::from(lease_s)
        };
        let mut asked = chunk.shards.clone();
        asked.extend(layout);
        let here = self
            .store
            .renew_leased(asked, until)
            .await
            .unwrap_or_default();
        // (The answer for the layout, last, is not a shard's.)
        for (i, yes) in here.into_iter().take(chunk.shards.len()).enumerate() {
            if yes {
                live[i].push(me);
            }
        }
        let counted = assign(&live);
        Census { live, counted }
    }

    /// Chunk `index` of `layout`, rebuilt from `k` of its shards (fetched from `live`
    /// holders, data shards first, one more asked for whenever one fails or is slow), each
    /// shard and the chunk verified against their addresses. The bytes read are counted.
    async fn gather(
        &self,
        dht: &DhtHandle,
        layout: &Layout,
        index: usize,
        live: &[Vec<PeerId>],
    ) -> Result<(Vec<u8>, u64), OverlayError> {
        let chunk = &layout.chunks[index];
        let scheme = layout.scheme;
        let k = usize::from(scheme.k);
        let len = shard_len(scheme, chunk.len);
        let order: Vec<usize> = (0..chunk.shards.len())
            .filter(|i| !live[*i].is_empty())
            .collect();
        let lost = |have: usize| OverlayError::Lost {
            address: layout.object,
            why: format!(
                "chunk {index} has {have} of the {k} shards it needs ({} live holders)",
                order.len()
            ),
        };
        if order.len() < k {
            return Err(lost(order.len()));
        }
        let me = dht.peer_id();
        let fetch = |i: usize| {
            let (dht, addr, peers) = (dht.clone(), chunk.shards[i], live[i].clone());
            let overlay = self.clone();
            async move {
                // A shard this node keeps is read here (verified), not asked of itself.
                if peers.contains(&me)
                    && let Ok(bytes) = overlay.blob(addr, len).await
                {
                    return (i, Ok(bytes));
                }
                let others: Vec<PeerId> = peers.into_iter().filter(|p| *p != me).collect();
                (i, dht.fetch_bytes(addr, &others, len).await)
            }
        };
        let mut inflight = FuturesUnordered::new();
        let mut next = 0;
        while next < k {
            inflight.push(fetch(order[next]));
            next += 1;
        }
        let mut got: Vec<(usize, Bytes)> = Vec::with_capacity(k);
        while got.len() < k {
            let hedge = tokio::time::sleep(HEDGE_AFTER);
            tokio::select! {
                answer = inflight.next() => match answer {
                    Some((i, Ok(bytes))) => got.push((i, bytes)),
                    Some((i, Err(e))) => {
                        tracing::info!(object = %layout.object, chunk = index, shard = i, error = %e, "shard unavailable, asking for another");
                        if next < order.len() {
                            inflight.push(fetch(order[next]));
                            next += 1;
                        }
                    }
                    None => return Err(lost(got.len())),
                },
                () = hedge, if next < order.len() => {
                    inflight.push(fetch(order[next]));
                    next += 1;
                }
            }
        }
        drop(inflight);
        let read = got.iter().map(|(_, b)| b.len() as u64).sum();
        let chunk = chunk.clone();
        let bytes = off_pool(move || {
            let have: Vec<(usize, &[u8])> = got.iter().map(|(i, b)| (*i, &b[..])).collect();
            erasure::decode(scheme, &chunk, &have)
        })
        .await?
        .map_err(|e| lost_or(layout.object, index, e))?;
        Ok((bytes, read))
    }

    /// Rebuilds `object` from the shards of its layout into this node's store (unpinned,
    /// like any fetched copy), verified against its address as a whole.
    pub(crate) async fn rebuild(&self, object: Address) -> Result<(), OverlayError> {
        let dht = self.dht().ok_or(OverlayError::NotFound(object))?.clone();
        let Some((_, layout)) = self.find_layout(object).await? else {
            return Err(OverlayError::NotFound(object));
        };
        if layout.size > self.max_object_bytes() {
            return Err(OverlayError::TooLarge {
                limit: self.max_object_bytes(),
            });
        }
        let options = PutOptions {
            expect: Some(object),
            max_bytes: Some(layout.size),
            unpinned: true,
            around_cache: true,
            ..PutOptions::default()
        };
        let mut writer = self.store.writer(options);
        for index in 0..layout.chunks.len() {
            let mut tries = 0;
            let bytes = loop {
                let census = self.census(&dht, &layout.chunks[index], 0, None).await;
                match self.gather(&dht, &layout, index, &census.live).await {
                    Ok((bytes, _)) => break bytes,
                    // Too few shards answered: count again (holders may have been missed
                    // while the network settles), twice at most.
                    Err(OverlayError::Lost { .. }) if tries < 2 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            writer.write(&bytes).await?;
        }
        writer.finish().await?;
        tracing::info!(%object, chunks = layout.chunks.len(), "rebuilt an object from its shards");
        self.announce(object).await;
        Ok(())
    }

    /// The durability of `object`, counted now (without repairing): `None` when it has no
    /// layout this node can find.
    pub async fn durability(&self, object: Address) -> Result<Option<Durability>, OverlayError> {
        let Some(dht) = self.dht().cloned() else {
            return Ok(None);
        };
        let Some((addr, layout)) = self.find_layout(object).await? else {
            return self.intended(object).await;
        };
        // What this node's guard counted on its last pass, if that is recent.
        if let Some(last) = self.guard.recent(&object, self.repair_interval()) {
            return Ok(Some(last));
        }
        // Counted now, within a time budget (a request has a deadline): the chunks counted
        // by then are reported, and how many they are.
        let mut censuses = futures_util::stream::iter(layout.chunks.clone())
            .map(|chunk| {
                let (this, dht) = (self.clone(), dht.clone());
                async move { this.census(&dht, &chunk, 0, None).await.distinct() }
            })
            .buffered(CENSUS_AT_ONCE);
        let mut counts = Vec::with_capacity(layout.chunks.len());
        let deadline = tokio::time::Instant::now() + CENSUS_BUDGET;
        // The first chunk is counted whatever it takes (a state judged from no count at all
        // would say nothing true); the others within the budget.
        if let Some(count) = censuses.next().await {
            counts.push(count);
        }
        while let Ok(Some(count)) = tokio::time::timeout_at(deadline, censuses.next()).await {
            counts.push(count);
        }
        drop(censuses);
        // A loss is counted twice before it is reported: a lookup that timed out counts no
        // holder, and "lost" must not stand on one.
        // (A few chunks: an object really lost has many such, and one confirmed is enough.)
        let k = usize::from(layout.scheme.k);
        let short: Vec<usize> = (0..counts.len())
            .filter(|i| counts[*i] < k)
            .take(3)
            .collect();
        for index in short {
            counts[index] = self
                .census(&dht, &layout.chunks[index], 0, None)
                .await
                .distinct();
        }
        let peers = dht.known().await.map(|p| p.len()).unwrap_or(0);
        let whole = self.store.manifest(&object).await?.is_some();
        let starved = peers + 1 < layout.scheme.n();
        let mut durability = judge(&layout, addr, &counts, starved, whole);
        if durability.state != State::Protected && self.guard.state(&object) == Some(State::Pending)
        {
            // Not placed yet: the guard has not finished a pass since the upload.
            durability.state = State::Pending;
        }
        Ok(Some(durability))
    }

    /// An upload waiting for enough peers to be protected: pending.
    async fn intended(&self, object: Address) -> Result<Option<Durability>, OverlayError> {
        let Some((_, (k, m))) = self
            .store
            .intents()
            .await?
            .into_iter()
            .find(|(o, _)| *o == object)
        else {
            return Ok(None);
        };
        let Some(manifest) = self.store.manifest(&object).await? else {
            return Ok(None);
        };
        Ok(Some(Durability {
            scheme: format!("{k}+{m}"),
            state: State::Pending,
            chunks: manifest.chunks.len(),
            min_holders: 0,
            counted: 0,
            layout: None,
            size: manifest.size,
        }))
    }

    /// Protects the uploads waiting for peers, once this node knows enough of them.
    async fn protect_intended(&self, dht: &DhtHandle) {
        let intents = match self.store.intents().await {
            Ok(intents) => intents,
            Err(e) => return tracing::warn!(error = %e, "cannot list uploads to protect"),
        };
        if intents.is_empty() {
            return;
        }
        let peers = dht.known().await.map(|p| p.len()).unwrap_or(0);
        for (object, (k, m)) in intents {
            let Ok(scheme) = Scheme::new(k, m) else {
                let _ = self.store.intend(object, None).await;
                continue;
            };
            if peers < scheme.n() {
                continue;
            }
            match self.protect(object, scheme).await {
                Ok(layout) => {
                    tracing::info!(%object, %layout, %scheme, "protecting an upload");
                    if let Err(e) = self.store.intend(object, None).await {
                        tracing::warn!(%object, error = %e, "cannot record a protection");
                    }
                }
                Err(OverlayError::NotFound(_)) => {
                    let _ = self.store.intend(object, None).await;
                }
                Err(e) => tracing::warn!(%object, error = %e, "cannot protect an upload"),
            }
        }
    }

    /// Reads back (verifies) the next kept blobs, up to [`SCRUB_BYTES`]: one found damaged is
    /// dropped (its `hold` answers no from then on), so its object's repairer places it
    /// again. Returns how many were dropped.
    async fn scrub(&self) -> Result<usize, OverlayError> {
        let after = *self
            .guard
            .scrubbed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let page = self.store.leased(after, 1024).await?;
        let mut last = None;
        let (mut read, mut dropped) = (0u64, 0usize);
        for (addr, size) in page.iter().copied() {
            if read >= SCRUB_BYTES {
                break;
            }
            read += size;
            last = Some(addr);
            let damaged = self.store.stat(&addr).await?.is_some_and(|s| s.damaged);
            if damaged {
                tracing::warn!(%addr, "a kept blob is damaged: dropped, for its repairer to place again");
                self.delete(addr).await?;
                dropped += 1;
            }
        }
        // The whole page read: start over next time.
        let done = last.is_none() || last == page.last().map(|(a, _)| *a);
        *self
            .guard
            .scrubbed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = if done && page.len() < 1024 {
            None
        } else {
            last
        };
        Ok(dropped)
    }

    /// One pass of the guard over `object`: nothing unless this node is the live holder of
    /// its layout closest to it; then every chunk from where the last pass stopped is
    /// counted (leases renewed), and what is missing rebuilt and placed.
    async fn watch_over(
        &self,
        dht: &DhtHandle,
        object: Address,
        layout_addr: Address,
        lease_s: u32,
    ) -> Result<Option<Durability>, OverlayError> {
        let encoded = match self.open(layout_addr).await? {
            Some(copy) => copy.read_verified(0, copy.size()).await?,
            None => {
                // Its lease ran out: the layout is gone, and so is the watch.
                self.store.unwatch(object).await?;
                self.guard.forget(&object);
                return Ok(None);
            }
        };
        let layout = Layout::decode(&encoded)
            .map_err(|e| OverlayError::Store(StoreError::Internal(e.to_string())))?;
        if self.guard.settling(&object) || !self.is_repairer(dht, object, layout_addr).await {
            return Ok(None);
        }
        let start = self
            .store
            .progress(object)
            .await?
            .map_or(0, |n| usize::try_from(n).unwrap_or(0))
            .min(layout.chunks.len());
        let local = self.open(object).await.ok().flatten();
        let me = dht.peer_id();
        // Peers connected now first (a peer only in the routing table may be gone, and a
        // dial to it takes seconds to fail), the others when those are too few.
        let mut candidates: Vec<PeerId> = dht.connected().await.unwrap_or_default();
        candidates.retain(|p| *p != me);
        if candidates.len() < layout.scheme.n() * 2 {
            for peer in dht.known().await.unwrap_or_default() {
                if peer != me && !candidates.contains(&peer) {
                    candidates.push(peer);
                }
            }
        }
        candidates.sort();
        if candidates.is_empty() {
            // No peer to place on: nothing is counted or moved until one is known (leases
            // run for many passes).
            let mut pending = judge(&layout, layout_addr, &[], true, true);
            pending.min_holders = self.guard.min_holders(&object);
            return Ok(Some(pending));
        }
        let uploader = self.store.owner_pinned(&object).await?;
        let mend = Mend {
            dht,
            object,
            layout: &layout,
            layout_addr,
            encoded,
            local,
            uploader,
            candidates,
            lease_s,
            has_layout: Mutex::default(),
        };
        let mut counts = vec![0usize; layout.chunks.len()];
        let mut starved = false;
        // Several chunks at once, their turns taken in order: the progress kept is always
        // a point before which every chunk is done.
        let mut turns = futures_util::stream::iter(0..layout.chunks.len())
            .map(|index| self.mend(&mend, index, index >= start))
            .buffered(CHUNKS_AT_ONCE);
        let mut index = 0;
        while let Some(turn) = turns.next().await {
            let (count, short) = turn?;
            counts[index] = count;
            starved |= short;
            index += 1;
            if index > start && index % PROGRESS_EVERY == 0 {
                self.store.set_progress(object, Some(index as u64)).await?;
            }
        }
        drop(turns);
        // A record is left only by a pass that began from one or wrote one (at chunk 16, 32…).
        if start > 0 || layout.chunks.len() >= PROGRESS_EVERY {
            self.store.set_progress(object, None).await?;
        }
        // Keep the pointer from the object to its layout fresh in the DHT.
        let every = self.repair_interval() * POINTER_PASSES;
        if Guard::due(&self.guard.published, &object, every)
            && let Err(e) = dht
                .put_record(layout::record_key(&object), layout_addr.as_bytes().to_vec())
                .await
        {
            tracing::debug!(%object, error = %e, "cannot publish the layout pointer");
            Guard::undo(&self.guard.published, &object);
        }
        Ok(Some(judge(
            &layout,
            layout_addr,
            &counts,
            starved,
            mend.local.is_some(),
        )))
    }

    /// One chunk's turn in a pass: its live, distinct holders counted (leases renewed) and,
    /// when `repair` and some are missing, the missing shards rebuilt (from the full copy
    /// here, else from `k` shards) and placed, all at once, each on a peer of its own.
    /// Returns the holders after, and whether peers ran short.
    async fn mend(
        &self,
        m: &Mend<'_>,
        index: usize,
        repair: bool,
    ) -> Result<(usize, bool), OverlayError> {
        let (layout, object) = (m.layout, m.object);
        let chunk = &layout.chunks[index];
        let census = self
            .census(m.dht, chunk, m.lease_s, Some(m.layout_addr))
            .await;
        let count = census.distinct();
        if !repair || count >= layout.scheme.n() {
            return Ok((count, false));
        }
        let me = m.dht.peer_id();
        let missing = census.missing();
        let holders = census.holders();
        let mut free: Vec<PeerId> = m
            .candidates
            .iter()
            .filter(|p| !holders.contains(*p))
            .copied()
            .collect();
        // Never the uploader (the owner's pinned copy is not a shard holder).
        let may_keep_here = !m.uploader && !holders.contains(&me);
        if free.is_empty() && !may_keep_here {
            // Nowhere to place anything: pending until more peers are known.
            return Ok((count, true));
        }
        // What this turn moves: `k` shards read (none with the full copy here), the missing
        // ones written.
        let reads = if m.local.is_some() {
            0
        } else {
            layout.scheme.k
        };
        let turn = u64::from(reads) + missing.len() as u64;
        self.pace(shard_len(layout.scheme, chunk.len) * turn).await;
        let (bytes, read) = match &m.local {
            Some(copy) => {
                let at: u64 = layout.chunks[..index].iter().map(|c| c.len).sum();
                (copy.read_verified(at, at + chunk.len).await?.to_vec(), 0)
            }
            None => match self.gather(m.dht, layout, index, &census.live).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(%object, chunk = index, error = %e, "cannot rebuild a chunk");
                    return Ok((count, false));
                }
            },
        };
        let c = &self.guard.counters;
        c.repair_bytes_read.fetch_add(read, Ordering::Relaxed);
        let scheme = layout.scheme;
        let shards =
            off_pool(move || erasure::encode(scheme, &bytes).map(erasure::Shards::into_owned))
                .await?
                .map_err(|e| OverlayError::Store(StoreError::Internal(e.to_string())))?;
        let shard_keep = |shard: usize| Keep {
            addr: chunk.shards[shard],
            object,
            role: Role::Shard,
            lease_s: m.lease_s,
            bytes: Bytes::from(shards[shard].clone()),
        };
        // First choices, all at once: each missing shard to the free peer closest to it.
        let mut first = Vec::with_capacity(missing.len());
        for &shard in &missing {
            let addr = chunk.shards[shard];
            let pick = free.iter().copied().min_by_key(|p| distance(p, &addr));
            if let Some(peer) = pick {
                free.retain(|p| *p != peer);
            }
            first.push((shard, pick));
        }
        let offers = first.iter().map(|&(shard, pick)| async move {
            match pick {
                Some(peer) => (
                    shard,
                    self.offer(m, peer, shard_keep(shard)).await.then_some(peer),
                ),
                None => (shard, None),
            }
        });
        let mut placed = Vec::new();
        let mut unplaced = Vec::new();
        for (shard, peer) in futures_util::future::join_all(offers).await {
            match peer {
                Some(peer) => placed.push((shard, peer)),
                None => unplaced.push(shard),
            }
        }
        // Then the others, one at a time, on the peers left; this node last.
        let mut kept_here = false;
        for shard in unplaced {
            let addr = chunk.shards[shard];
            free.sort_by_key(|p| distance(p, &addr));
            let mut taken = None;
            for peer in free.clone() {
                if self.offer(m, peer, shard_keep(shard)).await {
                    taken = Some(peer);
                    break;
                }
                free.retain(|p| *p != peer);
            }
            if taken.is_none() && may_keep_here && !kept_here {
                match self.keep_for(me, shard_keep(shard)).await {
                    Ok(_) => {
                        taken = Some(me);
                        kept_here = true;
                    }
                    Err((_, e)) => tracing::debug!(error = %e, "cannot keep a shard here"),
                }
            }
            if let Some(peer) = taken {
                free.retain(|p| *p != peer);
                placed.push((shard, peer));
            }
        }
        let mine = distance(&me, &object);
        for (shard, peer) in &placed {
            if distance(peer, &object) < mine {
                // A holder closer to the object than this node: it may repair it from now.
                Guard::undo(&self.guard.elected, &object);
            }
            self.guard.note_placed(chunk.shards[*shard], *peer);
            c.shards_placed.fetch_add(1, Ordering::Relaxed);
            c.repair_bytes_written
                .fetch_add(shards[*shard].len() as u64, Ordering::Relaxed);
        }
        if m.local.is_none() && !placed.is_empty() {
            c.repairs.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(%object, chunk = index, holders = count, missing = missing.len(), placed = placed.len(), "mended a chunk");
        Ok((count + placed.len(), placed.len() < missing.len()))
    }

    /// Asks `peer` to keep a shard (the layout first, once per pass): whether it did.
    async fn offer(&self, m: &Mend<'_>, peer: PeerId, keep: Keep) -> bool {
        let has = m
            .has_layout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&peer);
        if !has {
            let layout = Keep {
                addr: m.layout_addr,
                object: m.object,
                role: Role::Layout,
                lease_s: m.lease_s,
                bytes: m.encoded.clone(),
            };
            if let Err(e) = m.dht.keep(peer, layout).await {
                tracing::debug!(%peer, error = %e, "peer refused the layout");
                return false;
            }
            m.has_layout
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(peer);
        }
        match m.dht.keep(peer, keep).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "peer refused a shard");
                false
            }
        }
    }

    /// Whether this node repairs `object`: no live holder of its layout is closer to it
    /// (every provider record of the layout the lookup finds, the [`ELECTORATE`] closest of
    /// them asked at once): two repairers of one object would move its bytes twice.
    async fn is_repairer(&self, dht: &DhtHandle, object: Address, layout: Address) -> bool {
        // The holder it was left to last time, while it still holds the layout: no lookup.
        if let Some(peer) = self.guard.deferred_to(&object, None) {
            if matches!(dht.hold(peer, vec![layout], 0).await.as_deref(), Ok([true])) {
                return false;
            }
            self.guard.deferred_to(&object, Some(None));
        }
        // Elected lately, and placed nothing closer since: still the repairer.
        let every = self.repair_interval() * REELECT_PASSES;
        if !Guard::due(&self.guard.elected, &object, every) {
            return true;
        }
        let me = dht.peer_id();
        let mine = distance(&me, &object);
        let mut closer: Vec<PeerId> = self.holders(dht, layout).await;
        closer.retain(|p| *p != me && distance(p, &object) < mine);
        closer.sort_by_key(|p| distance(p, &object));
        closer.dedup();
        closer.truncate(ELECTORATE);
        let asks = closer.iter().map(|peer| async move {
            matches!(
                dht.hold(*peer, vec![layout], 0).await.as_deref(),
                Ok([true])
            )
        });
        let answers = futures_util::future::join_all(asks).await;
        // The closest that holds it repairs (`closer` is sorted by distance).
        match closer.iter().zip(answers).find(|(_, holds)| *holds) {
            Some((peer, _)) => {
                self.guard.deferred_to(&object, Some(Some(*peer)));
                Guard::undo(&self.guard.elected, &object);
                false
            }
            None => true,
        }
    }
}

/// The next peer to leave, from the swarm's events (`None` when some events were missed);
/// pending forever without them.
async fn left(peers: &mut Option<tokio::sync::broadcast::Receiver<PeerEvent>>) -> Option<PeerId> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let Some(events) = peers.as_mut() else {
            return std::future::pending().await;
        };
        match events.recv().await {
            Ok(PeerEvent::Left { peer }) => return Some(peer),
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return None,
            Err(RecvError::Closed) => *peers = None,
        }
    }
}

/// Runs the guard's CPU work (encoding, decoding) on a blocking thread of its own, outside
/// the store's pool: background work never queues in front of clients' reads and writes.
async fn off_pool<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OverlayError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| OverlayError::Store(StoreError::Internal(e.to_string())))
}

fn lost_or(object: Address, index: usize, e: erasure::ErasureError) -> OverlayError {
    OverlayError::Lost {
        address: object,
        why: format!("chunk {index} cannot be rebuilt: {e}"),
    }
}

/// The state of an object whose chunks have `counts` live, distinct holders; `starved`: the
/// node knows too few peers to give every chunk its `k + m`; `whole`: it holds a full copy
/// (its shards wait to be placed, not lost).
fn judge(
    layout: &Layout,
    addr: Address,
    counts: &[usize],
    starved: bool,
    whole: bool,
) -> Durability {
    let (k, n) = (usize::from(layout.scheme.k), layout.scheme.n());
    let min = counts.iter().copied().min().unwrap_or(0);
    let state = if min >= n {
        State::Protected
    } else if min < k && !(starved && whole) {
        State::Lost
    } else if starved {
        State::Pending
    } else if min >= k {
        State::Degraded
    } else {
        State::Lost
    };
    Durability {
        scheme: layout.scheme.to_string(),
        state,
        chunks: layout.chunks.len(),
        min_holders: min,
        counted: counts.len(),
        layout: Some(addr),
        size: layout.size,
    }
}

impl Guard {
    fn set(&self, object: Address, durability: Durability, pass: Duration) -> Option<Durability> {
        let now = tokio::time::Instant::now();
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(object, (durability, now, pass))
            .map(|(d, ..)| d)
    }

    /// The last census of `object`, if the next should have ended by now: within three
    /// intervals and twice the last pass's length.
    fn recent(&self, object: &Address, interval: Duration) -> Option<Durability> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let (d, at, pass) = states.get(object)?;
        (at.elapsed() < interval * 3 + *pass * 2).then(|| d.clone())
    }

    fn state(&self, object: &Address) -> Option<State> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(object)
            .map(|(d, ..)| d.state)
    }

    fn received(&self, object: Address, grace: Duration) {
        let mut settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        settling.retain(|_, until| *until > now);
        settling.insert(object, now + grace);
    }

    fn settling(&self, object: &Address) -> bool {
        let settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
        settling
            .get(object)
            .is_some_and(|until| *until > tokio::time::Instant::now())
    }

    /// Remembers that `peer` keeps `shard` now.
    fn note_placed(&self, shard: Address, peer: PeerId) {
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        let placed = placed.get_or_insert_with(|| lru::LruCache::new(PLACED_REMEMBERED));
        match placed.get_mut(&shard) {
            Some(peers) if !peers.contains(&peer) => peers.push(peer),
            Some(_) => {}
            None => {
                placed.put(shard, vec![peer]);
            }
        }
    }

    /// `shard`'s live holders, as a census just found them (none: forgotten).
    fn remember(&self, shard: Address, peers: Vec<PeerId>) {
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        let placed = placed.get_or_insert_with(|| lru::LruCache::new(PLACED_REMEMBERED));
        if peers.is_empty() {
            placed.pop(&shard);
        } else {
            placed.put(shard, peers);
        }
    }

    /// The peers this node placed `shard` on lately, or last found holding it.
    fn placed_on(&self, shard: &Address) -> Vec<PeerId> {
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        placed
            .as_mut()
            .and_then(|p| p.get(shard).cloned())
            .unwrap_or_default()
    }

    fn min_holders(&self, object: &Address) -> usize {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(object)
            .map_or(0, |(d, ..)| d.min_holders)
    }

    /// Whether this node counts on the peer that left (`None`: who left is unknown): a holder
    /// it found or placed a shard on, or the holder it left a repair to. Either is
    /// forgotten: the next census looks its shards up instead of waiting on it, and the
    /// next pass holds the election instead of asking it.
    fn counts_on(&self, left: Option<PeerId>) -> bool {
        let Some(peer) = left else { return true };
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        let before = deferred.len();
        deferred.retain(|_, p| *p != peer);
        let mut counted = deferred.len() < before;
        drop(deferred);
        let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, holders) in placed.iter_mut().flat_map(|p| p.iter_mut()) {
            let before = holders.len();
            holders.retain(|p| *p != peer);
            counted |= holders.len() < before;
        }
        counted
    }

    /// Wakes the guard for a pass now (an upload to protect).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether the event `at` keeps for `object` last happened longer than `every` ago (or
    /// never); when it did, it is recorded as happening now.
    fn due(
        at: &Mutex<HashMap<Address, tokio::time::Instant>>,
        object: &Address,
        every: Duration,
    ) -> bool {
        let mut at = at.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        match at.get(object) {
            Some(last) if now.duration_since(*last) < every => false,
            _ => {
                at.insert(*object, now);
                true
            }
        }
    }

    /// Forgets when the event `at` keeps for `object` last happened (it is due again).
    fn undo(at: &Mutex<HashMap<Address, tokio::time::Instant>>, object: &Address) {
        at.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(object);
    }

    fn forget(&self, object: &Address) {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(object);
        Guard::undo(&self.elected, object);
        Guard::undo(&self.published, object);
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(object);
    }

    /// The peer `object`'s repair was left to last time, if any; `set` replaces it.
    fn deferred_to(&self, object: &Address, set: Option<Option<PeerId>>) -> Option<PeerId> {
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        match set {
            None => deferred.get(object).copied(),
            Some(Some(peer)) => deferred.insert(*object, peer),
            Some(None) => deferred.remove(object),
        }
    }
}

/// The guard: a pass over every watched object now and then (`storage.repair_interval_s`,
/// live) or when woken, and the collection of blobs whose lease ran out. `peers` (the
/// swarm's events) wakes it at once when a peer it counts on leaves: a shard holder of an
/// object it repairs, or the holder it left a repair to. Publishes a `Health` event for
/// `durability` when an object becomes degraded or lost, and when all are well again. Run
/// it under the supervisor.
pub async fn guard(
    overlay: OverlayHandle,
    bus: Bus,
    mut peers: Option<tokio::sync::broadcast::Receiver<PeerEvent>>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let Some(dht) = overlay.dht().cloned() else {
        shutdown.cancelled().await;
        return Ok(());
    };
    let mut healthy = true;
    // A first pass soon after start, once peers are likely connected.
    let mut wait = Duration::from_secs(3);
    loop {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = overlay.guard.wake.notified() => break,
                () = shutdown.cancelled() => return Ok(()),
                event = left(&mut peers) => if overlay.guard.counts_on(event) {
                    tracing::debug!(peer = ?event, "a peer this node counts on left: a pass now");
                    break;
                },
            }
        }
        let storage = overlay.storage().unwrap_or_default();
        wait = Duration::from_secs(storage.repair_interval_s);
        let lease_s = u32::try_from(storage.repair_interval_s.saturating_mul(30))
            .unwrap_or(MAX_LEASE_S)
            .clamp(MIN_LEASE_S, MAX_LEASE_S);
        match overlay.store.expire(now()).await {
            Ok((report, removed)) => {
                for addr in &removed {
                    if let Some(net) = &overlay.net {
                        net.withdraw(*addr).await;
                    }
                }
                if report.objects > 0 {
                    tracing::info!(
                        blobs = report.objects,
                        bytes = report.bytes,
                        "collected blobs whose lease ran out"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot collect expired blobs"),
        }
        if let Err(e) = overlay.scrub().await {
            tracing::warn!(error = %e, "cannot scrub kept blobs");
        }
        overlay.protect_intended(&dht).await;
        let watched = match overlay.store.watched().await {
            Ok(watched) => watched,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list watched objects");
                continue;
            }
        };
        let mut well = true;
        for (object, layout) in watched {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let began = tokio::time::Instant::now();
            let result = overlay.watch_over(&dht, object, layout, lease_s).await;
            tracing::debug!(%object, took = ?began.elapsed(), "a pass over an object");
            match result {
                Ok(Some(durability)) => {
                    let state = durability.state;
                    let before = overlay
                        .guard
                        .set(object, durability, began.elapsed())
                        .map(|d| d.state);
                    if matches!(state, State::Degraded | State::Lost) {
                        well = false;
                        if before != Some(state) {
                            tracing::warn!(%object, ?state, "a protected object is not whole");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%object, error = %e, "cannot watch over an object"),
            }
        }
        if well != healthy {
            healthy = well;
            bus.publish(KernelEvent::Health {
                service: "durability".into(),
                ok: well,
            });
        }
    }
}
