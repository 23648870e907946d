use ron_auth::Holder;
use ron_kernel::Config;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::PaymentSection;

fn payment(sets: &[(&str, i64)]) -> Payment {
    let mut b = Config::builder().register::<PaymentSection>();
    for (k, v) in sets {
        b = b.set(k, *v);
    }
    Payment::new(Ledger::in_memory().unwrap(), b.build().unwrap())
}

async fn with_service<T>(p: &Payment, f: impl std::future::Future<Output = T>) -> T {
    let stop = CancellationToken::new();
    let service = tokio::spawn(p.clone().run(stop.clone()));
    let out = f.await;
    stop.cancel();
    service.await.unwrap().unwrap();
    out
}

const ALICE: Holder = Holder::Key([7; 32]);

#[tokio::test]
async fn three_credits_pay_three_reads_and_the_fourth_is_refused() {
    let p = payment(&[("payment.per_request.get", 1)]);
    with_service(&p, async {
        p.grant(&ALICE.account(), 3).await.unwrap();
        for _ in 0..3 {
            let s = p
                .admit(Some(ALICE), None, Priced::Get, "/o/x", 1024)
                .await
                .unwrap();
            assert_eq!(s, Settlement::Charged(1));
        }
        let e = p
            .admit(Some(ALICE), None, Priced::Get, "/o/x", 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PaymentError::Required {
                    price: 1,
                    balance: 0
                }
            ),
            "{e}"
        );
        // The owner and anonymous readers are not charged.
        assert_eq!(
            p.admit(Some(Holder::Owner), None, Priced::Get, "/o/x", 1)
                .await
                .unwrap(),
            Settlement::Free
        );
        assert_eq!(
            p.admit(None, None, Priced::Get, "/o/x", 1).await.unwrap(),
            Settlement::Free
        );
        // A key never granted anything has nothing.
        let e = p
            .admit(Some(Holder::Key([8; 32])), None, Priced::Get, "/o/x", 1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PaymentError::Required {
                    price: 1,
                    balance: 0
                }
            ),
            "{e}"
        );
    })
    .await;
    let a = p.balance(&ALICE.account()).unwrap().unwrap();
    assert_eq!(a.balance(), 0);
    assert!(p.ledger().audit(now_ms()).unwrap().holds());
    assert_eq!(p.history(&ALICE.account(), 10).unwrap().len(), 4);
}

#[tokio::test]
async fn per_mib_prices_and_upload_reservations() {
    let p = payment(&[
        ("payment.per_request.put", 2),
        ("payment.per_mib.put", 1),
        ("payment.per_mib.get", 1),
    ]);
    with_service(&p, async {
        p.grant(&ALICE.account(), 10).await.unwrap();
        // 3 MiB and a byte: 4 MiB started.
        assert_eq!(
            p.admit(Some(ALICE), None, Priced::Get, "/o/x", (3 << 20) + 1)
                .await
                .unwrap(),
            Settlement::Charged(4)
        );
        // An upload announcing 1 MiB reserves 3; a dropped one gives them back.
        let r = p.reserve(Some(ALICE), Some(1 << 20)).await.unwrap();
        assert_eq!(p.balance(&ALICE.account()).unwrap().unwrap().available(), 3);
        drop(r);
        for _ in 0..100 {
            if p.balance(&ALICE.account()).unwrap().unwrap().available() == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.balance(&ALICE.account()).unwrap().unwrap().available(), 6);
        // An upload without a size reserves as it grows, and is refused past the credits.
        let mut r = p.reserve(Some(ALICE), None).await.unwrap();
        r.grow(1).await.unwrap();
        r.grow(3 << 20).await.unwrap();
        let e = r.grow((4 << 20) + 1).await.unwrap_err();
        assert!(
            matches!(
                e,
                PaymentError::Required {
                    price: 2,
                    balance: 1
                }
            ),
            "{e}"
        );
        assert_eq!(r.post(4 << 20).await.unwrap(), 5);
    })
    .await;
    let a = p.balance(&ALICE.account()).unwrap().unwrap();
    assert_eq!((a.balance(), a.debits_pending), (1, 0));
    assert!(p.ledger().audit(now_ms()).unwrap().holds());
}

