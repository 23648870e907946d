//! Verified reads: bytes are read in windows aligned to 16 KiB groups and checked against the
//! object's BLAKE3 outboard (whose root is the object's address) before they are returned.

use std::ops::Range;
use std::sync::Arc;

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::{BaoTree, ChunkNum, ChunkRanges};
use bytes::Bytes;
use positioned_io::ReadAt;
use ron_proto::{Address, Manifest};

use crate::blobs::{BlobData, Kind};
use crate::store::Inner;
use crate::writer::BLOCK;
use crate::{ReadError, StoreError};

/// Verification granularity: a damaged byte fails the 16 KiB group around it.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// BLAKE3's own chunk size, the unit of bao-tree ranges.
const BLAKE3_CHUNK: u64 = 1024;
/// The largest window [`ObjectReader::read_verified`] reads at once.
pub const MAX_WINDOW: u64 = 4 << 20;

/// Reads one object, verifying every byte. Cheap to clone.
#[derive(Clone)]
pub struct ObjectReader {
    inner: Arc<Inner>,
    manifest: Arc<Manifest>,
    outboard: Arc<PostOrderOutboard<BlobData>>,
    /// The whole object, already verified (see [`ObjectReader::into_inline`]).
    inline: Option<Bytes>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("address", &self.manifest.address)
            .finish_non_exhaustive()
    }
}

/// The bytes of one window, addressed in object coordinates.
struct Window<'a> {
    offset: u64,
    bytes: &'a [u8],
}

impl ReadAt for Window<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let rel = pos
            .checked_sub(self.offset)
            .ok_or_else(|| std::io::Error::other("read before the verification window"))?;
        let rel = usize::try_from(rel).unwrap_or(usize::MAX);
        if rel >= self.bytes.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.bytes.len() - rel);
        buf[..n].copy_from_slice(&self.bytes[rel..rel + n]);
        Ok(n)
    }
}

