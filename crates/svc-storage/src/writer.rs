//! Streaming upload: bytes in, chunks cut and stored durably as they become certain, then the
//! object's outboard (whose root is its address) and one metadata commit.

use std::collections::HashSet;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bao_tree::{BaoTree, BlockSize};
use bytes::Bytes;
use positioned_io::ReadAt;
use ron_proto::{Address, ChunkRef, MANIFEST_VERSION, Manifest, ManifestError};

use crate::blobs::{BlobData, Blobs, Holding, Kind};
use crate::store::{Inflight, Inner, commit_object};
use crate::{Chunker, PutError, StoreError};

/// BLAKE3 outboard granularity: 16 KiB chunk groups.
pub(crate) const BLOCK: BlockSize = BlockSize::from_chunk_log(ron_proto::oap::GROUP_CHUNK_LOG);
/// Chunks hashed and written concurrently while the upload keeps arriving (memory: this many
/// maximum chunks).
const CHUNKS_IN_FLIGHT: usize = 4;

type ChunkJob =
    tokio::task::JoinHandle<Result<Result<(Address, Inflight), StoreError>, StoreError>>;
type SyncJob = tokio::task::JoinHandle<Result<(), StoreError>>;

/// How to store an upload.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// The object's media type.
    pub media_type: Option<String>,
    /// The address the client expects; on mismatch nothing is stored.
    pub expect: Option<Address>,
    /// Refuse uploads larger than this.
    pub max_bytes: Option<u64>,
    /// Store without pinning (a cache copy garbage collection may drop).
    pub unpinned: bool,
    /// Write the chunk files around the page cache (`O_DIRECT` where the file system allows
    /// it): far less CPU per byte, for bytes the caller will not read back soon, such as a
    /// fetched copy whose outboard arrives with it ([`ObjectWriter::finish_with_outboard`]).
    /// Later reads come from the disk.
    pub around_cache: bool,
    /// Keep the object for a peer under this lease (pinned while it runs) rather than as
    /// the owner's: refused with [`StoreError::NoRoom`] past the lease's budget. An object
    /// the owner pinned stays theirs.
    pub lease: Option<Lease>,
}

/// A lease on an object kept for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The Unix second it ends (a longer lease already held is kept).
    pub until: u64,
    /// Most bytes all leased objects together may take.
    pub budget: u64,
}

/// A stored upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The object's address.
    pub address: Address,
    /// Its size.
    pub size: u64,
    /// Whether this upload created it (`false`: it was already stored).
    pub created: bool,
}

/// An upload in progress. Dropping it before [`ObjectWriter::finish`] succeeds leaves nothing
/// behind: chunk files it created that nothing references are removed.
pub struct ObjectWriter {
    inner: Arc<Inner>,
    options: PutOptions,
    chunker: Chunker,
    chunks: Vec<ChunkRef>,
    size: u64,
    guards: Vec<Inflight>,
    /// Chunk jobs in order, with each chunk's length.
    pending: std::collections::VecDeque<(ChunkJob, u64)>,
    /// Chunk files this upload relies on that no sync has covered yet.
    unsynced: Vec<Address>,
    /// Every chunk address ever queued for syncing (each file is synced once).
    queued: HashSet<Address>,
    /// The sync running behind the upload, if any.
    syncing: Option<SyncJob>,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("size", &self.size)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

/// Sequential reader over an object's chunks as stored.
struct ChunkChain {
    blobs: Arc<Blobs>,
    chunks: Vec<ChunkRef>,
    index: usize,
    current: Option<BlobData>,
    offset: u64,
}

impl Read for ChunkChain {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(chunk) = self.chunks.get(self.index).copied() else {
                return Ok(0);
            };
            if self.offset == chunk.len {
                self.index += 1;
                self.offset = 0;
                self.current = None;
                continue;
            }
            if self.current.is_none() {
                self.current = self
                    .blobs
                    .open(Kind::Chunk, &chunk.address)
                    .map_err(std::io::Error::other)?;
            }
            let Some(data) = &self.current else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("chunk {} is missing", chunk.address),
                ));
            };
            let want = usize::try_from(chunk.len - self.offset)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = data.read_at(self.offset, &mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("chunk {} is truncated", chunk.address),
                ));
            }
            self.offset += n as u64;
            return Ok(n);
        }
    }
}

