//! The scheduler driven by simulated providers on a simulated clock: every transfer that has
//! an honest provider left ends with exactly the object, in order; one that has none ends
//! lost with a correct prefix handed on; the limits hold at every step.

use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;

use super::*;
use crate::verify::GROUP_BYTES;

/// How a simulated provider answers its n-th request (counted from 0).
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Always the range, verified.
    Honest,
    /// Dead from its n-th answer on.
    Dies(u8),
    /// Dead for its n-th answer only, then honest again (a connection replaced).
    Blinks(u8),
    /// Busy for its first n answers (ask again after the given milliseconds), then honest.
    Stalls(u8, u16),
    /// In its n-th answer, k good groups and then one that does not verify.
    Lies(u8, u8),
    /// Does not hold the object.
    Lacks,
}

impl Behaviour {
    /// Whether a provider behaving so ends up delivering whatever it is asked.
    fn recovers(self) -> bool {
        matches!(self, Self::Honest | Self::Blinks(_) | Self::Stalls(..))
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        Just(Behaviour::Honest),
        (0u8..40).prop_map(Behaviour::Dies),
        (0u8..40).prop_map(Behaviour::Blinks),
        (0u8..6, 1u16..2000).prop_map(|(n, ms)| Behaviour::Stalls(n, ms)),
        (0u8..40, 0u8..40).prop_map(|(n, k)| Behaviour::Lies(n, k)),
        Just(Behaviour::Lacks),
    ]
}

/// The answer a provider behaving as `b` gives to its `n`-th request, for `start..end` of
/// `object`.
fn answer(b: Behaviour, n: u32, object: &Bytes, start: u64, end: u64) -> Outcome {
    let groups = |from: u64, to: u64| -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let next = (at + GROUP_BYTES).min(to);
            out.push(object.slice(at as usize..next as usize));
            at = next;
        }
        out
    };
    let whole = || {
        Ok(Delivered {
            groups: groups(start, end),
            len: end - start,
            lie: None,
        })
    };
    match b {
        Behaviour::Honest => whole(),
        Behaviour::Dies(k) if n >= u32::from(k) => Err(Failed::Dead("gone".into())),
        Behaviour::Blinks(k) if n == u32::from(k) => Err(Failed::Dead("blinked".into())),
        Behaviour::Stalls(k, ms) if n < u32::from(k) => {
            Err(Failed::Busy(Duration::from_millis(ms.into())))
        }
        Behaviour::Lies(k, good) if n == u32::from(k) => {
            let cut = (start + u64::from(good) * GROUP_BYTES).min(end);
            Ok(Delivered {
                groups: groups(start, cut),
                len: cut - start,
                lie: Some("a group fails verification".into()),
            })
        }
        Behaviour::Lacks => Err(Failed::Missing("not held".into())),
        _ => whole(),
    }
}

/// How a simulated transfer ended.
#[derive(Debug)]
struct Run {
    /// The bytes handed on, in order.
    handed: Vec<u8>,
    lost: bool,
    /// Providers the verdicts put out of the fetch.
    out: HashSet<usize>,
}

