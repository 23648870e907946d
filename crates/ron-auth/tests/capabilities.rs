//! Capability tokens against the verifier: attenuation, audience, expiry, revocation,
//! tampering, key rotation, budgets and rates.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use ron_auth::token::{Caveats, Op, Rate, attenuate, inspect};
use ron_auth::{Auth, AuthSection, Denied, KeyRing, NodeIdentity, Request, public_text};

const T0: u64 = 1_790_000_000;
const DAY: u64 = 86_400;

fn node(section: &AuthSection) -> Auth {
    Auth::new(NodeIdentity::ephemeral(), KeyRing::in_memory(), section, T0).expect("auth starts")
}

fn at(secs: u64) -> u64 {
    secs * 1000
}

fn req(op: Op, path: &str) -> Request<'_> {
    Request { op, path }
}

const PATHS: [&str; 5] = [
    "/put",
    "/pin/b3:aa",
    "/pin/b3:bb",
    "/o/b3:aa",
    "/stat/b3:aa",
];

fn caveats_strategy() -> impl Strategy<Value = Caveats> {
    (
        proptest::option::of(0u64..4 * DAY),
        proptest::collection::btree_set(0..Op::ALL.len(), 0..4),
        proptest::option::of(prop::sample::select(vec![
            "/",
            "/p",
            "/pin/",
            "/pin/b3:a",
            "/put",
        ])),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(ttl, ops, prefix, audience_self)| Caveats {
            expires_at: ttl.map(|t| T0 + t),
            ops: ops.into_iter().map(|i| Op::ALL[i]).collect::<BTreeSet<_>>(),
            path_prefix: prefix.map(str::to_owned),
            // Filled in below: true = this node, false = some other node.
            audience: audience_self.map(|s| if s { "SELF" } else { "OTHER" }.to_owned()),
            ..Caveats::default()
        })
}

