//! `ron put -r DIR` and `ron get -r ROOT -o DIR`: directory trees as collections.
//!
//! Putting stores every file (four at a time), then each folder's collection from the
//! deepest up, and prints the top one's address: the tree's root. Getting walks the
//! collections from the root (each verified against its address and checked), makes the
//! folders, and writes every file atomically, verified, four at a time.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use ron_proto::Address;
use ron_proto::collection::{
    COLLECTION_MEDIA_TYPE, Collection, Entry, Kind, MAX_COLLECTION_BYTES, MAX_DEPTH, check_name,
    guess_media_type,
};

use crate::client::{Target, save};

/// Files moved at once.
const PARALLEL: usize = 4;
/// Most entries (files and folders) a tree may have, put or got: a collection may name the
/// same folder many times over, and a walk must end.
const MAX_TREE_ENTRIES: usize = 1_000_000;

/// What was put or got.
#[derive(Debug, Default)]
struct Tally {
    files: usize,
    folders: usize,
    bytes: u64,
}

/// A file found under the tree, waiting to be stored.
struct Pending {
    path: PathBuf,
    len: u64,
}

/// A folder found under the tree: its entries' names and what they will be.
enum Slot {
    File(String, usize),
    Folder(String, usize),
}

/// `ron put -r DIR`: prints the root's address on stdout, and a summary on stderr.
pub(crate) async fn put(node: &Target, dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    // First the whole tree is read (names checked, nothing stored yet), so a bad name or a
    // symlink stops the command before it uploads anything.
    let mut files = Vec::new();
    let mut folders: Vec<Vec<Slot>> = Vec::new();
    scan(dir, 0, &mut files, &mut folders)?;
    let http = node.http()?;
    let stored: Vec<(Address, u64)> = stream::iter(files.iter())
        .map(|f| {
            let http = http.clone();
            async move {
                let file = tokio::fs::File::open(&f.path)
                    .await
                    .with_context(|| format!("cannot open {}", f.path.display()))?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 << 10,
                ));
                let name = f.path.file_name().map(|n| n.to_string_lossy());
                let media_type = name.and_then(|n| guess_media_type(&n));
                let addr = node
                    .post(&http, body, Some(f.len), media_type)
                    .await
                    .with_context(|| format!("cannot store {}", f.path.display()))?;
                anyhow::Ok((addr, f.len))
            }
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    // Folders were numbered as they were entered, so every sub-folder comes after its
    // parent: building from the last one up finds each child's address ready.
    let mut built: Vec<Option<(Address, u64)>> = vec![None; folders.len()];
    for (i, slots) in folders.iter().enumerate().rev() {
        let mut entries = Vec::with_capacity(slots.len());
        for slot in slots {
            entries.push(match slot {
                Slot::File(name, f) => {
                    let (addr, len) = stored[*f];
                    Entry::file(name.clone(), addr, len, guess_media_type(name))
                }
                Slot::Folder(name, sub) => {
                    let (addr, size) = built[*sub].context("a sub-folder was not built")?;
                    Entry::folder(name.clone(), addr, size)
                }
            });
        }
        let mut collection = Collection::new(entries);
        collection.sort();
        let size = collection.total_size();
        let bytes = collection.encode().context("cannot encode a collection")?;
        let len = bytes.len() as u64;
        let addr = node
            .post(
                &http,
                reqwest::Body::from(bytes),
                Some(len),
                Some(COLLECTION_MEDIA_TYPE.to_owned()),
            )
            .await
            .context("cannot store a collection")?;
        built[i] = Some((addr, size));
    }
    let (root, size) = built
        .first()
        .copied()
        .flatten()
        .context("the tree has no root")?;
    eprintln!(
        "stored {} files ({size} bytes) in {} folders",
        files.len(),
        folders.len()
    );
    println!("{root}");
    Ok(())
}

