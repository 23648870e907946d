//! The metadata tables in redb.

use redb::TableDefinition;

/// Object address -> DAG-CBOR manifest.
pub(crate) const OBJECTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("objects");
/// Chunk address -> (number of objects referencing it, its length).
pub(crate) const CHUNKS: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("chunks");
/// Pinned object addresses.
pub(crate) const PINS: TableDefinition<&[u8; 32], ()> = TableDefinition::new("pins");
/// Unpinned (cached) object address -> the order it became unpinned in (a running sequence):
/// the cache budget evicts the oldest first.
pub(crate) const CACHED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("cached");
/// Object address -> when it was first stored here (Unix seconds). Objects stored before
/// this table existed have no entry.
pub(crate) const STORED_AT: TableDefinition<&[u8; 32], u64> = TableDefinition::new("stored_at");
/// Objects their owner unpinned (not copies fetched from peers): the periodic collection
/// removes them, where fetched copies are kept within the cache budget.
pub(crate) const RELEASED: TableDefinition<&[u8; 32], ()> = TableDefinition::new("released");
/// Records this node publishes for their owners (signed names): key -> value, kept so they
/// can be published again after a restart.
pub(crate) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Objects kept for peers under a lease (shards and layouts of objects they protect): object
/// address -> (Unix second the lease ends, its size). Such an object is pinned while its lease
/// runs; an owner's pin replaces the lease.
pub(crate) const LEASES: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("leases");
/// Protected objects this node watches over (it holds their layout): object -> layout address.
pub(crate) const WATCHED: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("watched");
/// Uploads to protect once enough peers are known: object -> (k, m).
pub(crate) const INTENTS: TableDefinition<&[u8; 32], (u8, u8)> = TableDefinition::new("intents");
/// Where an unfinished repair of a watched object stopped: object -> the next chunk.
pub(crate) const PROGRESS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("progress");
/// Running totals: `bytes_stored` (unique chunk bytes), `bytes_logical` (object bytes).
pub(crate) const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");

pub(crate) const BYTES_STORED: &str = "bytes_stored";
pub(crate) const BYTES_LOGICAL: &str = "bytes_logical";
/// Bytes of objects kept under a lease.
pub(crate) const BYTES_LEASED: &str = "bytes_leased";
/// The next value of [`CACHED`]'s sequence.
pub(crate) const CACHE_SEQ: &str = "cache_seq";
