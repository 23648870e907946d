//! Erasure coding of chunks (`reed-solomon-simd`): a chunk becomes `k` data shards (its bytes,
//! the last shard zero-padded) and `m` parity shards of one length; any `k` shards, each
//! checked against its address first, rebuild it, and the rebuilt chunk is checked against its
//! own address before it is returned. A shard that is not what its address says is named in
//! the error, so its holder can be scored down and another shard asked for.
//!
//! ```
//! use ron_proto::Address;
//! use ron_proto::layout::{ChunkShards, Scheme};
//! use svc_storage::erasure;
//!
//! let scheme: Scheme = "4+2".parse().unwrap();
//! let chunk = b"any k of the n shards rebuild this".to_vec();
//! let shards = erasure::encode(scheme, &chunk).unwrap();
//! let layout = ChunkShards {
//!     address: Address::of(&chunk),
//!     len: chunk.len() as u64,
//!     shards: shards.iter().map(Address::of).collect(),
//! };
//! // Two shards lost: the other four are enough.
//! let have: Vec<(usize, &[u8])> = (2..6).map(|i| (i, shards.get(i).unwrap())).collect();
//! assert_eq!(erasure::decode(scheme, &layout, &have).unwrap(), chunk);
//! ```

use std::borrow::Cow;

use ron_proto::Address;
use ron_proto::layout::{ChunkShards, Scheme, shard_len};

/// Why a chunk could not be encoded or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    /// Fewer than `k` usable shards.
    #[error("too few shards: {have} usable of the {need} needed")]
    TooFew {
        /// Usable shards given.
        have: usize,
        /// Shards needed (`k`).
        need: usize,
    },
    /// A shard is not what the layout says (wrong length or bytes): its holder lied.
    #[error("shard {index} does not match its address")]
    BadShard {
        /// Its index in the chunk's shard list.
        index: usize,
    },
    /// The rebuilt chunk is not the chunk the layout names.
    #[error("the rebuilt chunk does not match its address")]
    Mismatch,
    /// The chunk or scheme cannot be coded (empty chunk, codec refusal).
    #[error("cannot code the chunk: {0}")]
    Codec(String),
}

/// A chunk's `k + m` shards: the data shards borrowed from the chunk where they lie whole in
/// it (only a padded last one is copied), the parity shards computed.
#[derive(Debug, Clone)]
pub struct Shards<'a> {
    data: Vec<Cow<'a, [u8]>>,
    parity: Vec<Vec<u8>>,
}

impl Shards<'_> {
    /// Shard `index` (data shards first, then parity).
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        match self.data.get(index) {
            Some(shard) => Some(shard),
            None => self.parity.get(index - self.data.len()).map(Vec::as_slice),
        }
    }

    /// Every shard, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.data
            .iter()
            .map(|s| &**s)
            .chain(self.parity.iter().map(Vec::as_slice))
    }

    /// How many shards (`k + m`).
    pub fn len(&self) -> usize {
        self.data.len() + self.parity.len()
    }

    /// Whether there are none (never, for a valid scheme).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shards as owned buffers.
    pub fn into_owned(self) -> Vec<Vec<u8>> {
        self.data
            .into_iter()
            .map(Cow::into_owned)
            .chain(self.parity)
            .collect()
    }
}

