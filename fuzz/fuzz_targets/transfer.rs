//! App 0x0102 (node-to-node transfers): arbitrary bytes as the frames of a request or a reply,
//! read as `svc-dht` reads them from a peer's stream (a `keep` request's bytes in the frames
//! after its head). Must never panic; whatever decodes re-encodes to frames that decode to
//! the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ron_proto::oap::transfer::{
    ReplyStart, RequestStart, TransferRequest, decode_reply, decode_request, keep_piece,
    keep_request, range_reply, reply_frames, request_frames,
};
use ron_proto::oap::{DEFAULT_MAX_FRAME, Frame};

fn reply_of(first: &Frame, second: Option<Frame>) -> Option<ron_proto::oap::transfer::TransferReply> {
    match decode_reply(first).ok()? {
        ReplyStart::Whole(reply) => Some(reply),
        ReplyStart::Range { size, start, end } => range_reply((size, start, end), second?).ok(),
    }
}

/// A request from its frames, as the codec reads one.
fn request_of(frames: &[Frame]) -> Option<TransferRequest> {
    let start = decode_request(frames.first()?).ok()?;
    let RequestStart::Keep { size, .. } = start else {
        let RequestStart::Whole(request) = start else { return None };
        return Some(request);
    };
    let mut bytes = Vec::new();
    for frame in &frames[1..] {
        if keep_piece(size, &mut bytes, frame).ok()? {
            return keep_request(start, bytes).ok();
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    while frames.len() < 16 {
        match Frame::decode(&mut buf, DEFAULT_MAX_FRAME) {
            Ok(Some(frame)) => frames.push(frame),
            _ => break,
        }
    }
    if frames.is_empty() {
        return;
    }
    if let Some(request) = request_of(&frames) {
        assert_eq!(request_of(&request_frames(&request)), Some(request));
    }
    if let Some(reply) = reply_of(&frames[0], frames.get(1).cloned()) {
        let mut again = reply_frames(reply.clone()).into_iter();
        let first = again.next().expect("a reply has a frame");
        assert_eq!(reply_of(&first, again.next()), Some(reply));
    }
});
