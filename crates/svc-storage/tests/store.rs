//! The store through its public API: round trips, dedup, pins and GC, damage, cleanup.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::path::{Path, PathBuf};

use ron_proto::Address;
use svc_storage::{CpuPool, PutError, PutOptions, ReadError, Store};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

async fn put(
    store: &Store,
    bytes: &[u8],
    options: PutOptions,
) -> Result<svc_storage::Stored, PutError> {
    let mut w = store.writer(options);
    // Arrive in uneven pieces, as a network would deliver them.
    for piece in bytes.chunks(100_003) {
        w.write(piece).await?;
    }
    w.finish().await
}

async fn read_all(store: &Store, addr: &Address) -> Result<Vec<u8>, ReadError> {
    let reader = store.reader(addr).await?.expect("object present");
    let mut out = Vec::new();
    let mut at = 0;
    while at < reader.size() {
        let piece = reader.read_verified(at, at + (1 << 20)).await?;
        at += piece.len() as u64;
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("chunks"))
}

#[tokio::test]
async fn round_trips_at_the_boundaries_on_disk_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let mem = Store::in_memory().unwrap();
    const MIB: usize = 1 << 20;
    for (i, len) in [
        0,
        1,
        1023,
        16 * 1024,
        16 * 1024 + 1,
        MIB - 1,
        MIB,
        MIB + 1,
        5 * MIB,
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = data(len, i as u64);
        for store in [&disk, &mem] {
            let stored = put(store, &bytes, PutOptions::default()).await.unwrap();
            assert_eq!(stored.address, Address::of(&bytes), "len {len}");
            assert_eq!(stored.size, len as u64);
            assert!(stored.created);
            assert_eq!(
                read_all(store, &stored.address).await.unwrap(),
                bytes,
                "len {len}"
            );
            // Unaligned ranges match the slice.
            let reader = store.reader(&stored.address).await.unwrap().unwrap();
            for (a, b) in [(0, 1), (len / 3, len / 2 + 7), (len.saturating_sub(5), len)] {
                let got = reader.read_verified(a as u64, b as u64).await.unwrap();
                assert_eq!(
                    &got[..],
                    &bytes[a.min(len)..b.min(len).max(a.min(len))],
                    "len {len} range {a}..{b}"
                );
            }
            // Same bytes again: same address, not created twice.
            assert!(
                !put(store, &bytes, PutOptions::default())
                    .await
                    .unwrap()
                    .created
            );
        }
    }
    let stats = disk.stats().await.unwrap();
    assert_eq!(
        stats.objects, 9,
        "the empty object is an object too: {stats:?}"
    );
    assert_eq!(chunk_files(dir.path()).len() as u64, stats.chunks);
    assert_eq!(
        stats.bytes_stored, stats.bytes_logical,
        "nothing shared: {stats:?}"
    );
}

#[tokio::test]
async fn shared_chunks_are_stored_once_and_survive_gc_of_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let a = data(12 << 20, 7);
    let mut b = a.clone();
    b.extend_from_slice(&data(3 << 20, 8));
    let sa = put(&store, &a, PutOptions::default()).await.unwrap();
    let sb = put(&store, &b, PutOptions::default()).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert!(stats.bytes_saved >= 8 << 20, "{stats:?}");
    assert_eq!(stats.bytes_logical, (27 << 20) as u64);
    assert_eq!(chunk_files(dir.path()).len() as u64, stats.chunks);

    // Unpin A and collect: A goes, B and every chunk B uses stay.
    assert!(store.set_pinned(&sa.address, false).await.unwrap());
    let report = store.gc().await.unwrap();
    assert_eq!(report.objects, 1);
    assert!(store.manifest(&sa.address).await.unwrap().is_none());
    assert_eq!(read_all(&store, &sb.address).await.unwrap(), b);
    let after = store.stats().await.unwrap();
    assert_eq!(after.bytes_logical, b.len() as u64);
    assert_eq!(chunk_files(dir.path()).len() as u64, after.chunks);

    // Pinned objects are never collected.
    assert_eq!(store.gc().await.unwrap().objects, 0);
    assert!(
        !store
            .set_pinned(&Address::of(b"unknown"), true)
            .await
            .unwrap()
    );

    // Unpin B too: everything goes.
    store.set_pinned(&sb.address, false).await.unwrap();
    store.gc().await.unwrap();
    assert!(chunk_files(dir.path()).is_empty());
    assert_eq!(store.stats().await.unwrap().bytes_stored, 0);
}

