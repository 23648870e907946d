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
    use super::*;

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
                expect: None
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