impl ObjectReader {
    pub(crate) fn open(inner: Arc<Inner>, manifest: Manifest) -> Result<Self, ReadError> {
        let address = manifest.address;
        let data = inner
            .blobs
            .open(Kind::Outboard, &address)?
            .ok_or(ReadError::MissingChunk {
                address,
                chunk: address,
            })?;
        let outboard = PostOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(*address.as_bytes()),
            tree: BaoTree::new(manifest.size, BLOCK),
            data,
        };
        Ok(Self {
            inner,
            manifest: Arc::new(manifest),
            outboard: Arc::new(outboard),
            inline: None,
        })
    }

    /// The object's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The object's address.
    pub fn address(&self) -> Address {
        self.manifest.address
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    /// Reads and verifies the whole object once (at most [`MAX_WINDOW`] bytes) and keeps it
    /// in memory: later reads are slices, with no disk access. For caching small objects.
    pub async fn into_inline(self) -> Result<Self, ReadError> {
        if self.inline.is_some() || self.size() > MAX_WINDOW {
            return Ok(self);
        }
        let bytes = self.read_verified(0, self.size()).await?;
        Ok(Self {
            inline: Some(bytes),
            ..self
        })
    }

    /// Bytes held in memory by [`ObjectReader::into_inline`], if any.
    pub fn inline_len(&self) -> usize {
        self.inline.as_ref().map_or(0, Bytes::len)
    }

    /// Bytes `start..end` (clamped to the object, at most [`MAX_WINDOW`]), verified.
    pub async fn read_verified(&self, start: u64, end: u64) -> Result<Bytes, ReadError> {
        let end = end.min(self.size()).min(start.saturating_add(MAX_WINDOW));
        if start >= end {
            return Ok(Bytes::new());
        }
        if let Some(bytes) = &self.inline {
            // Verified when it was read in.
            return Ok(bytes.slice(start as usize..end as usize));
        }
        let this = self.clone();
        self.inner
            .pool
            .run(move || this.read_window(start, end))
            .await?
    }

    /// Bytes `start..end` (widened to whole 16 KiB groups, clamped to the object, at most
    /// [`MAX_WINDOW`]) as a BLAKE3 verified stream (bao-tree's encoding of those chunk ranges:
    /// the parent hashes from the root down to each group, then the group's bytes): what app
    /// 0x0102 sends a peer, who checks every group against the address on arrival. Each group
    /// is checked here too, before it is encoded.
    pub async fn encode_range(&self, start: u64, end: u64) -> Result<Bytes, ReadError> {
        let end = end.min(self.size()).min(start.saturating_add(MAX_WINDOW));
        if start >= end {
            return Ok(Bytes::new());
        }
        let this = self.clone();
        self.inner
            .pool
            .run(move || this.encode_window(start, end))
            .await?
    }

    fn encode_window(&self, start: u64, end: u64) -> Result<Bytes, ReadError> {
        let (ws, we) = self.group_window(start, end);
        let owned;
        let window = match &self.inline {
            Some(bytes) => Window {
                offset: 0,
                bytes: bytes.as_ref(),
            },
            None => {
                owned = self.read_raw(ws, we - ws)?;
                Window {
                    offset: ws,
                    bytes: &owned,
                }
            }
        };
        let ranges =
            ChunkRanges::from(ChunkNum(ws / BLAKE3_CHUNK)..ChunkNum(we.div_ceil(BLAKE3_CHUNK)));
        // Parent hashes add 64 bytes per tree level crossed: a few KiB at most.
        let mut out = Vec::with_capacity(usize::try_from(we - ws).unwrap_or(0) + 4096);
        match bao_tree::io::sync::encode_ranges_validated(
            window,
            self.outboard.as_ref(),
            &ranges,
            &mut out,
        ) {
            Ok(()) => Ok(Bytes::from(out)),
            Err(e) => {
                tracing::error!(address = %self.address(), offset = ws, error = %e, "stored bytes fail verification");
                Err(ReadError::Damaged {
                    address: self.address(),
                    offset: ws,
                    end: we,
                })
            }
        }
    }

    /// `start..end` widened to whole verification groups, clamped to the object.
    fn group_window(&self, start: u64, end: u64) -> (u64, u64) {
        let ws = start / GROUP_BYTES * GROUP_BYTES;
        let we = end
            .div_ceil(GROUP_BYTES)
            .saturating_mul(GROUP_BYTES)
            .min(self.size());
        (ws, we)
    }

    /// Verifies every stored byte of the object.
    pub async fn verify_all(&self) -> Result<(), ReadError> {
        let mut offset = 0;
        loop {
            let end = (offset + MAX_WINDOW).min(self.size());
            self.read_verified(offset, end).await?;
            if end >= self.size() {
                return Ok(());
            }
            offset = end;
        }
    }

    /// Reads `len` raw stored bytes from `start` out of the chunk files, into memory that is
    /// not zeroed first.
    fn read_raw(&self, start: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let address = self.address();
        let (mut index, mut chunk_start) = self
            .manifest
            .locate(start)
            .ok_or_else(|| ReadError::Store(StoreError::Internal("read past the end".into())))?;
        let mut buf = Vec::with_capacity(
            usize::try_from(len).map_err(|_| StoreError::Internal("window too large".into()))?,
        );
        while (buf.len() as u64) < len {
            let chunk = self.manifest.chunks[index];
            let missing = || ReadError::MissingChunk {
                address,
                chunk: chunk.address,
            };
            let data = self.inner.blobs.open(Kind::Chunk, &chunk.address)?;
            let data = data.ok_or_else(missing)?;
            let at = start + buf.len() as u64 - chunk_start;
            let want = (chunk.len - at).min(len - buf.len() as u64);
            let n = data
                .append_at(at, want, &mut buf)
                .map_err(StoreError::io(format!("read chunk {}", chunk.address)))?;
            if n < want {
                // Shorter than the manifest says: truncated.
                return Err(missing());
            }
            chunk_start += chunk.len;
            index += 1;
        }
        Ok(buf)
    }

    fn read_window(&self, start: u64, end: u64) -> Result<Bytes, ReadError> {
        let (ws, we) = self.group_window(start, end);
        let buf = self.read_raw(ws, we - ws)?;

        let wanted = ChunkNum(ws / BLAKE3_CHUNK)..ChunkNum(we.div_ceil(BLAKE3_CHUNK));
        let window = Window {
            offset: ws,
            bytes: &buf,
        };
        let mut valid: Vec<Range<ChunkNum>> = Vec::new();
        for range in bao_tree::io::sync::valid_ranges(
            self.outboard.as_ref(),
            window,
            &ChunkRanges::from(wanted.clone()),
        ) {
            valid.push(range.map_err(StoreError::io("read outboard"))?);
        }
        valid.sort_by_key(|r| r.start);
        let mut covered = wanted.start;
        for r in &valid {
            if r.start <= covered && r.end > covered {
                covered = r.end;
            }
        }
        if covered < wanted.end {
            let bad = (covered.0 * BLAKE3_CHUNK).max(ws);
            tracing::error!(address = %self.address(), offset = bad, "stored bytes fail verification");
            return Err(ReadError::Damaged {
                address: self.address(),
                offset: bad,
                end: we,
            });
        }
        let buf = Bytes::from(buf);
        Ok(buf.slice((start - ws) as usize..(end - ws) as usize))
    }
}
