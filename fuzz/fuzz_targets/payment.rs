//! Payment from the network: a `ron-pow` answer (what a node parses before anything else of
//! an anonymous read), a 402 body (what `ron get` reads from a node to solve its challenge),
//! and a peer's cheque and its answer (app 0x0401). Arbitrary bytes never panic; what parses
//! prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::ErrorBody;
use ron_proto::oap::{APP_SETTLE, Flags, Frame, settle};
use ron_proto::pow;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((challenge, nonce)) = pow::parse(text) {
            assert_eq!(pow::parse(&pow::answer(&challenge, nonce)), Some((challenge, nonce)));
            assert!(pow::work_bits(&challenge, nonce) <= 256);
        }
    }
    let mut frame = Frame::new(Flags::REQ | Flags::START | Flags::END, APP_SETTLE, 0);
    frame.payload = bytes::Bytes::copy_from_slice(data);
    if let Ok(cheque) = settle::decode_request(&frame) {
        let again = settle::request_frame(&cheque);
        assert_eq!(settle::decode_request(&again).expect("re-decodes"), cheque);
    }
    frame.flags = Flags::RESP | Flags::START | Flags::END;
    if let Ok(reply) = settle::decode_reply(&frame) {
        let again = settle::reply_frame(&reply);
        assert_eq!(settle::decode_reply(&again).expect("re-decodes"), reply);
    }
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(data) {
        let again = serde_json::to_vec(&body).expect("a decoded body encodes");
        assert_eq!(serde_json::from_slice::<ErrorBody>(&again).expect("re-decodes"), body);
    }
});
