//! Payment from the network: a `ron-pow` answer (what a node parses before anything else of
//! an anonymous read), and a 402 body (what `ron get` reads from a node to solve its
//! challenge). Arbitrary bytes never panic; an answer that parses prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::ErrorBody;
use ron_proto::pow;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((challenge, nonce)) = pow::parse(text) {
            assert_eq!(pow::parse(&pow::answer(&challenge, nonce)), Some((challenge, nonce)));
            assert!(pow::work_bits(&challenge, nonce) <= 256);
        }
    }
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(data) {
        let again = serde_json::to_vec(&body).expect("a decoded body encodes");
        assert_eq!(serde_json::from_slice::<ErrorBody>(&again).expect("re-decodes"), body);
    }
});
