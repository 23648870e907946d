//! The range scheduler of one transfer, as plain code: which range to ask of which provider
//! next, what each answer does to the books, when to wake, and when the transfer is whole or
//! lost. It takes the time as an argument and does no I/O; [`DhtHandle::transfer`] moves the
//! bytes and timers around it. The tests at the bottom drive it with simulated providers that
//! stall, die, lie and recover.
//!
//! [`DhtHandle::transfer`]: crate::DhtHandle::transfer

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;

use crate::codec::MAX_RANGE;

/// Range requests in flight for one fetch, over all its providers.
pub const INFLIGHT: usize = 24;
/// Range requests in flight to one provider for one fetch.
pub const PER_PEER: usize = 16;
/// How far past the next byte to hand on a fetch may request: bounds what waits in memory
/// for an earlier range.
pub(crate) const WINDOW: u64 = 2 * INFLIGHT as u64 * MAX_RANGE;
/// A provider whose requests fail as dead (its connection dropped, a dial failed) is asked
/// again once, after this pause, before it leaves the fetch: a connection can close while the
/// peer lives (a relayed one replaced by a direct one, a NAT binding expiring).
pub(crate) const DEAD_PAUSE: Duration = Duration::from_secs(1);
/// How long to wait, when nothing is in flight and every provider left is paused with no
/// known end, before looking again.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// One range to ask a provider for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ask {
    /// The provider's index in the schedule.
    pub(crate) provider: usize,
    /// Its peer id.
    pub(crate) peer: PeerId,
    /// The provider's death count when asked: a failure of a request sent before its last
    /// death tells nothing new.
    pub(crate) deaths: u32,
    /// The range, `start..end`.
    pub(crate) start: u64,
    /// Its end.
    pub(crate) end: u64,
}

/// Groups that verified, from the start of the range asked for.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// The groups, in order.
    pub(crate) groups: Vec<Bytes>,
    /// Their bytes.
    pub(crate) len: u64,
    /// Why the rest of the range did not verify, if it did not: the provider sent bytes that
    /// are not the object.
    pub(crate) lie: Option<String>,
}

/// Why an answer brought nothing to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The provider (or this node's own network actor) is busy: ask again after this long.
    Busy(Duration),
    /// This node's network actor stopped: the transfer ends.
    Stopped,
    /// The provider does not hold the object.
    Missing(String),
    /// The provider is unreachable, or failed.
    Dead(String),
    /// The provider answered with something other than the range asked for.
    Lie(String),
}

impl Failed {
    /// The fault's name in logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Busy(_) => "busy",
            Self::Stopped => "stopped",
            Self::Missing(_) => "missing",
            Self::Dead(_) => "dead",
            Self::Lie(_) => "lie",
        }
    }

    /// What happened, for the fault log.
    pub(crate) fn into_why(self) -> String {
        match self {
            Self::Busy(wait) => format!("busy; ask again in {} ms", wait.as_millis()),
            Self::Stopped => "this node's network actor stopped".into(),
            Self::Missing(why) | Self::Dead(why) | Self::Lie(why) => why,
        }
    }
}

/// What came of one [`Ask`], as checked by the caller.
pub(crate) type Outcome = Result<Delivered, Failed>;

/// What the caller records of a settled answer (scores, metrics, the fault log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The range verified: the provider did well.
    Good,
    /// The provider was busy: nobody is blamed.
    Busy,
    /// Nothing new: a late answer from a provider already out of the fetch, or the failure
    /// of a request sent before its last death (counted then).
    Known,
    /// A new fault of this provider (`"dead"`, `"missing"` or `"lie"`) and why.
    Fault(&'static str, String),
}

/// What to do when nothing is in flight and the transfer is not whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Every provider is out of the fetch.
    Lost,
    /// Every provider left is paused: look again then.
    WakeAt(Instant),
}

#[derive(Debug)]
struct Provider {
    id: PeerId,
    inflight: usize,
    /// Paused until then (busy, or just found dead).
    until: Option<Instant>,
    /// Out of this fetch: dead twice, lying or without the object.
    gone: bool,
    /// Times it was found dead.
    deaths: u32,
    /// Verified bytes it delivered.
    delivered: u64,
}

/// The books of one transfer of an object of `size` bytes.
#[derive(Debug)]
pub(crate) struct Schedule {
    size: u64,
    providers: Vec<Provider>,
    /// Ranges still wanted, by start.
    wanted: BTreeMap<u64, u64>,
    /// Verified groups not yet handed on, by start.
    ready: BTreeMap<u64, Vec<Bytes>>,
    /// The next byte to hand on.
    next: u64,
    inflight: usize,
}