async fn join_sync(job: SyncJob) -> Result<(), StoreError> {
    job.await
        .map_err(|e| StoreError::Internal(format!("chunk sync failed: {e}")))?
}

/// An outboard computed but not yet in place.
enum PendingOutboard {
    File(PathBuf),
    Memory(Vec<u8>),
}

fn compute_outboard(
    inner: &Inner,
    chunks: Vec<ChunkRef>,
    size: u64,
) -> Result<(Address, PendingOutboard), StoreError> {
    let data = ChunkChain {
        blobs: inner.blobs.clone(),
        chunks,
        index: 0,
        current: None,
        offset: 0,
    };
    let tree = BaoTree::new(size, BLOCK);
    inner.blobs.room(tree.outboard_size())?;
    // 1 MiB of reads at a time from the chunk files (page cache, just written).
    let data = std::io::BufReader::with_capacity(1 << 20, data);
    match inner.blobs.temp_file()? {
        Some((path, file)) => {
            let written = (|| {
                let mut out = BufWriter::new(file);
                let root = bao_tree::io::sync::outboard_post_order(data, tree, &mut out)
                    .map_err(StoreError::io("hash stored chunks"))?;
                let file = out
                    .into_inner()
                    .map_err(|e| StoreError::io("write outboard")(e.into_error()))?;
                file.sync_all()
                    .map_err(StoreError::io(format!("fsync {}", path.display())))?;
                Ok(root)
            })();
            match written {
                Ok(root) => Ok((
                    Address::from_bytes(*root.as_bytes()),
                    PendingOutboard::File(path),
                )),
                Err(e) => {
                    // Nothing half-written stays.
                    let _ = std::fs::remove_file(&path);
                    Err(e)
                }
            }
        }
        None => {
            let mut out = Vec::new();
            let root = bao_tree::io::sync::outboard_post_order(data, tree, &mut out)
                .map_err(StoreError::io("hash stored chunks"))?;
            Ok((
                Address::from_bytes(*root.as_bytes()),
                PendingOutboard::Memory(out),
            ))
        }
    }
}

/// Whether `outboard` can be the outboard of an object of `size` bytes at `address`: its
/// length is the tree's, and its last pair (the root's, in post order) hashes to the address.
fn fits(outboard: &[u8], size: u64, address: &Address) -> bool {
    let tree = BaoTree::new(size, BLOCK);
    if outboard.len() as u64 != tree.outboard_size() || outboard.len() < 64 {
        return false;
    }
    let pair = &outboard[outboard.len() - 64..];
    let (Ok(left), Ok(right)) = (pair[..32].try_into(), pair[32..].try_into()) else {
        return false;
    };
    let root = blake3::hazmat::merge_subtrees_root(left, right, blake3::hazmat::Mode::Hash);
    root.as_bytes() == address.as_bytes()
}

/// A verified outboard written to a temporary file and fsynced (disk), or kept (memory).
fn place_outboard(
    inner: &Inner,
    address: Address,
    outboard: Vec<u8>,
) -> Result<(Address, PendingOutboard), StoreError> {
    inner.blobs.room(outboard.len() as u64)?;
    match inner.blobs.temp_file()? {
        Some((path, mut file)) => {
            let written = file.write_all(&outboard).and_then(|()| file.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(StoreError::io(format!("write {}", path.display()))(e));
            }
            Ok((address, PendingOutboard::File(path)))
        }
        None => Ok((address, PendingOutboard::Memory(outboard))),
    }
}

