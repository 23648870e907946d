//! OAP/1 decoder: arbitrary bytes, fed in arbitrary pieces, through the codec and the stream
//! tracker. Must never panic or allocate past `max_frame`; every decoded frame must re-encode
//! to the bytes it came from (reserved flag bits aside) and decode to itself again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ron_proto::oap::{Frame, FrameCodec, StreamTracker, inflate, Flags};
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    // Small and default limits both get exercised.
    let max_frame = if split & 1 == 0 { 256 } else { ron_proto::oap::DEFAULT_MAX_FRAME };
    let mut codec = FrameCodec::new(max_frame);
    let mut tracker = StreamTracker::new(8);
    let chunk = usize::from(split >> 1).max(1);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let consumed = before.len() - buf.len();
                    assert!(consumed <= max_frame);
                    let mut again = BytesMut::new();
                    codec.encode(&frame, &mut again).expect("a decoded frame re-encodes");
                    assert_eq!(again.len(), consumed);
                    // Equal except for reserved flag bits (5..7 of the wire).
                    assert_eq!(again[..5], before[..5]);
                    assert_eq!(again[7..consumed], before[7..consumed]);
                    let back = Frame::decode(&mut again, max_frame).unwrap().unwrap();
                    assert_eq!(back, frame);
                    let _ = tracker.observe(&frame);
                    if frame.flags.contains(Flags::COMP) {
                        let _ = inflate(&frame.payload, max_frame);
                    }
                }
                Ok(None) => break,
                Err(_) => return, // the connection would be closed
            }
        }
        assert!(tracker.open_streams() <= 8);
    }
});