#[tokio::test]
async fn a_flat_period_is_paid_once() {
    let mut b = Config::builder().register::<PaymentSection>();
    b = b
        .set("payment.flat.credits", 5)
        .set("payment.flat.period_s", 3600);
    let p = Payment::new(Ledger::in_memory().unwrap(), b.build().unwrap());
    with_service(&p, async {
        p.grant(&ALICE.account(), 7).await.unwrap();
        let paid = futures_join(&p).await;
        assert_eq!(
            paid.iter()
                .filter(|s| **s == Settlement::Charged(5))
                .count(),
            1,
            "{paid:?}"
        );
    })
    .await;
    assert_eq!(p.balance(&ALICE.account()).unwrap().unwrap().balance(), 2);
}

async fn futures_join(p: &Payment) -> Vec<Settlement> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            p.admit(Some(ALICE), None, Priced::Get, "/o/x", 1)
                .await
                .unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn anonymous_reads_need_work_when_asked() {
    let mut b = Config::builder().register::<PaymentSection>();
    b = b.set("payment.anonymous", "pow").set("payment.pow_bits", 8);
    let p = Payment::new(Ledger::in_memory().unwrap(), b.build().unwrap());
    let e = p
        .admit(None, None, Priced::Get, "/o/x", 10)
        .await
        .unwrap_err();
    let PaymentError::Pow { challenge, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(challenge.bits, 8);
    let mut c = [0u8; 32];
    hex::decode_to_slice(&challenge.challenge, &mut c).unwrap();
    let answer = ron_proto::pow::answer(&c, ron_proto::pow::solve(&c, 8, u64::MAX).unwrap());
    assert_eq!(
        p.admit(None, Some(&answer), Priced::Get, "/o/x", 10)
            .await
            .unwrap(),
        Settlement::Worked
    );
    let e = p
        .admit(None, Some(&answer), Priced::Get, "/o/x", 10)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("that proof of work was used already"),
        "{e}"
    );
    // Large objects and uploads are not asked for work.
    assert_eq!(
        p.admit(None, None, Priced::Get, "/o/x", 2 << 20)
            .await
            .unwrap(),
        Settlement::Free
    );
}

#[tokio::test]
async fn charges_admitted_ahead_of_the_ledger_never_overdraw() {
    let mut b = Config::builder().register::<PaymentSection>();
    b = b
        .set("payment.per_request.get", 1)
        .set("payment.durable_charges", false);
    let p = Payment::new(Ledger::in_memory().unwrap(), b.build().unwrap());
    with_service(&p, async {
        p.grant(&ALICE.account(), 3).await.unwrap();
        // Five reads at once: three admitted before any reaches the ledger, two refused.
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            outcomes.push(p.admit(Some(ALICE), None, Priced::Get, "/o/x", 10).await);
        }
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| matches!(o, Ok(Settlement::Charged(1))))
                .count(),
            3
        );
        assert!(matches!(
            outcomes[4],
            Err(PaymentError::Required {
                price: 1,
                balance: 0
            })
        ));
        for _ in 0..200 {
            if p.balance(&ALICE.account()).unwrap().unwrap().balance() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let a = p.balance(&ALICE.account()).unwrap().unwrap();
    assert_eq!(a.balance(), 0);
    assert!(lock(&p.inner.ahead).values().all(|a| a.queued == 0));
    assert!(p.ledger().audit(now_ms()).unwrap().holds());
}

