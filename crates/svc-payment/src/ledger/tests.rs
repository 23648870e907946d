use proptest::prelude::*;

use super::*;

const USERS: [&str; 3] = ["ed25519/a", "ed25519/b", "peer/c"];

fn open_all() -> Vec<Change> {
    let mut v = vec![
        Change::Open {
            account: "node/issuance".into(),
            flags: 0,
        },
        Change::Open {
            account: "node/revenue".into(),
            flags: 0,
        },
    ];
    v.extend(USERS.iter().map(|u| Change::Open {
        account: (*u).into(),
        flags: NO_OVERDRAFT,
    }));
    v.extend(PEERS.iter().chain(&["node/cheques"]).map(|a| Change::Open {
        account: (*a).into(),
        flags: 0,
    }));
    v
}

/// Peers' accounts (overdrawn freely: a peer owes or is owed).
const PEERS: [&str; 2] = ["peer/x", "peer/y"];

fn cheque(id: u128, peer: usize, inbound: bool, cumulative: u64) -> Change {
    Change::Cheque(ChequeEntry {
        id,
        peer: PEERS[peer].into(),
        counter: "node/cheques".into(),
        inbound,
        cumulative,
        signature: [7; 64],
        code: 22,
    })
}

#[test]
fn a_cheque_credits_its_increase_once_and_never_goes_back() {
    let l = Ledger::in_memory().unwrap();
    l.apply(&open_all(), 0).unwrap();
    let r = l
        .apply(&[cheque(1, 0, true, 10), cheque(2, 0, true, 25)], 0)
        .unwrap();
    assert_eq!(r[0], Ok(Done::Cheque { credited: 10 }));
    assert_eq!(r[1], Ok(Done::Cheque { credited: 15 }));
    // A replay, and an older one: refused, nothing moves.
    let r = l
        .apply(&[cheque(3, 0, true, 25), cheque(4, 0, true, 20)], 0)
        .unwrap();
    assert_eq!(r[0], Err(Refusal::StaleCheque { held: 25 }));
    assert_eq!(r[1], Err(Refusal::StaleCheque { held: 25 }));
    assert!(l.transfer(3).unwrap().is_none());
    assert_eq!(l.account("peer/x").unwrap().unwrap().balance(), 25);
    assert_eq!(l.cheque("peer/x", true).unwrap(), Some((25, [7; 64])));
    // The other direction and the other peer are their own.
    assert_eq!(l.cheque("peer/x", false).unwrap(), None);
    let r = l.apply(&[cheque(5, 0, false, 3)], 0).unwrap();
    assert_eq!(r[0], Ok(Done::Cheque { credited: 3 }));
    assert_eq!(l.account("peer/x").unwrap().unwrap().balance(), 22);
    assert_eq!(
        l.cheques(true).unwrap(),
        vec![("peer/x".into(), 25, [7; 64])]
    );
    assert!(l.audit(0).unwrap().holds());
}

fn posted(id: u128, debit: &str, credit: &str, amount: u64) -> Change {
    Change::Transfer(Transfer {
        id,
        debit: debit.into(),
        credit: credit.into(),
        amount,
        kind: Kind::Posted,
        code: 1,
        paid_until_ms: None,
        bytes: 0,
        count: 0,
    })
}