#[tokio::test]
async fn a_flipped_byte_is_caught_in_its_group_and_reported_by_stat() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let bytes = data(3 << 20, 9);
    let stored = put(&store, &bytes, PutOptions::default()).await.unwrap();
    assert!(!store.stat(&stored.address).await.unwrap().unwrap().damaged);

    let manifest = store.manifest(&stored.address).await.unwrap().unwrap();
    let first = manifest.chunks[0].address.to_string();
    let path = chunk_files(dir.path())
        .into_iter()
        .find(|p| p.ends_with(&first[3..]))
        .unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    raw[100_000] ^= 0x01;
    std::fs::write(&path, raw).unwrap();

    let reader = store.reader(&stored.address).await.unwrap().unwrap();
    let err = reader.read_verified(99_000, 101_000).await.unwrap_err();
    assert!(
        matches!(err, ReadError::Damaged { offset: 98_304, .. }),
        "{err:?}"
    );
    // Bytes in other groups still verify and are served.
    assert_eq!(
        &reader.read_verified(0, 4096).await.unwrap()[..],
        &bytes[..4096]
    );
    assert_eq!(
        &reader.read_verified(200_000, 300_000).await.unwrap()[..],
        &bytes[200_000..300_000]
    );
    assert!(store.stat(&stored.address).await.unwrap().unwrap().damaged);
    // The encoder for peers refuses the damaged group too, and encodes the others.
    let err = reader.encode_range(98_304, 114_688).await.unwrap_err();
    assert!(matches!(err, ReadError::Damaged { .. }), "{err:?}");
    assert!(reader.encode_range(131_072, 262_144).await.unwrap().len() > 131_072);
}

#[tokio::test]
async fn a_verified_outboard_is_stored_as_given_and_one_that_does_not_fit_is_not() {
    use bao_tree::BlockSize;
    use bao_tree::io::outboard::PostOrderMemOutboard;
    let block = BlockSize::from_chunk_log(ron_proto::oap::GROUP_CHUNK_LOG);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let bytes = data(1 << 20, 21);
    let address = Address::of(&bytes);
    let outboard = PostOrderMemOutboard::create(&bytes[..], block).data;
    let upload = |outboard: Vec<u8>| {
        let (store, bytes) = (store.clone(), bytes.clone());
        async move {
            let options = PutOptions {
                expect: Some(Address::of(&bytes)),
                unpinned: true,
                ..PutOptions::default()
            };
            let mut w = store.writer(options);
            for piece in bytes.chunks(100_003) {
                w.write(piece).await.unwrap();
            }
            let stored = w.finish_with_outboard(outboard).await.unwrap();
            assert_eq!(stored.address, Address::of(&bytes));
        }
    };

    // A pair below the root flipped: the root pair still fits, so the outboard is stored as
    // given (no pass over the bytes notices), and reads of the groups it covers are refused
    // rather than served unproven; the rest still verify.
    let mut wrong_below = outboard.clone();
    wrong_below[0] ^= 1;
    upload(wrong_below).await;
    let reader = store.reader(&address).await.unwrap().unwrap();
    let err = reader.read_verified(0, 16_384).await.unwrap_err();
    assert!(
        matches!(err, ReadError::Damaged { offset: 0, .. }),
        "{err:?}"
    );
    assert_eq!(
        &reader.read_verified(524_288, 540_672).await.unwrap()[..],
        &bytes[524_288..540_672]
    );
    drop(reader);
    store.gc().await.unwrap();
    assert!(store.reader(&address).await.unwrap().is_none());

    // The root pair wrong, or the length wrong: not taken; the outboard is computed from the
    // stored bytes and every read verifies.
    let mut wrong_root = outboard.clone();
    let last = wrong_root.len() - 1;
    wrong_root[last] ^= 1;
    for given in [wrong_root, outboard[..outboard.len() - 64].to_vec()] {
        upload(given).await;
        assert_eq!(read_all(&store, &address).await.unwrap(), bytes);
        store.gc().await.unwrap();
        assert!(store.reader(&address).await.unwrap().is_none());
    }

    // The right one: stored, and every read verifies against it.
    upload(outboard).await;
    assert_eq!(read_all(&store, &address).await.unwrap(), bytes);
    assert!(!store.stat(&address).await.unwrap().unwrap().damaged);

    // One group has no pairs: an empty outboard, and the object is hashed as usual.
    let small = data(10_000, 22);
    let options = PutOptions {
        expect: Some(Address::of(&small)),
        ..PutOptions::default()
    };
    let mut w = store.writer(options);
    w.write(&small).await.unwrap();
    let stored = w.finish_with_outboard(Vec::new()).await.unwrap();
    assert_eq!(read_all(&store, &stored.address).await.unwrap(), small);
}