impl Schedule {
    /// A transfer from `peers` (the provider that proved the size first), whose last group,
    /// from `tail_start`, that provider's proof already verified (`tail`).
    pub(crate) fn new(size: u64, peers: Vec<PeerId>, tail_start: u64, tail: Vec<Bytes>) -> Self {
        let tail_len: u64 = tail.iter().map(|g| g.len() as u64).sum();
        let providers = peers
            .into_iter()
            .enumerate()
            .map(|(i, id)| Provider {
                id,
                inflight: 0,
                until: None,
                gone: false,
                deaths: 0,
                delivered: if i == 0 { tail_len } else { 0 },
            })
            .collect();
        let mut wanted = BTreeMap::new();
        let mut at = 0;
        while at < tail_start {
            let end = (at + MAX_RANGE).min(tail_start);
            wanted.insert(at, end);
            at = end;
        }
        let mut ready = BTreeMap::new();
        if size > 0 {
            ready.insert(tail_start, tail);
        }
        Self {
            size,
            providers,
            wanted,
            ready,
            next: 0,
            inflight: 0,
        }
    }

    /// The next range to ask for at `now`, if one may be asked: the wanted range nearest the
    /// next byte, within [`WINDOW`] of it, of the least busy provider that is neither out nor
    /// paused, within [`INFLIGHT`] and [`PER_PEER`].
    pub(crate) fn ask(&mut self, now: Instant) -> Option<Ask> {
        if self.inflight >= INFLIGHT {
            return None;
        }
        let (&start, &end) = self.wanted.first_key_value()?;
        if start >= self.next + WINDOW {
            return None;
        }
        let (i, provider) = self
            .providers
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| !p.gone && p.inflight < PER_PEER)
            .filter(|(_, p)| p.until.is_none_or(|t| t <= now))
            .min_by_key(|(_, p)| p.inflight)?;
        self.wanted.remove(&start);
        provider.inflight += 1;
        self.inflight += 1;
        Some(Ask {
            provider: i,
            peer: provider.id,
            deaths: provider.deaths,
            start,
            end,
        })
    }

    /// Takes the answer to `ask` into the books: verified groups to hand on, what is still
    /// wanted of the range, and the provider's standing (paused for a while, dead once, or out
    /// of this fetch).
    pub(crate) fn settle(&mut self, ask: Ask, outcome: Outcome, now: Instant) -> Verdict {
        let Ask {
            provider,
            deaths,
            start,
            end,
            ..
        } = ask;
        self.inflight -= 1;
        let provider = &mut self.providers[provider];
        provider.inflight -= 1;
        match outcome {
            Ok(Delivered { groups, len, lie }) => {
                if len > 0 {
                    self.ready.insert(start, groups);
                    provider.delivered += len;
                }
                if start + len < end {
                    self.wanted.insert(start + len, end);
                }
                match lie {
                    None => Verdict::Good,
                    // Counted once: its other answers in flight may fail too.
                    Some(_) if provider.gone => Verdict::Known,
                    Some(why) => {
                        provider.gone = true;
                        Verdict::Fault("lie", why)
                    }
                }
            }
            Err(failed) => {
                self.wanted.insert(start, end);
                let dead = matches!(failed, Failed::Dead(_));
                match failed {
                    Failed::Busy(wait) => {
                        provider.until = Some(now + wait);
                        Verdict::Busy
                    }
                    Failed::Stopped => Verdict::Known,
                    _ if provider.gone || (dead && deaths < provider.deaths) => Verdict::Known,
                    failed if dead && provider.deaths == 0 => {
                        provider.deaths = 1;
                        provider.until = Some(now + DEAD_PAUSE);
                        Verdict::Fault(failed.kind(), failed.into_why())
                    }
                    failed => {
                        provider.gone = true;
                        Verdict::Fault(failed.kind(), failed.into_why())
                    }
                }
            }
        }
    }

    /// The verified groups that continue the bytes handed on so far, in order.
    pub(crate) fn take_ready(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(groups) = self.ready.remove(&self.next) {
            for group in groups {
                self.next += group.len() as u64;
                out.push(group);
            }
        }
        out
    }

    /// Whether every byte has been handed on.
    pub(crate) fn done(&self) -> bool {
        self.next >= self.size
    }

    /// The next byte to hand on.
    pub(crate) fn next_byte(&self) -> u64 {
        self.next
    }

    /// Requests in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight
    }

    /// With nothing in flight and nothing to ask at `now`: lost, or when to look again.
    pub(crate) fn idle(&self, now: Instant) -> Idle {
        let left = self.providers.iter().filter(|p| !p.gone);
        match left.filter_map(|p| p.until).filter(|t| *t > now).min() {
            _ if self.providers.iter().all(|p| p.gone) => Idle::Lost,
            Some(wake) => Idle::WakeAt(wake),
            None => Idle::WakeAt(now + IDLE_WAKE),
        }
    }

    /// Verified bytes each provider delivered.
    pub(crate) fn delivered(&self) -> Vec<(PeerId, u64)> {
        self.providers.iter().map(|p| (p.id, p.delivered)).collect()
    }
}

#[cfg(test)]
mod tests;
