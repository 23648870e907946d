//! The provider-lookup policy, as plain code: when a lookup is hedged (the running p95 of
//! recent lookups, bounded), whom a hedge asks, and when a lookup made of several parts (the
//! Kademlia query and each hedge question) has its answer. No swarm, no clock: the actor
//! (`actor/lookups.rs`) feeds it durations and answers, and the tests below drive it alone.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use libp2p::PeerId;

use crate::node::DhtError;

/// Peers a hedge asks directly.
pub(crate) const HEDGE_PEERS: usize = 3;
/// Kademlia's parallelism: the closest peers a lookup asks first; a hedge asks others.
pub(crate) const ALPHA: usize = 3;
/// Lookup latencies the running p95 is taken over.
const SAMPLES: usize = 128;
/// Samples needed before the p95 replaces [`HEDGE_DEFAULT`].
const MIN_SAMPLES: usize = 16;
/// The hedge delay before there are enough samples, and its bounds.
const HEDGE_DEFAULT: Duration = Duration::from_millis(250);
const HEDGE_MIN: Duration = Duration::from_millis(25);
const HEDGE_MAX: Duration = Duration::from_secs(2);

/// Recent lookup latencies, and the hedge delay they give.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    samples: VecDeque<Duration>,
}

impl Latencies {
    /// Records how long a lookup took; the oldest of [`SAMPLES`] is forgotten.
    pub(crate) fn record(&mut self, took: Duration) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(took);
    }

    /// How long a lookup runs before it is hedged: the p95 of the recent latencies, within
    /// [`HEDGE_MIN`]..=[`HEDGE_MAX`]; [`HEDGE_DEFAULT`] until there are enough of them.
    pub(crate) fn hedge_delay(&self) -> Duration {
        if self.samples.len() < MIN_SAMPLES {
            return HEDGE_DEFAULT;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let p95 = sorted[(sorted.len() * 95).div_ceil(100) - 1];
        p95.clamp(HEDGE_MIN, HEDGE_MAX)
    }
}

/// Whom a hedge asks: up to [`HEDGE_PEERS`] of the `connected` peers other than the
/// `closest` to the key (whom the query asked first); in a network so small that every
/// connected peer is among the closest, those.
pub(crate) fn hedge_targets(connected: &[PeerId], closest: &HashSet<PeerId>) -> Vec<PeerId> {
    let others: Vec<PeerId> = connected
        .iter()
        .filter(|p| !closest.contains(p))
        .take(HEDGE_PEERS)
        .copied()
        .collect();
    if others.is_empty() {
        connected.iter().take(HEDGE_PEERS).copied().collect()
    } else {
        others
    }
}

/// What a lookup does after one of its parts ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The lookup has its answer: providers other than this node (none when no part found
    /// any), or a timeout when every part ended without providers and one timed out.
    Answer(Result<Vec<PeerId>, DhtError>),
    /// Other parts are still running.
    Wait,
}

/// The parts of one lookup still running, and whether one of those that ended timed out.
#[derive(Debug)]
pub(crate) struct Parts {
    open: usize,
    timed_out: bool,
}

impl Default for Parts {
    /// A lookup of one part: its Kademlia query.
    fn default() -> Self {
        Self {
            open: 1,
            timed_out: false,
        }
    }
}

impl Parts {
    /// A hedge added `questions` parts.
    pub(crate) fn hedged(&mut self, questions: usize) {
        self.open += questions;
    }

