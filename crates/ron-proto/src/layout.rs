//! Erasure layouts: how an object protected by a `k+m` scheme is cut into shards. Each chunk
//! of the object (as its manifest has it) becomes `k` data shards (the chunk's bytes, the last
//! one zero-padded) and `m` parity shards, all of one length; any `k` of them rebuild the
//! chunk. Every shard is content-addressed like any blob. The layout is a DAG-CBOR record with
//! its own address, checked on every encode and every decode; unknown fields are ignored.
//!
//! ```
//! use ron_proto::layout::{Scheme, shard_len};
//!
//! let scheme: Scheme = "4+2".parse().unwrap();
//! assert_eq!((scheme.k, scheme.m, scheme.n()), (4, 2, 6));
//! assert_eq!(shard_len(scheme, 10), 4); // 10 bytes in 4 shards of 3, rounded up to even
//! assert!("0+2".parse::<Scheme>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Address;
use crate::manifest::CHUNK_MAX_BYTES;

/// The layout format version this crate writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Most data shards, and most parity shards, a scheme may have.
pub const MAX_SHARDS: u8 = 64;
/// Most chunks one layout describes (a 4 GiB object of 1 MiB chunks).
pub const MAX_CHUNKS: usize = 4096;

/// A `k+m` scheme: `k` data shards and `m` parity shards per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scheme {
    /// Data shards: any `k` shards rebuild a chunk.
    pub k: u8,
    /// Parity shards: up to `m` shards of a chunk may be lost.
    pub m: u8,
}

impl Scheme {
    /// A scheme, if both counts are 1 to [`MAX_SHARDS`].
    pub fn new(k: u8, m: u8) -> Result<Self, LayoutError> {
        if !(1..=MAX_SHARDS).contains(&k) || !(1..=MAX_SHARDS).contains(&m) {
            return Err(LayoutError::Scheme(format!(
                "{k}+{m}: each side must be 1 to {MAX_SHARDS}"
            )));
        }
        Ok(Self { k, m })
    }

    /// Shards per chunk: `k + m`.
    pub fn n(self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

impl FromStr for Scheme {
    type Err = LayoutError;

    /// `K+M`, as in config and on the command line (`"4+2"`).
    fn from_str(s: &str) -> Result<Self, LayoutError> {
        let bad = || LayoutError::Scheme(format!("{s:?} is not K+M (e.g. 4+2)"));
        let (k, m) = s.trim().split_once('+').ok_or_else(bad)?;
        let k = k.parse::<u8>().map_err(|_| bad())?;
        let m = m.parse::<u8>().map_err(|_| bad())?;
        Self::new(k, m)
    }
}

/// A durability setting: `"none"` (`None`), or a `K+M` scheme.
pub fn parse_durability(value: &str) -> Result<Option<Scheme>, LayoutError> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    value.parse().map(Some)
}

/// The length of each shard of a chunk of `len` bytes: `len / k` rounded up, then up to an
/// even number (the codec works on 2-byte symbols); at least 2.
pub fn shard_len(scheme: Scheme, len: u64) -> u64 {
    let k = u64::from(scheme.k);
    let per = len.div_ceil(k).max(1);
    per + per % 2
}

/// Where the DHT keeps the pointer from an object to its layout: this prefix, then the
/// object's 32 address bytes; the value is the layout's 32 address bytes.
pub const RECORD_PREFIX: &[u8] = b"/ron/layout/";

/// The DHT key of `object`'s layout pointer.
pub fn record_key(object: &Address) -> Vec<u8> {
    [RECORD_PREFIX, object.as_bytes().as_slice()].concat()
}

/// The object and layout a DHT record names, if `key` and `value` are a layout pointer.
/// (The pointer is unsigned: a layout read through it is checked against the object's
/// address, chunk by chunk and as a whole, before any of its bytes are used.)
pub fn record_pointer(key: &[u8], value: &[u8]) -> Option<(Address, Address)> {
    let object: [u8; 32] = key.strip_prefix(RECORD_PREFIX)?.try_into().ok()?;
    let layout: [u8; 32] = value.try_into().ok()?;
    Some((Address::from_bytes(object), Address::from_bytes(layout)))
}

/// One chunk's shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkShards {
    /// The chunk's address (BLAKE3 of its bytes).
    pub address: Address,
    /// Its length in bytes.
    pub len: u64,
    /// The `k + m` shards' addresses: data shards first, then parity.
    pub shards: Vec<Address>,
}