/// Runs one transfer of `object` from providers behaving as `behaviours` (each answering
/// after its own latency), checking the scheduler's limits at every step.
fn simulate(object: &Bytes, behaviours: &[(Behaviour, u16)]) -> Run {
    let size = object.len() as u64;
    let peers: Vec<PeerId> = behaviours.iter().map(|_| PeerId::random()).collect();
    let tail_start = size.saturating_sub(1) / GROUP_BYTES * GROUP_BYTES;
    let tail = if size == 0 {
        Vec::new()
    } else {
        vec![object.slice(tail_start as usize..)]
    };
    let mut schedule = Schedule::new(size, peers.clone(), tail_start, tail);
    let start = Instant::now();
    let mut now = start;
    // (due, sequence) -> ask: answers arrive in the order of their due times.
    let mut pending: BTreeMap<(Instant, u64), Ask> = BTreeMap::new();
    let mut seq = 0u64;
    let mut asked = vec![0u32; behaviours.len()];
    let mut per_peer = vec![0usize; behaviours.len()];
    let mut paused_until: Vec<Option<Instant>> = vec![None; behaviours.len()];
    let mut dead_once = vec![false; behaviours.len()];
    let mut out = HashSet::new();
    let mut handed = Vec::new();
    let mut flying: BTreeSet<(u64, u64)> = BTreeSet::new();
    for _step in 0..1_000_000 {
        while let Some(ask) = schedule.ask(now) {
            let p = ask.provider;
            assert_eq!(ask.peer, peers[p]);
            assert!(
                !out.contains(&p),
                "provider {p} was asked after it left the fetch"
            );
            assert!(
                paused_until[p].is_none_or(|t| t <= now),
                "provider {p} was asked while paused"
            );
            assert!(ask.start < ask.end && ask.end - ask.start <= MAX_RANGE);
            assert_eq!(ask.start % GROUP_BYTES, 0);
            assert!(
                ask.start >= schedule.next_byte(),
                "asked for bytes handed on"
            );
            assert!(
                ask.start < schedule.next_byte() + WINDOW,
                "asked past the window"
            );
            assert!(
                flying
                    .range(..(ask.end, 0))
                    .next_back()
                    .is_none_or(|(_, e)| *e <= ask.start),
                "asked for {}..{} twice at once",
                ask.start,
                ask.end
            );
            flying.insert((ask.start, ask.end));
            per_peer[p] += 1;
            assert!(per_peer[p] <= PER_PEER);
            assert!(schedule.in_flight() <= INFLIGHT);
            let due = now + Duration::from_millis(u64::from(behaviours[p].1));
            pending.insert((due, seq), ask);
            seq += 1;
        }
        for group in schedule.take_ready() {
            let at = handed.len();
            assert_eq!(
                &group[..],
                &object[at..at + group.len()],
                "a wrong byte was handed on"
            );
            handed.extend_from_slice(&group);
        }
        assert_eq!(handed.len() as u64, schedule.next_byte());
        if schedule.done() {
            return Run {
                handed,
                lost: false,
                out,
            };
        }
        let Some(((due, _), ask)) = pending.pop_first() else {
            match schedule.idle(now) {
                Idle::Lost => {
                    return Run {
                        handed,
                        lost: true,
                        out,
                    };
                }
                Idle::WakeAt(t) => {
                    assert!(t > now, "an idle schedule must wake later, not now");
                    now = t;
                    continue;
                }
            }
        };
        now = now.max(due);
        let p = ask.provider;
        per_peer[p] -= 1;
        flying.remove(&(ask.start, ask.end));
        let outcome = answer(behaviours[p].0, asked[p], object, ask.start, ask.end);
        asked[p] += 1;
        let busy = match &outcome {
            Err(Failed::Busy(wait)) => Some(*wait),
            _ => None,
        };
        match schedule.settle(ask, outcome, now) {
            Verdict::Good | Verdict::Known => {}
            Verdict::Busy => paused_until[p] = busy.map(|wait| now + wait),
            Verdict::Fault("dead", _) if !dead_once[p] => {
                // Dead once: paused, then asked again.
                dead_once[p] = true;
                paused_until[p] = Some(now + DEAD_PAUSE);
            }
            Verdict::Fault(..) => {
                out.insert(p);
            }
        }
    }
    panic!("the transfer did not end within a million steps");
}

