//! App 0x0102 (node-to-node transfers): arbitrary bytes as the frames of a request or a reply,
//! read as `svc-dht` reads them from a peer's stream. Must never panic; whatever decodes
//! re-encodes to frames that decode to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ron_proto::oap::transfer::{
    ReplyStart, decode_reply, decode_request, range_reply, reply_frames, request_frame,
};
use ron_proto::oap::{DEFAULT_MAX_FRAME, Frame};

fn reply_of(first: &Frame, second: Option<Frame>) -> Option<ron_proto::oap::transfer::TransferReply> {
    match decode_reply(first).ok()? {
        ReplyStart::Whole(reply) => Some(reply),
        ReplyStart::Range { size, start, end } => range_reply((size, start, end), second?).ok(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(Some(first)) = Frame::decode(&mut buf, DEFAULT_MAX_FRAME) else { return };
    let second = Frame::decode(&mut buf, DEFAULT_MAX_FRAME).ok().flatten();
    if let Ok(request) = decode_request(&first) {
        assert_eq!(decode_request(&request_frame(&request)).ok(), Some(request));
    }
    if let Some(reply) = reply_of(&first, second) {
        let mut frames = reply_frames(reply.clone()).into_iter();
        let again = frames.next().expect("a reply has a frame");
        assert_eq!(reply_of(&again, frames.next()), Some(reply));
    }
});
