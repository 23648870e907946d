//! Cost of `Bus::publish` with 0, 1 and 16 subscribers, against the raw tokio broadcast
//! channel it wraps (the baseline, in the same run).
//!
//! Subscribers are idle (they never read), so the ring stays full and every publish also
//! drops the event it overwrites: the steady state of a bus whose listeners are busy.
//! `cargo bench -p ron-kernel --bench bus`
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ron_kernel::{Bus, KernelEvent};

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for subs in [0usize, 1, 16] {
        let bus = Bus::new(4096);
        let _held: Vec<_> = (0..subs).map(|_| bus.subscribe()).collect();
        group.bench_with_input(BenchmarkId::new("bus", subs), &subs, |b, _| {
            let mut v = 0u64;
            b.iter(|| {
                v += 1;
                black_box(bus.publish(KernelEvent::ConfigUpdated { version: v }))
            });
        });

        let (tx, _) = tokio::sync::broadcast::channel::<KernelEvent>(4096);
        let _raw: Vec<_> = (0..subs).map(|_| tx.subscribe()).collect();
        group.bench_with_input(BenchmarkId::new("tokio_broadcast", subs), &subs, |b, _| {
            let mut v = 0u64;
            b.iter(|| {
                v += 1;
                black_box(
                    tx.send(KernelEvent::ConfigUpdated { version: v })
                        .unwrap_or(0),
                )
            });
        });
    }
    group.finish();

    // With a String-carrying event the allocation dominates; shown for scale.
    let bus = Bus::new(4096);
    let _one = bus.subscribe();
    c.bench_function("publish/bus_health_event/1", |b| {
        b.iter(|| {
            black_box(bus.publish(KernelEvent::Health {
                service: "overlay".to_owned(),
                ok: true,
            }))
        });
    });
}

criterion_group!(benches, publish);
criterion_main!(benches);
