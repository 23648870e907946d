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
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            gc_interval_s: 3600,
        }
    }
}

impl Section for StorageSection {
    const NAME: &'static str = "storage";

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=604_800).contains(&self.gc_interval_s) {
            return Err(FieldError::new(
                "gc_interval_s",
                "must be between 1 and 604800",
            ));
        }
        Ok(())
    }
}
