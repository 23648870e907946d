//! The name resolver: `ed25519/<hex>` -> the address its newest signed record points at.
//!
//! Publishing checks the record (signature, TTL), refuses one that is not newer than the one
//! this node knows, keeps it (fsynced, published again after a restart) and stores it on the
//! closest peers with a write quorum. Resolving answers from a cache while the record's TTL
//! runs, else gathers the records this node and the closest peers hold, drops every forged,
//! malformed or foreign one, and takes the highest sequence number.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lru::LruCache;
use ron_auth::name::{NameError, NameRecord, name_bytes};
use ron_proto::{ErrorKind, Failure};
use svc_dht::{DhtError, DhtHandle};
use svc_storage::{Store, StoreError};
use tokio::time::Instant;

/// Names whose records are cached.
const CACHED_NAMES: usize = 4096;
/// How long a resolution waits for the peers' records.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

/// Why a name could not be published or resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NameFailure {
    /// The record is malformed, forged or out of range.
    #[error("invalid name record: {0}")]
    Invalid(#[from] NameError),
    /// A valid record, of another name than the one it was published as.
    #[error("the record is for {record}, not {asked}")]
    OtherName {
        /// The record's name.
        record: String,
        /// The name it was published as.
        asked: String,
    },
    /// A record with this sequence number or a higher one is known.
    #[error("stale name record: sequence {seq} is not above the {held} already published")]
    Stale {
        /// The record's sequence.
        seq: u64,
        /// The newest known.
        held: u64,
    },
    /// No valid record of the name was found.
    #[error("no record of the name {0} was found")]
    NotFound(String),
    /// The peer network failed.
    #[error("the peer network failed: {0}")]
    Dht(#[from] DhtError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Failure for NameFailure {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) | Self::OtherName { .. } => ErrorKind::BadInput,
            Self::Stale { .. } => ErrorKind::Conflict,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Dht(e) => e.kind(),
            Self::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) | Self::OtherName { .. } => "invalid_name_record",
            Self::Stale { .. } => "stale_name_record",
            other => other.kind().code(),
        }
    }
}

/// What a publication did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The record, as checked.
    pub record: NameRecord,
    /// Peers that keep it now (besides this node).
    pub peers: usize,
}

/// Names resolved lately: the record, and until when it may be used.
type Cache = LruCache<[u8; 32], (NameRecord, Instant)>;

/// A cheap-to-clone handle on the name resolver.
#[derive(Clone)]
pub struct Names {
    store: Store,
    dht: Option<DhtHandle>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names").finish_non_exhaustive()
    }
}

impl Names {
    /// A resolver keeping published records in `store` and asking peers through `dht` (none:
    /// this node's records only).
    pub fn new(store: Store, dht: Option<DhtHandle>) -> Self {
        let capacity = NonZeroUsize::new(CACHED_NAMES).unwrap_or(NonZeroUsize::MIN);
        Self {
            store,
            dht,
            cache: Arc::new(Mutex::new(LruCache::new(capacity))),
        }
    }

