//! The `[auth]` config section.

use ron_kernel::config::{FieldError, Section};
use serde::{Deserialize, Serialize};

use crate::keys::parse_public;

/// `[auth]`. Every field is live: a change applies without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Public keys (`ed25519/<hex>`) whose tokens this node accepts, besides its own
    /// signing keys (default none).
    pub trusted_roots: Vec<String>,
    /// Revocation ids (hex, as `ron cap inspect` prints them) of refused tokens: a token any
    /// of whose blocks is listed is refused, and so is everything attenuated from it
    /// (default none).
    pub revoked: Vec<String>,
    /// Days a capability-signing key signs before the node replaces it (default 30, 1 to 365).
    pub key_max_age_days: u32,
    /// Days a replaced key still verifies the tokens it signed (default 7, 0 to 365).
    pub key_grace_days: u32,
    /// Accept writes without a token (default false).
    pub anonymous_put: bool,
    /// Require a token for reads as well (default false).
    pub protect_reads: bool,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            trusted_roots: Vec::new(),
            revoked: Vec::new(),
            key_max_age_days: 30,
            key_grace_days: 7,
            anonymous_put: false,
            protect_reads: false,
        }
    }
}

impl Section for AuthSection {
    const NAME: &'static str = "auth";

    fn validate(&self) -> Result<(), FieldError> {
        for (i, root) in self.trusted_roots.iter().enumerate() {
            parse_public(root).map_err(|_| {
                FieldError::new(
                    format!("trusted_roots[{i}]"),
                    "expected a public key ed25519/<64 hex>",
                )
            })?;
        }
        for (i, id) in self.revoked.iter().enumerate() {
            let ok = id.len() == 128 && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(FieldError::new(
                    format!("revoked[{i}]"),
                    "expected a revocation id: 128 hex digits",
                ));
            }
        }
        if !(1..=365).contains(&self.key_max_age_days) {
            return Err(FieldError::new(
                "key_max_age_days",
                "must be between 1 and 365",
            ));
        }
        if self.key_grace_days > 365 {
            return Err(FieldError::new(
                "key_grace_days",
                "must be between 0 and 365",
            ));
        }
        Ok(())
    }
}
