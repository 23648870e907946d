//! One OAP/1 frame: layout, encoding and length-checked decoding.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{HEADER_LEN, VERSION};
use crate::{ErrorBody, ErrorKind};

/// Bytes after the length field that every frame has (header without `len`).
const FIXED_AFTER_LEN: usize = HEADER_LEN - 4;

bitflags::bitflags! {
    /// The `flags` field. Bit 8 is [`Flags::TRACE_SAMPLED`] (node-to-node requests); bits
    /// 9..15 are reserved: decoding drops them, encoding sends 0.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Flags: u16 {
        /// A request frame.
        const REQ = 1 << 0;
        /// A response frame.
        const RESP = 1 << 1;
        /// A server push.
        const EVENT = 1 << 2;
        /// Opens a stream.
        const START = 1 << 3;
        /// Closes a stream.
        const END = 1 << 4;
        /// Asks for explicit credit-based backpressure.
        const ACK_REQ = 1 << 5;
        /// The payload is zstd-compressed.
        const COMP = 1 << 6;
        /// The payload is end-to-end encrypted: never log, sample or decrypt it.
        const APP_E2E = 1 << 7;
        /// On a node-to-node request carrying a trace context (`tenant_id`, `corr_id`): the
        /// trace is sampled ([`crate::trace`]).
        const TRACE_SAMPLED = 1 << 8;
    }
}

/// One OAP/1 frame. `ver` is implied (always [`VERSION`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Flag bits.
    pub flags: Flags,
    /// 0 for OK, otherwise the HTTP status a gateway would give for the same outcome.
    pub code: u16,
    /// Which application the payload belongs to.
    pub app_proto_id: u16,
    /// Tenant, 0 when unused.
    pub tenant_id: u128,
    /// Stream correlation id, chosen by the requester.
    pub corr_id: u64,
    /// Capability token; only on a START frame.
    pub cap: Bytes,
    /// Application bytes.
    pub payload: Bytes,
}

/// Why bytes are not a frame. Every variant closes the connection except where
/// [`FrameError::closes_connection`] says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is larger than `max_frame` (checked before anything is allocated).
    #[error("frame of {len} bytes exceeds max_frame {max_frame}")]
    TooLarge {
        /// Total frame size announced (or about to be sent), length field included.
        len: u64,
        /// The limit in force.
        max_frame: usize,
    },
    /// `len` or `cap_len` are inconsistent.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What was inconsistent.
        reason: &'static str,
    },
    /// `ver` is not 1.
    #[error("unsupported OAP version {ver}")]
    BadVersion {
        /// The version received.
        ver: u8,
    },
}

impl FrameError {
    /// The shared error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Malformed { .. } | Self::BadVersion { .. } => ErrorKind::BadInput,
        }
    }

    /// The snake_case reason for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "frame_too_large",
            Self::Malformed { .. } => "malformed_frame",
            Self::BadVersion { .. } => "bad_version",
        }
    }

    /// Whether the connection must be closed after answering. Framing is lost after any of
    /// these, so all of them do.
    pub fn closes_connection(&self) -> bool {
        true
    }

    /// The error body to send back where a reply is still possible.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::with_code(self.code(), self.to_string())
    }
}

impl Frame {
    /// A frame with empty cap and payload and every number zero.
    pub fn new(flags: Flags, app_proto_id: u16, corr_id: u64) -> Self {
        Self {
            flags,
            code: 0,
            app_proto_id,
            tenant_id: 0,
            corr_id,
            cap: Bytes::new(),
            payload: Bytes::new(),
        }
    }

