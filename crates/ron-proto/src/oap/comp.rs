//! `COMP` payloads: zstd, inflated to at most [`MAX_INFLATE_RATIO`] x `max_frame`.

use std::io::Read;

use bytes::Bytes;

use super::MAX_INFLATE_RATIO;
use crate::ErrorKind;

/// Why a `COMP` payload could not be inflated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InflateError {
    /// The payload inflates past the limit.
    #[error("compressed payload inflates past {limit} bytes")]
    TooLarge {
        /// The limit that was in force.
        limit: usize,
    },
    /// The payload is not valid zstd.
    #[error("compressed payload is not valid zstd: {0}")]
    Corrupt(#[source] std::io::Error),
}

impl InflateError {
    /// The shared error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Corrupt(_) => ErrorKind::BadInput,
        }
    }

    /// The snake_case reason for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "decompressed_too_large",
            Self::Corrupt(_) => "bad_compression",
        }
    }
}

/// Inflates a `COMP` payload of a connection whose `max_frame` is `max_frame`. Output is
/// bounded while decoding: a bomb costs at most the limit plus one byte of memory.
pub fn inflate(payload: &[u8], max_frame: usize) -> Result<Bytes, InflateError> {
    let limit = max_frame.saturating_mul(MAX_INFLATE_RATIO);
    let decoder = zstd::stream::read::Decoder::new(payload).map_err(InflateError::Corrupt)?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(InflateError::Corrupt)?;
    if out.len() > limit {
        return Err(InflateError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// Compresses a payload for a `COMP` frame (zstd level 3).
pub fn compress(payload: &[u8]) -> Bytes {
    // Compressing an in-memory slice into a growable buffer only fails on allocation failure.
    Bytes::from(zstd::bulk::compress(payload, 3).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "zstd is C code, which Miri cannot run")]
    fn round_trip() {
        let data = b"hello hello hello hello".repeat(100);
        let packed = compress(&data);
        assert!(packed.len() < data.len());
        assert_eq!(inflate(&packed, 1 << 20).unwrap(), data);
    }

    #[test]
    #[cfg_attr(miri, ignore = "zstd is C code, which Miri cannot run")]
    fn bomb_is_refused_at_the_limit() {
        let max_frame = 1024;
        let zeros = vec![0u8; max_frame * MAX_INFLATE_RATIO + 1];
        let packed = compress(&zeros);
        assert!(packed.len() < max_frame);
        let err = inflate(&packed, max_frame).unwrap_err();
        assert_eq!(err.code(), "decompressed_too_large");
        // Exactly at the limit is fine.
        let at_limit = compress(&zeros[..max_frame * MAX_INFLATE_RATIO]);
        assert_eq!(inflate(&at_limit, max_frame).unwrap().len(), 8192);
    }

    #[test]
    #[cfg_attr(miri, ignore = "zstd is C code, which Miri cannot run")]
    fn garbage_is_corrupt() {
        let err = inflate(b"definitely not zstd", 1 << 20).unwrap_err();
        assert_eq!(err.code(), "bad_compression");
        assert_eq!(err.kind(), ErrorKind::BadInput);
    }
}
