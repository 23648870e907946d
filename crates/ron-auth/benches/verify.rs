//! What a capability costs per request: authorizing a token the node has seen (cached
//! signature checks, Datalog evaluated per request), one it has not (signatures verified),
//! one with a byte budget and a rate (counters), and, as the baseline in the same run, a
//! bare Ed25519 signature verification.
//! `cargo bench -p ron-auth --bench verify`
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::time::Duration;

use biscuit_auth::KeyPair;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ron_auth::token::{Caveats, Op, Rate, attenuate, mint};
use ron_auth::{Auth, AuthSection, KeyRing, NodeIdentity, Request, unix_now};

fn authorize(c: &mut Criterion) {
    let auth = Auth::new(
        NodeIdentity::ephemeral(),
        KeyRing::in_memory(),
        &AuthSection::default(),
        unix_now(),
    )
    .expect("auth");
    let put = Request {
        op: Op::Put,
        path: "/put",
    };
    let typical = Caveats {
        expires_at: Some(unix_now() + 3600),
        ops: [Op::Put].into(),
        path_prefix: Some("/put".into()),
        audience: Some(auth.node_id().to_owned()),
        ..Caveats::default()
    };
    let token = auth.mint(&typical).expect("mint");
    let mut group = c.benchmark_group("authorize");
    group.bench_function("seen_token", |b| {
        b.iter(|| black_box(auth.authorize(Some(&token), &put)).is_ok())
    });
    let counted = auth
        .mint(&Caveats {
            max_bytes: Some(u64::MAX / 2),
            rate: Some(Rate {
                requests: u32::MAX,
                per: Duration::from_millis(1),
            }),
            ..typical.clone()
        })
        .expect("mint");
    group.bench_function("seen_token_with_budget_and_rate", |b| {
        b.iter(|| black_box(auth.authorize(Some(&counted), &put)).is_ok())
    });
    group.bench_function("new_token", |b| {
        b.iter_batched(
            || auth.mint(&typical).expect("mint"),
            |t| black_box(auth.authorize(Some(&t), &put)).is_ok(),
            BatchSize::SmallInput,
        )
    });
    let child = attenuate(
        &token,
        &Caveats {
            expires_at: Some(unix_now() + 300),
            ..Caveats::default()
        },
    )
    .expect("attenuate");
    group.bench_function("new_attenuated_token", |b| {
        b.iter_batched(
            || {
                attenuate(
                    &token,
                    &Caveats {
                        expires_at: Some(unix_now() + 300),
                        ..Caveats::default()
                    },
                )
                .expect("attenuate")
            },
            |t| black_box(auth.authorize(Some(&t), &put)).is_ok(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("seen_attenuated_token", |b| {
        b.iter(|| black_box(auth.authorize(Some(&child), &put)).is_ok())
    });
    // Baseline: one Ed25519 verification (a new token needs one per block).
    let pair = KeyPair::new();
    let message = [7u8; 64];
    let signature = pair.sign(&message).expect("sign");
    let public = pair.public();
    group.bench_function("baseline_ed25519_verify", |b| {
        b.iter(|| black_box(public.verify_signature(&message, &signature)).is_ok())
    });
    group.finish();

    let key = ron_auth::SigningKey::generate();
    c.bench_function("mint", |b| {
        b.iter(|| black_box(mint(&key, &typical)).is_ok())
    });
}

criterion_group!(benches, authorize);
criterion_main!(benches);
