//! Mailboxes: end-to-end encrypted store-and-forward mail between identities.
//!
//! - [`envelope`]: HPKE-sealed, sender-signed, padded envelopes (sealed sender: a mailbox
//!   node sees the recipient and a size bucket, nothing else); receipts.
//! - [`record`]: the signed mail record in the DHT naming a user's mail key and mailbox nodes.
//! - [`proof`]: the signature on a request proving its key (fetch and ack need the owner's).
//! - [`queue`]: per-recipient queues, acknowledged ids and the outbox, in redb; many changes
//!   share one fsynced commit.
//! - [`Mailbox`]: the service. A send is acknowledged once durable (group commit); fetched
//!   messages hide for a visibility timeout and come back unless acknowledged; nothing is
//!   evicted inside the retention window; quotas answer `507 mailbox_full`; senders are rate
//!   limited per key, per address and per peer. Mail for a recipient kept elsewhere is
//!   delivered to their mailbox node over the peer network (`keep`, role `mail`), or kept in
//!   the durable outbox and retried with backoff and jitter.
#![forbid(unsafe_code)]

pub mod envelope;
#[cfg(feature = "service")]
mod metrics;
pub mod proof;
pub mod queue;
pub mod record;
#[cfg(feature = "service")]
mod service;

use ron_kernel::config::{FieldError, Section};
use ron_proto::{ErrorKind, Failure};
use serde::{Deserialize, Serialize};

#[cfg(feature = "service")]
pub use metrics::MailMetrics;
#[cfg(feature = "service")]
pub use service::{Delivered, Mailbox, Sender, Sent, SocketGuard};

/// `[mail]`. Every field is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSection {
    /// Keep mailboxes and accept mail (default true).
    pub enabled: bool,
    /// Largest envelope accepted, in bytes (default 1 MiB; 1 KiB to 1 MiB): the top bucket.
    pub max_message_bytes: usize,
    /// How long a fetched message stays hidden unless acknowledged (default 30 s).
    pub visibility_timeout_s: u64,
    /// How long an unacknowledged message is kept: nothing younger is ever removed
    /// (default 7 days, at least 1 hour).
    pub retention_s: u64,
    /// Messages queued per recipient at most (default 10,000).
    pub quota_messages: u64,
    /// Envelope bytes queued per recipient at most (default 256 MiB).
    pub quota_bytes: u64,
    /// Mailboxes this node keeps at most (default 10,000).
    pub max_mailboxes: u64,
    /// Sends per second per sender (its key, else its address; a peer for the peer network),
    /// sustained (default 100; the node's own addresses, `limits.exempt`, are not limited).
    pub sender_rate_per_s: u32,
    /// Sends a sender may burst above the rate (default 1,000).
    pub sender_burst: u32,
    /// Envelopes waiting in the outbox at most (default 100,000).
    pub outbox_max: u64,
    /// Longest wait between two attempts of an outbox entry (default 300 s).
    pub retry_max_s: u64,
}

impl Default for MailSection {
    fn default() -> Self {
        Self {
            enabled: true,
            max_message_bytes: envelope::MAX_BUCKET,
            visibility_timeout_s: 30,
            retention_s: 7 * 24 * 3600,
            quota_messages: 10_000,
            quota_bytes: 256 << 20,
            max_mailboxes: 10_000,
            sender_rate_per_s: 100,
            sender_burst: 1_000,
            outbox_max: 100_000,
            retry_max_s: 300,
        }
    }
}

impl Section for MailSection {
    const NAME: &'static str = "mail";