fn bind(mut c: Caveats, auth: &Auth) -> Caveats {
    if c.audience.as_deref() == Some("SELF") {
        c.audience = Some(auth.node_id().to_owned());
    } else if c.audience.is_some() {
        c.audience = Some("12D3KooWOtherNodeOtherNodeOtherNodeOtherNode".to_owned());
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the caveats, an attenuated token allows nothing its parent refuses.
    #[test]
    fn attenuation_never_widens(
        parent in caveats_strategy(),
        child in caveats_strategy(),
        probes in proptest::collection::vec((0..Op::ALL.len(), 0..PATHS.len(), 0u64..5 * DAY), 1..12),
    ) {
        let auth = node(&AuthSection::default());
        let parent_token = auth.mint(&bind(parent, &auth)).unwrap();
        let child = bind(child, &auth);
        let child_token = if child.is_empty() {
            parent_token.clone()
        } else {
            attenuate(&parent_token, &child).unwrap()
        };
        for (op, path, offset) in probes {
            let r = req(Op::ALL[op], PATHS[path]);
            let now = at(T0 + offset);
            let by_child = auth.authorize_at(now, Some(&child_token), &r).is_ok();
            let by_parent = auth.authorize_at(now, Some(&parent_token), &r).is_ok();
            prop_assert!(!by_child || by_parent, "child allowed {r:?} at +{offset}s, parent did not");
        }
    }

    /// The constraint fast path decides exactly as the Datalog evaluation does.
    #[test]
    fn the_fast_path_agrees_with_datalog(
        parent in caveats_strategy(),
        child in caveats_strategy(),
        probes in proptest::collection::vec((0..Op::ALL.len(), 0..PATHS.len(), 0u64..5 * DAY), 1..12),
    ) {
        let auth = node(&AuthSection::default());
        let parent_token = auth.mint(&bind(parent, &auth)).unwrap();
        let child = bind(child, &auth);
        let token = if child.is_empty() {
            parent_token
        } else {
            attenuate(&parent_token, &child).unwrap()
        };
        for (op, path, offset) in probes {
            let r = req(Op::ALL[op], PATHS[path]);
            let now = at(T0 + offset);
            auth.set_datalog_only(false);
            let fast = auth.authorize_at(now, Some(&token), &r).err().map(|d| d.kind());
            auth.set_datalog_only(true);
            let slow = auth.authorize_at(now, Some(&token), &r).err().map(|d| d.kind());
            prop_assert_eq!(fast, slow, "{:?} at +{}s", r, offset);
        }
    }

    /// A byte budget added by attenuation can only shrink what may be uploaded.
    #[test]
    fn attenuated_budgets_never_exceed_the_parent(parent in 1u64..10_000, child in 1u64..20_000) {
        let auth = node(&AuthSection::default());
        let p = auth.mint(&Caveats { max_bytes: Some(parent), ..Caveats::default() }).unwrap();
        let c = attenuate(&p, &Caveats { max_bytes: Some(child), ..Caveats::default() }).unwrap();
        let grant = auth.authorize_at(at(T0), Some(&c), &req(Op::Put, "/put")).unwrap();
        prop_assert_eq!(grant.remaining(), Some(parent.min(child)));
        prop_assert!(grant.charge(parent.min(child) + 1).is_err());
    }
}

#[test]
fn a_token_for_node_a_fails_on_node_b() {
    let a = node(&AuthSection::default());
    // B trusts A's signing key, so only the audience caveat stands in the way.
    let a_key = public_text(&a.ring().active().unwrap().key.public());
    let b = node(&AuthSection {
        trusted_roots: vec![a_key],
        ..AuthSection::default()
    });
    let for_a = a
        .mint(&Caveats {
            audience: Some(a.node_id().to_owned()),
            ..Caveats::default()
        })
        .unwrap();
    let put = req(Op::Put, "/put");
    assert!(a.authorize_at(at(T0), Some(&for_a), &put).is_ok());
    assert!(matches!(
        b.authorize_at(at(T0), Some(&for_a), &put),
        Err(Denied::Forbidden(_))
    ));
    // An unaudienced token of A's works on B (trusted root) but not on a third node.
    let any = a.mint(&Caveats::default()).unwrap();
    assert!(b.authorize_at(at(T0), Some(&any), &put).is_ok());
    let c = node(&AuthSection::default());
    assert!(matches!(
        c.authorize_at(at(T0), Some(&any), &put),
        Err(Denied::Unauthenticated(_))
    ));
}

#[test]
fn expired_revoked_tampered_and_missing_tokens_are_401() {
    let auth = node(&AuthSection::default());
    let put = req(Op::Put, "/put");
    let token = auth
        .mint(&Caveats {
            expires_at: Some(T0 + 3600),
            ..Caveats::default()
        })
        .unwrap();
    assert!(auth.authorize_at(at(T0 + 3599), Some(&token), &put).is_ok());
    let expired = auth.authorize_at(at(T0 + 3600), Some(&token), &put);
    assert!(matches!(expired, Err(Denied::Unauthenticated(ref m)) if m.contains("expired")));

    // Tampering: flip one character anywhere in the signed part.
    let mut bytes = token.clone().into_bytes();
    for i in [10, bytes.len() / 2, bytes.len() - 10] {
        let original = bytes[i];
        bytes[i] = if original == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            matches!(
                auth.authorize_at(at(T0), Some(&altered), &put),
                Err(Denied::Unauthenticated(_))
            ),
            "altered at {i}"
        );
        bytes[i] = original;
    }
    for junk in ["", "x", "Bearer", &"A".repeat(20_000)] {
        assert!(matches!(
            auth.authorize_at(at(T0), Some(junk), &put),
            Err(Denied::Unauthenticated(_))
        ));
    }
    assert!(matches!(
        auth.authorize_at(at(T0), None, &put),
        Err(Denied::Unauthenticated(_))
    ));

    // Revoking the parent revokes its attenuations; revoking a child leaves the parent.
    let child = attenuate(
        &token,
        &Caveats {
            ops: [Op::Put].into(),
            ..Caveats::default()
        },
    )
    .unwrap();
    let ids = inspect(&child).unwrap();
    let revoke = |id: &str| {
        auth.apply(&AuthSection {
            revoked: vec![id.to_owned()],
            ..AuthSection::default()
        })
    };
    revoke(&ids.blocks[1].revocation_id);
    assert!(auth.authorize_at(at(T0), Some(&token), &put).is_ok());
    assert!(matches!(
        auth.authorize_at(at(T0), Some(&child), &put),
        Err(Denied::Unauthenticated(ref m)) if m.contains("revoked")
    ));
    revoke(&ids.blocks[0].revocation_id);
    assert!(auth.authorize_at(at(T0), Some(&token), &put).is_err());
    revoke(&"0".repeat(128));
    assert!(auth.authorize_at(at(T0), Some(&child), &put).is_ok());
}

#[test]
fn a_retired_key_verifies_within_grace_and_not_after() {
    let auth = node(&AuthSection::default()); // 30 days max age, 7 days grace
    let put = req(Op::Put, "/put");
    let old = auth
        .mint(&Caveats {
            expires_at: Some(T0 + 60 * DAY),
            ..Caveats::default()
        })
        .unwrap();
    let rotated_at = T0 + 30 * DAY;
    assert!(auth.maintain(rotated_at).unwrap().rotated);
    let new = auth.mint(&Caveats::default()).unwrap();
    assert_ne!(
        inspect(&old).unwrap().root_key_id,
        inspect(&new).unwrap().root_key_id
    );
    assert!(
        auth.authorize_at(at(rotated_at + 7 * DAY - 1), Some(&old), &put)
            .is_ok()
    );
    assert!(matches!(
        auth.authorize_at(at(rotated_at + 7 * DAY), Some(&old), &put),
        Err(Denied::Unauthenticated(_))
    ));
    // After maintenance forgets the key, still refused; the new key's tokens work.
    assert_eq!(auth.maintain(rotated_at + 7 * DAY).unwrap().pruned, 1);
    assert!(
        auth.authorize_at(at(rotated_at + 8 * DAY), Some(&old), &put)
            .is_err()
    );
    assert!(
        auth.authorize_at(at(rotated_at + 8 * DAY), Some(&new), &put)
            .is_ok()
    );
}

