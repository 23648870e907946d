//! Payloads of app 0x0101, objects (`specs/OAP-1.md`, "App 0x0101").
//!
//! A request stream opens with a JSON [`ObjectRequest`] in its `REQ|START` payload. A `put`
//! continues with the object's raw bytes in `REQ` frames, the last carrying `END` (the START
//! frame carries no bytes). Replies: `get` answers `RESP|START` code 0 with a JSON
//! [`GetReply`], then the verified bytes in `RESP` frames, the last with `END`; `put` answers
//! one `RESP|START|END` with code 201 (created) or 200 (already stored) and a JSON
//! [`PutReply`]; `stat` answers one `RESP|START|END` code 0 with the stat JSON. Failures are a
//! single error frame with the HTTP status as `code` and the shared JSON error body.

use serde::{Deserialize, Serialize};

use crate::Address;

/// The JSON payload of a request's START frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectRequest {
    /// The object's bytes.
    Get {
        /// Which object.
        addr: Address,
    },
    /// Store the bytes that follow.
    Put {
        /// The object's size, when known: checked against the limit before any byte.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// Media type to keep with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_type: Option<String>,
        /// Refuse (422) content with another address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<Address>,
        /// How to protect it across nodes: `"K+M"` or `"none"` (else the node's
        /// `storage.durability`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        durability: Option<String>,
    },
    /// Size, media type, chunks, pin and damage.
    Stat {
        /// Which object.
        addr: Address,
    },
}

/// The JSON payload of a `get` reply's START frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// Bytes that follow.
    pub size: u64,
    /// The stored media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

/// The JSON payload of a `put` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    /// The object's address.
    pub address: Address,
    /// Its size.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::oap::{APP_OBJECTS, DEFAULT_MAX_FRAME, Flags, Frame};

    const HELLO: &str = "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";

    fn encoded(flags: Flags, code: u16, corr: u64, cap: &[u8], payload: Vec<u8>) -> String {
        let mut frame = Frame::new(flags, APP_OBJECTS, corr);
        frame.code = code;
        frame.cap = Bytes::copy_from_slice(cap);
        frame.payload = Bytes::from(payload);
        let mut wire = BytesMut::new();
        frame.encode(&mut wire, DEFAULT_MAX_FRAME).unwrap();
        hex::encode(&wire)
    }

    /// The 0x0101 vectors of `specs/OAP-1.md`, built from the payload types.
    #[test]
    fn spec_vectors() {
        let addr: Address = HELLO.parse().unwrap();
        let put = ObjectRequest::Put {
            size: Some(11),
            media_type: None,
            expect: None,
            durability: None,
        };
        assert_eq!(
            encoded(
                Flags::REQ | Flags::START,
                0,
                7,
                b"owner-token",
                serde_json::to_vec(&put).unwrap()
            ),
            "4200000001090000000101000000000000000000000000000000000b0007000000000000006f776e65722d746f6b656e7b226f70223a22707574222c2273697a65223a31317d"
        );
        assert_eq!(
            encoded(Flags::REQ | Flags::END, 0, 7, b"", b"hello world".to_vec()),
            "2c00000001110000000101000000000000000000000000000000000000070000000000000068656c6c6f20776f726c64"
        );
        let created = PutReply {
            address: addr,
            size: 11,
        };
        assert_eq!(
            encoded(
                Flags::RESP | Flags::START | Flags::END,
                201,
                7,
                b"",
                serde_json::to_vec(&created).unwrap()
            ),
            "7c000000011a00c900010100000000000000000000000000000000000007000000000000007b2261646472657373223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234222c2273697a65223a31317d"
        );
        let head = GetReply {
            size: 11,
            media_type: None,
        };
        assert_eq!(
            encoded(
                Flags::RESP | Flags::START,
                0,
                8,
                b"",
                serde_json::to_vec(&head).unwrap()
            ),
            "2c000000010a000000010100000000000000000000000000000000000008000000000000007b2273697a65223a31317d"
        );
        assert_eq!(
            encoded(Flags::RESP | Flags::END, 0, 8, b"", b"hello world".to_vec()),
            "2c00000001120000000101000000000000000000000000000000000000080000000000000068656c6c6f20776f726c64"
        );
        let stat = ObjectRequest::Stat { addr };
        assert_eq!(
            encoded(
                Flags::REQ | Flags::START | Flags::END,
                0,
                9,
                b"",
                serde_json::to_vec(&stat).unwrap()
            ),
            "7b0000000119000000010100000000000000000000000000000000000009000000000000007b226f70223a2273746174222c2261646472223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234227d"
        );
    }

    #[test]
    fn requests_have_the_documented_json() {
        let addr: Address = "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24"
            .parse()
            .unwrap();
        let get = ObjectRequest::Get { addr };
        assert_eq!(
            serde_json::to_string(&get).unwrap(),
            r#"{"op":"get","addr":"b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24"}"#
        );
        let put: ObjectRequest = serde_json::from_str(r#"{"op":"put","size":11}"#).unwrap();
        assert_eq!(
            put,
            ObjectRequest::Put {
                size: Some(11),
                media_type: None,
                expect: None,
                durability: None,
            }
        );
        for bad in [
            r#"{"op":"delete"}"#,
            r#"{"op":"get"}"#,
            r#"{"op":"get","addr":"B3:00"}"#,
            r#"{"op":"put","sise":1}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<ObjectRequest>(bad).is_err(), "{bad}");
        }
    }
}
