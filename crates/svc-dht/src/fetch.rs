//! Fetching one object from its providers: its size proven first, then its ranges requested
//! from several providers at once, every 16 KiB group checked against the address on arrival,
//! and the bytes handed on in order. A provider that dies or refuses leaves its ranges to the
//! others; one that sends a group that fails verification is caught at that group, scored
//! down and not asked again for the object (in this fetch or a later one), and what it sent
//! before the bad group is kept.

use std::collections::{BTreeMap, HashMap, HashSet};
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

use crate::codec::{MAX_RANGE, TransferReply, TransferRequest};
use crate::node::{DhtError, DhtHandle};
use crate::verify::{BLOCK, GROUP_BYTES, Pair, Verified, decode};

/// Range requests in flight for one fetch, over all its providers.
pub const INFLIGHT: usize = 24;
/// Range requests in flight to one provider for one fetch.
pub const PER_PEER: usize = 16;
/// How far past the next byte to hand on a fetch may request: bounds what waits in memory
/// for an earlier range.
const WINDOW: u64 = 2 * INFLIGHT as u64 * MAX_RANGE;
/// Score changes: a verified range, a dead peer, a lie.
const GOOD: i64 = 1;
const DEAD: i64 = -20;
const LIE: i64 = -1_000;
/// A provider whose requests fail as dead (its connection dropped, a dial failed) is asked
/// again once, after this pause, before it leaves the fetch: a connection can close while the
/// peer lives (a relayed one replaced by a direct one, a NAT binding expiring).
const DEAD_PAUSE: Duration = Duration::from_secs(1);
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

/// One range's answer, checked, with the provider's death count when it was asked.
struct Settle {
    deaths: u32,
    start: u64,
    end: u64,
    verified: Result<Verified, (&'static str, String)>,
}

/// What a transfer keeps track of, lent to [`DhtHandle::settle`].
struct Book<'a> {
    outboard: &'a mut PostOrderOutboard,
    ready: &'a mut BTreeMap<u64, Vec<Bytes>>,
    wanted: &'a mut BTreeMap<u64, u64>,
    faults: &'a mut Vec<String>,
}

struct Provider {
    id: PeerId,
    inflight: usize,
    /// Busy until then.
    until: Option<Instant>,
    /// Out of this fetch: dead twice, lying or without the object.
    gone: bool,
    /// Times it was found dead; a request sent before the last of them failing tells
    /// nothing new.
    deaths: u32,
    delivered: u64,
}