/// The `k + m` shards of `chunk`: `k` data shards, then `m` parity shards, each
/// [`shard_len`] bytes.
pub fn encode(scheme: Scheme, chunk: &[u8]) -> Result<Shards<'_>, ErasureError> {
    if chunk.is_empty() {
        return Err(ErasureError::Codec("an empty chunk".into()));
    }
    let codec = |e: reed_solomon_simd::Error| ErasureError::Codec(e.to_string());
    let len = usize::try_from(shard_len(scheme, chunk.len() as u64))
        .map_err(|e| ErasureError::Codec(e.to_string()))?;
    let (k, m) = (usize::from(scheme.k), usize::from(scheme.m));
    let data: Vec<Cow<'_, [u8]>> = (0..k)
        .map(|i| {
            let start = (i * len).min(chunk.len());
            let end = ((i + 1) * len).min(chunk.len());
            if end - start == len {
                Cow::Borrowed(&chunk[start..end])
            } else {
                let mut padded = Vec::with_capacity(len);
                padded.extend_from_slice(&chunk[start..end]);
                padded.resize(len, 0);
                Cow::Owned(padded)
            }
        })
        .collect();
    let mut encoder = reed_solomon_simd::ReedSolomonEncoder::new(k, m, len).map_err(codec)?;
    for shard in &data {
        encoder.add_original_shard(shard).map_err(codec)?;
    }
    let parity = encoder
        .encode()
        .map_err(codec)?
        .recovery_iter()
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Shards { data, parity })
}