    /// Size of the encoded frame, length field included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.cap.len() + self.payload.len()
    }

    /// Appends the encoded frame to `dst`. Fails, writing nothing, if the frame would exceed
    /// `max_frame` or the capability exceeds `u16::MAX` bytes.
    pub fn encode(&self, dst: &mut BytesMut, max_frame: usize) -> Result<(), FrameError> {
        self.encode_head(dst, max_frame)?;
        dst.put_slice(&self.payload);
        Ok(())
    }

    /// Appends everything of the encoded frame but the payload (whose length the header
    /// counts): a writer then sends the payload from where it is, without copying it.
    pub fn encode_head(&self, dst: &mut BytesMut, max_frame: usize) -> Result<(), FrameError> {
        let total = self.encoded_len();
        if total > max_frame || total - 4 > u32::MAX as usize {
            return Err(FrameError::TooLarge {
                len: total as u64,
                max_frame,
            });
        }
        let cap_len = u16::try_from(self.cap.len()).map_err(|_| FrameError::Malformed {
            reason: "capability longer than 65535 bytes",
        })?;
        dst.reserve(total - self.payload.len());
        // Fits: checked against u32::MAX above.
        dst.put_u32_le((total - 4) as u32);
        dst.put_u8(VERSION);
        dst.put_u16_le(self.flags.bits());
        dst.put_u16_le(self.code);
        dst.put_u16_le(self.app_proto_id);
        dst.put_u128_le(self.tenant_id);
        dst.put_u16_le(cap_len);
        dst.put_u64_le(self.corr_id);
        dst.put_slice(&self.cap);
        Ok(())
    }

    /// Takes one frame off the front of `src`, or returns `Ok(None)` (reserving room for the
    /// rest of the frame) when more bytes are needed. The announced length is checked against
    /// `max_frame` before any allocation; the version as soon as its byte is there.
    pub fn decode(src: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > max_frame.saturating_sub(4) {
            return Err(FrameError::TooLarge {
                len: len as u64 + 4,
                max_frame,
            });
        }
        if len < FIXED_AFTER_LEN {
            return Err(FrameError::Malformed {
                reason: "length shorter than the header",
            });
        }
        if src.len() > 4 && src[4] != VERSION {
            return Err(FrameError::BadVersion { ver: src[4] });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(4 + len).freeze();
        frame.advance(5);
        let flags = Flags::from_bits_truncate(frame.get_u16_le());
        let code = frame.get_u16_le();
        let app_proto_id = frame.get_u16_le();
        let tenant_id = frame.get_u128_le();
        let cap_len = usize::from(frame.get_u16_le());
        let corr_id = frame.get_u64_le();
        if cap_len > frame.len() {
            return Err(FrameError::Malformed {
                reason: "cap_len exceeds the frame",
            });
        }
        let cap = frame.split_to(cap_len);
        Ok(Some(Frame {
            flags,
            code,
            app_proto_id,
            tenant_id,
            corr_id,
            cap,
            payload: frame,
        }))
    }

    /// A one-frame error reply (`RESP|START|END`) to the stream `corr_id` of `app_proto_id`.
    pub fn error_reply(app_proto_id: u16, corr_id: u64, kind: ErrorKind, body: &ErrorBody) -> Self {
        Self {
            code: kind.status(),
            payload: Bytes::from(body.to_json()),
            ..Self::new(
                Flags::RESP | Flags::START | Flags::END,
                app_proto_id,
                corr_id,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oap::{APP_HELLO, APP_OBJECTS, DEFAULT_MAX_FRAME};
    use proptest::prelude::*;

    struct Vector {
        name: &'static str,
        frame: Frame,
        len: usize,
        hex: &'static str,
    }

    fn vectors() -> Vec<Vector> {
        let one = Flags::REQ | Flags::START | Flags::END;
        let reply = Flags::RESP | Flags::START | Flags::END;
        vec![
            Vector {
                name: "hello_request",
                frame: Frame {
                    payload: Bytes::from_static(b"{}"),
                    ..Frame::new(one, APP_HELLO, 1)
                },
                len: 39,
                hex: "230000000119000000000000000000000000000000000000000000000001000000000000007b7d",
            },
            Vector {
                name: "hello_response",
                frame: Frame {
                    payload: Bytes::from_static(
                        br#"{"max_frame":1048576,"max_inflight":64,"oap_versions":[1]}"#,
                    ),
                    ..Frame::new(reply, APP_HELLO, 1)
                },
                len: 95,
                hex: "5b000000011a000000000000000000000000000000000000000000000001000000000000007b226d61785f6672616d65223a313034383537362c226d61785f696e666c69676874223a36342c226f61705f76657273696f6e73223a5b315d7d",
            },
            Vector {
                name: "get_with_cap",
                frame: Frame {
                    tenant_id: 0x0102030405060708090a0b0c0d0e0f10,
                    cap: Bytes::from_static(b"cap-bytes"),
                    payload: Bytes::from_static(
                        br#"{"op":"get","addr":"b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24"}"#,
                    ),
                    ..Frame::new(one, APP_OBJECTS, 42)
                },
                len: 135,
                hex: "8300000001190000000101100f0e0d0c0b0a09080706050403020109002a000000000000006361702d62797465737b226f70223a22676574222c2261646472223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234227d",
            },
            Vector {
                name: "error_429",
                frame: Frame::error_reply(
                    APP_OBJECTS,
                    42,
                    ErrorKind::RateLimited,
                    &ErrorBody::new(ErrorKind::RateLimited, "too many requests").retry_after_ms(2000),
                ),
                len: 112,
                hex: "6c000000011a00ad0101010000000000000000000000000000000000002a000000000000007b22636f6465223a22726174655f6c696d69746564222c226d657373616765223a22746f6f206d616e79207265717565737473222c2272657472795f61667465725f6d73223a323030307d",
            },
        ]
    }

    #[test]
    fn spec_vectors_encode_and_decode_byte_for_byte() {
        for v in vectors() {
            let mut out = BytesMut::new();
            v.frame.encode(&mut out, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(out.len(), v.len, "{}: length", v.name);
            assert_eq!(hex::encode(&out), v.hex, "{}: bytes", v.name);

            let mut input = BytesMut::from(&hex::decode(v.hex).unwrap()[..]);
            let decoded = Frame::decode(&mut input, DEFAULT_MAX_FRAME)
                .unwrap()
                .unwrap();
            assert_eq!(decoded, v.frame, "{}: fields", v.name);
            assert!(input.is_empty(), "{}: consumed exactly", v.name);
        }
    }

    #[test]
    fn vectors_decode_byte_by_byte() {
        for v in vectors() {
            let bytes = hex::decode(v.hex).unwrap();
            let mut input = BytesMut::new();
            let mut got = None;
            for (i, b) in bytes.iter().enumerate() {
                assert!(got.is_none(), "{}: frame complete before byte {i}", v.name);
                input.put_u8(*b);
                got = Frame::decode(&mut input, DEFAULT_MAX_FRAME).unwrap();
            }
            assert_eq!(got.unwrap(), v.frame, "{}", v.name);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut input = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let cap_before = input.capacity();
        let err = Frame::decode(&mut input, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err.code(), "frame_too_large");
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(
            input.capacity(),
            cap_before,
            "no allocation for a refused frame"
        );

        // Exactly max_frame is allowed, one more is not.
        let max = 1000;
        let ok_len = (max - 4) as u32;
        let mut at_limit = BytesMut::from(&ok_len.to_le_bytes()[..]);
        assert_eq!(Frame::decode(&mut at_limit, max).unwrap(), None);
        let mut over = BytesMut::from(&(ok_len + 1).to_le_bytes()[..]);
        assert!(matches!(
            Frame::decode(&mut over, max),
            Err(FrameError::TooLarge { len: 1001, .. })
        ));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let mut short = BytesMut::from(&32u32.to_le_bytes()[..]);
        assert_eq!(
            Frame::decode(&mut short, DEFAULT_MAX_FRAME)
                .unwrap_err()
                .code(),
            "malformed_frame"
        );

        let mut bad_ver = BytesMut::from(&hex::decode(vectors()[0].hex).unwrap()[..]);
        bad_ver[4] = 2;
        assert_eq!(
            Frame::decode(&mut bad_ver, DEFAULT_MAX_FRAME).unwrap_err(),
            FrameError::BadVersion { ver: 2 }
        );
        // The version is refused as soon as its byte arrives.
        let mut early = BytesMut::from(&[0x23, 0, 0, 0, 9][..]);
        assert!(matches!(
            Frame::decode(&mut early, DEFAULT_MAX_FRAME),
            Err(FrameError::BadVersion { ver: 9 })
        ));

        let mut bad_cap = BytesMut::from(&hex::decode(vectors()[0].hex).unwrap()[..]);
        bad_cap[27] = 3; // cap_len 3 > 2 payload bytes
        assert_eq!(
            Frame::decode(&mut bad_cap, DEFAULT_MAX_FRAME)
                .unwrap_err()
                .code(),
            "malformed_frame"
        );
    }

    #[test]
    fn reserved_flag_bits_are_ignored() {
        let mut bytes = BytesMut::from(&hex::decode(vectors()[0].hex).unwrap()[..]);
        bytes[6] = 0xfe; // bits 9..15
        let frame = Frame::decode(&mut bytes, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(frame.flags, Flags::REQ | Flags::START | Flags::END);
        let mut bytes = BytesMut::from(&hex::decode(vectors()[0].hex).unwrap()[..]);
        bytes[6] = 0x01; // bit 8
        let frame = Frame::decode(&mut bytes, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert!(frame.flags.contains(Flags::TRACE_SAMPLED));
    }

    #[test]
    fn encode_refuses_oversized_frames() {
        let frame = Frame {
            payload: Bytes::from(vec![0u8; 100]),
            ..Frame::new(Flags::REQ | Flags::START, APP_OBJECTS, 1)
        };
        let mut out = BytesMut::new();
        assert!(frame.encode(&mut out, 136).is_err());
        assert!(out.is_empty());
        frame.encode(&mut out, 137).unwrap();
        assert_eq!(out.len(), 137);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<u128>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(flags, code, app, tenant, corr, cap, payload)| Frame {
                flags: Flags::from_bits_truncate(u16::from(flags)),
                code,
                app_proto_id: app,
                tenant_id: tenant,
                corr_id: corr,
                cap: Bytes::from(cap),
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(frames in proptest::collection::vec(arb_frame(), 1..8)) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire, DEFAULT_MAX_FRAME).unwrap();
            }
            let mut back = Vec::new();
            while let Some(f) = Frame::decode(&mut wire, DEFAULT_MAX_FRAME).unwrap() {
                back.push(f);
            }
            prop_assert_eq!(back, frames);
            prop_assert!(wire.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 0usize..300) {
            let mut input = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Frame::decode(&mut input, max) {}
        }
    }
}