/// How an object is protected: its scheme and every chunk's shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Format version ([`LAYOUT_VERSION`]); its key also marks the record as a layout.
    pub ron_layout: u32,
    /// The object protected.
    pub object: Address,
    /// Its size in bytes.
    pub size: u64,
    /// The scheme.
    pub scheme: Scheme,
    /// Its chunks in order; their lengths add up to `size`.
    pub chunks: Vec<ChunkShards>,
}

/// A layout that cannot be written or read, or a scheme that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// Not DAG-CBOR, or not a layout.
    #[error("not a layout: {0}")]
    Decode(String),
    /// A version this crate does not understand.
    #[error("layout version {0} is not supported")]
    Version(u32),
    /// A scheme out of range or malformed.
    #[error("invalid scheme: {0}")]
    Scheme(String),
    /// Sizes, counts or lengths that do not fit together.
    #[error("inconsistent layout: {0}")]
    Inconsistent(String),
}

impl Layout {
    /// Checks every rule: version, scheme, chunk count and lengths, shard counts.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.ron_layout != LAYOUT_VERSION {
            return Err(LayoutError::Version(self.ron_layout));
        }
        Scheme::new(self.scheme.k, self.scheme.m)?;
        if self.chunks.len() > MAX_CHUNKS {
            return Err(LayoutError::Inconsistent(format!(
                "{} chunks, at most {MAX_CHUNKS}",
                self.chunks.len()
            )));
        }
        let mut total = 0u64;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if chunk.len == 0 || chunk.len > CHUNK_MAX_BYTES as u64 {
                return Err(LayoutError::Inconsistent(format!(
                    "chunk {i} has length {}",
                    chunk.len
                )));
            }
            if chunk.shards.len() != self.scheme.n() {
                return Err(LayoutError::Inconsistent(format!(
                    "chunk {i} has {} shards, the scheme {} needs {}",
                    chunk.shards.len(),
                    self.scheme,
                    self.scheme.n()
                )));
            }
            total += chunk.len;
        }
        if total != self.size {
            return Err(LayoutError::Inconsistent(format!(
                "chunks add up to {total} bytes, size says {}",
                self.size
            )));
        }
        Ok(())
    }

    /// The layout as DAG-CBOR, after validation.
    pub fn encode(&self) -> Result<Vec<u8>, LayoutError> {
        self.validate()?;
        serde_ipld_dagcbor::to_vec(self).map_err(|e| LayoutError::Decode(e.to_string()))
    }

    /// Reads and validates a DAG-CBOR layout. Unknown fields are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let layout: Self = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| LayoutError::Decode(e.to_string()))?;
        layout.validate()?;
        Ok(layout)
    }

    /// The address of the encoded layout.
    pub fn address(&self) -> Result<Address, LayoutError> {
        Ok(Address::of(&self.encode()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_pointers_read_back_and_nothing_else_is_one() {
        let (object, layout) = (Address::of(b"object"), Address::of(b"layout"));
        let key = record_key(&object);
        assert_eq!(
            record_pointer(&key, layout.as_bytes()),
            Some((object, layout))
        );
        assert_eq!(record_pointer(&key, &[0; 31]), None);
        assert_eq!(
            record_pointer(&key[..key.len() - 1], layout.as_bytes()),
            None
        );
        assert_eq!(record_pointer(b"/ron/name/x", layout.as_bytes()), None);
    }

    fn layout(scheme: Scheme, lens: &[u64]) -> Layout {
        Layout {
            ron_layout: LAYOUT_VERSION,
            object: Address::of(b"object"),
            size: lens.iter().sum(),
            scheme,
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, &len)| ChunkShards {
                    address: Address::of(&i.to_le_bytes()),
                    len,
                    shards: (0..scheme.n())
                        .map(|s| Address::of(&[i as u8, s as u8]))
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn schemes_parse_print_and_refuse_nonsense() {
        let s: Scheme = " 10+4 ".parse().unwrap();
        assert_eq!((s.k, s.m, s.n(), s.to_string()), (10, 4, 14, "10+4".into()));
        for bad in [
            "", "4", "4+", "+2", "4-2", "0+2", "4+0", "65+1", "1+65", "a+b", "4+2+1",
        ] {
            assert!(bad.parse::<Scheme>().is_err(), "{bad:?}");
        }
        let s = Scheme::new(4, 2).unwrap();
        assert_eq!(shard_len(s, 1), 2);
        assert_eq!(shard_len(s, 8), 2);
        assert_eq!(shard_len(s, 9), 4);
        assert_eq!(shard_len(s, 4 << 20), 1 << 20);
    }

    #[test]
    fn every_rule_is_enforced_on_write_and_read() {
        let s = Scheme::new(4, 2).unwrap();
        let good = layout(s, &[1 << 20, 17]);
        let bytes = good.encode().unwrap();
        assert_eq!(Layout::decode(&bytes).unwrap(), good);
        assert_eq!(good.address().unwrap(), Address::of(&bytes));

        let mut wrong_size = good.clone();
        wrong_size.size += 1;
        let mut few_shards = good.clone();
        few_shards.chunks[1].shards.pop();
        let mut empty_chunk = layout(s, &[0]);
        empty_chunk.size = 0;
        let huge_chunk = layout(s, &[(4 << 20) + 1]);
        let mut newer = good.clone();
        newer.ron_layout = 2;
        let mut zero_k = good.clone();
        zero_k.scheme.k = 0;
        for (bad, what) in [
            (wrong_size, "size"),
            (few_shards, "shard count"),
            (empty_chunk, "empty chunk"),
            (huge_chunk, "chunk over 4 MiB"),
            (newer, "version"),
            (zero_k, "scheme"),
        ] {
            assert!(bad.encode().is_err(), "{what}");
            let raw = serde_ipld_dagcbor::to_vec(&bad).unwrap();
            assert!(Layout::decode(&raw).is_err(), "{what} on read");
        }
        // Other records are not layouts.
        assert!(Layout::decode(b"\xa0").is_err());
        let manifest = crate::Manifest {
            version: 1,
            address: Address::of(b""),
            size: 0,
            chunks: vec![],
            media_type: None,
        };
        assert!(Layout::decode(&manifest.encode().unwrap()).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored_on_read() {
        #[derive(Serialize)]
        struct Newer<'a> {
            ron_layout: u32,
            object: Address,
            size: u64,
            scheme: Scheme,
            chunks: &'a [ChunkShards],
            placement_hint: &'a str,
        }
        let l = layout(Scheme::new(2, 1).unwrap(), &[100]);
        let raw = serde_ipld_dagcbor::to_vec(&Newer {
            ron_layout: 1,
            object: l.object,
            size: 100,
            scheme: l.scheme,
            chunks: &l.chunks,
            placement_hint: "rack-a",
        })
        .unwrap();
        assert_eq!(Layout::decode(&raw).unwrap(), l);
    }

    proptest! {
        #[test]
        fn round_trip(
            k in 1u8..=16,
            m in 1u8..=8,
            lens in proptest::collection::vec(1u64..=(4 << 20), 0..20),
        ) {
            let l = layout(Scheme::new(k, m).unwrap(), &lens);
            let bytes = l.encode().unwrap();
            prop_assert_eq!(Layout::decode(&bytes).unwrap(), l);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Layout::decode(&bytes);
        }
    }
}