/// Reads `dir` (depth `depth`) into `files` and `folders`; returns the folder's number.
fn scan(
    dir: &Path,
    depth: usize,
    files: &mut Vec<Pending>,
    folders: &mut Vec<Vec<Slot>>,
) -> anyhow::Result<usize> {
    if depth > MAX_DEPTH {
        bail!(
            "{} is nested deeper than {MAX_DEPTH} folders",
            dir.display()
        );
    }
    let me = folders.len();
    folders.push(Vec::new());
    let mut listed: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    listed.sort_by_key(std::fs::DirEntry::file_name);
    let mut slots = Vec::with_capacity(listed.len());
    for item in listed {
        let path = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|raw| anyhow::anyhow!("{}: the name {raw:?} is not UTF-8", dir.display()))?;
        check_name(&name).with_context(|| path.display().to_string())?;
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if files.len() + folders.len() >= MAX_TREE_ENTRIES {
            bail!("the tree has more than {MAX_TREE_ENTRIES} entries");
        }
        if meta.is_dir() {
            let sub = scan(&path, depth + 1, files, folders)?;
            slots.push(Slot::Folder(name, sub));
        } else if meta.is_file() {
            slots.push(Slot::File(name, files.len()));
            files.push(Pending {
                path,
                len: meta.len(),
            });
        } else {
            bail!(
                "{} is not a regular file or a directory (symlinks and devices are not stored)",
                path.display()
            );
        }
    }
    folders[me] = slots;
    Ok(me)
}

/// `ron get -r ROOT -o DIR`: recreates the tree under DIR (made when missing).
pub(crate) async fn get(node: &Target, root: &str, out: &Path) -> anyhow::Result<()> {
    let root: Address = root
        .parse()
        .with_context(|| format!("{root:?} is not a b3: address"))?;
    let http = node.http()?;
    let mut tally = Tally::default();
    let mut files = Vec::new();
    let mut folders = vec![(root, out.to_path_buf(), 0usize)];
    while let Some((addr, dir, depth)) = folders.pop() {
        if depth > MAX_DEPTH {
            bail!("{addr}: folders nested deeper than {MAX_DEPTH}");
        }
        let collection = fetch_collection(node, &http, &addr).await?;
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
        tally.folders += 1;
        for entry in collection.entries {
            if files.len() + tally.folders + folders.len() >= MAX_TREE_ENTRIES {
                bail!("{root}: the tree has more than {MAX_TREE_ENTRIES} entries");
            }
            // The names were checked when the collection was decoded: one segment each.
            let path = dir.join(&entry.name);
            match entry.kind {
                Kind::Folder => folders.push((entry.address, path, depth + 1)),
                Kind::File => {
                    tally.files += 1;
                    tally.bytes = tally.bytes.saturating_add(entry.size);
                    files.push((entry.address, path));
                }
            }
        }
    }
    stream::iter(files.iter())
        .map(|(addr, path)| {
            let http = http.clone();
            async move {
                save(node, &http, addr, path, false)
                    .await
                    .with_context(|| format!("cannot get {}", path.display()))
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    eprintln!(
        "got {} files ({} bytes) in {} folders",
        tally.files, tally.bytes, tally.folders
    );
    Ok(())
}

/// The collection at `addr`: fetched whole (bounded), verified against its address, decoded
/// and checked.
async fn fetch_collection(
    node: &Target,
    http: &reqwest::Client,
    addr: &Address,
) -> anyhow::Result<Collection> {
    let res = node.fetch(http, addr).await?;
    if res
        .content_length()
        .is_some_and(|n| n > MAX_COLLECTION_BYTES)
    {
        bail!("{addr} is too large to be a collection");
    }
    let mut bytes = Vec::new();
    let mut body = res.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.with_context(|| format!("the transfer of {addr} broke off"))?;
        if (bytes.len() + piece.len()) as u64 > MAX_COLLECTION_BYTES {
            bail!("{addr} is too large to be a collection");
        }
        bytes.extend_from_slice(&piece);
    }
    if Address::of(&bytes) != *addr {
        bail!(
            "the bytes received for {addr} hash to {}",
            Address::of(&bytes)
        );
    }
    Collection::decode(&bytes).with_context(|| format!("{addr} is not a valid collection"))
}
