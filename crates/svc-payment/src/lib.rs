//! Payment: the node's credit ledger and what requests cost.
//!
//! - [`ledger`]: a double-entry credit ledger in redb with TigerBeetle's invariants (sums
//!   zero, each id once, pending transfers resolved once or voided by their timeout, no
//!   overdraft where forbidden), many transfers per fsynced commit.
//! - [`pow`]: the proof-of-work challenges of anonymous reads (issued signed by the node,
//!   each answer accepted once, the difficulty rising with load).
//! - [`Payment`]: the service. Prices per operation from `[payment]`; a request whose holder
//!   lacks the credits answers `402 payment_required` with the price and the balance; the
//!   owner is never charged. Credits are granted by the owner (`ron credits grant`).
#![forbid(unsafe_code)]

pub mod ledger;
mod metrics;
mod peers;
pub mod pow;
mod service;
pub mod settlement;

use ron_kernel::config::{FieldError, Section};
use ron_proto::{ErrorKind, Failure, PaymentDue, PowChallenge};
use serde::{Deserialize, Serialize};

pub use metrics::PaymentMetrics;
pub use peers::{ChequeError, PeerAccount, peer_account, peer_key};
pub use service::{Payment, Reservation, Settlement, accounts, codes};

/// Credits per operation (`{ get = 1, put = 2 }`; an operation left out costs nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpPrices {
    /// Reading an object (`GET`, OAP/1 `get`, a path inside a collection).
    pub get: u64,
    /// Storing an object (`POST /put`, OAP/1 `put`).
    pub put: u64,
}

/// A flat price: `credits` buy every request for `period_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flat {
    /// What a period costs.
    pub credits: u64,
    /// How long a period lasts, in seconds.
    pub period_s: u64,
}

/// What a request without a token meets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Served as before (rate limits only).
    #[default]
    Free,
    /// A read of a small object (`pow_max_bytes`) needs a proof of work.
    Pow,
}

/// `[payment]`. Every field is live but `sync_ms`. With the defaults nothing is charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentSection {
    /// Credits per request, by operation.
    pub per_request: OpPrices,
    /// Credits per MiB moved (each MiB started counts), by operation.
    pub per_mib: OpPrices,
    /// A flat price instead: once paid, an identity's requests are free for the period.
    pub flat: Option<Flat>,
    /// What a request without a token meets: `"free"` (default) or `"pow"`.
    pub anonymous: Anonymous,
    /// With `anonymous = "pow"`: objects up to this size need a proof of work (default 1 MiB).
    pub pow_max_bytes: u64,
    /// The difficulty when the node is quiet, in bits (default 16: about 65,000 hashes).
    pub pow_bits: u8,
    /// Anonymous reads per second the node takes before the difficulty rises one bit per
    /// doubling (default 100).
    pub pow_target_per_s: u32,
    /// How long an upload's credits stay reserved before they are given back (default 3600 s).
    pub reserve_s: u64,
    /// Charges are fsynced before their request is served (default true). False: a charge
    /// is admitted against the credits the ledger holds less the charges on their way to it,
    /// its request is served at once, and the charges are committed (fsynced) every
    /// `sync_ms`. A crash can then lose the charges of the requests served in those last
    /// milliseconds; the ledger stays balanced and no account is overdrawn.
    pub durable_charges: bool,
    /// With `durable_charges = false`: how often waiting charges are committed (default
    /// 10 ms; read when the service starts).
    pub sync_ms: u64,
    /// Credits per MiB of ranges served to a peer, and owed for those received from one
    /// (default 1; 0: peers do not settle).
    pub peer_per_mib: u64,
    /// A cheque is sent to a peer once this node owes it this many credits (default 16).
    pub peer_pay_at: u64,
    /// A peer owing this node this many credits is refused ranges (429) until it pays
    /// (default 64).
    pub peer_debt_limit: u64,
}

impl Default for PaymentSection {
    fn default() -> Self {
        Self {
            per_request: OpPrices::default(),
            per_mib: OpPrices::default(),
            flat: None,
            anonymous: Anonymous::Free,
            pow_max_bytes: 1 << 20,
            pow_bits: 16,
            pow_target_per_s: 100,
            reserve_s: 3600,
            durable_charges: true,
            sync_ms: 10,
            peer_per_mib: 1,
            peer_pay_at: 16,
            peer_debt_limit: 64,
        }
    }
}

