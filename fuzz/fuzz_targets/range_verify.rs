//! The bao range decoder as the node uses it on a peer's 0x0102 range reply: an honest
//! encoding of a range of an object, then damaged by the fuzzer (bytes flipped, cut, added),
//! decoded against the object's address. Must never panic; every group it hands on is the
//! object's own bytes at that place; an undamaged encoding decodes whole and without fault.
#![no_main]

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::{ChunkNum, ChunkRanges};
use libfuzzer_sys::fuzz_target;
use ron_proto::Address;
use ron_proto::oap::verify::{BLOCK, GROUP_BYTES, decode};

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, e, rest @ ..] = data else { return };
    // An object of up to ~200 KiB (a dozen groups), and a range of it on group boundaries.
    let size = u64::from(u16::from_le_bytes([*a, *b])) * 3 + 1;
    let object: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(*c | 1)).collect();
    let groups = size.div_ceil(GROUP_BYTES);
    let start = u64::from(*d) % groups * GROUP_BYTES;
    let end = (start + (u64::from(*e) % groups + 1) * GROUP_BYTES).min(size);
    let outboard = PreOrderMemOutboard::create(&object, BLOCK);
    let ranges = ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)));
    let mut encoded = Vec::new();
    bao_tree::io::sync::encode_ranges_validated(&object[..], &outboard, &ranges, &mut encoded)
        .expect("an honest encoding");
    // Damage: pairs of (position, xor) bytes; a trailing odd byte cuts or extends.
    let honest = rest.is_empty();
    for pair in rest.chunks_exact(2) {
        let at = usize::from(pair[0]) * encoded.len() / 256;
        encoded[at] ^= pair[1];
    }
    if rest.len() % 2 == 1 {
        let last = rest[rest.len() - 1];
        if last & 1 == 0 {
            encoded.truncate(usize::from(last) * encoded.len() / 256);
        } else {
            encoded.push(last);
        }
    }
    let addr = Address::of(&object);
    let got = decode(addr, size, start, end, &encoded);
    let joined = got.groups.concat();
    assert_eq!(joined.len() as u64, got.len);
    let from = start as usize;
    assert!(joined[..] == object[from..from + joined.len()], "a group that is not the object's");
    if honest {
        assert!(got.fault.is_none(), "{:?}", got.fault);
        assert_eq!(start + got.len, end);
    }
});
