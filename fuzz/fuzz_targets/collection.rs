//! Collections and paths inside them: arbitrary bytes never panic; whatever decodes validates,
//! re-encodes to the same bytes' meaning and decodes to itself; every segment of a path that
//! parses is a single, legal name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::collection::{Collection, CollectionPath, check_name};

fuzz_target!(|data: &[u8]| {
    if let Ok(collection) = Collection::decode(data) {
        collection.validate().expect("decode validates");
        let again = collection.encode().expect("a valid collection encodes");
        assert_eq!(Collection::decode(&again).expect("re-decodes"), collection);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(path) = CollectionPath::parse(text)
    {
        for segment in &path.segments {
            check_name(segment).expect("a parsed segment is a legal name");
            assert!(!segment.contains('/'));
        }
    }
});