#[test]
fn grants_charges_and_overdraft() {
    let l = Ledger::in_memory().unwrap();
    assert!(l.apply(&open_all(), 0).unwrap().iter().all(Result::is_ok));
    let r = l
        .apply(
            &[
                posted(1, "node/issuance", "ed25519/a", 3),
                posted(2, "ed25519/a", "node/revenue", 1),
                posted(3, "ed25519/a", "node/revenue", 1),
                posted(4, "ed25519/a", "node/revenue", 1),
                posted(5, "ed25519/a", "node/revenue", 1),
                posted(2, "ed25519/a", "node/revenue", 1),
                posted(2, "ed25519/a", "node/revenue", 2),
                posted(6, "ed25519/a", "ed25519/a", 1),
                posted(7, "ed25519/a", "nobody", 1),
                posted(8, "ed25519/b", "node/revenue", 0),
            ],
            10,
        )
        .unwrap();
    assert_eq!(
        r,
        vec![
            Ok(Done::Applied),
            Ok(Done::Applied),
            Ok(Done::Applied),
            Ok(Done::Applied),
            Err(Refusal::ExceedsCredits { available: 0 }),
            Ok(Done::Exists),
            Err(Refusal::IdUsed),
            Err(Refusal::SameAccount),
            Err(Refusal::NoAccount("nobody".into())),
            Err(Refusal::ZeroAmount),
        ]
    );
    let a = l.account("ed25519/a").unwrap().unwrap();
    assert_eq!((a.balance(), a.available()), (0, 0));
    assert_eq!(l.account("node/issuance").unwrap().unwrap().balance(), -3);
    assert!(l.audit(10).unwrap().holds());
    let h = l.history("ed25519/a", 10).unwrap();
    assert_eq!(h.iter().map(|r| r.id).collect::<Vec<_>>(), vec![4, 3, 2, 1]);
    assert_eq!(h[0].seq, 4);
}

#[test]
fn pending_is_resolved_once_and_expires() {
    let l = Ledger::in_memory().unwrap();
    l.apply(&open_all(), 0).unwrap();
    l.apply(&[posted(1, "node/issuance", "ed25519/a", 10)], 0)
        .unwrap();
    let pending = |id, timeout_ms| {
        Change::Transfer(Transfer {
            id,
            debit: "ed25519/a".into(),
            credit: "node/revenue".into(),
            amount: 4,
            kind: Kind::Pending { timeout_ms },
            code: 2,
            paid_until_ms: None,
            bytes: 0,
            count: 0,
        })
    };
    let resolve = |id, kind| {
        Change::Transfer(Transfer {
            id,
            debit: "ed25519/a".into(),
            credit: "node/revenue".into(),
            amount: 4,
            kind,
            code: 2,
            paid_until_ms: None,
            bytes: 0,
            count: 0,
        })
    };
    let r = l
        .apply(
            &[
                pending(2, 1_000),
                pending(3, 1_000),
                pending(4, 1_000),
                resolve(5, Kind::Post { pending: 2 }),
                resolve(6, Kind::Void { pending: 2 }),
                resolve(7, Kind::Void { pending: 3 }),
                resolve(8, Kind::Post { pending: 99 }),
            ],
            100,
        )
        .unwrap();
    assert_eq!(r[2], Err(Refusal::ExceedsCredits { available: 2 }));
    assert_eq!(r[3], Ok(Done::Applied));
    assert_eq!(r[4], Err(Refusal::PendingResolved("posted")));
    assert_eq!(r[5], Ok(Done::Applied));
    assert_eq!(r[6], Err(Refusal::PendingNotFound));
    let a = l.account("ed25519/a").unwrap().unwrap();
    assert_eq!((a.balance(), a.debits_pending), (6, 0));
    // A pending transfer is voided by its timeout, and cannot be posted after it.
    l.apply(&[pending(9, 2_000)], 1_500).unwrap();
    assert_eq!(l.account("ed25519/a").unwrap().unwrap().available(), 2);
    let r = l
        .apply(&[resolve(10, Kind::Post { pending: 9 })], 2_000)
        .unwrap();
    assert_eq!(r[0], Err(Refusal::PendingResolved("expired")));
    assert_eq!(l.transfer(9).unwrap().unwrap().state, "expired");
    assert_eq!(l.account("ed25519/a").unwrap().unwrap().available(), 6);
    assert!(l.audit(2_000).unwrap().holds());
}

