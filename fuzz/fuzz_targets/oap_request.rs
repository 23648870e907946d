//! OAP/1 request payloads: app 0x0101's request JSON and a client's HELLO, as the listener
//! reads them from a START frame. Must never panic; a request that decodes re-encodes to JSON
//! that decodes to itself; a HELLO the server accepts is a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_proto::oap::objects::{GetReply, ObjectRequest, PutReply};
use ron_proto::oap::{Hello, check_client_hello};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ObjectRequest>(data) {
        let json = serde_json::to_vec(&request).expect("a request re-encodes");
        let back: ObjectRequest = serde_json::from_slice(&json).expect("and decodes again");
        assert_eq!(back, request);
    }
    if check_client_hello(data).is_ok() {
        let value: serde_json::Value = serde_json::from_slice(data).expect("accepted: JSON");
        assert!(value.is_object());
    }
    // What a client reads back: the server's HELLO and the replies' heads.
    let _ = serde_json::from_slice::<Hello>(data);
    let _ = serde_json::from_slice::<GetReply>(data);
    let _ = serde_json::from_slice::<PutReply>(data);
});