    fn validate(&self) -> Result<(), FieldError> {
        if !(envelope::MIN_BUCKET..=envelope::MAX_BUCKET).contains(&self.max_message_bytes) {
            return Err(FieldError::new(
                "max_message_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if !(1..=3600).contains(&self.visibility_timeout_s) {
            return Err(FieldError::new(
                "visibility_timeout_s",
                "must be between 1 and 3600",
            ));
        }
        if self.retention_s < 3600 {
            return Err(FieldError::new("retention_s", "must be at least 3600"));
        }
        if self.quota_messages == 0 || self.quota_bytes < envelope::MAX_BUCKET as u64 {
            return Err(FieldError::new(
                "quota_messages",
                "quotas must allow at least one message of the largest size",
            ));
        }
        if self.sender_rate_per_s == 0 || self.sender_burst == 0 {
            return Err(FieldError::new(
                "sender_rate_per_s",
                "rate and burst must be above 0",
            ));
        }
        if !(1..=86_400).contains(&self.retry_max_s) {
            return Err(FieldError::new(
                "retry_max_s",
                "must be between 1 and 86400",
            ));
        }
        Ok(())
    }
}

/// Why a mail operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// Mail is off on this node.
    #[error("this node keeps no mail (mail.enabled = false)")]
    Disabled,
    /// Not an envelope.
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    /// Larger than the node accepts.
    #[error("an envelope is at most {max} bytes here")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A malformed or forged mail record.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// A record not naming this node, or otherwise unusable here.
    #[error("{0}")]
    BadRecord(String),
    /// A record at least as new is kept.
    #[error("a mail record with sequence {held} is kept; publish a higher one")]
    Stale {
        /// The sequence kept.
        held: u64,
    },
    /// No valid proof of the key.
    #[error(transparent)]
    Proof(#[from] proof::ProofError),
    /// This node keeps no mailbox for the recipient, and does not forward for this sender.
    #[error("no mailbox for {0} here")]
    NoMailbox(String),
    /// No mail record of the recipient was found.
    #[error("no mail record of {0} was found: the recipient has not registered a mailbox")]
    Unknown(String),
    /// The recipient's mailbox is full.
    #[error("{0}")]
    Full(String),
    /// This node keeps no more mailboxes.
    #[error("this node keeps no more mailboxes")]
    TooManyMailboxes,
    /// The outbox is full.
    #[error("the outbox is full; retry later")]
    OutboxFull,
    /// The sender sends too fast.
    #[error("too many messages from this sender; retry in {retry_ms} ms")]
    RateLimited {
        /// When the sender may send again.
        retry_ms: u64,
    },
    /// The recipient's mailbox node refused it.
    #[error("the recipient's mailbox node refused it: {1}")]
    Refused(ErrorKind, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] queue::QueueError),
    /// The service is stopping.
    #[error("the mailbox service is not running")]
    Stopped,
}

impl Failure for MailError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Disabled | Self::NoMailbox(_) | Self::Unknown(_) => ErrorKind::NotFound,
            Self::Envelope(_) | Self::Record(_) | Self::BadRecord(_) => ErrorKind::BadInput,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Stale { .. } => ErrorKind::Conflict,
            Self::Proof(_) => ErrorKind::Unauthorized,
            Self::Full(_) | Self::TooManyMailboxes => ErrorKind::InsufficientStorage,
            Self::OutboxFull | Self::Stopped => ErrorKind::Overloaded,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Refused(kind, _) => *kind,
            Self::Store(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Disabled => "mail_disabled",
            Self::Envelope(_) => "invalid_envelope",
            Self::Record(_) | Self::BadRecord(_) => "invalid_mail_record",
            Self::Stale { .. } => "stale_mail_record",
            Self::Proof(_) => "bad_mail_proof",
            Self::NoMailbox(_) => "no_mailbox",
            Self::Unknown(_) => "unknown_recipient",
            Self::Full(_) => "mailbox_full",
            Self::TooManyMailboxes => "no_room_for_mailbox",
            Self::Refused(ErrorKind::InsufficientStorage, _) => "mailbox_full",
            Self::Refused(ErrorKind::NotFound, _) => "no_mailbox",
            other => other.kind().code(),
        }
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_ms } => Some(*retry_ms),
            Self::Full(_) | Self::Refused(ErrorKind::InsufficientStorage, _) => Some(60_000),
            other => ron_proto::retry_policy(other.kind()),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