#[tokio::test]
async fn a_copy_written_around_the_page_cache_is_the_same_copy() {
    use bao_tree::BlockSize;
    use bao_tree::io::outboard::PostOrderMemOutboard;
    let block = BlockSize::from_chunk_log(ron_proto::oap::GROUP_CHUNK_LOG);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    // Several chunks of lengths no block size divides, and one short object.
    for (len, seed) in [((9 << 20) + 3, 60), (10_000, 61)] {
        let bytes = data(len, seed);
        let address = Address::of(&bytes);
        let outboard = PostOrderMemOutboard::create(&bytes[..], block).data;
        // With the outboard from a transfer, and without (the stored bytes read back from
        // the disk and hashed).
        for given in [Some(outboard), None] {
            let options = PutOptions {
                expect: Some(address),
                unpinned: true,
                around_cache: true,
                ..PutOptions::default()
            };
            let mut w = store.writer(options);
            for piece in bytes.chunks(65_537) {
                w.write(piece).await.unwrap();
            }
            let stored = match given {
                Some(outboard) => w.finish_with_outboard(outboard).await.unwrap(),
                None => w.finish().await.unwrap(),
            };
            assert_eq!((stored.address, stored.size), (address, len as u64));
            assert!(read_all(&store, &address).await.unwrap() == bytes);
            assert!(!store.stat(&address).await.unwrap().unwrap().damaged);
            let on_disk: u64 = chunk_files(dir.path())
                .iter()
                .map(|f| std::fs::metadata(f).unwrap().len())
                .sum();
            assert_eq!(on_disk, len as u64, "chunk files hold exactly the bytes");
            store.gc().await.unwrap();
            assert!(chunk_files(dir.path()).is_empty());
        }
    }
}

#[tokio::test]
async fn encoded_ranges_decode_against_the_address() {
    use bao_tree::io::BaoContentItem;
    use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
    let store = Store::in_memory().unwrap();
    let bytes = data(1_000_000, 4);
    let stored = put(&store, &bytes, PutOptions::default()).await.unwrap();
    let reader = store.reader(&stored.address).await.unwrap().unwrap();
    for (start, end) in [(0, 1_000_000), (16_384, 524_288), (983_040, 1_000_000)] {
        let encoded = reader.encode_range(start, end).await.unwrap();
        let ranges = ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)));
        let tree = BaoTree::new(1_000_000, BlockSize::from_chunk_log(4));
        let root = bao_tree::blake3::Hash::from_bytes(*stored.address.as_bytes());
        let mut got = Vec::new();
        let items = bao_tree::io::sync::DecodeResponseIter::new(root, tree, &encoded[..], &ranges);
        for item in items {
            if let BaoContentItem::Leaf(leaf) = item.unwrap() {
                got.extend_from_slice(&leaf.data);
            }
        }
        assert!(got == bytes[start as usize..end as usize], "{start}..{end}");
    }
}

