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
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            gc_interval_s: 3600,
            durability: "4+2".into(),
            shard_budget_bytes: 8 << 30,
            repair_interval_s: 60,
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
        Ok(())
    }
}
