//! Manifest decoding: arbitrary bytes never panic; whatever decodes validates, re-encodes,
//! and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        manifest.validate().expect("decode validates");
        let again = manifest.encode().expect("a valid manifest encodes");
        assert_eq!(Manifest::decode(&again).expect("re-decodes"), manifest);
    }
});