/// Rebuilds the chunk `layout` names from the shards in `have` (index, bytes). Each shard is
/// checked against its address before it is used ([`ErasureError::BadShard`] names the first
/// that fails, if too few good ones remain); the first `k` good ones are decoded, and the
/// chunk is checked against its address.
pub fn decode(
    scheme: Scheme,
    layout: &ChunkShards,
    have: &[(usize, &[u8])],
) -> Result<Vec<u8>, ErasureError> {
    let k = usize::from(scheme.k);
    let len = shard_len(scheme, layout.len);
    if layout.shards.len() != scheme.n() {
        return Err(ErasureError::Codec(format!(
            "the layout has {} shards, the scheme {scheme} needs {}",
            layout.shards.len(),
            scheme.n()
        )));
    }
    let mut good: Vec<(usize, &[u8])> = Vec::with_capacity(k);
    let mut first_bad = None;
    for &(index, bytes) in have {
        if good.len() == k {
            break;
        }
        let genuine = layout
            .shards
            .get(index)
            .is_some_and(|addr| bytes.len() as u64 == len && Address::of(bytes) == *addr);
        if !genuine {
            first_bad.get_or_insert(index);
            continue;
        }
        if good.iter().all(|(i, _)| *i != index) {
            good.push((index, bytes));
        }
    }
    if good.len() < k {
        return Err(match first_bad {
            Some(index) => ErasureError::BadShard { index },
            None => ErasureError::TooFew {
                have: good.len(),
                need: k,
            },
        });
    }
    // The data shards in order: those given, else rebuilt from what was given.
    let mut data: Vec<Option<Cow<'_, [u8]>>> = vec![None; k];
    for &(index, bytes) in &good {
        if index < k {
            data[index] = Some(Cow::Borrowed(bytes));
        }
    }
    if data.iter().any(Option::is_none) {
        let originals = good.iter().filter(|(i, _)| *i < k).map(|(i, b)| (*i, *b));
        let recovery = good
            .iter()
            .filter(|(i, _)| *i >= k)
            .map(|(i, b)| (*i - k, *b));
        let restored = reed_solomon_simd::decode(k, usize::from(scheme.m), originals, recovery)
            .map_err(|e| ErasureError::Codec(e.to_string()))?;
        for (index, bytes) in restored {
            if let Some(slot) = data.get_mut(index) {
                *slot = Some(Cow::Owned(bytes));
            }
        }
    }
    let mut chunk = Vec::with_capacity(usize::try_from(len).unwrap_or(0) * k);
    for shard in data {
        chunk.extend_from_slice(&shard.ok_or(ErasureError::Mismatch)?);
    }
    chunk.truncate(usize::try_from(layout.len).map_err(|e| ErasureError::Codec(e.to_string()))?);
    if Address::of(&chunk) != layout.address {
        return Err(ErasureError::Mismatch);
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    fn layout_of(chunk: &[u8], shards: &[Vec<u8>]) -> ChunkShards {
        ChunkShards {
            address: Address::of(chunk),
            len: chunk.len() as u64,
            shards: shards.iter().map(|s| Address::of(s)).collect(),
        }
    }

    /// Every subset of `0..n` with `k` members.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n)
            .filter(|mask| mask.count_ones() as usize == k)
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    fn every_k_subset_decodes(scheme: Scheme, chunk: &[u8]) -> usize {
        let shards = encode(scheme, chunk).unwrap().into_owned();
        assert_eq!(shards.len(), scheme.n());
        let layout = layout_of(chunk, &shards);
        let all = subsets(scheme.n(), usize::from(scheme.k));
        for subset in &all {
            let have: Vec<(usize, &[u8])> =
                subset.iter().map(|&i| (i, shards[i].as_slice())).collect();
            assert_eq!(
                decode(scheme, &layout, &have).as_deref(),
                Ok(chunk),
                "{scheme} from {subset:?}"
            );
        }
        all.len()
    }

    #[test]
    #[cfg_attr(miri, ignore = "1,001 decodes of SIMD code take hours under Miri")]
    fn every_k_subset_of_4_2_and_10_4_decodes() {
        let s42 = Scheme::new(4, 2).unwrap();
        assert_eq!(every_k_subset_decodes(s42, &data(100_003, 1)), 15);
        // Lengths that do not divide evenly, and a chunk smaller than k.
        assert_eq!(every_k_subset_decodes(s42, &data(7, 2)), 15);
        assert_eq!(every_k_subset_decodes(s42, b"x"), 15);
        let s104 = Scheme::new(10, 4).unwrap();
        assert_eq!(every_k_subset_decodes(s104, &data(65_537, 3)), 1001);
    }

    #[test]
    fn fewer_than_k_or_a_corrupted_shard_is_refused() {
        let scheme = Scheme::new(4, 2).unwrap();
        let chunk = data(10_000, 4);
        let shards = encode(scheme, &chunk).unwrap().into_owned();
        let layout = layout_of(&chunk, &shards);
        let have: Vec<(usize, &[u8])> = (0..3).map(|i| (i, shards[i].as_slice())).collect();
        assert_eq!(
            decode(scheme, &layout, &have),
            Err(ErasureError::TooFew { have: 3, need: 4 })
        );
        // The same shard twice counts once.
        let twice: Vec<(usize, &[u8])> = [0, 0, 1, 2]
            .iter()
            .map(|&i| (i, shards[i].as_slice()))
            .collect();
        assert!(matches!(
            decode(scheme, &layout, &twice),
            Err(ErasureError::TooFew { have: 3, .. })
        ));
        // A flipped byte in one shard: caught at that shard, never decoded from.
        let mut lying = shards[4].clone();
        lying[17] ^= 1;
        let with_liar: Vec<(usize, &[u8])> = vec![
            (0, &shards[0]),
            (1, &shards[1]),
            (4, &lying),
            (5, &shards[5]),
        ];
        assert_eq!(
            decode(scheme, &layout, &with_liar),
            Err(ErasureError::BadShard { index: 4 })
        );
        // With one more good shard, the liar is skipped and the chunk rebuilt.
        let mut replaced = with_liar.clone();
        replaced.push((2, &shards[2]));
        assert_eq!(decode(scheme, &layout, &replaced), Ok(chunk.clone()));
        // A short shard, an index past n: not genuine either.
        let short: Vec<(usize, &[u8])> = vec![
            (0, &shards[0][..10]),
            (1, &shards[1]),
            (2, &shards[2]),
            (9, &shards[3]),
        ];
        assert!(matches!(
            decode(scheme, &layout, &short),
            Err(ErasureError::BadShard { index: 0 })
        ));
        // Consistent shards of another chunk under this chunk's layout: refused at the end.
        let mut other = layout.clone();
        other.address = Address::of(b"another chunk");
        let have: Vec<(usize, &[u8])> = (2..6).map(|i| (i, shards[i].as_slice())).collect();
        assert_eq!(decode(scheme, &other, &have), Err(ErasureError::Mismatch));
        assert!(encode(scheme, b"").is_err());
    }
}
