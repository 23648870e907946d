//! Where chunk and outboard bytes live: files under the data dir, or RAM (amnesia).
//!
//! Disk layout: `chunks/ab/<hex>` and `outboards/ab/<hex>.obao` (`ab` = first byte of the
//! address), `tmp/` for writes in progress. Every file is written to `tmp/`, fsynced, renamed
//! into place, and its directory fsynced.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use positioned_io::ReadAt;
use ron_proto::Address;

use crate::StoreError;

/// Which kind of blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Chunk,
    Outboard,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Self::Chunk => "chunks",
            Self::Outboard => "outboards",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Self::Chunk => "",
            Self::Outboard => ".obao",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Blobs {
    Disk {
        root: PathBuf,
        /// Bytes kept free on the file system: a write that would leave less is refused
        /// (`storage.min_free_bytes`).
        min_free: AtomicU64,
        /// Writes refused for lack of room since start.
        refused: AtomicU64,
    },
    Memory(Mutex<HashMap<(Kind, Address), Bytes>>),
}

/// What [`Blobs::holds`] found under an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// Nothing is stored there.
    Absent,
    /// Exactly the expected bytes.
    Same,
    /// Other bytes than expected.
    Damaged,
}

/// Random-access bytes of a blob.
#[derive(Debug)]
pub(crate) enum BlobData {
    File(File),
    Memory(Bytes),
}

impl ReadAt for BlobData {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::File(f) => f.read_at(pos, buf),
            Self::Memory(b) => b.as_ref().read_at(pos, buf),
        }
    }
}

impl BlobData {
    /// Appends up to `len` bytes from `pos` to `out` (fewer only at the blob's end), reading
    /// into `out`'s spare capacity: no zeroing pass before the read. Returns how many.
    pub(crate) fn append_at(&self, pos: u64, len: u64, out: &mut Vec<u8>) -> std::io::Result<u64> {
        match self {
            Self::File(file) => {
                let mut file = file;
                file.seek(SeekFrom::Start(pos))?;
                out.reserve(usize::try_from(len).unwrap_or(usize::MAX));
                file.take(len).read_to_end(out).map(|n| n as u64)
            }
            Self::Memory(bytes) => {
                let start = usize::try_from(pos).unwrap_or(usize::MAX).min(bytes.len());
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let end = start.saturating_add(len).min(bytes.len());
                out.extend_from_slice(&bytes[start..end]);
                Ok((end - start) as u64)
            }
        }
    }
}

/// Creates `path` and its missing parents as folders only this user may enter (0700): objects
/// may be protected (`auth.protect_reads`), and other local users must not read around that.
pub(crate) fn private_dirs(path: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Creates (or truncates) `path` as a file only this user may read (0600).
fn private_file(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!("fsync {}", dir.display())))
}