#[tokio::test]
async fn eviction_removes_the_oldest_unpinned_objects_until_the_rest_fit() {
    let store = Store::in_memory().unwrap();
    let cached = PutOptions {
        unpinned: true,
        ..PutOptions::default()
    };
    let mut unpinned = Vec::new();
    for seed in 0..4 {
        let stored = put(&store, &data(100_000, 40 + seed), cached.clone())
            .await
            .unwrap();
        unpinned.push(stored.address);
    }
    let pinned = put(&store, &data(500_000, 50), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.unpinned_bytes().await.unwrap(), 400_000);
    // Unpinning makes an object the newest in the cache.
    store.set_pinned(&unpinned[0], true).await.unwrap();
    store.set_pinned(&unpinned[0], false).await.unwrap();

    let (report, removed) = store.evict(250_000).await.unwrap();
    assert_eq!(
        removed,
        vec![unpinned[1], unpinned[2]],
        "oldest first, until 200 KB remain"
    );
    assert_eq!(report.objects, 2);
    assert_eq!(store.unpinned_bytes().await.unwrap(), 200_000);
    assert!(store.reader(&pinned.address).await.unwrap().is_some());
    assert!(store.reader(&unpinned[0]).await.unwrap().is_some());
    // Within the budget: nothing to do. A budget of 0 removes every unpinned object.
    assert!(store.evict(200_000).await.unwrap().1.is_empty());
    assert_eq!(
        store.evict(0).await.unwrap().1,
        vec![unpinned[3], unpinned[0]]
    );
    assert!(store.reader(&pinned.address).await.unwrap().is_some());
}

#[tokio::test]
async fn released_objects_are_collected_and_fetched_copies_are_not() {
    let store = Store::in_memory().unwrap();
    let fetched = put(
        &store,
        &data(1000, 60),
        PutOptions {
            unpinned: true,
            ..PutOptions::default()
        },
    )
    .await
    .unwrap()
    .address;
    let released = put(&store, &data(1000, 61), PutOptions::default())
        .await
        .unwrap()
        .address;
    let regretted = put(&store, &data(1000, 62), PutOptions::default())
        .await
        .unwrap()
        .address;
    let kept = put(&store, &data(1000, 63), PutOptions::default())
        .await
        .unwrap()
        .address;
    store.set_pinned(&released, false).await.unwrap();
    // Unpinned, then pinned again: no longer released.
    store.set_pinned(&regretted, false).await.unwrap();
    store.set_pinned(&regretted, true).await.unwrap();
    // Unpinned, then uploaded again (an upload pins): no longer released either.
    store.set_pinned(&kept, false).await.unwrap();
    put(&store, &data(1000, 63), PutOptions::default())
        .await
        .unwrap();

    let (report, removed) = store.collect_released().await.unwrap();
    assert_eq!(removed, vec![released]);
    assert_eq!((report.objects, report.chunks, report.bytes), (1, 1, 1000));
    for addr in [fetched, regretted, kept] {
        assert!(store.reader(&addr).await.unwrap().is_some());
    }
    assert!(store.collect_released().await.unwrap().1.is_empty());
}

#[tokio::test]
async fn listing_pages_in_address_order_and_removal_keeps_shared_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::default()).unwrap();
    let first = data(3 << 20, 70);
    let mut longer = first.clone();
    longer.extend(data(3 << 20, 71));
    let a = put(&store, &first, PutOptions::default())
        .await
        .unwrap()
        .address;
    let b = put(&store, &longer, PutOptions::default())
        .await
        .unwrap()
        .address;
    let c = put(
        &store,
        b"typed",
        PutOptions {
            media_type: Some("text/plain".into()),
            unpinned: true,
            ..PutOptions::default()
        },
    )
    .await
    .unwrap()
    .address;
    let mut all = [a, b, c];
    all.sort_by_key(|x| *x.as_bytes());
    let page = store.list(None, 2).await.unwrap();
    assert_eq!(page.iter().map(|o| o.address).collect::<Vec<_>>(), all[..2]);
    let rest = store.list(Some(page[1].address), 2).await.unwrap();
    assert_eq!(rest.iter().map(|o| o.address).collect::<Vec<_>>(), all[2..]);
    let typed = page.iter().chain(&rest).find(|o| o.address == c).unwrap();
    assert_eq!(
        (typed.size, typed.media_type.as_deref(), typed.pinned),
        (5, Some("text/plain"), false)
    );
    assert!(typed.stored_at.is_some_and(|t| t > 1_700_000_000));

    let chunks_before = chunk_files(dir.path()).len();
    assert!(store.remove(&b).await.unwrap());
    assert!(!store.remove(&b).await.unwrap(), "already gone");
    assert!(store.reader(&b).await.unwrap().is_none());
    let chunks_after = chunk_files(dir.path()).len();
    assert!(
        chunks_after < chunks_before,
        "{chunks_before} -> {chunks_after}"
    );
    // The object that shared chunks with it reads back whole and verified.
    assert_eq!(read_all(&store, &a).await.unwrap(), first);
    assert_eq!(store.list(None, 10).await.unwrap().len(), 2);
    // Gone from the metadata after a reopen too.
    drop(store);
    let store = Store::open(dir.path(), CpuPool::default()).unwrap();
    assert!(store.reader(&b).await.unwrap().is_none());
    assert_eq!(read_all(&store, &a).await.unwrap(), first);
}

