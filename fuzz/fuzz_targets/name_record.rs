//! Name records (a PUT body, a value from the DHT): arbitrary bytes never panic; whatever
//! decodes has a valid signature, re-encodes and decodes to itself, and a peer would keep it
//! only under its own name's key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_auth::name::{NameRecord, name_bytes};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = NameRecord::decode(data) {
        record.verify().expect("decode verifies");
        let again = record.encode().expect("a valid record encodes");
        assert_eq!(NameRecord::decode(&again).expect("re-decodes"), record);
        let name = name_bytes(&record.key).expect("a verified record names a key");
        assert!(NameRecord::acceptable(&NameRecord::dht_key(&name), data, None));
        assert!(!NameRecord::acceptable(&[0u8; 32], data, None));
    }
});