/// Two nodes' payment services: `b` receives ranges from `a`, pays with cheques once it owes
/// 16 credits, and `a` cashes them; a forged, a replayed and a lower cheque are refused.
#[tokio::test]
async fn peers_pay_with_cheques_and_forged_or_stale_ones_are_refused() {
    use ron_proto::oap::settle::{Cheque, signed_bytes};
    let (a, b) = (payment(&[]), payment(&[]));
    let (ka, kb) = (
        libp2p_identity::Keypair::generate_ed25519(),
        libp2p_identity::Keypair::generate_ed25519(),
    );
    a.set_identity(&ka);
    b.set_identity(&kb);
    let (pa, pb) = (ka.public().to_peer_id(), kb.public().to_peer_id());
    let stop = CancellationToken::new();
    let services = [
        tokio::spawn(a.clone().run(stop.clone())),
        tokio::spawn(b.clone().run(stop.clone())),
    ];
    const RANGE: u64 = 512 * 1024;
    let mut cheques = Vec::new();
    for _ in 0..80 {
        assert_eq!(a.peer_may_take(&pb), Ok(()));
        a.peer_served(&pb, RANGE);
        if b.peer_received(&pa, RANGE) {
            let cheque = b.peer_cheque(&pa).await.unwrap().unwrap();
            let cashed = a.cash(&pb, &cheque).await.unwrap();
            assert_eq!(cashed.cumulative, cheque.cumulative);
            b.peer_answered(&pa);
            cheques.push(cheque);
        }
    }
    // 40 MiB at 1 credit per MiB, paid at 16 owed: two cheques, cumulative 16 and 32.
    let sums: Vec<u64> = cheques.iter().map(|c| c.cumulative).collect();
    assert_eq!(sums, [16, 32]);
    assert_eq!(a.peer_balance(&pb), -8);
    assert_eq!(b.peer_balance(&pa), 8);

    // A peer owing the limit (64) is refused until it pays.
    for _ in 0..112 {
        a.peer_served(&pb, RANGE);
    }
    assert_eq!(a.peer_may_take(&pb), Err(64));

    // Forged: the signature, the issuer (not the sender), the beneficiary.
    let last = cheques[1].clone();
    let mut bad_sig = Cheque {
        cumulative: 100,
        ..last.clone()
    };
    assert!(matches!(
        a.cash(&pb, &bad_sig).await,
        Err(crate::ChequeError::Forged(_))
    ));
    let other = libp2p_identity::Keypair::generate_ed25519();
    let edo = other.clone().try_into_ed25519().unwrap();
    let signed = signed_bytes(&edo.public().to_bytes(), &last.beneficiary, 100);
    bad_sig.issuer = edo.public().to_bytes();
    bad_sig.signature.copy_from_slice(&edo.sign(&signed));
    assert!(matches!(
        a.cash(&pb, &bad_sig).await,
        Err(crate::ChequeError::Forged("it is not the sending peer's"))
    ));
    assert!(matches!(
        b.cash(&other.public().to_peer_id(), &bad_sig).await,
        Err(crate::ChequeError::Forged(
            "it is not made out to this node"
        ))
    ));
    // Replayed, and lower: refused, nothing credited.
    for stale in [&cheques[1], &cheques[0]] {
        assert!(matches!(
            a.cash(&pb, stale).await,
            Err(crate::ChequeError::Stale { held: 32, .. })
        ));
    }
    assert_eq!(a.peer_may_take(&pb), Err(64));
    // A good one settles it.
    let cheque = {
        // b owes what it received: 40 + 56 MiB, less 32 paid.
        for _ in 0..112 {
            b.peer_received(&pa, RANGE);
        }
        b.peer_cheque(&pa).await.unwrap().unwrap()
    };
    assert_eq!(cheque.cumulative, 96);
    assert_eq!(a.cash(&pb, &cheque).await.unwrap().credited, 64);
    assert_eq!(a.peer_may_take(&pb), Ok(()));
    let m = a.metrics();
    assert_eq!(
        (
            m.cheques_cashed.get(),
            m.cheques_forged.get(),
            m.cheques_stale.get()
        ),
        (3, 2, 2)
    );

    // Committed with the next tick: the ledgers agree and each is balanced.
    stop.cancel();
    for s in services {
        s.await.unwrap().unwrap();
    }
    let la = a
        .ledger()
        .account(&crate::peer_account(&pb))
        .unwrap()
        .unwrap();
    let lb = b
        .ledger()
        .account(&crate::peer_account(&pa))
        .unwrap()
        .unwrap();
    assert_eq!((la.balance(), lb.balance()), (0, 0));
    assert_eq!(
        a.ledger()
            .cheque(&crate::peer_account(&pb), true)
            .unwrap()
            .unwrap()
            .0,
        96
    );
    assert!(a.ledger().audit(now_ms()).unwrap().holds());
    assert!(b.ledger().audit(now_ms()).unwrap().holds());
}

#[tokio::test]
async fn the_internal_settlement_takes_owner_grants_only() {
    use crate::settlement::Proof;
    let p = payment(&[]);
    assert_eq!(p.settlement(), "internal");
    with_service(&p, async {
        p.deposit(&ALICE.account(), 5, Proof::OwnerGrant)
            .await
            .unwrap();
        let e = p
            .deposit(&ALICE.account(), 5, Proof::External(b"lnbc1...".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(e, PaymentError::Unsettled(_)), "{e}");
        assert_eq!(p.balance(&ALICE.account()).unwrap().unwrap().balance(), 5);
    })
    .await;
}