#[test]
fn charges_of_one_account_are_one_transfer_and_stop_at_the_credits() {
    let l = Ledger::in_memory().unwrap();
    l.apply(&open_all(), 0).unwrap();
    l.apply(&[posted(1, "node/issuance", "ed25519/a", 5)], 0)
        .unwrap();
    let r = l
        .apply(
            &[Change::Charges(Charges {
                id: 2,
                debit: "ed25519/a".into(),
                credit: "node/revenue".into(),
                code: 1,
                items: vec![(2, 100), (2, 100), (2, 100), (1, 10), (0, 0)],
            })],
            1,
        )
        .unwrap();
    assert_eq!(
        r[0],
        Ok(Done::Charged(vec![
            Ok(()),
            Ok(()),
            Err(Refusal::ExceedsCredits { available: 1 }),
            Ok(()),
            Err(Refusal::ZeroAmount),
        ]))
    );
    let t = l.transfer(2).unwrap().unwrap();
    assert_eq!((t.amount, t.bytes, t.count, t.kind), (5, 210, 3, "posted"));
    assert_eq!(l.account("ed25519/a").unwrap().unwrap().balance(), 0);
    assert!(l.audit(1).unwrap().holds());
}

#[derive(Debug, Clone)]
enum Op {
    Grant(usize, u64),
    Pay(usize, usize, u64),
    Pending(usize, u64, u64),
    Resolve(usize, bool),
    Repeat(usize),
    Charges(usize, Vec<u64>),
    Cheque(usize, bool, u64),
    Tick(u64),
    Crash,
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..20u64).prop_map(|(u, a)| Op::Grant(u, a)),
        (0..3usize, 0..4usize, 1..10u64).prop_map(|(u, v, a)| Op::Pay(u, v, a)),
        (0..3usize, 1..10u64, 1..5_000u64).prop_map(|(u, a, t)| Op::Pending(u, a, t)),
        (0..64usize, any::<bool>()).prop_map(|(i, p)| Op::Resolve(i, p)),
        (0..64usize).prop_map(Op::Repeat),
        (0..3usize, proptest::collection::vec(0..6u64, 1..8)).prop_map(|(u, a)| Op::Charges(u, a)),
        (0..2usize, any::<bool>(), 0..40u64).prop_map(|(p, i, c)| Op::Cheque(p, i, c)),
        (1..3_000u64).prop_map(Op::Tick),
        Just(Op::Crash),
        Just(Op::Commit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random operations in random batches, some lost to a crash before their commit and the
    /// file reopened: every invariant holds after every step, every acknowledged transfer is
    /// there, nothing from a lost batch is, and no id is applied twice.
    #[test]
    fn invariants_hold_through_crashes(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let mut ledger = Ledger::open(&path).unwrap();
        ledger.apply(&open_all(), 0).unwrap();
        let mut now = 0u64;
        let mut next_id = 1u128;
        let mut sent: Vec<Transfer> = Vec::new();
        let mut pendings: Vec<Transfer> = Vec::new();
        let mut batch: Vec<Change> = Vec::new();
        let mut acknowledged: Vec<u128> = Vec::new();
        let mut lost: Vec<u128> = Vec::new();
        let mut applied = 0u64;
        // The highest cheque acknowledged, by peer and direction.
        let mut held: std::collections::HashMap<(usize, bool), u64> = Default::default();
        let accounts = |i: usize| if i < 3 { USERS[i] } else { "node/revenue" };
        for op in ops {
            let t = match op {
                Op::Grant(u, a) => Some(Transfer { id: next_id, debit: "node/issuance".into(), credit: USERS[u].into(), amount: a, kind: Kind::Posted, code: 9, paid_until_ms: None, bytes: 0, count: 0 }),
                Op::Pay(u, v, a) => Some(Transfer { id: next_id, debit: USERS[u].into(), credit: accounts(v).into(), amount: a, kind: Kind::Posted, code: 1, paid_until_ms: None, bytes: 0, count: 0 }),
                Op::Pending(u, a, t) => Some(Transfer { id: next_id, debit: USERS[u].into(), credit: "node/revenue".into(), amount: a, kind: Kind::Pending { timeout_ms: now + t }, code: 2, paid_until_ms: None, bytes: 0, count: 0 }),
                Op::Resolve(i, post) => pendings.get(i % pendings.len().max(1)).map(|p| Transfer {
                    id: next_id, kind: if post { Kind::Post { pending: p.id } } else { Kind::Void { pending: p.id } }, ..p.clone()
                }),
                Op::Repeat(i) => sent.get(i % sent.len().max(1)).cloned(),
                Op::Charges(u, amounts) => {
                    batch.push(Change::Charges(Charges { id: next_id, debit: USERS[u].into(), credit: "node/revenue".into(), code: 1, items: amounts.into_iter().map(|a| (a, 1)).collect() }));
                    next_id += 1;
                    None
                }
                Op::Cheque(p, inbound, cumulative) => {
                    batch.push(cheque(next_id, p, inbound, cumulative));
                    next_id += 1;
                    None
                }
                Op::Tick(ms) => { now += ms; None }
                Op::Crash => {
                    ledger.apply_uncommitted(&batch, now).unwrap();
                    lost.extend(batch.drain(..).filter_map(|c| match c { Change::Transfer(t) => Some(t.id), Change::Charges(c) => Some(c.id), Change::Cheque(c) => Some(c.id), Change::Open { .. } => None }));
                    drop(ledger);
                    ledger = Ledger::open(&path).unwrap();
                    None
                }
                Op::Commit => {
                    let results = ledger.apply(&batch, now).unwrap();
                    for (c, r) in batch.drain(..).zip(results) {
                        match (c, r) {
                            (Change::Transfer(t), Ok(Done::Applied)) => {
                                acknowledged.push(t.id);
                                applied += 1;
                            }
                            (Change::Charges(c), Ok(Done::Charged(items))) if items.iter().any(Result::is_ok) => {
                                acknowledged.push(c.id);
                                applied += 1;
                            }
                            (Change::Cheque(c), r) => {
                                let p = PEERS.iter().position(|x| *x == c.peer).unwrap();
                                let before = held.get(&(p, c.inbound)).copied().unwrap_or(0);
                                if c.cumulative > before {
                                    // Above the one held: kept, the increase credited.
                                    prop_assert_eq!(r, Ok(Done::Cheque { credited: c.cumulative - before }));
                                    held.insert((p, c.inbound), c.cumulative);
                                    acknowledged.push(c.id);
                                    applied += 1;
                                } else {
                                    prop_assert_eq!(r, Err(Refusal::StaleCheque { held: before }));
                                }
                            }
                            _ => {}
                        }
                    }
                    let audit = ledger.audit(now).unwrap();
                    prop_assert!(audit.holds(), "{audit:?}");
                    prop_assert_eq!(audit.transfers, applied);
                    for (p, peer) in PEERS.iter().enumerate() {
                        for inbound in [true, false] {
                            let kept = ledger.cheque(peer, inbound).unwrap().map(|c| c.0);
                            prop_assert_eq!(kept, held.get(&(p, inbound)).copied());
                        }
                    }
                    None
                }
            };
            if let Some(t) = t {
                if t.id == next_id {
                    next_id += 1;
                }
                if matches!(t.kind, Kind::Pending { .. }) {
                    pendings.push(t.clone());
                }
                sent.push(t.clone());
                batch.push(Change::Transfer(t));
            }
        }
        for id in &acknowledged {
            prop_assert!(ledger.transfer(*id).unwrap().is_some());
        }
        for id in &lost {
            // A lost id may have been sent again later and acknowledged then.
            if !acknowledged.contains(id) {
                prop_assert!(ledger.transfer(*id).unwrap().is_none());
            }
        }
        let audit = ledger.audit(now).unwrap();
        prop_assert_eq!(audit.transfers, applied);
    }
}
