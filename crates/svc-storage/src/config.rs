//! The `[storage]` config section.

use ron_kernel::config::{FieldError, Section};
use serde::{Deserialize, Serialize};

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Seconds between garbage collections of unpinned objects and unreferenced chunks
    /// (default 3600, 1 to 604800). Live.
    pub gc_interval_s: u64,
    /// How pinned uploads are protected across nodes: `"K+M"` (default `"4+2"`: each chunk
    /// cut into 4 data and 2 parity shards placed on 6 distinct peers), or `"none"`. Live
    /// (for uploads after the change).
    pub durability: String,
    /// Most bytes of shards and layouts this node keeps for peers (default 8 GiB; 0 keeps
    /// none). Live.
    pub shard_budget_bytes: u64,
    /// Seconds between the repair worker's passes over the objects this node watches
    /// (default 60, 1 to 86400). Live.
    pub repair_interval_s: u64,
    /// Most bytes per second the repair worker moves (shards read to rebuild chunks plus
    /// shards written to peers, first placements included), so that repair never crowds out
    /// the node's own traffic on a thin link (default 0: no limit; else at least 1 MiB/s).
    /// Live.
    pub repair_bytes_per_s: u64,
    /// Bytes kept free on the file system holding the data dir: a write that would leave less
    /// is refused with 507 `insufficient_storage` (uploads, fetched copies, shards kept for
    /// peers), reads go on, and writes resume by themselves once there is room (default
    /// 256 MiB; 0: only a full file system refuses them). The reserve keeps the metadata
    /// database's own commits from ever meeting a full disk. Live.
    pub min_free_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            gc_interval_s: 3600,
            durability: "4+2".into(),
            shard_budget_bytes: 8 << 30,
            repair_interval_s: 60,
            repair_bytes_per_s: 0,
            min_free_bytes: 256 << 20,
        }
    }
}

impl StorageSection {
    /// The scheme uploads are protected with, or `None` (`"none"`).
    pub fn scheme(&self) -> Option<ron_proto::layout::Scheme> {
        parse_durability(&self.durability).ok().flatten()
    }
}

use ron_proto::layout::parse_durability;

/// The lowest repair rate a node accepts (a chunk's turn stays within seconds).
const MIN_REPAIR_RATE: u64 = 1 << 20;

impl Section for StorageSection {
    const NAME: &'static str = "storage";

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=604_800).contains(&self.gc_interval_s) {
            return Err(FieldError::new(
                "gc_interval_s",
                "must be between 1 and 604800",
            ));
        }
        if let Err(e) = parse_durability(&self.durability) {
            return Err(FieldError::new(
                "durability",
                format!("must be \"none\" or K+M: {e}"),
            ));
        }
        if !(1..=86_400).contains(&self.repair_interval_s) {
            return Err(FieldError::new(
                "repair_interval_s",
                "must be between 1 and 86400",
            ));
        }
        if self.repair_bytes_per_s != 0 && self.repair_bytes_per_s < MIN_REPAIR_RATE {
            return Err(FieldError::new(
                "repair_bytes_per_s",
                "must be 0 (no limit) or at least 1048576",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_repair_rate_is_none_or_at_least_a_mebibyte_per_second() {
        let with = |rate| StorageSection {
            repair_bytes_per_s: rate,
            ..StorageSection::default()
        };
        assert!(with(0).validate().is_ok());
        assert!(with(1 << 20).validate().is_ok());
        let err = with(4096).validate().unwrap_err();
        assert!(err.to_string().contains("repair_bytes_per_s"), "{err}");
    }
}