impl ObjectWriter {
    pub(crate) fn new(inner: Arc<Inner>, options: PutOptions) -> Self {
        Self {
            inner,
            options,
            chunker: Chunker::default(),
            chunks: Vec::new(),
            size: 0,
            guards: Vec::new(),
            pending: std::collections::VecDeque::new(),
            unsynced: Vec::new(),
            queued: HashSet::new(),
            syncing: None,
        }
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next piece of the upload. Completed chunks are stored before this returns.
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense of resuming: after cancellation drop the writer (which
    /// cleans up) rather than writing more.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), PutError> {
        self.size += data.len() as u64;
        if let Some(limit) = self.options.max_bytes
            && self.size > limit
        {
            return Err(PutError::TooLarge { limit });
        }
        self.chunker.push(data);
        while let Some(chunk) = self.chunker.next_chunk(false) {
            self.store_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Starts hashing and writing `chunk` on the pool; waits for the oldest job when
    /// [`CHUNKS_IN_FLIGHT`] are running.
    async fn store_chunk(&mut self, chunk: Bytes) -> Result<(), PutError> {
        let inner = self.inner.clone();
        let len = chunk.len() as u64;
        let pool = self.inner.pool.clone();
        let around_cache = self.options.around_cache;
        // Spawned, so a dropped writer's jobs still finish and release their registrations.
        let job = tokio::spawn(async move {
            pool.run(move || -> Result<(Address, Inflight), StoreError> {
                let address = Address::of(&chunk);
                // Registered before looking, so garbage collection cannot remove a file we
                // are about to rely on.
                let guard = Inflight::new(&inner, Kind::Chunk, address);
                // A chunk already stored is checked against the bytes that arrived: the
                // address always comes from the upload, and an upload of bytes whose stored
                // chunk is damaged repairs it for free.
                match inner.blobs.holds(Kind::Chunk, &address, &chunk)? {
                    Holding::Same => {}
                    Holding::Absent => {
                        inner
                            .blobs
                            .put_unsynced(Kind::Chunk, &address, &chunk, around_cache)?;
                    }
                    Holding::Damaged => {
                        tracing::warn!(chunk = %address, "a stored chunk was damaged; replaced by the uploaded bytes");
                        inner.repaired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        inner
                            .blobs
                            .put_unsynced(Kind::Chunk, &address, &chunk, around_cache)?;
                    }
                }
                Ok((address, guard))
            })
            .await
        });
        self.pending.push_back((job, len));
        while self.pending.len() >= CHUNKS_IN_FLIGHT {
            self.complete_oldest().await?;
        }
        Ok(())
    }

    async fn complete_oldest(&mut self) -> Result<(), PutError> {
        let Some((job, len)) = self.pending.pop_front() else {
            return Ok(());
        };
        let (address, guard) = job
            .await
            .map_err(|e| StoreError::Internal(format!("chunk job failed: {e}")))???;
        self.guards.push(guard);
        self.chunks.push(ChunkRef { address, len });
        // Every chunk the object uses becomes durable before anything references it, also
        // those found already present (another upload may not have synced them yet).
        if self.queued.insert(address) {
            self.unsynced.push(address);
        }
        self.sync_behind().await
    }

    /// Keeps one sync running behind the upload: when the last one has ended, the chunk files
    /// written since go to the disk in one batch, so the commit waits only for the last few.
    /// A failed sync fails the upload here or at [`ObjectWriter::finish`].
    async fn sync_behind(&mut self) -> Result<(), PutError> {
        if let Some(job) = self.syncing.take_if(|job| job.is_finished()) {
            join_sync(job).await?;
        }
        if self.syncing.is_none() && !self.unsynced.is_empty() {
            let batch = std::mem::take(&mut self.unsynced);
            let inner = self.inner.clone();
            // Waiting for the disk, not computing: outside the CPU pool, whose permits the
            // chunk jobs need; one per upload at a time.
            self.syncing = Some(tokio::task::spawn_blocking(move || {
                inner.pool.gate()?;
                inner.blobs.sync(Kind::Chunk, &batch)
            }));
        }
        Ok(())
    }

    /// Ends the upload: stores the last chunks, computes the outboard from the stored bytes
    /// (its root is the address), checks the expected address, and commits. The object is
    /// durable and visible when this returns `Ok`.
    pub async fn finish(self) -> Result<Stored, PutError> {
        self.commit(None).await
    }

    /// [`ObjectWriter::finish`] for bytes that were verified as they arrived: `outboard` is the
    /// object's bao-tree outboard (post order, 16 KiB groups) built from hash pairs each
    /// verified against the expected address ([`PutOptions::expect`]), and is stored instead
    /// of a BLAKE3 pass over the stored bytes. It is taken only when its length fits the size
    /// and its root pair hashes to the expected address; otherwise (or for objects of one
    /// group, which have no pairs) the outboard is computed from the stored bytes as usual.
    /// Reads check every window against the outboard, so a pair that did not belong to these
    /// bytes could never make them serve wrong bytes.
    pub async fn finish_with_outboard(self, outboard: Vec<u8>) -> Result<Stored, PutError> {
        self.commit(Some(outboard)).await
    }

    async fn commit(mut self, verified: Option<Vec<u8>>) -> Result<Stored, PutError> {
        while let Some(chunk) = self.chunker.next_chunk(true) {
            self.store_chunk(chunk).await?;
        }
        while !self.pending.is_empty() {
            self.complete_oldest().await?;
        }
        // What the sync behind the upload has not covered yet: the batch it is on, then the
        // rest. The sync is disk-bound and the outboard (a BLAKE3 pass over the stored bytes)
        // is CPU-bound: run them side by side.
        let inner = self.inner.clone();
        let (running, rest) = (self.syncing.take(), std::mem::take(&mut self.unsynced));
        let sync = async move {
            if let Some(job) = running {
                join_sync(job).await?;
            }
            if rest.is_empty() {
                return Ok(Ok(()));
            }
            tokio::task::spawn_blocking(move || {
                inner.pool.gate()?;
                inner.blobs.sync(Kind::Chunk, &rest)
            })
            .await
            .map_err(|e| StoreError::Internal(format!("chunk sync failed: {e}")))
        };
        let inner = self.inner.clone();
        let (chunks, size) = (self.chunks.clone(), self.size);
        let verified = verified.and_then(|outboard| {
            let expected = self.options.expect?;
            // An object of one group has no pairs: hashing it is the check.
            if BaoTree::new(size, BLOCK).outboard_size() == 0 {
                return None;
            }
            if fits(&outboard, size, &expected) {
                return Some((expected, outboard));
            }
            tracing::warn!(%expected, size, "a verified outboard does not fit the object; hashing the stored bytes");
            None
        });
        let outboard = self.inner.pool.run(move || match verified {
            Some((address, outboard)) => place_outboard(&inner, address, outboard),
            None => compute_outboard(&inner, chunks, size),
        });
        let (synced, outboard) = tokio::join!(sync, outboard);
        let (address, pending) = outboard??;
        if let Err(e) = synced.and_then(|r| r) {
            if let PendingOutboard::File(path) = pending {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }

        let discard = |pending: PendingOutboard| {
            if let PendingOutboard::File(path) = pending {
                let _ = std::fs::remove_file(path);
            }
        };
        if let Some(expected) = self.options.expect
            && expected != address
        {
            discard(pending);
            return Err(PutError::Mismatch {
                expected,
                actual: address,
            });
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            address,
            size,
            chunks: self.chunks.clone(),
            media_type: self.options.media_type.clone(),
        };
        let encoded = match manifest.encode() {
            Ok(bytes) => bytes,
            Err(ManifestError::MediaType(mt)) => {
                discard(pending);
                return Err(PutError::MediaType(mt));
            }
            Err(e) => {
                discard(pending);
                return Err(StoreError::Internal(format!("manifest: {e}")).into());
            }
        };

        let inner = self.inner.clone();
        let pin = !self.options.unpinned;
        let lease = self.options.lease;
        let created = self
            .inner
            .pool
            .run(move || -> Result<bool, StoreError> {
                let _outboard = Inflight::new(&inner, Kind::Outboard, address);
                // Placed even when one is stored already: this one was built from bytes just
                // checked, the stored one may be damaged (a free repair; the rename is atomic).
                match pending {
                    PendingOutboard::File(path) => {
                        inner.blobs.place(Kind::Outboard, &address, &path)?
                    }
                    PendingOutboard::Memory(bytes) => {
                        inner.blobs.put(Kind::Outboard, &address, &bytes)?
                    }
                }
                commit_object(&inner, &manifest, &encoded, pin, lease)
            })
            .await??;
        Ok(Stored {
            address,
            size,
            created,
        })
    }
}
