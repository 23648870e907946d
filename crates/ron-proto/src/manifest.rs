//! The object manifest: which chunks, in which order, make an object. Encoded as DAG-CBOR;
//! unknown fields are ignored on read (newer writers may add some), everything is checked on
//! write and after every read.

use serde::{Deserialize, Serialize};

use crate::Address;

/// The manifest format version this crate writes.
pub const MANIFEST_VERSION: u32 = 1;
/// Smallest chunk FastCDC cuts (1 MiB); an object below this is one chunk.
pub const CHUNK_MIN_BYTES: usize = 1 << 20;
/// FastCDC's target chunk size (2 MiB).
pub const CHUNK_AVG_BYTES: usize = 2 << 20;
/// Largest chunk (4 MiB).
pub const CHUNK_MAX_BYTES: usize = 4 << 20;
/// Longest media type accepted.
const MAX_MEDIA_TYPE: usize = 255;

/// One chunk of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's own address (BLAKE3 of its bytes).
    pub address: Address,
    /// Its length in bytes.
    pub len: u64,
}

/// How an object is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The object's address: BLAKE3 of all its bytes.
    pub address: Address,
    /// Total size in bytes.
    pub size: u64,
    /// The chunks, in order; their lengths add up to `size`.
    pub chunks: Vec<ChunkRef>,
    /// The media type given at upload, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

/// A manifest that cannot be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not DAG-CBOR, or not a manifest.
    #[error("manifest is not valid DAG-CBOR: {0}")]
    Decode(String),
    /// A version this crate does not understand.
    #[error("manifest version {0} is not supported")]
    Version(u32),
    /// Chunk lengths do not add up, a chunk is empty or over the limit.
    #[error("manifest of {address} is inconsistent: {reason}")]
    Inconsistent {
        /// The object.
        address: Address,
        /// What is wrong.
        reason: String,
    },
    /// The media type is not a plausible `type/subtype`.
    #[error("media type {0:?} is not valid")]
    MediaType(String),
}

/// Whether `s` is an RFC 9110 media type: `type/subtype` tokens, then parameters whose
/// values are tokens or well-formed quoted strings (parsed by the `mime` crate), in visible
/// ASCII and spaces, at most [`MAX_MEDIA_TYPE`] bytes. It is served back as `Content-Type`, so
/// nothing else gets in.
pub(crate) fn valid_media_type(s: &str) -> bool {
    s.len() <= MAX_MEDIA_TYPE
        && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && s.parse::<mime::Mime>().is_ok_and(|m| {
            // `mime` takes an empty subtype ("text/"); RFC 9110 does not.
            !m.type_().as_str().is_empty() && !m.subtype().as_str().is_empty()
        })
}

