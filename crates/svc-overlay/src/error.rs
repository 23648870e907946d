//! Why an object operation failed: one type for every operation the edges call, each variant
//! with its shared kind, a message safe to show a client and the retry hint
//! ([`ron_proto::Failure`]), so HTTP and OAP/1 answer the same failure the same way.

use ron_proto::collection::CollectionError;
use ron_proto::{Address, ErrorKind, Failure};
use svc_storage::{PutError, ReadError, StoreError};

/// Why an object operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// The overlay is down (restarting, quarantined or stopped); the command was not run, or
    /// was lost with the incarnation that was running it.
    #[error("object service unavailable")]
    Unavailable,
    /// Too many operations are waiting; retry later.
    #[error("object service busy")]
    Busy,
    /// Neither this node nor (when it has peers) any other node holds the object.
    #[error("no object {0}")]
    NotFound(Address),
    /// The stored bytes fail verification, and no verified copy could be had from peers to
    /// repair them: nothing unverified is ever served instead.
    #[error("the stored copy of {0} is damaged and no peer could repair it")]
    Damaged(Address),
    /// The upload passed the size limit in force.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The uploaded bytes are not the object the client announced.
    #[error("content is {actual}, not the expected {expected}")]
    Mismatch {
        /// What the client announced.
        expected: Address,
        /// What the bytes hash to.
        actual: Address,
    },
    /// The media type is not acceptable.
    #[error("invalid media type {0:?}")]
    MediaType(String),
    /// Finding the object on other nodes (and proving its size) took past the fetch deadline.
    #[error("no provider answered in time")]
    FetchTimeout,
    /// Providers were found but none delivered the object (each one's failure, joined).
    #[error("the object could not be fetched from its providers: {0}")]
    FetchFailed(String),
    /// An upload declared as a collection is not a valid one: nothing is stored.
    #[error("invalid collection: {0}")]
    InvalidCollection(CollectionError),
    /// A path was walked through an object that is not a valid collection.
    #[error("{0} is not a collection: {1}")]
    NotACollection(Address, CollectionError),
    /// A path inside a collection is malformed (traversal, empty or over-deep).
    #[error("invalid path: {0}")]
    BadPath(CollectionError),
    /// The collection holds nothing at this path.
    #[error("no entry {path:?} in {root}")]
    NoSuchPath {
        /// The collection walked.
        root: Address,
        /// The path, as far as it was walked.
        path: String,
    },
    /// No full copy could be had, and too few shards of a protected object survive to
    /// rebuild it: nothing is served.
    #[error("{address} is lost: {why}")]
    Lost {
        /// The object.
        address: Address,
        /// Which chunk lacks shards, and how many it has of those it needs.
        why: String,
    },
    /// A dependency is failing (the disk, the DHT, every provider's peer): its circuit is
    /// open and calls fail fast until a probe succeeds.
    #[error(transparent)]
    CircuitOpen(#[from] supervisor::Open),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Failure for OverlayError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable | Self::Busy | Self::FetchFailed(_) | Self::CircuitOpen(_) => {
                ErrorKind::Overloaded
            }
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Damaged(_) | Self::Lost { .. } => ErrorKind::Damaged,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Mismatch { .. } => ErrorKind::ContentMismatch,
            Self::MediaType(_)
            | Self::InvalidCollection(_)
            | Self::NotACollection(..)
            | Self::BadPath(_) => ErrorKind::BadInput,
            Self::NoSuchPath { .. } => ErrorKind::NotFound,
            Self::FetchTimeout => ErrorKind::Timeout,
            Self::Store(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            // Not the node's load: the providers failed (offline, refusing, lying).
            Self::FetchFailed(_) => "providers_unavailable",
            Self::InvalidCollection(_) => "invalid_collection",
            Self::NotACollection(..) => "not_a_collection",
            Self::BadPath(_) => "invalid_path",
            Self::Lost { .. } => "lost",
            Self::CircuitOpen(_) => "circuit_open",
            other => other.kind().code(),
        }
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            // When the next probe may go through, at least a second away.
            Self::CircuitOpen(open) => Some(
                u64::try_from(open.retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1000),
            ),
            other => ron_proto::retry_policy(other.kind()),
        }
    }
}

