//! Erasure layouts (read from the store or from peers): arbitrary bytes never panic; whatever
//! decodes validates, re-encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::layout::Layout;

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = Layout::decode(data) {
        layout.validate().expect("decode validates");
        let again = layout.encode().expect("a valid layout encodes");
        assert_eq!(Layout::decode(&again).expect("re-decodes"), layout);
    }
});
