//! Address and prefix parsing: never panics; whatever parses prints back to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::{Address, AddressPrefix};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(addr) = text.parse::<Address>() {
        assert_eq!(addr.to_string(), text);
    }
    if let Ok(prefix) = text.parse::<AddressPrefix>() {
        assert_eq!(prefix.to_string(), text);
    }
});