impl OverlayError {
    /// The shared error kind (see [`Failure::kind`]).
    pub fn kind(&self) -> ErrorKind {
        Failure::kind(self)
    }

    /// Whether the disk is to blame: an I/O or database error (a full disk is not a fault).
    pub(crate) fn is_disk_fault(&self) -> bool {
        matches!(self, Self::Store(StoreError::Io { .. } | StoreError::Db(_)))
    }
}

impl From<ReadError> for OverlayError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Damaged { address, .. } | ReadError::MissingChunk { address, .. } => {
                Self::Damaged(address)
            }
            ReadError::Store(e) => Self::Store(e),
            other => Self::Store(StoreError::Internal(other.to_string())),
        }
    }
}

impl From<PutError> for OverlayError {
    fn from(e: PutError) -> Self {
        match e {
            PutError::TooLarge { limit } => Self::TooLarge { limit },
            PutError::Mismatch { expected, actual } => Self::Mismatch { expected, actual },
            PutError::MediaType(mt) => Self::MediaType(mt),
            PutError::Store(e) => Self::Store(e),
            other => Self::Store(StoreError::Internal(other.to_string())),
        }
    }
}

/// How a fetch from peers ended badly, kept cheap to clone: every request that joined the
/// fetch is told the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    NotFound(Address),
    Timeout,
    Failed(String),
    CircuitOpen(supervisor::Open),
}

impl FetchError {
    /// The `outcome` label of `p2p_fetches_total`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Timeout => "timeout",
            Self::Failed(_) => "failed",
            Self::CircuitOpen(_) => "circuit_open",
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(addr) => write!(f, "no node provides {addr}"),
            Self::Timeout => f.write_str("no provider answered in time"),
            Self::Failed(why) => f.write_str(why),
            Self::CircuitOpen(open) => open.fmt(f),
        }
    }
}

impl From<FetchError> for OverlayError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotFound(addr) => Self::NotFound(addr),
            FetchError::Timeout => Self::FetchTimeout,
            FetchError::Failed(why) => Self::FetchFailed(why),
            FetchError::CircuitOpen(open) => Self::CircuitOpen(open),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_and_a_safe_message() {
        let addr = Address::of(b"x");
        let cases = [
            (OverlayError::NotFound(addr), 404, "not_found"),
            (OverlayError::Damaged(addr), 503, "damaged"),
            (OverlayError::Busy, 503, "overloaded"),
            (
                OverlayError::FetchFailed("peer a: offline".into()),
                503,
                "providers_unavailable",
            ),
            (OverlayError::FetchTimeout, 504, "timeout"),
            (OverlayError::TooLarge { limit: 1 }, 413, "too_large"),
            (
                OverlayError::Mismatch {
                    expected: addr,
                    actual: Address::of(b"y"),
                },
                422,
                "content_mismatch",
            ),
            (
                OverlayError::InvalidCollection(CollectionError::Version(9)),
                400,
                "invalid_collection",
            ),
            (
                OverlayError::NotACollection(addr, CollectionError::Decode("map".into())),
                400,
                "not_a_collection",
            ),
            (
                OverlayError::BadPath(CollectionError::TooDeep),
                400,
                "invalid_path",
            ),
            (
                OverlayError::NoSuchPath {
                    root: addr,
                    path: "a/b".into(),
                },
                404,
                "not_found",
            ),
        ];
        for (e, status, code) in cases {
            let body = e.body();
            assert_eq!(
                (e.kind().status(), body.code.as_ref()),
                (status, code),
                "{e}"
            );
            assert_eq!(
                body.retry_after_ms.is_some(),
                e.kind().is_retryable(),
                "{e}"
            );
        }
        let internal = OverlayError::Store(StoreError::Internal("/secret/path".into()));
        assert_eq!(internal.body().message, "internal error");
    }

    #[test]
    fn damage_read_from_disk_is_damage_of_the_object() {
        let addr = Address::of(b"object");
        let read = ReadError::MissingChunk {
            address: addr,
            chunk: Address::of(b"chunk"),
        };
        assert!(matches!(OverlayError::from(read), OverlayError::Damaged(a) if a == addr));
    }
}