    /// A resolver of its own records only, in memory (tests, examples).
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(Self::new(Store::in_memory()?, None))
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, name: [u8; 32], record: &NameRecord) {
        let until = Instant::now() + Duration::from_secs(record.ttl_s);
        self.cache().put(name, (record.clone(), until));
    }

    /// Publishes an encoded, signed record of `name`: checked, for that name, newer than any
    /// this node knows of it, kept here, and stored on up to three of the closest peers.
    pub async fn publish(&self, name: &str, bytes: &[u8]) -> Result<Published, NameFailure> {
        let record = NameRecord::decode(bytes)?;
        if record.key != name {
            return Err(NameFailure::OtherName {
                record: record.key,
                asked: name.to_owned(),
            });
        }
        let name = name_bytes(&record.key)?;
        let dht_key = NameRecord::dht_key(&name);
        let held = self
            .store
            .record(dht_key.clone())
            .await?
            .and_then(|v| NameRecord::decode(&v).ok());
        let cached = self.cache().get(&name).map(|(r, _)| r.clone());
        for known in [held.as_ref(), cached.as_ref()].into_iter().flatten() {
            if !record.supersedes(Some(known)) {
                return Err(NameFailure::Stale {
                    seq: record.seq,
                    held: known.seq,
                });
            }
        }
        self.store
            .put_record(dht_key.clone(), bytes.to_vec())
            .await?;
        self.remember(name, &record);
        let peers = match &self.dht {
            Some(dht) => dht.put_record(dht_key, bytes.to_vec()).await?,
            None => 0,
        };
        Ok(Published { record, peers })
    }

    /// The newest valid record of `name` (`ed25519/<hex>`): from the cache while its TTL
    /// runs, else from this node's and the closest peers' records.
    pub async fn resolve(&self, name: &str) -> Result<NameRecord, NameFailure> {
        let key = name_bytes(name)?;
        if let Some((record, until)) = self.cache().get(&key).cloned()
            && Instant::now() < until
        {
            return Ok(record);
        }
        let dht_key = NameRecord::dht_key(&key);
        let mut values: Vec<Vec<u8>> = self
            .store
            .record(dht_key.clone())
            .await?
            .into_iter()
            .collect();
        if let Some(dht) = &self.dht {
            match tokio::time::timeout(LOOKUP_DEADLINE, dht.get_records(dht_key)).await {
                Ok(Ok(found)) => values.extend(found),
                Ok(Err(e)) if values.is_empty() => return Err(e.into()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "name lookup failed; using this node's record")
                }
                Err(_) if values.is_empty() => return Err(DhtError::Timeout.into()),
                Err(_) => {}
            }
        }
        let record = NameRecord::newest(&key, values.iter().map(Vec::as_slice))
            .ok_or_else(|| NameFailure::NotFound(name.to_owned()))?;
        self.remember(key, &record);
        Ok(record)
    }

    /// Publishes again every record this node keeps (after a restart; peers' copies expire).
    pub async fn republish(&self) -> usize {
        let Some(dht) = &self.dht else { return 0 };
        let records = match self.store.records().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the names to publish again");
                return 0;
            }
        };
        let mut done = 0;
        for (key, value) in records {
            if NameRecord::name_of_dht_key(&key).is_none() {
                continue;
            }
            match dht.put_record(key, value).await {
                Ok(_) => done += 1,
                Err(e) => tracing::debug!(error = %e, "cannot publish a name again"),
            }
        }
        done
    }
}

/// The records this node keeps for peers: valid name records, each under its own name's key,
/// never older than the one held ([`NameRecord::acceptable`]), and layout pointers of
/// protected objects (`ron_proto::layout::record_pointer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NamePolicy;

impl svc_dht::RecordPolicy for NamePolicy {
    fn accept(&self, key: &[u8], value: &[u8], current: Option<&[u8]>) -> bool {
        // Layout pointers (checked where they are used: see `ron_proto::layout`), or names.
        ron_proto::layout::record_pointer(key, value).is_some()
            || NameRecord::acceptable(key, value, current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ron_auth::SigningKey;
    use ron_proto::Address;

    #[tokio::test]
    async fn publish_then_resolve_newer_wins_and_stale_or_forged_are_refused() {
        let names = Names::new(Store::in_memory().unwrap(), None);
        let key = SigningKey::generate();
        let name = ron_auth::public_text(&key.public());
        assert!(matches!(
            names.resolve(&name).await,
            Err(NameFailure::NotFound(_))
        ));
        let v1 = NameRecord::sign(&key, Address::of(b"v1"), 1, 1).unwrap();
        names.publish(&name, &v1.encode().unwrap()).await.unwrap();
        assert_eq!(
            names.resolve(&name).await.unwrap().target,
            Address::of(b"v1")
        );
        // The same record again is fine; an older or equal different one is not.
        names.publish(&name, &v1.encode().unwrap()).await.unwrap();
        let v0 = NameRecord::sign(&key, Address::of(b"v0"), 0, 1).unwrap();
        let err = names
            .publish(&name, &v0.encode().unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind().status(), err.code()),
            (409, "stale_name_record")
        );
        let twin = NameRecord::sign(&key, Address::of(b"twin"), 1, 1).unwrap();
        assert!(matches!(
            names.publish(&name, &twin.encode().unwrap()).await,
            Err(NameFailure::Stale { .. })
        ));
        let mut forged =
            NameRecord::sign(&SigningKey::generate(), Address::of(b"x"), 5, 1).unwrap();
        forged.key = name.clone();
        let err = names
            .publish(&name, &serde_ipld_dagcbor::to_vec(&forged).unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind().status(), err.code()),
            (400, "invalid_name_record")
        );
        let v2 = NameRecord::sign(&key, Address::of(b"v2"), 2, 1).unwrap();
        names.publish(&name, &v2.encode().unwrap()).await.unwrap();
        assert_eq!(
            names.resolve(&name).await.unwrap().target,
            Address::of(b"v2")
        );
        assert!(names.resolve("ed25519/xyz").await.is_err());
        // A valid record published as another name.
        let other = ron_auth::public_text(&SigningKey::generate().public());
        let err = names
            .publish(&other, &v2.encode().unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind().status(), err.code()),
            (400, "invalid_name_record")
        );
    }
}