#[test]
fn method_and_path_caveats_are_403() {
    let auth = node(&AuthSection::default());
    let token = auth
        .mint(&Caveats {
            ops: [Op::Pin].into(),
            path_prefix: Some("/pin/b3:aa".into()),
            ..Caveats::default()
        })
        .unwrap();
    assert!(
        auth.authorize_at(at(T0), Some(&token), &req(Op::Pin, "/pin/b3:aa11"))
            .is_ok()
    );
    for r in [
        req(Op::Put, "/put"),
        req(Op::Pin, "/pin/b3:bb"),
        req(Op::Unpin, "/pin/b3:aa"),
    ] {
        assert!(
            matches!(
                auth.authorize_at(at(T0), Some(&token), &r),
                Err(Denied::Forbidden(_))
            ),
            "{r:?}"
        );
    }
}

#[test]
fn budgets_are_shared_by_a_lineage_and_refundable() {
    let auth = node(&AuthSection::default());
    let put = req(Op::Put, "/put");
    let token = auth
        .mint(&Caveats {
            max_bytes: Some(1000),
            ..Caveats::default()
        })
        .unwrap();
    let g = auth.authorize_at(at(T0), Some(&token), &put).unwrap();
    g.charge(600).unwrap();
    // An attenuated copy draws on the same budget.
    let child = attenuate(
        &token,
        &Caveats {
            ops: [Op::Put].into(),
            ..Caveats::default()
        },
    )
    .unwrap();
    let g2 = auth.authorize_at(at(T0), Some(&child), &put).unwrap();
    assert_eq!(g2.remaining(), Some(400));
    assert!(matches!(g2.charge(401), Err(Denied::Forbidden(_))));
    g2.charge(400).unwrap();
    g.refund(100);
    assert_eq!(g2.remaining(), Some(100));
    // A separately minted token has its own budget.
    let other = auth
        .mint(&Caveats {
            max_bytes: Some(1000),
            ..Caveats::default()
        })
        .unwrap();
    let g3 = auth.authorize_at(at(T0), Some(&other), &put).unwrap();
    assert_eq!(g3.remaining(), Some(1000));
}

#[test]
fn rates_refuse_with_a_retry_hint_and_refill() {
    let auth = node(&AuthSection::default());
    let put = req(Op::Put, "/put");
    let token = auth
        .mint(&Caveats {
            rate: Some(Rate {
                requests: 2,
                per: Duration::from_secs(1),
            }),
            ..Caveats::default()
        })
        .unwrap();
    let t = at(T0);
    assert!(auth.authorize_at(t, Some(&token), &put).is_ok());
    assert!(auth.authorize_at(t, Some(&token), &put).is_ok());
    match auth.authorize_at(t, Some(&token), &put) {
        Err(Denied::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Duration::from_millis(500));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert!(auth.authorize_at(t + 499, Some(&token), &put).is_err());
    assert!(auth.authorize_at(t + 500, Some(&token), &put).is_ok());
    // A child with a looser rate is still held to the parent's.
    let child = attenuate(
        &token,
        &Caveats {
            rate: Some(Rate {
                requests: 100,
                per: Duration::from_secs(1),
            }),
            ..Caveats::default()
        },
    )
    .unwrap();
    assert!(matches!(
        auth.authorize_at(t + 500, Some(&child), &put),
        Err(Denied::RateLimited { .. })
    ));
}

#[test]
fn open_routes_need_no_token_until_config_says_so() {
    let auth = node(&AuthSection::default());
    let get = req(Op::Get, "/o/b3:aa");
    assert!(auth.authorize_at(at(T0), None, &get).is_ok());
    assert!(
        auth.authorize_at(at(T0), None, &req(Op::Put, "/put"))
            .is_err()
    );
    auth.apply(&AuthSection {
        anonymous_put: true,
        protect_reads: true,
        ..AuthSection::default()
    });
    assert!(
        auth.authorize_at(at(T0), None, &req(Op::Put, "/put"))
            .is_ok()
    );
    assert!(auth.authorize_at(at(T0), None, &get).is_err());
    let owner = auth.owner_token().unwrap();
    assert!(auth.authorize_at(at(T0), Some(&owner), &get).is_ok());
}