impl Manifest {
    /// Checks every invariant: version, chunk sizes, total size, media type.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version(self.version));
        }
        let bad = |reason: String| ManifestError::Inconsistent {
            address: self.address,
            reason,
        };
        let mut total = 0u64;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if chunk.len == 0 || chunk.len > CHUNK_MAX_BYTES as u64 {
                return Err(bad(format!("chunk {i} has length {}", chunk.len)));
            }
            total = total
                .checked_add(chunk.len)
                .ok_or_else(|| bad("chunk lengths overflow".into()))?;
        }
        if total != self.size {
            return Err(bad(format!(
                "chunks add up to {total} bytes, size says {}",
                self.size
            )));
        }
        if let Some(mt) = &self.media_type
            && !valid_media_type(mt)
        {
            return Err(ManifestError::MediaType(mt.clone()));
        }
        Ok(())
    }

    /// The manifest as DAG-CBOR, after validation.
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        serde_ipld_dagcbor::to_vec(self).map_err(|e| ManifestError::Decode(e.to_string()))
    }

    /// Reads and validates a DAG-CBOR manifest. Unknown fields are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| ManifestError::Decode(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The address of the encoded manifest itself (its "manifest root").
    pub fn root(&self) -> Result<Address, ManifestError> {
        Ok(Address::of(&self.encode()?))
    }

    /// Index of the chunk holding byte `offset` and that chunk's start, or `None` past the
    /// end. A linear walk: chunks are at least 1 MiB, so even a 4 GiB object has at most
    /// 4096, and a reader calls this once per request, then moves forward.
    pub fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        if offset >= self.size {
            return None;
        }
        let mut start = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if offset < start + c.len {
                return Some((i, start));
            }
            start += c.len;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(lens: &[u64]) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            address: Address::of(b"object"),
            size: lens.iter().sum(),
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, len)| ChunkRef {
                    address: Address::of(&i.to_le_bytes()),
                    len: *len,
                })
                .collect(),
            media_type: Some("text/plain; charset=utf-8".into()),
        }
    }

    #[test]
    fn round_trip_and_root() {
        let m = manifest(&[1 << 20, 3 << 20, 17]);
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.root().unwrap(), Address::of(&bytes));
    }

    #[test]
    fn unknown_fields_are_ignored_on_read() {
        #[derive(Serialize)]
        struct Newer<'a> {
            version: u32,
            address: Address,
            size: u64,
            chunks: &'a [ChunkRef],
            erasure: (u8, u8),
        }
        let m = manifest(&[10]);
        let newer = Newer {
            version: 1,
            address: m.address,
            size: 10,
            chunks: &m.chunks,
            erasure: (4, 2),
        };
        let bytes = serde_ipld_dagcbor::to_vec(&newer).unwrap();
        let read = Manifest::decode(&bytes).unwrap();
        assert_eq!(read.chunks, m.chunks);
        assert_eq!(read.media_type, None);
    }

    #[test]
    fn invalid_manifests_are_refused_on_write_and_read() {
        let mut m = manifest(&[10, 20]);
        m.size = 31;
        assert!(matches!(
            m.encode(),
            Err(ManifestError::Inconsistent { .. })
        ));
        let mut m = manifest(&[0]);
        m.size = 0;
        assert!(m.encode().is_err(), "empty chunk");
        assert!(
            manifest(&[(4 << 20) + 1]).encode().is_err(),
            "oversized chunk"
        );
        let mut m = manifest(&[1]);
        m.version = 2;
        assert_eq!(m.encode(), Err(ManifestError::Version(2)));
        for bad in [
            "",
            "text",
            "/plain",
            "text/",
            "a/b/c",
            "text/plain\n",
            "tëxt/plain",
            "text/html;charset=\"><script>alert(1)</script>",
            "text/html; charset",
            "text/html; =utf-8",
            "text/html; charset=a\"b",
            "te(xt/html",
            "text/ht ml",
        ] {
            let mut m = manifest(&[1]);
            m.media_type = Some(bad.into());
            assert!(
                matches!(m.encode(), Err(ManifestError::MediaType(_))),
                "{bad:?}"
            );
        }
        assert!(Manifest::decode(b"\xff\x00garbage").is_err());
        // An empty object has no chunks.
        let mut empty = manifest(&[]);
        empty.media_type = None;
        assert_eq!(Manifest::decode(&empty.encode().unwrap()).unwrap(), empty);
    }

    #[test]
    fn locate_finds_the_chunk_of_an_offset() {
        let m = manifest(&[10, 20, 5]);
        assert_eq!(m.locate(0), Some((0, 0)));
        assert_eq!(m.locate(9), Some((0, 0)));
        assert_eq!(m.locate(10), Some((1, 10)));
        assert_eq!(m.locate(34), Some((2, 30)));
        assert_eq!(m.locate(35), None);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            lens in proptest::collection::vec(1u64..=(4 << 20), 0..50),
            mt in proptest::option::of("[a-z]{1,10}/[a-z0-9.+-]{1,20}"),
            addr in any::<[u8; 32]>(),
        ) {
            let mut m = manifest(&lens);
            m.address = Address::from_bytes(addr);
            m.media_type = mt;
            let bytes = m.encode().unwrap();
            prop_assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes);
        }
    }

    #[test]
    fn well_formed_media_types_are_taken() {
        for good in [
            "text/plain",
            "text/plain; charset=utf-8",
            "text/html;charset=\"utf-8\"",
            "image/svg+xml",
            "application/vnd.api+json",
            "multipart/mixed; boundary=\"a b\"",
        ] {
            assert!(valid_media_type(good), "{good:?}");
        }
    }
}
