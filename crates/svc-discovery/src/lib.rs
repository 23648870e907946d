//! Discovery for a RustyOnions node: which peers it knows, kept across restarts, and whom it
//! asks to join the network.
//!
//! The swarm belongs to `svc-dht`; this crate holds the peer-table policy as plain code fed
//! with the swarm's [`PeerEvent`]s: a peer that answered (identify) is recorded with the
//! addresses it listens on and the time; one that could not be dialled counts a failure, and
//! after [`MAX_FAILURES`] in a row (or [`STALE_AFTER_S`] without an answer) it is dropped. At
//! start the node bootstraps from the [`PeerTable::seeds`], recently good peers first; while
//! it has few peers, [`run`] asks the swarm to dial the next seeds in turn (seed rotation).
//! Every change of the table is announced as [`PeersUpdated`] on discovery's own broadcast.
//!
//! Shape: a supervised task ([`run`]) without a command handle, because nothing sends it
//! commands: it consumes the swarm's events and its own timer, and others read the table
//! ([`PeerTable`] is safe to share) or subscribe to its broadcast.
#![forbid(unsafe_code)]

mod table;

use std::sync::Arc;
use std::time::Duration;

use svc_dht::{DhtHandle, Multiaddr, PeerEvent};
pub use table::{MAX_FAILURES, PeerRecord, PeerTable, STALE_AFTER_S, TableError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events queued on discovery's broadcast.
pub const UPDATES: usize = 64;
/// Peers below which discovery dials more seeds.
pub const FEW_PEERS: usize = 8;
/// Seeds dialled per round of rotation.
const DIAL_PER_ROUND: usize = 4;
/// How often table changes are written (one transaction for all of them) and announced.
const FLUSH: Duration = Duration::from_secs(1);
/// How often the peer count is checked for rotation.
const ROTATE: Duration = Duration::from_secs(20);
/// Events one flush takes at most; more wait for the next.
const BATCH: usize = 1024;

/// The peer table changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersUpdated {
    /// Peers in the table now.
    pub known: u64,
    /// Peers recorded or refreshed by this change.
    pub seen: Vec<String>,
    /// Peers dropped by it.
    pub dropped: Vec<String>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The seeds' addresses, each ending in `/p2p/<peer id>`, ready to dial.
pub fn seed_addrs(seeds: &[(String, PeerRecord)]) -> Vec<Multiaddr> {
    seeds
        .iter()
        .flat_map(|(peer, record)| {
            record.addrs.iter().filter_map(move |a| {
                let addr: Multiaddr = a.parse().ok()?;
                let peer = peer.parse().ok()?;
                Some(addr.with_p2p(peer).unwrap_or_else(|a| a))
            })
        })
        .collect()
}

/// Keeps `table` from the swarm's `events`, announces changes on `updates`, and while the
/// node has fewer than [`FEW_PEERS`] peers, asks `dht` to dial seeds from the table in turn.
/// Runs until `shutdown` is cancelled.
pub async fn run(
    shutdown: CancellationToken,
    table: Arc<PeerTable>,
    mut events: broadcast::Receiver<PeerEvent>,
    updates: broadcast::Sender<PeersUpdated>,
    dht: DhtHandle,
) -> Result<(), String> {
    let mut batch: Vec<PeerEvent> = Vec::new();
    let mut flush = tokio::time::interval(FLUSH);
    let mut rotate = tokio::time::interval(ROTATE);
    let mut next_seed = 0usize;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => match event {
                // A departure changes nothing the table keeps (a peer's record ages).
                Ok(PeerEvent::Left { .. }) => {}
                Ok(event) if batch.len() < BATCH => batch.push(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "discovery fell behind the swarm's events");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = flush.tick() => {
                if batch.is_empty() {
                    continue;
                }
                let (table, now) = (table.clone(), unix_now());
                let applied = std::mem::take(&mut batch);
                let change = tokio::task::spawn_blocking(move || table.apply(&applied, now))
                    .await
                    .map_err(|e| e.to_string())?;
                match change {
                    Ok(change) if !change.seen.is_empty() || !change.dropped.is_empty() => {
                        // Nobody listening is fine.
                        let _ = updates.send(change);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot update the peer table"),
                }
            }
            _ = rotate.tick() => {
                let Ok(status) = dht.status().await else { break };
                if status.peers.len() >= FEW_PEERS {
                    continue;
                }
                let table = table.clone();
                let seeds = tokio::task::spawn_blocking(move || table.seeds(usize::MAX, unix_now()))
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let fresh: Vec<_> = seeds
                    .into_iter()
                    .filter(|(peer, _)| !status.peers.contains(peer))
                    .collect();
                if fresh.is_empty() {
                    continue;
                }
                // Rotate: a different few each round, recently good ones first in each lap.
                let start = next_seed % fresh.len();
                let round: Vec<_> = fresh.iter().cycle().skip(start).take(DIAL_PER_ROUND.min(fresh.len())).cloned().collect();
                next_seed = start + round.len();
                let addrs = seed_addrs(&round);
                tracing::debug!(seeds = round.len(), "few peers: dialling seeds from the peer table");
                if dht.dial(addrs).await.is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}