/// A range answer: from which provider (and at which of its deaths it was asked), for which
/// range.
type Answer = (usize, u32, u64, u64, Result<TransferReply, DhtError>);

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
                Err((fault, why)) => self.fault(addr, peer, fault, &mut failures, why),
            }
        }
        Err(DhtError::Unavailable(failures.join("; ")))
    }

    /// Transfers the probed object from `providers` (the probe's provider first), at most
    /// [`INFLIGHT`] ranges at once and [`PER_PEER`] to one provider, handing the verified
    /// bytes to `sink` in order. On `Ok` the sink has received exactly the object, every
    /// group of it verified against the address; on `Err` it has received a verified prefix.
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
            tail,
        } = probe;
        let mut peers = vec![peer];
        let mut rest: Vec<PeerId> = providers
            .iter()
            .copied()
            .filter(|p| *p != peer && *p != self.peer_id())
            .filter(|p| !self.scores.lied(addr, *p))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        rest.sort_by_key(|p| -self.scores.get(p));
        peers.extend(rest);
        let (tail_start, tail) = tail;
        let tail_len = tail.len;
        let tree = BaoTree::new(size, BLOCK);
        // The size was proven and bounded by the probe: this is 64 bytes per 16 KiB group.
        let mut outboard = PostOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(*addr.as_bytes()),
            tree,
            data: vec![0u8; usize::try_from(tree.outboard_size()).unwrap_or(0)],
        };
        save(&mut outboard, tail.parents);
        let mut peers: Vec<Provider> = peers
            .into_iter()
            .map(|id| Provider {
                id,
                inflight: 0,
                until: None,
                gone: false,
                deaths: 0,
                delivered: if id == peer { tail_len } else { 0 },
            })
            .collect();
        let mut report = Transferred {
            size,
            ..Transferred::default()
        };
        // Ranges still wanted, by start.
        let mut wanted: BTreeMap<u64, u64> = BTreeMap::new();
        let mut at = 0;
        while at < tail_start {
            let end = (at + MAX_RANGE).min(tail_start);
            wanted.insert(at, end);
            at = end;
        }
        // Verified groups not yet handed on, by start.
        let mut ready: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
        if size > 0 {
            ready.insert(tail_start, tail.groups);
        }
        let mut next = 0;
        let mut inflight: FuturesUnordered<BoxFuture<'static, Answer>> = FuturesUnordered::new();
        loop {
            // Ask for what is wanted, near the next byte first, of the least busy provider.
            let now = Instant::now();
            while inflight.len() < INFLIGHT {
                let Some((&start, &end)) = wanted.first_key_value() else {
                    break;
                };
                if start >= next + WINDOW {
                    break;
                }
                let free = peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.gone && p.inflight < PER_PEER)
                    .filter(|(_, p)| p.until.is_none_or(|t| t <= now))
                    .min_by_key(|(_, p)| p.inflight)
                    .map(|(i, _)| i);
                let Some(i) = free else { break };
                wanted.remove(&start);
                peers[i].inflight += 1;
                let (this, id, deaths) = (self.clone(), peers[i].id, peers[i].deaths);
                inflight.push(Box::pin(async move {
                    let request = TransferRequest::Range { addr, start, end };
                    (i, deaths, start, end, this.request(id, request).await)
                }));
            }
            // Hand on what is ready, in order.
            while let Some(groups) = ready.remove(&next) {
                for group in groups {
                    next += group.len() as u64;
                    sink.send(group)
                        .await
                        .map_err(|_| DhtError::Sink("the store stopped".into()))?;
                }
            }
            if next >= size {
                report.delivered = peers.iter().map(|p| (p.id, p.delivered)).collect();
                report.outboard = std::mem::take(&mut outboard.data);
                return Ok(report);
            }
            if inflight.is_empty() {
                if peers.iter().all(|p| p.gone) {
                    return Err(DhtError::Unavailable(format!(
                        "every provider failed at byte {next} of {size}: {}",
                        report.faults.join("; ")
                    )));
                }
                // Everyone left is busy: wait for the first to be free again.
                let wake = peers
                    .iter()
                    .filter(|p| !p.gone)
                    .filter_map(|p| p.until)
                    .min()
                    .unwrap_or_else(|| now + Duration::from_millis(100));
                tokio::time::sleep_until(wake).await;
                continue;
            }
            let Some((i, deaths, start, end, answer)) = inflight.next().await else {
                continue;
            };
            peers[i].inflight -= 1;
            let verified = self.check(addr, size, start, end, answer);
            let range = Settle {
                deaths,
                start,
                end,
                verified,
            };
            let book = Book {
                outboard: &mut outboard,
                ready: &mut ready,
                wanted: &mut wanted,
                faults: &mut report.faults,
            };
            self.settle(addr, &mut peers[i], range, book)?;
        }
    }

    /// Takes one range answer from `provider` into the transfer's books: verified groups to
    /// hand on (and their pairs into the outboard), what is still wanted of the range, and
    /// the provider's standing (busy for a while, dead once, or out of this fetch).
    fn settle(
        &self,
        addr: Address,
        provider: &mut Provider,
        range: Settle,
        book: Book<'_>,
    ) -> Result<(), DhtError> {
        let Settle {
            deaths,
            start,
            end,
            verified,
        } = range;
        let id = provider.id;
        match verified {
            Ok(Verified {
                groups,
                len,
                fault,
                parents,
            }) => {
                save(book.outboard, parents);
                if len > 0 {
                    book.ready.insert(start, groups);
                    provider.delivered += len;
                    self.metrics.fetched_bytes.inc_by(len);
                }
                if start + len < end {
                    book.wanted.insert(start + len, end);
                }
                match fault {
                    None => self.scores.add(id, GOOD),
                    // Counted once: its other answers in flight may fail too.
                    Some(_) if provider.gone => {}
                    Some(why) => {
                        provider.gone = true;
                        self.fault(addr, id, "lie", book.faults, why);
                    }
                }
            }
            Err((fault, why)) => {
                book.wanted.insert(start, end);
                if fault == "busy" {
                    let wait = why.parse().unwrap_or(1000);
                    provider.until = Some(Instant::now() + Duration::from_millis(wait));
                    self.metrics.fault("busy");
                } else if fault == "stopped" {
                    return Err(DhtError::Stopped);
                } else if provider.gone || (fault == "dead" && deaths < provider.deaths) {
                    // Already out, or asked before its last death: counted then.
                } else if fault == "dead" && provider.deaths == 0 {
                    provider.deaths = 1;
                    provider.until = Some(Instant::now() + DEAD_PAUSE);
                    self.fault(addr, id, fault, book.faults, why);
                } else {
                    provider.gone = true;
                    self.fault(addr, id, fault, book.faults, why);
                }
            }
        }
        Ok(())
    }

    /// Verifies one range answer. `Err((fault, why))` when there is nothing to verify: `busy`
    /// (with the retry delay in milliseconds as `why`), `missing`, `dead`, `lie`, `stopped`.
    fn check(
        &self,
        addr: Address,
        size: u64,
        start: u64,
        end: u64,
        answer: Result<TransferReply, DhtError>,
    ) -> Result<Verified, (&'static str, String)> {
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
            }) => Err((
                "lie",
                format!("answered {st}.. of {s} bytes for {start}..{end} of {size}"),
            )),
            Ok(TransferReply::Have { .. } | TransferReply::Providers { .. }) => {
                Err(("lie", "answered a range with something else".into()))
            }
            Ok(TransferReply::Error { kind, body }) => match kind {
                ErrorKind::RateLimited | ErrorKind::Overloaded => Err((
                    "busy",
                    body.retry_after_ms.unwrap_or(1000).min(5000).to_string(),
                )),
                ErrorKind::NotFound => Err(("missing", body.message)),
                _ => Err(("dead", DhtError::Refused(kind, body.message).to_string())),
            },
            Err(DhtError::Stopped) => Err(("stopped", String::new())),
            // This node's own network actor was saturated: ask again shortly, blame nobody.
            Err(DhtError::Busy) => Err(("busy", "100".into())),
            Err(e) => Err(("dead", e.to_string())),
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