#[tokio::test]
async fn a_deleted_chunk_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let bytes = data(2 << 20, 10);
    let stored = put(&store, &bytes, PutOptions::default()).await.unwrap();
    for f in chunk_files(dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    assert!(matches!(
        read_all(&store, &stored.address).await,
        Err(ReadError::MissingChunk { .. })
    ));
    let stat = store.stat(&stored.address).await.unwrap().unwrap();
    assert!(stat.damaged);
}

#[tokio::test]
async fn a_truncated_chunk_file_is_an_error_not_short_or_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let bytes = data(3 << 20, 11);
    let stored = put(&store, &bytes, PutOptions::default()).await.unwrap();
    for f in chunk_files(dir.path()) {
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - 1000).unwrap();
    }
    assert!(matches!(
        read_all(&store, &stored.address).await,
        Err(ReadError::MissingChunk { .. })
    ));
    assert!(store.stat(&stored.address).await.unwrap().unwrap().damaged);
}

#[tokio::test]
async fn refused_and_abandoned_uploads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = CpuPool::new(2);
    let store = Store::open(dir.path(), pool.clone()).unwrap();
    let bytes = data(9 << 20, 11);

    let wrong = PutOptions {
        expect: Some(Address::of(b"something else")),
        ..PutOptions::default()
    };
    assert!(matches!(
        put(&store, &bytes, wrong).await,
        Err(PutError::Mismatch { .. })
    ));

    let small = PutOptions {
        max_bytes: Some(5 << 20),
        ..PutOptions::default()
    };
    assert!(
        matches!(put(&store, &bytes, small).await, Err(PutError::TooLarge { limit }) if limit == 5 << 20)
    );

    let mut w = store.writer(PutOptions::default());
    w.write(&bytes[..7 << 20]).await.unwrap();
    drop(w); // the client went away

    let bad_type = PutOptions {
        media_type: Some("not a type".into()),
        ..PutOptions::default()
    };
    assert!(matches!(
        put(&store, b"x", bad_type).await,
        Err(PutError::MediaType(_))
    ));

    // A chunk write already on the CPU pool when the writer was dropped finishes there and
    // then removes its file: wait for it. Two jobs that must run at the same time hold both
    // of the pool's permits, which they get only once every job started before them ended
    // (a wait for "no chunk file" alone could end before that write created its file).
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (a, b) = (barrier.clone(), barrier);
    let (first, second) = tokio::join!(pool.run(move || a.wait()), pool.run(move || b.wait()));
    first.unwrap();
    second.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !chunk_files(dir.path()).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        chunk_files(dir.path()).is_empty(),
        "{:?}",
        chunk_files(dir.path())
    );
    assert!(files_under(&dir.path().join("outboards")).is_empty());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert_eq!(store.stats().await.unwrap().objects, 0);

    let right = PutOptions {
        expect: Some(Address::of(&bytes)),
        ..PutOptions::default()
    };
    assert!(put(&store, &bytes, right).await.unwrap().created);
}