impl Blobs {
    /// Opens (creating) the disk layout under `root`, emptying `tmp/`.
    pub(crate) fn open_disk(root: &Path) -> Result<Self, StoreError> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(StoreError::io(format!("clear {}", tmp.display())))?;
        }
        private_dirs(&tmp).map_err(StoreError::io(format!("create {}", tmp.display())))?;
        for kind in [Kind::Chunk, Kind::Outboard] {
            let base = root.join(kind.dir());
            for b in 0..=255u8 {
                let dir = base.join(format!("{b:02x}"));
                if !dir.exists() {
                    private_dirs(&dir)
                        .map_err(StoreError::io(format!("create {}", dir.display())))?;
                }
            }
            fsync_dir(&base)?;
        }
        fsync_dir(root)?;
        Ok(Self::Disk {
            root: root.to_path_buf(),
            min_free: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Keeps `bytes` free on the file system from now on.
    pub(crate) fn set_min_free(&self, bytes: u64) {
        if let Self::Disk { min_free, .. } = self {
            min_free.store(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes free to an unprivileged writer on the file system holding the store (`None`
    /// in memory).
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        let Self::Disk { root, .. } = self else {
            return None;
        };
        match rustix::fs::statvfs(root) {
            Ok(st) => Some(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %e, "cannot read the free space");
                None
            }
        }
    }

    /// Whether `bytes` more may be written: refused ([`StoreError::Full`]) when that would
    /// leave less than the reserve free.
    pub(crate) fn room(&self, bytes: u64) -> Result<(), StoreError> {
        let Self::Disk {
            min_free, refused, ..
        } = self
        else {
            return Ok(());
        };
        let reserve = min_free.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Some(free) if free < reserve.saturating_add(bytes) => {
                refused.fetch_add(1, Ordering::Relaxed);
                // The figures go to the log; the client is told no more than the reason.
                tracing::info!(
                    free,
                    bytes,
                    reserve,
                    "write refused: it would leave less than storage.min_free_bytes free"
                );
                Err(StoreError::Full(
                    "the node keeps storage.min_free_bytes free".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Writes refused for lack of room since start.
    pub(crate) fn refused(&self) -> u64 {
        match self {
            Self::Disk { refused, .. } => refused.load(Ordering::Relaxed),
            Self::Memory(_) => 0,
        }
    }

    pub(crate) fn memory() -> Self {
        Self::Memory(Mutex::new(HashMap::new()))
    }

    fn path(root: &Path, kind: Kind, addr: &Address) -> PathBuf {
        let hex = hex::encode(addr.as_bytes());
        root.join(kind.dir())
            .join(&hex[..2])
            .join(format!("{hex}{}", kind.suffix()))
    }

    fn map(
        m: &Mutex<HashMap<(Kind, Address), Bytes>>,
    ) -> std::sync::MutexGuard<'_, HashMap<(Kind, Address), Bytes>> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the blob stored under `addr` holds exactly `bytes`: [`Holding::Same`],
    /// [`Holding::Absent`], or [`Holding::Damaged`] when a file is there with other bytes
    /// (bit rot, a torn write, tampering). Compared byte for byte, a piece at a time, so
    /// a deduplicated upload never trusts a stored copy it has not checked.
    pub(crate) fn holds(
        &self,
        kind: Kind,
        addr: &Address,
        bytes: &[u8],
    ) -> Result<Holding, StoreError> {
        const PIECE: usize = 256 << 10;
        let Some(data) = self.open(kind, addr)? else {
            return Ok(Holding::Absent);
        };
        let mut buf = vec![0u8; PIECE.min(bytes.len()).max(1)];
        let mut at = 0usize;
        while at < bytes.len() {
            let want = (bytes.len() - at).min(buf.len());
            let n = data
                .read_at(at as u64, &mut buf[..want])
                .map_err(StoreError::io(format!("read stored blob {addr}")))?;
            if n == 0 || buf[..n] != bytes[at..at + n] {
                return Ok(Holding::Damaged);
            }
            at += n;
        }
        // Longer than the bytes it should hold: damaged too.
        let mut extra = [0u8; 1];
        let longer = data
            .read_at(bytes.len() as u64, &mut extra)
            .map_err(StoreError::io(format!("read stored blob {addr}")))?
            > 0;
        Ok(if longer {
            Holding::Damaged
        } else {
            Holding::Same
        })
    }

    /// Stores `bytes` durably under `addr`.
    pub(crate) fn put(&self, kind: Kind, addr: &Address, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_unsynced(kind, addr, bytes, false)?;
        self.sync(kind, std::slice::from_ref(addr))
    }

    /// Stores `bytes` under `addr` without waiting for the disk: the caller must
    /// [`Blobs::sync`] it before any metadata references it. (Until then a crash may leave a
    /// torn file, which the sweep on open removes because nothing references it.)
    ///
    /// `around_cache`: write around the page cache (`O_DIRECT`, where the system and file
    /// system allow it; otherwise as usual), for bytes nobody is about to read back.
    pub(crate) fn put_unsynced(
        &self,
        kind: Kind,
        addr: &Address,
        bytes: &[u8],
        around_cache: bool,
    ) -> Result<(), StoreError> {
        self.room(bytes.len() as u64)?;
        match self {
            Self::Disk { root, .. } => {
                let tmp = root.join("tmp").join(format!("{:016x}", fastrand::u64(..)));
                let write = || -> std::io::Result<()> {
                    if around_cache && direct::write(&tmp, bytes)? {
                        return Ok(());
                    }
                    let mut f = private_file(&tmp)?;
                    f.write_all(bytes)
                };
                if let Err(e) = write() {
                    // Nothing half-written stays (a full disk gets its room back).
                    let _ = fs::remove_file(&tmp);
                    return Err(StoreError::io(format!("write {}", tmp.display()))(e));
                }
                let dest = Self::path(root, kind, addr);
                fs::rename(&tmp, &dest)
                    .map_err(StoreError::io(format!("rename into {}", dest.display())))
            }
            Self::Memory(m) => {
                Self::map(m).insert((kind, *addr), Bytes::copy_from_slice(bytes));
                Ok(())
            }
        }
    }

    /// Makes the blobs `addrs` durable: each file, then each directory holding them, fsynced.
    pub(crate) fn sync(&self, kind: Kind, addrs: &[Address]) -> Result<(), StoreError> {
        let Self::Disk { root, .. } = self else {
            return Ok(());
        };
        let mut dirs = std::collections::BTreeSet::new();
        for addr in addrs {
            let path = Self::path(root, kind, addr);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(StoreError::io(format!("fsync {}", path.display())))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        dirs.iter().try_for_each(|d| fsync_dir(d))
    }

    /// A fresh temporary file for a blob whose address is not known yet (disk only).
    pub(crate) fn temp_file(&self) -> Result<Option<(PathBuf, File)>, StoreError> {
        match self {
            Self::Disk { root, .. } => {
                let path = root.join("tmp").join(format!("{:016x}", fastrand::u64(..)));
                let file = private_file(&path)
                    .map_err(StoreError::io(format!("create {}", path.display())))?;
                Ok(Some((path, file)))
            }
            Self::Memory(_) => Ok(None),
        }
    }

    /// Renames a fsynced temporary file into place under `addr` and fsyncs the directory.
    pub(crate) fn place(&self, kind: Kind, addr: &Address, tmp: &Path) -> Result<(), StoreError> {
        let Self::Disk { root, .. } = self else {
            return Err(StoreError::Internal(
                "temporary files exist only on disk".into(),
            ));
        };
        let dest = Self::path(root, kind, addr);
        fs::rename(tmp, &dest)
            .map_err(StoreError::io(format!("rename into {}", dest.display())))?;
        match dest.parent() {
            Some(dir) => fsync_dir(dir),
            None => Ok(()),
        }
    }

    pub(crate) fn open(&self, kind: Kind, addr: &Address) -> Result<Option<BlobData>, StoreError> {
        match self {
            Self::Disk { root, .. } => {
                let path = Self::path(root, kind, addr);
                match File::open(&path) {
                    Ok(f) => Ok(Some(BlobData::File(f))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::io(format!("open {}", path.display()))(e)),
                }
            }
            Self::Memory(m) => Ok(Self::map(m)
                .get(&(kind, *addr))
                .cloned()
                .map(BlobData::Memory)),
        }
    }

    pub(crate) fn remove(&self, kind: Kind, addr: &Address) -> Result<(), StoreError> {
        match self {
            Self::Disk { root, .. } => {
                let path = Self::path(root, kind, addr);
                match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::io(format!("remove {}", path.display()))(e)),
                }
            }
            Self::Memory(m) => {
                Self::map(m).remove(&(kind, *addr));
                Ok(())
            }
        }
    }

    /// Every stored address of `kind` (for sweeping orphans).
    pub(crate) fn list(&self, kind: Kind) -> Result<Vec<Address>, StoreError> {
        match self {
            Self::Disk { root, .. } => {
                let mut out = Vec::new();
                let base = root.join(kind.dir());
                for sub in fs::read_dir(&base)
                    .map_err(StoreError::io(format!("list {}", base.display())))?
                {
                    let sub = sub.map_err(StoreError::io(format!("list {}", base.display())))?;
                    for entry in fs::read_dir(sub.path()).map_err(StoreError::io("list blobs"))? {
                        let entry = entry.map_err(StoreError::io("list blobs"))?;
                        let name = entry.file_name();
                        let name = name.to_string_lossy();
                        let hex = name.strip_suffix(kind.suffix()).unwrap_or(&name);
                        if let Ok(addr) = format!("b3:{hex}").parse::<Address>() {
                            out.push(addr);
                        }
                    }
                }
                Ok(out)
            }
            Self::Memory(m) => Ok(Self::map(m)
                .keys()
                .filter(|(k, _)| *k == kind)
                .map(|(_, a)| *a)
                .collect()),
        }
    }
}

/// Writes around the page cache. Copying into the page cache is most of what storing costs a
/// node receiving at network speed (each page allocated, filled and later written back); with
/// `O_DIRECT` the disk takes the bytes from one reused, aligned buffer instead.
mod direct {
    use std::path::Path;

    /// Alignment `O_DIRECT` asks of the buffer, the length and the file offset: a page, which
    /// covers every logical block size in use.
    #[cfg(target_os = "linux")]
    const ALIGN: usize = 4096;

    #[cfg(target_os = "linux")]
    thread_local! {
        /// Each writing thread's aligned buffer, kept between writes (allocating fresh pages
        /// for every chunk would cost what the page cache does).
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Writes `bytes` to a new file at `path` with `O_DIRECT`: whole aligned blocks, the last
    /// one padded, then the file cut to its length. `Ok(false)`: direct I/O is not available
    /// here (no file was left behind); the caller writes as usual.
    #[cfg(target_os = "linux")]
    pub(super) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let mut file = match file {
            Ok(f) => f,
            // The file system refuses O_DIRECT (tmpfs, some FUSE file systems).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) => return Err(e),
        };
        let padded = bytes.len().next_multiple_of(ALIGN);
        let written = BUFFER.with_borrow_mut(|buffer| {
            if buffer.len() < padded + ALIGN {
                *buffer = vec![0; padded + ALIGN];
            }
            let start = buffer.as_ptr().align_offset(ALIGN);
            let block = &mut buffer[start..start + padded];
            block[..bytes.len()].copy_from_slice(bytes);
            block[bytes.len()..].fill(0);
            file.write_all(block)
        });
        match written {
            Ok(()) => file.set_len(bytes.len() as u64).map(|()| true),
            // Opened, but the file system wants another alignment: write it the usual way.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                drop(file);
                std::fs::remove_file(path).map(|()| false)
            }
            Err(e) => Err(e),
        }
    }

    /// Without `O_DIRECT`, always the usual write.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn write(_: &Path, _: &[u8]) -> std::io::Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blobs_written_around_the_cache_read_back_whole_at_every_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open_disk(dir.path()).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            3 * 4096 + 17,
            (1 << 20) + 3,
            4 << 20,
        ] {
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let addr = Address::of(&bytes);
            blobs
                .put_unsynced(Kind::Chunk, &addr, &bytes, true)
                .unwrap();
            blobs.sync(Kind::Chunk, &[addr]).unwrap();
            let Some(BlobData::File(file)) = blobs.open(Kind::Chunk, &addr).unwrap() else {
                panic!("{len}: not stored");
            };
            assert_eq!(
                file.metadata().unwrap().len(),
                len as u64,
                "{len}: padding left"
            );
            let mut back = vec![0; len];
            file.read_exact_at(0, &mut back).unwrap();
            assert!(back == bytes, "{len}: bytes differ");
        }
        // Nothing left in tmp/ (no padded or abandoned files).
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
