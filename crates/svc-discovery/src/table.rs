//! The peer table in redb: PeerId -> addresses, when it last answered, failures since.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use svc_dht::PeerEvent;

use crate::PeersUpdated;

/// PeerId (text) -> JSON [`PeerRecord`].
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
/// Dials in a row that fail before a peer is dropped.
pub const MAX_FAILURES: u32 = 3;
/// A peer not heard from for this long is dropped (seconds; 30 days).
pub const STALE_AFTER_S: u64 = 30 * 24 * 3600;
/// Peers kept at most; past it the least recently good go.
const MAX_PEERS: usize = 4096;
/// Addresses kept per peer.
const MAX_ADDRS: usize = 8;

/// Why the table could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("peer table: {0}")]
pub struct TableError(String);

impl<E: Into<redb::Error>> From<E> for TableError {
    fn from(e: E) -> Self {
        Self(e.into().to_string())
    }
}

/// What the table knows of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Where it listens (multiaddrs without `/p2p`), as it last said.
    pub addrs: Vec<String>,
    /// When it last answered (Unix seconds).
    pub last_good: u64,
    /// Dials that failed since.
    pub failures: u32,
}

/// The node's known peers, persisted. Writes are durable (redb commits with fsync).
#[derive(Debug)]
pub struct PeerTable {
    db: Database,
}

impl PeerTable {
    /// Opens (creating) the table at `path`, a file only this user may read (0600).
    pub fn open(path: &Path) -> Result<Self, TableError> {
        use std::os::unix::fs::PermissionsExt;
        let db = Database::create(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| TableError(format!("chmod {}: {e}", path.display())))?;
        Self::init(db)
    }

    /// A table in memory (`--amnesia`).
    pub fn in_memory() -> Result<Self, TableError> {
        Self::init(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?)
    }

