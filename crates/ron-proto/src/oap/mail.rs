//! Payloads of app 0x0201, the mailbox (`specs/OAP-1.md`, "App 0x0201"): the operations of
//! `/mail/send`, `/mail/fetch` and `/mail/ack` over OAP/1, with the same outcomes and codes.
//!
//! A request stream opens with a JSON [`MailRequest`] in its `REQ|START` payload. A `send`
//! continues with the envelope's bytes in `REQ` frames, the last carrying `END`. Replies:
//! `send` answers one `RESP|START|END` (201 stored or delivered, 202 queued) with a JSON
//! [`SendReply`]; `fetch` answers `RESP|START` code 0 with a JSON [`FetchReply`] naming each
//! envelope and its size, then the envelopes' bytes back to back in `RESP` frames, the last
//! with `END` (one frame when there is none); `ack` answers one `RESP|START|END` with a JSON
//! [`AckReply`]. `proof` is the value of the HTTP header `ron-mail-auth` for the same request
//! over HTTP: `POST` of [`fetch_target`] with an empty body, of `/mail/ack` with
//! [`ack_body`], of `/mail/send` with the envelope.

use serde::{Deserialize, Serialize};

use crate::Address;

/// Largest envelope (the top bucket).
pub const MAX_ENVELOPE: u64 = 1 << 20;
/// Most messages one fetch returns, and most ids one ack carries.
pub const MAX_BATCH: usize = 1000;

/// The JSON payload of a request's START frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MailRequest {
    /// An envelope follows (`size` bytes, at most [`MAX_ENVELOPE`]).
    Send {
        /// The envelope's size: checked before any byte.
        size: u64,
        /// The sender's proof of its key (its rate is then kept by key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<String>,
    },
    /// Up to `limit` visible messages of the prover's `lane`.
    Fetch {
        /// `message` or `receipt`.
        lane: String,
        /// At most [`MAX_BATCH`].
        limit: usize,
        /// The recipient's proof.
        proof: String,
    },
    /// Delete these of the prover's messages.
    Ack {
        /// At most [`MAX_BATCH`].
        ids: Vec<Address>,
        /// The recipient's proof.
        proof: String,
    },
}

/// What a `send` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReply {
    /// The message id (`b3:` of the envelope).
    pub id: Address,
    /// `stored` (kept on this node), `delivered` (to the recipient's node) or `queued` (in
    /// the outbox).
    pub state: String,
}

/// One message of a fetch, as named in its reply's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// Its id.
    pub id: Address,
    /// When it was queued (Unix milliseconds).
    pub stored_at_ms: u64,
    /// Its envelope's bytes in the frames that follow.
    pub size: u64,
}

/// The head of a fetch's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchReply {
    /// The messages, in the order their bytes follow.
    pub messages: Vec<Fetched>,
}

/// What an `ack` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckReply {
    /// The ids that were queued and are deleted now.
    pub acked: Vec<Address>,
}

/// The request target a fetch's proof covers: `/mail/fetch?lane=<lane>&limit=<limit>`.
pub fn fetch_target(lane: &str, limit: usize) -> String {
    format!("/mail/fetch?lane={lane}&limit={limit}")
}

/// The body an ack's proof covers: `{"ids":["b3:…",…]}`.
pub fn ack_body(ids: &[Address]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        ids: &'a [Address],
    }
    serde_json::to_vec(&Body { ids }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::oap::{APP_MAILBOX, DEFAULT_MAX_FRAME, Flags, Frame};

    const ID: &str = "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";

    fn encoded(flags: Flags, code: u16, corr: u64, cap: &[u8], payload: Vec<u8>) -> String {
        let mut frame = Frame::new(flags, APP_MAILBOX, corr);
        frame.code = code;
        frame.cap = Bytes::copy_from_slice(cap);
        frame.payload = Bytes::from(payload);
        let mut wire = BytesMut::new();
        frame.encode(&mut wire, DEFAULT_MAX_FRAME).unwrap();
        hex::encode(&wire)
    }

    /// The 0x0201 vectors of `specs/OAP-1.md`, built from the payload types.
    #[test]
    fn spec_vectors() {
        let id: Address = ID.parse().unwrap();
        let send = MailRequest::Send {
            size: 1024,
            proof: None,
        };
        assert_eq!(
            encoded(
                Flags::REQ | Flags::START,
                0,
                3,
                b"",
                serde_json::to_vec(&send).unwrap()
            ),
            "3a0000000109000000010200000000000000000000000000000000000003000000000000007b226f70223a2273656e64222c2273697a65223a313032347d"
        );
        let stored = SendReply {
            id,
            state: "stored".into(),
        };
        assert_eq!(
            encoded(
                Flags::RESP | Flags::START | Flags::END,
                201,
                3,
                b"",
                serde_json::to_vec(&stored).unwrap()
            ),
            "7e000000011a00c900010200000000000000000000000000000000000003000000000000007b226964223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234222c227374617465223a2273746f726564227d"
        );
        let ack = MailRequest::Ack {
            ids: vec![id],
            proof: "P".into(),
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            format!(r#"{{"op":"ack","ids":["{ID}"],"proof":"P"}}"#)
        );
        assert_eq!(
            ack_body(&[id]),
            format!(r#"{{"ids":["{ID}"]}}"#).into_bytes()
        );
        assert_eq!(
            fetch_target("message", 100),
            "/mail/fetch?lane=message&limit=100"
        );
        let head = FetchReply {
            messages: vec![Fetched {
                id,
                stored_at_ms: 1,
                size: 1024,
            }],
        };
        assert_eq!(
            serde_json::to_string(&head).unwrap(),
            format!(r#"{{"messages":[{{"id":"{ID}","stored_at_ms":1,"size":1024}}]}}"#)
        );
    }

    #[test]
    fn unknown_ops_and_fields_are_refused() {
        for bad in [
            r#"{"op":"delete"}"#,
            r#"{"op":"send"}"#,
            r#"{"op":"fetch","lane":"message","limit":1}"#,
            r#"{"op":"ack","ids":["B3:00"],"proof":"p"}"#,
            r#"{"op":"send","size":1,"extra":1}"#,
        ] {
            assert!(serde_json::from_str::<MailRequest>(bad).is_err(), "{bad}");
        }
    }
}