/// The first `len` bytes of one pattern (at most 12 MiB), made once.
fn object(len: usize) -> Bytes {
    static PATTERN: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    PATTERN
        .get_or_init(|| (0..12usize << 20).map(|i| (i * 31 % 251) as u8).collect())
        .slice(..len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// With at least one provider that ends up delivering, the transfer ends with exactly
    /// the object, whatever the others do.
    #[test]
    fn a_transfer_with_an_honest_provider_left_delivers_the_object(
        len in 0usize..(12 << 20),
        others in proptest::collection::vec((behaviour(), 1u16..400), 0..6),
        good in (0u8..3, 1u16..400),
        at in any::<prop::sample::Index>(),
    ) {
        let good = match good.0 {
            0 => (Behaviour::Honest, good.1),
            1 => (Behaviour::Blinks(3), good.1),
            _ => (Behaviour::Stalls(2, 300), good.1),
        };
        let mut behaviours = others;
        behaviours.insert(at.index(behaviours.len() + 1), good);
        let object = object(len);
        let run = simulate(&object, &behaviours);
        prop_assert!(!run.lost);
        prop_assert_eq!(run.handed.len(), len);
        for (i, (b, _)) in behaviours.iter().enumerate() {
            if b.recovers() {
                prop_assert!(!run.out.contains(&i), "provider {} ({:?}) was put out", i, b);
            }
        }
    }

    /// With no provider that ends up delivering, the transfer ends lost (never hangs), having
    /// handed on only correct bytes.
    #[test]
    fn a_transfer_without_an_honest_provider_ends_lost(
        len in (1usize << 20)..(12 << 20),
        behaviours in proptest::collection::vec(
            (prop_oneof![
                (0u8..3).prop_map(Behaviour::Dies),
                (0u8..3, 0u8..40).prop_map(|(n, k)| Behaviour::Lies(n, k)),
                Just(Behaviour::Lacks),
            ], 1u16..400),
            1..6,
        ),
    ) {
        let object = object(len);
        let run = simulate(&object, &behaviours);
        // A provider that fails late may have delivered everything first.
        prop_assert!(run.lost || run.handed.len() == len);
        if run.lost {
            prop_assert_eq!(run.out.len(), behaviours.len());
        }
    }
}

fn peers(n: usize) -> Vec<PeerId> {
    (0..n).map(|_| PeerId::random()).collect()
}

/// A schedule of `size` bytes whose tail group is already verified.
fn schedule(size: u64, providers: usize) -> (Schedule, Bytes) {
    let object = Bytes::from(vec![7u8; size as usize]);
    let tail_start = (size - 1) / GROUP_BYTES * GROUP_BYTES;
    let tail = vec![object.slice(tail_start as usize..)];
    (
        Schedule::new(size, peers(providers), tail_start, tail),
        object,
    )
}

#[test]
fn a_liar_is_never_asked_again_and_its_good_groups_are_kept() {
    let now = Instant::now();
    let (mut s, object) = schedule(4 * MAX_RANGE, 2);
    let first = s.ask(now).unwrap();
    assert_eq!(first.provider, 0);
    let lie = answer(Behaviour::Lies(0, 3), 0, &object, first.start, first.end);
    assert!(matches!(
        s.settle(first, lie, now),
        Verdict::Fault("lie", _)
    ));
    assert_eq!(
        s.take_ready().len(),
        3,
        "the groups before the lie are kept"
    );
    while let Some(ask) = s.ask(now) {
        assert_eq!(ask.provider, 1, "the liar was asked again");
        if ask.start == 3 * GROUP_BYTES {
            break;
        }
    }
}

#[test]
fn a_busy_provider_is_asked_again_only_after_its_pause() {
    let now = Instant::now();
    let (mut s, _) = schedule(2 * MAX_RANGE, 1);
    let ask = s.ask(now).unwrap();
    let wait = Duration::from_millis(700);
    assert_eq!(s.settle(ask, Err(Failed::Busy(wait)), now), Verdict::Busy);
    assert_eq!(s.ask(now + wait / 2), None);
    assert_eq!(s.idle(now), Idle::WakeAt(now + wait));
    let again = s.ask(now + wait).unwrap();
    assert_eq!((again.start, again.end), (ask.start, ask.end));
}

#[test]
fn a_provider_dead_once_is_paused_then_asked_again_and_out_the_second_time() {
    let now = Instant::now();
    let (mut s, _) = schedule(4 * MAX_RANGE, 1);
    let a = s.ask(now).unwrap();
    let b = s.ask(now).unwrap();
    assert!(matches!(
        s.settle(a, Err(Failed::Dead("reset".into())), now),
        Verdict::Fault("dead", _)
    ));
    // Sent before the death: tells nothing new.
    assert_eq!(
        s.settle(b, Err(Failed::Dead("reset".into())), now),
        Verdict::Known
    );
    assert_eq!(s.ask(now), None);
    assert_eq!(s.idle(now), Idle::WakeAt(now + DEAD_PAUSE));
    let c = s.ask(now + DEAD_PAUSE).unwrap();
    assert_eq!(c.deaths, 1);
    assert!(matches!(
        s.settle(c, Err(Failed::Dead("reset".into())), now + DEAD_PAUSE),
        Verdict::Fault("dead", _)
    ));
    assert_eq!(s.ask(now + DEAD_PAUSE * 3), None);
    assert_eq!(s.idle(now + DEAD_PAUSE * 3), Idle::Lost);
}

#[test]
fn requests_stay_within_the_window_past_the_next_byte() {
    let now = Instant::now();
    // Many providers, a large object, and the first range never answered: later answers wait
    // in memory, and nothing is asked past the window however many providers are free.
    let (mut s, object) = schedule(2 * WINDOW, 8);
    let first = s.ask(now).unwrap();
    assert_eq!(first.start, 0);
    loop {
        let mut batch = Vec::new();
        while let Some(ask) = s.ask(now) {
            assert!(
                ask.end <= WINDOW,
                "asked {}..{} past the window",
                ask.start,
                ask.end
            );
            batch.push(ask);
        }
        if batch.is_empty() {
            break;
        }
        assert!(s.in_flight() <= INFLIGHT);
        for ask in batch {
            let outcome = answer(Behaviour::Honest, 0, &object, ask.start, ask.end);
            assert_eq!(s.settle(ask, outcome, now), Verdict::Good);
        }
    }
    assert_eq!(s.in_flight(), 1);
    assert!(
        s.take_ready().is_empty(),
        "nothing may be handed on before byte 0"
    );
    let outcome = answer(Behaviour::Honest, 0, &object, first.start, first.end);
    s.settle(first, outcome, now);
    assert_eq!(s.take_ready().len() as u64, WINDOW / GROUP_BYTES);
    assert!(s.ask(now).is_some_and(|ask| ask.start == WINDOW));
}