impl PaymentSection {
    /// What `op` moving `bytes` costs (saturating; 0: free).
    pub fn price(&self, op: Priced, bytes: u64) -> u64 {
        let (request, mib) = match op {
            Priced::Get => (self.per_request.get, self.per_mib.get),
            Priced::Put => (self.per_request.put, self.per_mib.put),
        };
        request.saturating_add(mib.saturating_mul(bytes.div_ceil(1 << 20)))
    }

    /// Whether anything is charged to holders of tokens.
    pub fn charges(&self) -> bool {
        self.flat.is_some()
            || self.per_request != OpPrices::default()
            || self.per_mib != OpPrices::default()
    }
}

impl Section for PaymentSection {
    const NAME: &'static str = "payment";

    fn validate(&self) -> Result<(), FieldError> {
        if let Some(flat) = self.flat
            && (flat.credits == 0 || flat.period_s == 0)
        {
            return Err(FieldError::new(
                "flat",
                "credits and period_s must be above 0",
            ));
        }
        if !(1..=40).contains(&self.pow_bits) {
            return Err(FieldError::new("pow_bits", "must be between 1 and 40"));
        }
        if self.pow_target_per_s == 0 {
            return Err(FieldError::new("pow_target_per_s", "must be above 0"));
        }
        if !(1..=1000).contains(&self.sync_ms) {
            return Err(FieldError::new("sync_ms", "must be between 1 and 1000"));
        }
        if self.peer_pay_at == 0 {
            return Err(FieldError::new("peer_pay_at", "must be above 0"));
        }
        if self.peer_debt_limit == 0 {
            return Err(FieldError::new("peer_debt_limit", "must be above 0"));
        }
        if !(1..=86_400).contains(&self.reserve_s) {
            return Err(FieldError::new("reserve_s", "must be between 1 and 86400"));
        }
        Ok(())
    }
}

/// An operation with a price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priced {
    /// A read.
    Get,
    /// An upload.
    Put,
}

impl Priced {
    /// The transfer code of a charge for it.
    fn code(self) -> u16 {
        match self {
            Priced::Get => service::codes::GET,
            Priced::Put => service::codes::PUT,
        }
    }
}

/// Why a request is not paid for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The holder lacks the credits (402).
    #[error(
        "not enough credits: the price is {price} and the balance {balance}; ask the node's owner for credits"
    )]
    Required {
        /// What it costs.
        price: u64,
        /// What the holder has available.
        balance: i64,
    },
    /// An anonymous read that needs a proof of work (402 with the challenge).
    #[error(
        "{reason}: solve the challenge in `payment.pow` and send the request again with the header `ron-pow: <challenge>.<nonce>` (`ron get` does this)"
    )]
    Pow {
        /// Why (no answer, a wrong, stale or replayed one).
        reason: &'static str,
        /// The challenge to solve.
        challenge: PowChallenge,
    },
    /// A ledger change refused (grants: a bad account, zero credits).
    #[error("{0}")]
    Refused(#[from] ledger::Refusal),
    /// A deposit whose proof the node's settlement cannot check (400).
    #[error("{0}")]
    Unsettled(&'static str),
    /// Too many answers to remember, or the committer's queue is full (503).
    #[error("the payment service is busy; retry later")]
    Busy,
    /// The ledger's store failed.
    #[error(transparent)]
    Store(#[from] ledger::StoreError),
    /// The service is stopping.
    #[error("the payment service is not running")]
    Stopped,
}

impl Failure for PaymentError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Required { .. } | Self::Pow { .. } => ErrorKind::PaymentRequired,
            Self::Refused(_) | Self::Unsettled(_) => ErrorKind::BadInput,
            Self::Busy | Self::Stopped => ErrorKind::Overloaded,
            Self::Store(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Pow { .. } => "pow_required",
            other => other.kind().code(),
        }
    }

    fn payment(&self) -> Option<PaymentDue> {
        match self {
            Self::Required { price, balance } => Some(PaymentDue {
                price: Some(*price),
                balance: Some(*balance),
                pow: None,
            }),
            Self::Pow { challenge, .. } => Some(PaymentDue {
                price: None,
                balance: None,
                pow: Some(challenge.clone()),
            }),
            _ => None,
        }
    }
}