#[tokio::test]
async fn objects_survive_reopening_and_orphans_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 << 20, 12);
    let addr = {
        let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
        put(
            &store,
            &bytes,
            PutOptions {
                media_type: Some("application/x-test".into()),
                ..PutOptions::default()
            },
        )
        .await
        .unwrap()
        .address
    };
    // A chunk file no metadata knows, as a crash between write and commit would leave.
    let orphan = Address::of(b"orphan").to_string();
    let orphan_path = dir
        .path()
        .join("chunks")
        .join(&orphan[3..5])
        .join(&orphan[3..]);
    std::fs::write(&orphan_path, b"orphan").unwrap();

    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    assert!(!orphan_path.exists(), "orphan swept on open");
    assert_eq!(read_all(&store, &addr).await.unwrap(), bytes);
    let stat = store.stat(&addr).await.unwrap().unwrap();
    assert_eq!(stat.media_type.as_deref(), Some("application/x-test"));
    assert!(stat.pinned && !stat.damaged);
}

/// Flips one byte of `path` at `at` (or its middle).
fn flip(path: &Path, at: Option<usize>) {
    let mut raw = std::fs::read(path).unwrap();
    let at = at.unwrap_or(raw.len() / 2);
    raw[at] ^= 0x01;
    std::fs::write(path, raw).unwrap();
}

#[tokio::test]
async fn a_reupload_over_a_damaged_chunk_gets_the_true_address_and_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    // One small object (one chunk, inline-sized) and one of several chunks.
    for (len, seed) in [(1000usize, 21u64), (5 << 20, 22)] {
        let bytes = data(len, seed);
        let truth = Address::of(&bytes);
        let stored = put(&store, &bytes, PutOptions::default()).await.unwrap();
        assert_eq!(stored.address, truth);
        let manifest = store.manifest(&truth).await.unwrap().unwrap();
        let last = manifest.chunks.last().unwrap().address.to_string();
        let path = chunk_files(dir.path())
            .into_iter()
            .find(|p| p.ends_with(&last[3..]))
            .unwrap();
        flip(&path, None);
        assert!(store.stat(&truth).await.unwrap().unwrap().damaged);

        let before = store.repaired_chunks();
        // The same bytes again, announced with their address: the address comes from what
        // arrived, the damaged chunk is replaced, nothing is blamed on the client.
        let again = put(
            &store,
            &bytes,
            PutOptions {
                expect: Some(truth),
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!((again.address, again.created), (truth, false));
        assert_eq!(store.repaired_chunks(), before + 1);
        assert!(!store.stat(&truth).await.unwrap().unwrap().damaged);
        assert_eq!(read_all(&store, &truth).await.unwrap(), bytes);
    }
}

#[tokio::test]
async fn a_reupload_replaces_a_damaged_outboard_and_a_missing_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    let bytes = data(3 << 20, 23);
    let truth = put(&store, &bytes, PutOptions::default())
        .await
        .unwrap()
        .address;
    let outboard = files_under(&dir.path().join("outboards"));
    assert_eq!(outboard.len(), 1);
    flip(&outboard[0], Some(0));
    for f in chunk_files(dir.path()).into_iter().take(1) {
        std::fs::remove_file(f).unwrap();
    }
    assert!(store.stat(&truth).await.unwrap().unwrap().damaged);
    let again = put(&store, &bytes, PutOptions::default()).await.unwrap();
    assert_eq!(again.address, truth);
    assert!(!store.stat(&truth).await.unwrap().unwrap().damaged);
    assert_eq!(read_all(&store, &truth).await.unwrap(), bytes);
}

#[tokio::test]
async fn a_second_upload_in_memory_is_checked_against_the_copy_and_kept_once() {
    // Amnesia's store: nothing to flip on disk, so the check is that a second upload of the
    // same bytes still matches, byte for byte, and keeps the one copy.
    let store = Store::in_memory().unwrap();
    let bytes = data(2 << 20, 24);
    let first = put(&store, &bytes, PutOptions::default()).await.unwrap();
    let second = put(&store, &bytes, PutOptions::default()).await.unwrap();
    assert_eq!(first.address, second.address);
    assert_eq!(store.repaired_chunks(), 0);
    assert_eq!(read_all(&store, &first.address).await.unwrap(), bytes);
}