    /// One part ended having `found` these providers (`me` is this node: its own record
    /// answers nothing). `query` says whether the part was the Kademlia query, which may
    /// report this node's own record before it has asked anyone and then goes on.
    pub(crate) fn end(
        &mut self,
        found: Result<HashSet<PeerId>, DhtError>,
        query: bool,
        me: PeerId,
    ) -> Step {
        match found {
            Ok(providers) if providers.iter().any(|p| *p != me) => {
                return Step::Answer(Ok(providers.into_iter().filter(|p| *p != me).collect()));
            }
            Ok(providers) if query && !providers.is_empty() => return Step::Wait,
            Ok(_) => {}
            Err(DhtError::Timeout) => self.timed_out = true,
            Err(_) => {}
        }
        self.open = self.open.saturating_sub(1);
        if self.open > 0 {
            return Step::Wait;
        }
        Step::Answer(if self.timed_out {
            Err(DhtError::Timeout)
        } else {
            Ok(Vec::new())
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_hedge_delay_is_the_default_until_enough_samples_then_their_bounded_p95() {
        let mut l = Latencies::default();
        for _ in 0..MIN_SAMPLES - 1 {
            l.record(ms(40));
        }
        assert_eq!(l.hedge_delay(), HEDGE_DEFAULT);
        l.record(ms(40));
        assert_eq!(l.hedge_delay(), ms(40));
        // 100 samples 1..=100 ms: the p95 is the 95th.
        let mut l = Latencies::default();
        for n in 1..=100 {
            l.record(ms(n));
        }
        assert_eq!(l.hedge_delay(), ms(95));
        // Bounded both ways.
        let mut fast = Latencies::default();
        let mut slow = Latencies::default();
        for _ in 0..MIN_SAMPLES {
            fast.record(ms(1));
            slow.record(Duration::from_secs(30));
        }
        assert_eq!(fast.hedge_delay(), HEDGE_MIN);
        assert_eq!(slow.hedge_delay(), HEDGE_MAX);
    }

    #[test]
    fn the_delay_follows_the_recent_samples_only() {
        let mut l = Latencies::default();
        for _ in 0..SAMPLES {
            l.record(Duration::from_secs(1));
        }
        assert_eq!(l.hedge_delay(), Duration::from_secs(1));
        // The network got faster: once the slow samples have left the window, so has their
        // effect.
        for _ in 0..SAMPLES {
            l.record(ms(50));
        }
        assert_eq!(l.hedge_delay(), ms(50));
    }

    #[test]
    fn a_hedge_asks_peers_the_query_did_not_ask_first() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let closest: HashSet<PeerId> = peers[..ALPHA].iter().copied().collect();
        let asked = hedge_targets(&peers, &closest);
        assert_eq!(asked.len(), HEDGE_PEERS);
        assert!(asked.iter().all(|p| !closest.contains(p)));
        // A network of the closest alone: ask them.
        assert_eq!(hedge_targets(&peers[..2], &closest), peers[..2].to_vec());
        assert!(hedge_targets(&[], &closest).is_empty());
    }

    #[test]
    fn the_query_finding_only_this_node_goes_on() {
        let me = PeerId::random();
        let other = PeerId::random();
        let mut parts = Parts::default();
        assert_eq!(parts.end(Ok([me].into()), true, me), Step::Wait);
        assert_eq!(
            parts.end(Ok([me, other].into()), true, me),
            Step::Answer(Ok(vec![other]))
        );
    }

    /// How a part ends, in the property test.
    #[derive(Debug, Clone, Copy)]
    enum End {
        Found,
        OnlyMe,
        Nothing,
        Timeout,
        Failed,
    }

    proptest! {
        /// Whatever order the parts end in: the lookup answers providers as soon as a part
        /// finds one other than this node, otherwise once every part ended (a timeout if one
        /// timed out, else none), and never answers this node itself.
        #[test]
        fn a_lookup_answers_at_the_first_provider_or_when_every_part_ended(
            hedges in 0usize..4,
            ends in proptest::collection::vec(
                prop_oneof![
                    Just(End::Found), Just(End::OnlyMe), Just(End::Nothing),
                    Just(End::Timeout), Just(End::Failed),
                ],
                5,
            ),
            query_at in 0usize..5,
        ) {
            let me = PeerId::random();
            let provider = PeerId::random();
            let mut parts = Parts::default();
            parts.hedged(hedges);
            let total = hedges + 1;
            let query_at = query_at % total;
            let mut ended = 0;
            let mut timed_out = false;
            for (i, end) in ends.iter().take(total).enumerate() {
                let query = i == query_at;
                let found = match end {
                    End::Found => Ok([me, provider].into()),
                    End::OnlyMe => Ok([me].into()),
                    End::Nothing => Ok(HashSet::new()),
                    End::Timeout => Err(DhtError::Timeout),
                    End::Failed => Err(DhtError::Peer("reset".into())),
                };
                // The query's own-record report is not its end: it reports again at its end.
                let counts = !(query && matches!(end, End::OnlyMe));
                timed_out |= matches!(end, End::Timeout);
                let step = parts.end(found, query, me);
                if matches!(end, End::Found) {
                    prop_assert_eq!(step, Step::Answer(Ok(vec![provider])));
                    return Ok(());
                }
                if counts {
                    ended += 1;
                }
                if ended == total {
                    let want = if timed_out { Err(DhtError::Timeout) } else { Ok(Vec::new()) };
                    prop_assert_eq!(step, Step::Answer(want));
                    return Ok(());
                }
                prop_assert_eq!(step, Step::Wait);
            }
        }
    }
}
