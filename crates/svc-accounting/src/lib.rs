//! Accounting: who used what.
//!
//! - [`rollup`]: usage per identity per minute and per hour in redb (`usage.redb`), zero rows
//!   for quiet windows of active identities, the ledger position in the same transaction.
//! - [`Accounting`]: the service. Requests the ledger charged are read from the ledger
//!   (counted once, never twice, never lost, whatever crashes); others are metered in memory
//!   and rolled up every second. Quotas per identity per hour are checked before a request
//!   is served; `UsageTick` and `QuotaExceeded` go out on the service's own broadcast.
#![forbid(unsafe_code)]

pub mod rollup;
mod service;

use std::net::IpAddr;

use ron_auth::Holder;
use ron_kernel::config::{FieldError, Section};
use ron_proto::{ErrorKind, Failure};
use serde::{Deserialize, Serialize};

pub use rollup::{Row, Usage, Window};
pub use service::{Accounting, UsageEvent};

/// `[accounting]`. Every field is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountingSection {
    /// Meter usage (default true).
    pub enabled: bool,
    /// Requests per identity per hour (0: no quota; the owner has none). Default 0.
    pub quota_requests_per_hour: u64,
    /// Bytes in and out per identity per hour (0: no quota). Default 0.
    pub quota_bytes_per_hour: u64,
}

impl Default for AccountingSection {
    fn default() -> Self {
        Self {
            enabled: true,
            quota_requests_per_hour: 0,
            quota_bytes_per_hour: 0,
        }
    }
}

impl Section for AccountingSection {
    const NAME: &'static str = "accounting";

    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Who a request is metered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    /// The token's holder.
    Holder(Holder),
    /// No token: the client's address (an IPv6 one by its /64).
    Anonymous(IpAddr),
}

impl Who {
    /// A request's identity: its token's holder, else its client address.
    pub fn of(holder: Option<Holder>, client: Option<IpAddr>) -> Who {
        match (holder, client) {
            (Some(h), _) => Who::Holder(h),
            (None, Some(ip)) => Who::Anonymous(ip),
            (None, None) => Who::Anonymous(IpAddr::from([0, 0, 0, 0])),
        }
    }

    /// A mail sender: the key it proved, else its token's holder, else its address.
    pub fn sender(key: Option<[u8; 32]>, holder: Option<Holder>, client: Option<IpAddr>) -> Who {
        match key {
            Some(k) => Who::Holder(Holder::Key(k)),
            None => Who::of(holder, client),
        }
    }

    /// The identity's name: `owner`, `ed25519/<hex>`, `anon/<address>`.
    pub fn identity(&self) -> String {
        match self {
            Who::Holder(h) => h.account(),
            Who::Anonymous(IpAddr::V4(v4)) => format!("anon/{v4}"),
            Who::Anonymous(IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("anon/{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

/// Why a request is refused by accounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountingError {
    /// The identity's hourly quota is spent (429 `quota_exceeded`).
    #[error("the hourly quota of {what} for {identity} is spent ({limit}); it renews at the hour")]
    QuotaExceeded {
        /// Whose.
        identity: String,
        /// `requests` or `bytes`.
        what: &'static str,
        /// The quota.
        limit: u64,
        /// Until the hour turns.
        retry_ms: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rollup::StoreError),
}

impl Failure for AccountingError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::QuotaExceeded { .. } => ErrorKind::RateLimited,
            Self::Store(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::Store(_) => "internal",
        }
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::QuotaExceeded { retry_ms, .. } => Some((*retry_ms).max(1)),
            Self::Store(_) => None,
        }
    }
}
