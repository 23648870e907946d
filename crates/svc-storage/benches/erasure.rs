//! Erasure coding a 4 MiB chunk with 4+2: the node's path (`svc_storage::erasure::encode`:
//! data shards borrowed from the chunk, the last one padded, then parity) against `reed-solomon-simd` encoding the
//! same data shards alone, in the same run; and rebuilding the chunk from two data and two
//! parity shards (each checked against its address, the chunk too) against the crate's decode
//! alone. The target: the node's encode at >= 0.8x the crate's throughput.
//! `cargo bench -p svc-storage --bench erasure`
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ron_proto::Address;
use ron_proto::layout::{ChunkShards, Scheme};
use svc_storage::erasure;

fn chunk() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..4 << 20).map(|_| rng.u8(..)).collect()
}

fn encode(c: &mut Criterion) {
    let scheme = Scheme::new(4, 2).expect("scheme");
    let chunk = chunk();
    let shards = erasure::encode(scheme, &chunk)
        .expect("encode")
        .into_owned();
    let data: Vec<&[u8]> = shards[..4].iter().map(Vec::as_slice).collect();
    let mut group = c.benchmark_group("erasure_4MiB_4+2");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("encode_node", |b| {
        b.iter(|| black_box(erasure::encode(scheme, black_box(&chunk)).expect("encode")))
    });
    group.bench_function("encode_crate_alone", |b| {
        b.iter(|| black_box(reed_solomon_simd::encode(4, 2, black_box(&data)).expect("encode")))
    });
    let layout = ChunkShards {
        address: Address::of(&chunk),
        len: chunk.len() as u64,
        shards: shards.iter().map(|s| Address::of(s)).collect(),
    };
    let have: Vec<(usize, &[u8])> = [0, 1, 4, 5]
        .iter()
        .map(|&i| (i, shards[i].as_slice()))
        .collect();
    group.bench_function("decode_node_verified", |b| {
        b.iter(|| black_box(erasure::decode(scheme, &layout, black_box(&have)).expect("decode")))
    });
    group.bench_function("decode_crate_alone", |b| {
        b.iter(|| {
            black_box(
                reed_solomon_simd::decode(
                    4,
                    2,
                    [(0, &shards[0]), (1, &shards[1])],
                    [(0, &shards[4]), (1, &shards[5])],
                )
                .expect("decode"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
