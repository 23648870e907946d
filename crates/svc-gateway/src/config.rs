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
    /// Deadline for a whole request, in milliseconds (default 10000, 1 to 3600000). Live.
    pub request_timeout_ms: u64,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            request_timeout_ms: 10_000,
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
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        unchanged("listen", &self.listen, &next.listen)
    }
}
