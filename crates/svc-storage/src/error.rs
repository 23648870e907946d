//! Storage errors, each with its shared [`ErrorKind`].

use ron_proto::{Address, ErrorKind, ManifestError};

/// A failure of the store itself: I/O, the database, or damage found on disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(String),
    /// Stored metadata does not decode.
    #[error("stored manifest of {address} is damaged: {source}")]
    Manifest {
        /// The object.
        address: Address,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// Keeping a blob for a peer would pass the budget for such blobs.
    #[error("no room: blobs kept for peers would pass their budget of {budget} bytes")]
    NoRoom {
        /// The budget (`storage.shard_budget_bytes`).
        budget: u64,
    },
    /// No room on the disk: the write would leave less than `storage.min_free_bytes` free,
    /// or the file system is full (507; writes resume once there is room).
    #[error("no room on the disk: {0}")]
    Full(String),
    /// The pool is shutting down.
    #[error("storage is shutting down")]
    Shutdown,
    /// Anything else that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// The shared error kind (internal, but for a full budget or a store shutting down).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Shutdown => ErrorKind::Overloaded,
            Self::NoRoom { .. } => ErrorKind::TooLarge,
            Self::Full(_) => ErrorKind::InsufficientStorage,
            _ => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                // Paths go to the log, not to the client.
                tracing::warn!(%what, error = %source, "the file system is full");
                Self::Full("the file system is full".into())
            }
            _ => Self::Io { what, source },
        }
    }
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// The upload passed the size limit.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The content's address is not the one the client announced.
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PutError {
    /// The shared error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Mismatch { .. } => ErrorKind::ContentMismatch,
            Self::MediaType(_) => ErrorKind::BadInput,
            Self::Store(e) => e.kind(),
        }
    }
}

/// Why bytes could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Stored bytes failed verification against the object's address.
    #[error("{address}: stored bytes at {offset}..{end} fail verification")]
    Damaged {
        /// The object.
        address: Address,
        /// First byte of the window that failed.
        offset: u64,
        /// End of that window.
        end: u64,
    },
    /// A chunk file the object needs is missing or short.
    #[error("{address}: chunk {chunk} is missing or truncated")]
    MissingChunk {
        /// The object.
        address: Address,
        /// The chunk.
        chunk: Address,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReadError {
    /// The shared error kind: stored bytes that fail verification, or are missing, are
    /// [`ErrorKind::Damaged`] (503 `damaged`); a failing store is its own kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Store(e) => e.kind(),
            Self::Damaged { .. } | Self::MissingChunk { .. } => ErrorKind::Damaged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_system_is_507_and_other_io_errors_are_internal() {
        for kind in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::QuotaExceeded,
        ] {
            let e = StoreError::io("write chunks/ab/x")(std::io::Error::from(kind));
            assert!(matches!(e, StoreError::Full(_)), "{e}");
            assert_eq!(e.kind(), ErrorKind::InsufficientStorage);
        }
        let e = StoreError::io("write")(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
