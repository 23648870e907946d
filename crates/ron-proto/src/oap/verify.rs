//! Checking a range a peer sent against the address, one 16 KiB group at a time, as the
//! receiving side of app 0x0102 does (no I/O: `svc-dht` decodes what arrives with it).

use std::io::Cursor;

use crate::Address;
use crate::oap::GROUP_CHUNK_LOG;
use bao_tree::blake3::Hash;
use bao_tree::io::BaoContentItem;
use bao_tree::io::sync::DecodeResponseIter;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};
use bytes::Bytes;

/// Bytes of one verification group.
pub const GROUP_BYTES: u64 = 1024 << GROUP_CHUNK_LOG;
/// The bao-tree block size of those groups.
pub const BLOCK: BlockSize = BlockSize::from_chunk_log(GROUP_CHUNK_LOG);

/// A hash pair of the object's tree, and the node it belongs to.
pub type Pair = (TreeNode, (Hash, Hash));

/// What a range's encoding proved.
#[derive(Debug, Default)]
pub struct Verified {
    /// The groups that passed, in order from the range's start.
    pub groups: Vec<Bytes>,
    /// Their bytes.
    pub len: u64,
    /// The hash pairs that verified on the way to them (each proven against the address):
    /// where they sit in the object's outboard, and the pair.
    pub parents: Vec<Pair>,
    /// Why decoding stopped before the range's end, if it did: the peer sent bytes that are
    /// not the object (or not the encoding asked for).
    pub fault: Option<String>,
}

/// Decodes `encoded`, the encoding of `start..end` of the object `addr` of `size` bytes
/// (both ends on group boundaries, or `end` the size), keeping every group that verifies up to
/// the first that does not.
pub fn decode(addr: Address, size: u64, start: u64, end: u64, encoded: &[u8]) -> Verified {
    let mut out = Verified::default();
    let root = bao_tree::blake3::Hash::from_bytes(*addr.as_bytes());
    let ranges = ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)));
    let mut reader = Cursor::new(encoded);
    let mut at = start;
    let mut fault = None;
    for item in DecodeResponseIter::new(root, BaoTree::new(size, BLOCK), &mut reader, &ranges) {
        match item {
            Ok(BaoContentItem::Parent(parent)) => out.parents.push((parent.node, parent.pair)),
            Ok(BaoContentItem::Leaf(leaf)) if leaf.offset == at => {
                at += leaf.data.len() as u64;
                out.groups.push(leaf.data);
            }
            Ok(BaoContentItem::Leaf(leaf)) => {
                fault = Some(format!("group at {} where {at} was due", leaf.offset));
                break;
            }
            Err(e) => {
                fault = Some(format!("the group at {at} fails verification ({e})"));
                break;
            }
        }
    }
    if fault.is_none() && at < end {
        fault = Some(format!("the range stops at {at} of {start}..{end}"));
    }
    if fault.is_none() && reader.position() != encoded.len() as u64 {
        fault = Some("bytes after the range".to_owned());
    }
    out.len = at - start;
    out.fault = fault;
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bao_tree::io::outboard::PreOrderMemOutboard;

    fn encode(data: &[u8], start: u64, end: u64) -> Vec<u8> {
        let outboard = PreOrderMemOutboard::create(data, BLOCK);
        let ranges = ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)));
        let mut out = Vec::new();
        bao_tree::io::sync::encode_ranges_validated(data, &outboard, &ranges, &mut out).unwrap();
        out
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "hundreds of KiB of BLAKE3 take many minutes under Miri"
    )]
    fn honest_ranges_verify_whole() {
        let data = data(200_000);
        let addr = Address::of(&data);
        for (start, end) in [
            (0, 200_000),
            (16_384, 65_536),
            (196_608, 200_000),
            (0, 16_384),
        ] {
            let end = end.max(start + 1);
            let got = decode(addr, 200_000, start, end, &encode(&data, start, end));
            assert!(got.fault.is_none(), "{start}..{end}: {:?}", got.fault);
            let joined: Vec<u8> = got.groups.concat();
            let want_end = end
                .div_ceil(GROUP_BYTES)
                .saturating_mul(GROUP_BYTES)
                .min(200_000);
            assert_eq!(joined.len() as u64, want_end - start, "{start}..{end}");
            assert!(
                joined == data[start as usize..want_end as usize],
                "{start}..{end}"
            );
        }
        let tiny = b"hello world";
        let got = decode(Address::of(tiny), 11, 0, 11, &encode(tiny, 0, 11));
        assert_eq!((got.groups.concat(), got.fault), (tiny.to_vec(), None));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "hundreds of KiB of BLAKE3 take many minutes under Miri"
    )]
    fn a_flipped_byte_fails_its_group_and_keeps_the_groups_before() {
        let data = data(200_000);
        let addr = Address::of(&data);
        let mut encoded = encode(&data, 0, 200_000);
        // Flip the last byte: it lies in the last group.
        let last = encoded.len() - 1;
        encoded[last] ^= 1;
        let got = decode(addr, 200_000, 0, 200_000, &encoded);
        assert!(got.fault.unwrap().contains("fails verification"));
        assert_eq!(got.len, 196_608, "every group before the bad one kept");
        assert!(got.groups.concat() == data[..196_608]);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "hundreds of KiB of BLAKE3 take many minutes under Miri"
    )]
    fn wrong_object_size_or_truncation_or_trailing_bytes_are_faults() {
        let data = data(100_000);
        let addr = Address::of(&data);
        let encoded = encode(&data, 0, 100_000);
        assert!(decode(addr, 100_001, 0, 100_001, &encoded).fault.is_some());
        let got = decode(addr, 100_000, 0, 100_000, &encoded[..encoded.len() - 10]);
        assert!(got.fault.is_some());
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode(addr, 100_000, 0, 100_000, &longer).fault.is_some());
        assert!(
            decode(Address::of(b"other"), 100_000, 0, 100_000, &encoded)
                .fault
                .is_some()
        );
    }
}