#[tokio::test]
async fn leased_blobs_stay_within_their_budget_renew_and_expire_and_an_owners_pin_wins() {
    let store = Store::in_memory().unwrap();
    let leased = |until: u64, budget: u64| PutOptions {
        lease: Some(svc_storage::Lease { until, budget }),
        ..PutOptions::default()
    };
    let (a, b, c) = (data(1000, 1), data(1000, 2), data(1000, 3));
    let a_addr = put(&store, &a, leased(100, 2500)).await.unwrap().address;
    let b_addr = put(&store, &b, leased(100, 2500)).await.unwrap().address;
    assert_eq!(store.leased_bytes().await.unwrap(), 2000);
    // Past the budget: refused, and nothing of it is left.
    let refused = put(&store, &c, leased(100, 2500)).await;
    assert!(
        matches!(
            refused,
            Err(PutError::Store(svc_storage::StoreError::NoRoom {
                budget: 2500
            }))
        ),
        "{refused:?}"
    );
    assert!(store.manifest(&Address::of(&c)).await.unwrap().is_none());
    // The same blob again only extends its lease (no new bytes counted).
    put(&store, &a, leased(300, 2500)).await.unwrap();
    assert_eq!(store.leased_bytes().await.unwrap(), 2000);
    // Leased blobs are pinned: a collection of unpinned objects leaves them.
    store.gc().await.unwrap();
    assert!(store.manifest(&a_addr).await.unwrap().is_some());
    // Renewing: a lease is never shortened; an unknown blob is not held.
    let unknown = Address::of(b"unknown");
    assert_eq!(
        store.renew(vec![b_addr, unknown], 200).await.unwrap(),
        vec![true, false]
    );
    assert_eq!(
        store.renew_leased(vec![a_addr], 50).await.unwrap(),
        vec![true]
    );
    // At 250: b's lease (200) ended, a's (300) runs.
    let (report, removed) = store.expire(250).await.unwrap();
    assert_eq!((report.objects, removed), (1, vec![b_addr]));
    assert!(store.manifest(&b_addr).await.unwrap().is_none());
    assert_eq!(store.leased_bytes().await.unwrap(), 1000);
    // The owner pins a: it is theirs from then on, and never expires.
    store.set_pinned(&a_addr, true).await.unwrap();
    assert_eq!(store.leased_bytes().await.unwrap(), 0);
    assert_eq!(
        store.renew_leased(vec![a_addr], 0).await.unwrap(),
        vec![false]
    );
    store.expire(u64::MAX).await.unwrap();
    assert!(store.manifest(&a_addr).await.unwrap().is_some());
    // An owner's object sent again as a blob to keep stays the owner's.
    put(&store, &a, leased(10, 2500)).await.unwrap();
    store.expire(u64::MAX).await.unwrap();
    assert!(store.manifest(&a_addr).await.unwrap().is_some());
}

#[tokio::test]
async fn watches_intents_and_repair_progress_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (object, layout) = (Address::of(b"object"), Address::of(b"layout"));
    {
        let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
        store.watch(object, layout).await.unwrap();
        store.intend(object, Some((4, 2))).await.unwrap();
        store.set_progress(object, Some(7)).await.unwrap();
    }
    // Durable: a new process sees them.
    let store = Store::open(dir.path(), CpuPool::new(2)).unwrap();
    assert_eq!(store.watched().await.unwrap(), vec![(object, layout)]);
    assert_eq!(store.intents().await.unwrap(), vec![(object, (4, 2))]);
    assert_eq!(store.progress(object).await.unwrap(), Some(7));
    store.set_progress(object, None).await.unwrap();
    store.intend(object, None).await.unwrap();
    store.unwatch(object).await.unwrap();
    assert!(store.watched().await.unwrap().is_empty());
    assert!(store.intents().await.unwrap().is_empty());
    assert_eq!(store.progress(object).await.unwrap(), None);
}
