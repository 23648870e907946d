//! Fetching one object from its providers: its size proven first, then its ranges requested
//! from several providers at once, every 16 KiB group checked against the address on arrival,
//! and the bytes handed on in order. A provider that dies or refuses leaves its ranges to the
//! others; one that sends a group that fails verification is caught at that group, scored
//! down and not asked again for the object (in this fetch or a later one), and what it sent
//! before the bad group is kept.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bao_tree::BaoTree;
use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::OutboardMut;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use libp2p::PeerId;
use ron_proto::{Address, ErrorKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec::{TransferReply, TransferRequest};
use crate::node::{DhtError, DhtHandle};
use crate::verify::{BLOCK, GROUP_BYTES, Pair, Verified, decode};

mod schedule;

use schedule::{Ask, Delivered, Failed, Idle, Schedule, Verdict};
pub use schedule::{INFLIGHT, PER_PEER};

/// Score changes: a verified range, a dead peer, a lie.
const GOOD: i64 = 1;
const DEAD: i64 = -20;
const LIE: i64 = -1_000;
/// Scores kept (the best-known peers win when the table is full).
const SCORES: usize = 4096;
/// (object, peer) pairs caught lying that are remembered (the least recently asked about
/// forgotten first).
const LIED: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

/// How peers have behaved in transfers: the higher, the sooner a peer is asked; and which peers
/// lied about which object, never asked for it again.
#[derive(Debug, Clone)]
pub(crate) struct Scores {
    scores: Arc<Mutex<HashMap<PeerId, i64>>>,
    lied: Arc<Mutex<lru::LruCache<(Address, PeerId), ()>>>,
}

impl Default for Scores {
    fn default() -> Self {
        Self {
            scores: Arc::default(),
            lied: Arc::new(Mutex::new(lru::LruCache::new(LIED))),
        }
    }
}

impl Scores {
    pub(crate) fn get(&self, peer: &PeerId) -> i64 {
        self.scores
            .lock()
            .map_or(0, |s| s.get(peer).copied().unwrap_or(0))
    }

    fn add(&self, peer: PeerId, delta: i64) {
        if let Ok(mut scores) = self.scores.lock() {
            if scores.len() >= SCORES && !scores.contains_key(&peer) {
                // Forget the least remarkable peer.
                if let Some(plain) = scores.iter().min_by_key(|(_, s)| s.abs()).map(|(p, _)| *p) {
                    scores.remove(&plain);
                }
            }
            let score = scores.entry(peer).or_default();
            *score = (*score + delta).clamp(-100_000, 100);
        }
    }

    /// Whether `peer` was caught lying about `addr`.
    fn lied(&self, addr: Address, peer: PeerId) -> bool {
        self.lied
            .lock()
            .is_ok_and(|mut l| l.get(&(addr, peer)).is_some())
    }

    fn caught(&self, addr: Address, peer: PeerId) {
        if let Ok(mut lied) = self.lied.lock() {
            lied.put((addr, peer), ());
        }
    }
}

/// A provider holding the object, and the object's size, proven by the provider's
/// encoding of the last group verifying against the address.
#[derive(Debug)]
pub struct Probe {
    /// The object.
    pub addr: Address,
    /// Its size.
    pub size: u64,
    /// The provider that proved it.
    pub peer: PeerId,
    /// Where the last group starts, and what verified of it.
    tail: (u64, Verified),
}

/// How a transfer went.
#[derive(Debug, Default)]
pub struct Transferred {
    /// The object's size.
    pub size: u64,
    /// Verified bytes each provider delivered.
    pub delivered: Vec<(PeerId, u64)>,
    /// Each provider that failed, and how.
    pub faults: Vec<String>,
    /// The object's outboard (bao-tree post order, 16 KiB groups; empty for an object of one
    /// group), assembled from the hash pairs that verified during the transfer: every pair
    /// on the way to every group, so complete when the transfer is.
    pub outboard: Vec<u8>,
}

/// A range answer, and the ask it answers.
type Answer = (Ask, Result<TransferReply, DhtError>);

/// Puts verified hash pairs in their places in the outboard being assembled.
fn save(outboard: &mut PostOrderOutboard, parents: Vec<Pair>) {
    for (node, pair) in parents {
        // Into the buffer sized for this tree, at the node's own offset: nothing to fail.
        let _ = outboard.save(node, &pair);
    }
}

impl DhtHandle {
    /// Finds, among `providers` (best scored first), one that holds `addr` and proves its
    /// size; refuses objects over `max_size` before any of their bytes move.
    pub async fn probe(
        &self,
        addr: Address,
        providers: &[PeerId],
        max_size: u64,
    ) -> Result<Probe, DhtError> {
        let mut order = providers.to_vec();
        order.sort_by_key(|p| -self.scores.get(p));
        let mut failures = Vec::new();
        for peer in order {
            if !self.circuits.peers.allows(&peer) {
                failures.push(format!("{peer}: failing lately (its circuit is open)"));
                continue;
            }
            if self.scores.lied(addr, peer) {
                failures.push(format!("{peer}: lied about this object before"));
                continue;
            }
            let size = match self.request(peer, TransferRequest::Have { addr }).await {
                Ok(TransferReply::Have { size }) => size,
                Ok(TransferReply::Error { kind, body }) => {
                    failures.push(format!("{peer}: {}", DhtError::Refused(kind, body.message)));
                    continue;
                }
                Ok(_) => {
                    self.fault(
                        addr,
                        peer,
                        "lie",
                        &mut failures,
                        "answered have with a range".into(),
                    );
                    continue;
                }
                Err(e @ (DhtError::Stopped | DhtError::Busy)) => return Err(e),
                Err(e @ DhtError::CircuitOpen(_)) => {
                    failures.push(format!("{peer}: {e}"));
                    continue;
                }
                Err(e) => {
                    self.fault(addr, peer, "dead", &mut failures, e.to_string());
                    continue;
                }
            };
            if size > max_size {
                return Err(DhtError::TooLarge {
                    size,
                    max: max_size,
                });
            }
            if size == 0 {
                if addr == Address::of(b"") {
                    let tail = (0, Verified::default());
                    return Ok(Probe {
                        addr,
                        size,
                        peer,
                        tail,
                    });
                }
                self.fault(
                    addr,
                    peer,
                    "lie",
                    &mut failures,
                    "an empty object under another address".into(),
                );
                continue;
            }
            let start = (size - 1) / GROUP_BYTES * GROUP_BYTES;
            let answer = self
                .request(
                    peer,
                    TransferRequest::Range {
                        addr,
                        start,
                        end: size,
                    },
                )
                .await;
            match self.check(addr, size, start, size, answer) {
                Ok(verified) if verified.fault.is_none() => {
                    let tail = (start, verified);
                    return Ok(Probe {
                        addr,
                        size,
                        peer,
                        tail,
                    });
                }
                Ok(verified) => {
                    let why = verified.fault.unwrap_or_default();
                    self.fault(
                        addr,
                        peer,
                        "lie",
                        &mut failures,
                        format!("size {size} not proven: {why}"),
                    );
                }
                Err(failed) => {
                    let fault = failed.kind();
                    self.fault(addr, peer, fault, &mut failures, failed.into_why());
                }
            }
        }
        Err(DhtError::Unavailable(failures.join("; ")))
    }

    /// The whole of a small object (a shard, a layout: at most `max_size` bytes, held in
    /// memory) from `providers`, every group verified against its address.
    pub async fn fetch_bytes(
        &self,
        addr: Address,
        providers: &[PeerId],
        max_size: u64,
    ) -> Result<Bytes, DhtError> {
        let probe = self.probe(addr, providers, max_size).await?;
        let size = usize::try_from(probe.size).unwrap_or(usize::MAX);
        let (tx, mut rx) = mpsc::channel(4);
        let transfer = self.transfer(probe, providers, tx);
        let collect = async move {
            let mut all = Vec::with_capacity(size);
            while let Some(group) = rx.recv().await {
                all.extend_from_slice(&group);
            }
            all
        };
        let (done, all) = tokio::join!(transfer, collect);
        done?;
        Ok(Bytes::from(all))
    }

    /// Transfers the probed object from `providers` (the probe's provider first), at most
    /// [`INFLIGHT`] ranges at once and [`PER_PEER`] to one provider, handing the verified
    /// bytes to `sink` in order. On `Ok` the sink has received exactly the object, every
    /// group of it verified against the address; on `Err` it has received a verified prefix.
    /// Which range goes to whom, and when, is the [`Schedule`]'s; this moves the bytes.
    pub async fn transfer(
        &self,
        probe: Probe,
        providers: &[PeerId],
        sink: mpsc::Sender<Bytes>,
    ) -> Result<Transferred, DhtError> {
        let Probe {
            addr,
            size,
            peer,
            tail: (tail_start, tail),
        } = probe;
        let mut peers = vec![peer];
        let mut rest: Vec<PeerId> = providers
            .iter()
            .copied()
            .filter(|p| *p != peer && *p != self.peer_id())
            .filter(|p| !self.scores.lied(addr, *p) && self.circuits.peers.allows(p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        rest.sort_by_key(|p| -self.scores.get(p));
        if self.frugal() {
            // Degraded: the best spare only.
            rest.truncate(1);
        }
        peers.extend(rest);
        let tree = BaoTree::new(size, BLOCK);
        // The size was proven and bounded by the probe: this is 64 bytes per 16 KiB group.
        let mut outboard = PostOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(*addr.as_bytes()),
            tree,
            data: vec![0u8; usize::try_from(tree.outboard_size()).unwrap_or(0)],
        };
        save(&mut outboard, tail.parents);
        let mut schedule = Schedule::new(size, peers, tail_start, tail.groups);
        let mut faults = Vec::new();
        let mut inflight: FuturesUnordered<BoxFuture<'static, Answer>> = FuturesUnordered::new();
        loop {
            let now = Instant::now().into_std();
            while let Some(ask) = schedule.ask(now) {
                let this = self.clone();
                inflight.push(Box::pin(async move {
                    let (start, end) = (ask.start, ask.end);
                    let request = TransferRequest::Range { addr, start, end };
                    (ask, this.request(ask.peer, request).await)
                }));
            }
            for group in schedule.take_ready() {
                sink.send(group)
                    .await
                    .map_err(|_| DhtError::Sink("the store stopped".into()))?;
            }
            if schedule.done() {
                return Ok(Transferred {
                    size,
                    delivered: schedule.delivered(),
                    faults,
                    outboard: std::mem::take(&mut outboard.data),
                });
            }
            if inflight.is_empty() {
                match schedule.idle(now) {
                    Idle::Lost => {
                        return Err(DhtError::Unavailable(format!(
                            "every provider failed at byte {} of {size}: {}",
                            schedule.next_byte(),
                            faults.join("; ")
                        )));
                    }
                    Idle::WakeAt(wake) => {
                        tokio::time::sleep_until(Instant::from_std(wake)).await;
                        continue;
                    }
                }
            }
            let Some((ask, answer)) = inflight.next().await else {
                continue;
            };
            let outcome = match self.check(addr, size, ask.start, ask.end, answer) {
                Ok(verified) => {
                    save(&mut outboard, verified.parents);
                    self.metrics.fetched_bytes.inc_by(verified.len);
                    Ok(Delivered {
                        groups: verified.groups,
                        len: verified.len,
                        lie: verified.fault,
                    })
                }
                Err(Failed::Stopped) => return Err(DhtError::Stopped),
                Err(failed) => Err(failed),
            };
            match schedule.settle(ask, outcome, Instant::now().into_std()) {
                Verdict::Good => self.scores.add(ask.peer, GOOD),
                Verdict::Busy => self.metrics.fault("busy"),
                Verdict::Known => {}
                Verdict::Fault(fault, why) => self.fault(addr, ask.peer, fault, &mut faults, why),
            }
        }
    }

    /// Verifies one range answer; [`Failed`] when there is nothing to verify.
    fn check(
        &self,
        addr: Address,
        size: u64,
        start: u64,
        end: u64,
        answer: Result<TransferReply, DhtError>,
    ) -> Result<Verified, Failed> {
        match answer {
            Ok(TransferReply::Range {
                size: s,
                start: st,
                encoded,
                ..
            }) if s == size && st == start => {
                // Verified here, on the fetch's task: half a MiB hashes in a fraction of a
                // millisecond, less than a trip to a blocking thread and back costs (a 1 GiB
                // fetch between two nodes ran ~10% faster without that trip).
                Ok(decode(addr, size, start, end, &encoded))
            }
            Ok(TransferReply::Range {
                size: s, start: st, ..
            }) => Err(Failed::Lie(format!(
                "answered {st}.. of {s} bytes for {start}..{end} of {size}"
            ))),
            Ok(
                TransferReply::Have { .. }
                | TransferReply::Providers { .. }
                | TransferReply::Kept { .. }
                | TransferReply::Held { .. }
                | TransferReply::Cashed(_)
                | TransferReply::ChequeRefused { .. },
            ) => Err(Failed::Lie("answered a range with something else".into())),
            Ok(TransferReply::Error { kind, body }) => match kind {
                ErrorKind::RateLimited | ErrorKind::Overloaded => Err(Failed::Busy(
                    Duration::from_millis(body.retry_after_ms.unwrap_or(1000).min(5000)),
                )),
                ErrorKind::NotFound => Err(Failed::Missing(body.message)),
                _ => Err(Failed::Dead(
                    DhtError::Refused(kind, body.message).to_string(),
                )),
            },
            Err(DhtError::Stopped) => Err(Failed::Stopped),
            // This node's own network actor was saturated: ask again shortly, blame nobody.
            Err(DhtError::Busy) => Err(Failed::Busy(Duration::from_millis(100))),
            // The peer's circuit opened (its requests kept failing, as when a connection
            // resets under many ranges): ask it again once a probe may go, blamed already.
            Err(DhtError::CircuitOpen(open)) => Err(Failed::Busy(open.retry_after)),
            Err(e) => Err(Failed::Dead(e.to_string())),
        }
    }

    fn fault(
        &self,
        addr: Address,
        peer: PeerId,
        fault: &'static str,
        log: &mut Vec<String>,
        why: String,
    ) {
        tracing::warn!(%addr, %peer, fault, reason = %why, "a provider failed a transfer");
        self.metrics.fault(fault);
        match fault {
            "lie" => {
                self.scores.add(peer, LIE);
                self.scores.caught(addr, peer);
            }
            "dead" => self.scores.add(peer, DEAD),
            _ => {}
        }
        log.push(format!("{peer}: {fault}: {why}"));
    }
}
