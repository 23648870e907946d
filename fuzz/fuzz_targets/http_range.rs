//! The HTTP `Range`, `If-Range` and `If-None-Match` handling of `GET /o/{addr}`, on arbitrary
//! header bytes and object sizes. Must never panic; every planned range lies inside the object,
//! and a multi-range plan stays within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::ranges::{MAX_RANGES, RangePlan, none_match, plan};

const TAG: &str = "\"b3:0000000000000000000000000000000000000000000000000000000000000000\"";

fuzz_target!(|data: &[u8]| {
    let [s0, s1, s2, s3, mode, header @ ..] = data else { return };
    let size = u64::from(u32::from_le_bytes([*s0, *s1, *s2, *s3]));
    let if_range = match mode % 3 {
        0 => None,
        1 => Some(TAG.as_bytes()),
        _ => Some(&b"\"other\""[..]),
    };
    let inside = |r: &std::ops::RangeInclusive<u64>| r.start() <= r.end() && *r.end() < size;
    match plan(Some(header), if_range, size, TAG) {
        RangePlan::Full | RangePlan::Unsatisfiable(_) => {}
        RangePlan::Single(r) => assert!(inside(&r), "{r:?} of {size}"),
        RangePlan::Multi(ranges) => {
            assert!(ranges.len() >= 2 && ranges.len() <= MAX_RANGES);
            assert!(ranges.iter().all(inside), "{ranges:?} of {size}");
        }
    }
    let _ = none_match(header, TAG);
});
