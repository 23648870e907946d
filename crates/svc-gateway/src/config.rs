//! The `[gateway]` config section.

use std::net::SocketAddr;

use ron_kernel::config::{FieldError, Section, unchanged};
use serde::{Deserialize, Serialize};

/// `[gateway]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Address of the plain-HTTP listener (default `127.0.0.1:7700`). Fixed at start;
    /// `--gateway` overrides it.
    pub listen: SocketAddr,
    /// Deadline for a whole request, in milliseconds (default 10000, 1 to 3600000), on every
    /// route except object uploads and downloads, which stream for as long as they move. Live.
    pub request_timeout_ms: u64,
    /// Largest object `POST /put` accepts, in bytes (default 4 GiB). Live.
    pub max_put_bytes: u64,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            request_timeout_ms: 10_000,
            max_put_bytes: 4 << 30,
        }
    }
}

impl Section for GatewaySection {
    const NAME: &'static str = "gateway";

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=3_600_000).contains(&self.request_timeout_ms) {
            return Err(FieldError::new(
                "request_timeout_ms",
                "must be between 1 and 3600000",
            ));
        }
        if self.max_put_bytes == 0 {
            return Err(FieldError::new("max_put_bytes", "must be positive"));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        unchanged("listen", &self.listen, &next.listen)
    }
}
