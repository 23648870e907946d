//! Records (signed names): storing ours on the closest peers with a write quorum, finding all
//! the values peers hold for a key, and keeping peers' records only as the node's
//! [`RecordPolicy`] says. Provider records go through here too (the store filters both
//! kinds), and are kept as before.

use std::num::NonZeroUsize;

use libp2p::kad::store::RecordStore;
use libp2p::kad::{GetRecordError, GetRecordOk, InboundRequest, PutRecordError, Quorum, Record};

use super::*;

/// Most peers asked to keep a record we put (fewer when fewer are connected).
const WRITE_QUORUM: usize = 3;
/// Most values one record lookup gathers.
const MAX_VALUES: usize = 32;
/// Largest record value accepted, ours or a peer's.
pub(crate) const MAX_RECORD_BYTES: usize = 4096;

/// A record lookup under way.
pub(super) struct Gathering {
    values: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Vec<Vec<u8>>, DhtError>>,
}

impl Actor {
    pub(super) fn put_record(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<usize, DhtError>>,
    ) {
        if value.len() > MAX_RECORD_BYTES {
            let _ = reply.send(Err(DhtError::TooLarge {
                size: value.len() as u64,
                max: MAX_RECORD_BYTES as u64,
            }));
            return;
        }
        let peers = self.swarm.connected_peers().count();
        let quorum = NonZeroUsize::new(peers.clamp(1, WRITE_QUORUM)).unwrap_or(NonZeroUsize::MIN);
        let record = Record::new(RecordKey::new(&key), value);
        match self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::N(quorum))
        {
            Ok(query) => {
                self.puts.insert(query, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(DhtError::Sink(e.to_string())));
            }
        }
    }

    pub(super) fn get_records(
        &mut self,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, DhtError>>,
    ) {
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(RecordKey::new(&key));
        self.gets.insert(
            query,
            Gathering {
                values: Vec::new(),
                reply,
            },
        );
    }

    pub(super) fn record_found(
        &mut self,
        query: QueryId,
        result: Result<GetRecordOk, GetRecordError>,
        last: bool,
    ) {
        let Some(gathering) = self.gets.get_mut(&query) else {
            return;
        };
        if let Ok(GetRecordOk::FoundRecord(found)) = result
            && found.record.value.len() <= MAX_RECORD_BYTES
            && gathering.values.len() < MAX_VALUES
            && !gathering.values.contains(&found.record.value)
        {
            gathering.values.push(found.record.value);
        }
        if last && let Some(gathering) = self.gets.remove(&query) {
            // Not found anywhere is an empty answer; a lookup that timed out with nothing is
            // a timeout.
            let _ = gathering.reply.send(Ok(gathering.values));
        }
    }

    pub(super) fn record_put(
        &mut self,
        query: QueryId,
        result: Result<kad::PutRecordOk, PutRecordError>,
        reached: u32,
    ) {
        let Some(reply) = self.puts.remove(&query) else {
            return;
        };
        let answer = match result {
            Ok(_) => Ok(reached as usize),
            Err(
                PutRecordError::QuorumFailed { success, .. }
                | PutRecordError::Timeout { success, .. },
            ) if !success.is_empty() => Ok(success.len()),
            // Alone: kept here only, and published again with the record's republication.
            Err(_) if self.swarm.connected_peers().next().is_none() => Ok(0),
            Err(e) => Err(DhtError::Unavailable(e.to_string())),
        };
        let _ = reply.send(answer);
    }

    /// A peer asked this node to keep a record or a provider record.
    pub(super) fn inbound(&mut self, request: InboundRequest) {
        match request {
            InboundRequest::PutRecord {
                record: Some(record),
                ..
            } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let current = store.get(&record.key).map(|r| r.value.clone());
                let accepted = record.value.len() <= MAX_RECORD_BYTES
                    && self
                        .records
                        .accept(record.key.as_ref(), &record.value, current.as_deref());
                if accepted && store.put(record).is_ok() {
                    self.metrics.record("stored");
                } else {
                    self.metrics.record("refused");
                }
            }
            InboundRequest::AddProvider {
                record: Some(provider),
            } => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .add_provider(provider)
                {
                    tracing::debug!(error = %e, "cannot keep a provider record");
                }
            }
            _ => {}
        }
    }
}