    fn init(db: Database) -> Result<Self, TableError> {
        let txn = db.begin_write()?;
        txn.open_table(PEERS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Peers in the table.
    pub fn len(&self) -> Result<u64, TableError> {
        Ok(self.db.begin_read()?.open_table(PEERS)?.len()?)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> Result<bool, TableError> {
        Ok(self.len()? == 0)
    }

    /// Records `events` in one transaction at time `now`: what changed.
    pub fn apply(&self, events: &[PeerEvent], now: u64) -> Result<PeersUpdated, TableError> {
        let mut seen = Vec::new();
        let mut dropped = Vec::new();
        let txn = self.db.begin_write()?;
        {
            let mut peers = txn.open_table(PEERS)?;
            for event in events {
                match event {
                    PeerEvent::Seen { peer, addrs } => {
                        let peer = peer.to_string();
                        let record = PeerRecord {
                            addrs: addrs
                                .iter()
                                .take(MAX_ADDRS)
                                .map(ToString::to_string)
                                .collect(),
                            last_good: now,
                            failures: 0,
                        };
                        let json =
                            serde_json::to_vec(&record).map_err(|e| TableError(e.to_string()))?;
                        peers.insert(peer.as_str(), json.as_slice())?;
                        if !seen.contains(&peer) {
                            seen.push(peer);
                        }
                    }
                    PeerEvent::Left { .. } => {}
                    PeerEvent::Unreachable { peer } => {
                        let peer = peer.to_string();
                        let Some(mut record) = read(&peers, &peer)? else {
                            continue;
                        };
                        record.failures += 1;
                        if record.failures >= MAX_FAILURES {
                            peers.remove(peer.as_str())?;
                            dropped.push(peer);
                        } else {
                            let json = serde_json::to_vec(&record)
                                .map_err(|e| TableError(e.to_string()))?;
                            peers.insert(peer.as_str(), json.as_slice())?;
                        }
                    }
                }
            }
            // Stale peers go, and past the cap the least recently good.
            let mut all = Vec::new();
            for entry in peers.iter()? {
                let (peer, value) = entry?;
                let last_good =
                    serde_json::from_slice::<PeerRecord>(value.value()).map_or(0, |r| r.last_good);
                all.push((peer.value().to_owned(), last_good));
            }
            all.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
            for (i, (peer, last_good)) in all.into_iter().enumerate() {
                if i >= MAX_PEERS || now.saturating_sub(last_good) > STALE_AFTER_S {
                    peers.remove(peer.as_str())?;
                    dropped.push(peer);
                }
            }
        }
        txn.commit()?;
        let known = self.len()?;
        Ok(PeersUpdated {
            known,
            seen,
            dropped,
        })
    }

    /// Up to `n` peers to dial, recently good first, fewest failures first among equals;
    /// none not heard from in [`STALE_AFTER_S`].
    pub fn seeds(&self, n: usize, now: u64) -> Result<Vec<(String, PeerRecord)>, TableError> {
        let txn = self.db.begin_read()?;
        let peers = txn.open_table(PEERS)?;
        let mut all = Vec::new();
        for entry in peers.iter()? {
            let (peer, value) = entry?;
            if let Ok(record) = serde_json::from_slice::<PeerRecord>(value.value())
                && now.saturating_sub(record.last_good) <= STALE_AFTER_S
                && !record.addrs.is_empty()
            {
                all.push((peer.value().to_owned(), record));
            }
        }
        all.sort_by_key(|(_, r)| (std::cmp::Reverse(r.last_good), r.failures));
        all.truncate(n);
        Ok(all)
    }
}

fn read(
    peers: &impl ReadableTable<&'static str, &'static [u8]>,
    peer: &str,
) -> Result<Option<PeerRecord>, TableError> {
    Ok(peers
        .get(peer)?
        .and_then(|v| serde_json::from_slice(v.value()).ok()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use svc_dht::{Multiaddr, PeerId};

    fn seen(peer: PeerId, port: u16) -> PeerEvent {
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        PeerEvent::Seen {
            peer,
            addrs: vec![addr],
        }
    }

    #[test]
    fn recently_good_first_failures_drop_and_stale_peers_go() {
        let table = PeerTable::in_memory().unwrap();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        table.apply(&[seen(a, 1)], 1_000).unwrap();
        table.apply(&[seen(b, 2)], 2_000).unwrap();
        let change = table.apply(&[seen(c, 3)], 3_000).unwrap();
        assert_eq!((change.known, change.seen), (3, vec![c.to_string()]));
        let order: Vec<String> = table
            .seeds(10, 3_000)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(order, [c, b, a].map(|p| p.to_string()));
        assert_eq!(table.seeds(2, 3_000).unwrap().len(), 2);

        // Failures count up and drop a peer at the limit; an answer resets them.
        for _ in 1..MAX_FAILURES {
            table
                .apply(&[PeerEvent::Unreachable { peer: b }], 3_100)
                .unwrap();
        }
        table.apply(&[seen(a, 1)], 3_200).unwrap();
        assert_eq!(table.seeds(10, 3_200).unwrap()[0].0, a.to_string());
        let change = table
            .apply(&[PeerEvent::Unreachable { peer: b }], 3_300)
            .unwrap();
        assert_eq!((change.known, change.dropped), (2, vec![b.to_string()]));

        // Not heard from in 30 days: gone.
        let later = 3_200 + STALE_AFTER_S + 1;
        assert_eq!(table.seeds(10, later).unwrap().len(), 0);
        let change = table.apply(&[], later).unwrap();
        assert_eq!(change.known, 0);
    }

    #[test]
    fn the_table_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.redb");
        let peer = PeerId::random();
        PeerTable::open(&path)
            .unwrap()
            .apply(&[seen(peer, 9)], 10)
            .unwrap();
        let table = PeerTable::open(&path).unwrap();
        let seeds = table.seeds(1, 10).unwrap();
        assert_eq!(seeds[0].0, peer.to_string());
        assert_eq!(seeds[0].1.addrs, vec!["/ip4/127.0.0.1/tcp/9".to_owned()]);
        let addrs = crate::seed_addrs(&seeds);
        assert_eq!(
            addrs[0].to_string(),
            format!("/ip4/127.0.0.1/tcp/9/p2p/{peer}")
        );
    }
}
