//! App 0x0102, node-to-node transfers, as OAP/1 frames (no I/O: `svc-dht` moves the frames
//! over libp2p streams). A request is one `REQ|START|END` frame with a JSON
//! [`TransferRequest`]. A `have` is answered by one `RESP|START|END` frame with `{"size":N}`; a
//! `range` by a `RESP|START` frame with `{"size":N,"start":S,"end":E}` and a `RESP|END` frame
//! with the range as a BLAKE3 verified stream (bao-tree's encoding with 16 KiB groups); a
//! `providers` by one `RESP|START|END` frame with `{"providers":[…]}`; a failure by one error
//! frame carrying the HTTP status as `code` and the shared error body. `specs/OAP-1.md` has the
//! layout and vectors.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{APP_TRANSFER, DEFAULT_MAX_FRAME, Flags, Frame, HEADER_LEN};
use crate::{Address, ErrorBody, ErrorKind};

/// Largest range one request may ask for: its encoding (the bytes plus 64 bytes per tree node
/// crossed, under 1% more) fits one frame with room to spare.
pub const MAX_RANGE: u64 = 512 * 1024;
const _: () = assert!(MAX_RANGE + MAX_RANGE / 64 < (DEFAULT_MAX_FRAME - HEADER_LEN) as u64);

/// Most providers a `providers` answer may name (Kademlia's replication factor).
pub const MAX_PROVIDERS: usize = 20;
/// Most addresses per provider in a `providers` answer.
pub const MAX_ADDRS: usize = 8;

/// What one node asks another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransferRequest {
    /// Whether the peer holds the object, and its size.
    Have {
        /// Which object.
        addr: Address,
    },
    /// Bytes `start..end` of the object (at most [`MAX_RANGE`]; both ends multiples of 16 KiB,
    /// or `end` past the object's end), as a verified stream: each 16 KiB group checked by the
    /// sender before it leaves and by the receiver on arrival.
    Range {
        /// Which object.
        addr: Address,
        /// First byte.
        start: u64,
        /// One past the last byte (clamped to the object's size).
        end: u64,
    },
    /// The provider records the peer holds for the object (what a Kademlia node answers to
    /// GET_PROVIDERS, without the closer peers): a hedged lookup asks peers directly.
    Providers {
        /// Which object.
        addr: Address,
    },
}

/// One provider named in a `providers` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// Its PeerId.
    pub peer: String,
    /// Where it can be dialled, as far as the answering peer knows.
    pub addrs: Vec<String>,
}

/// What comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferReply {
    /// The peer holds the object.
    Have {
        /// Its size.
        size: u64,
    },
    /// A range of it.
    Range {
        /// The object's size.
        size: u64,
        /// Where the range starts.
        start: u64,
        /// Where it ends (the request's end, clamped to the size).
        end: u64,
        /// The range's bao-tree encoding: parent hash pairs and the groups' bytes.
        encoded: Bytes,
    },
    /// The provider records the peer holds (perhaps none).
    Providers {
        /// At most [`MAX_PROVIDERS`], each with at most [`MAX_ADDRS`] addresses.
        providers: Vec<ProviderEntry>,
    },
    /// A refusal: not here (404), busy (429/503), a bad request (400, 416).
    Error {
        /// Its kind.
        kind: ErrorKind,
        /// The shared error body.
        body: ErrorBody,
    },
}

/// A reply's first frame, read: the whole reply, or the head of a range whose bytes follow in
/// one more frame ([`range_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStart {
    /// The reply is complete.
    Whole(TransferReply),
    /// A range's head.
    Range {
        /// The object's size.
        size: u64,
        /// Where the range starts.
        start: u64,
        /// Where it ends.
        end: u64,
    },
}

/// Why frames are not a well-formed 0x0102 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransferError(String);

fn bad(why: impl Into<String>) -> TransferError {
    TransferError(why.into())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersHead {
    providers: Vec<ProviderEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<u64>,
}

fn json_frame(flags: Flags, value: &impl Serialize) -> Frame {
    let mut frame = Frame::new(flags, APP_TRANSFER, 0);
    // These types serialize to JSON without fail (no maps with non-string keys, no floats).
    frame.payload = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    frame
}

fn json<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, TransferError> {
    serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))
}

/// Checks that a frame read from a transfer stream is of app 0x0102.
pub fn check_app(frame: &Frame) -> Result<(), TransferError> {
    if frame.app_proto_id == APP_TRANSFER {
        Ok(())
    } else {
        Err(bad(format!("app {:#06x}", frame.app_proto_id)))
    }
}

/// The one frame of a request.
pub fn request_frame(request: &TransferRequest) -> Frame {
    json_frame(Flags::REQ | Flags::START | Flags::END, request)
}

/// Reads a request from its frame.
pub fn decode_request(frame: &Frame) -> Result<TransferRequest, TransferError> {
    check_app(frame)?;
    if !frame.flags.contains(Flags::REQ | Flags::START | Flags::END) {
        return Err(bad("a request is one REQ|START|END frame"));
    }
    json(&frame.payload)
}

/// The frames of a reply (one, or two for a range).
pub fn reply_frames(reply: TransferReply) -> Vec<Frame> {
    match reply {
        TransferReply::Have { size } => {
            let head = Head {
                size,
                start: None,
                end: None,
            };
            vec![json_frame(Flags::RESP | Flags::START | Flags::END, &head)]
        }
        TransferReply::Range {
            size,
            start,
            end,
            encoded,
        } => {
            let head = Head {
                size,
                start: Some(start),
                end: Some(end),
            };
            let mut data = Frame::new(Flags::RESP | Flags::END, APP_TRANSFER, 0);
            data.payload = encoded;
            vec![json_frame(Flags::RESP | Flags::START, &head), data]
        }
        TransferReply::Providers { providers } => {
            let head = ProvidersHead { providers };
            vec![json_frame(Flags::RESP | Flags::START | Flags::END, &head)]
        }
        TransferReply::Error { kind, body } => {
            vec![Frame::error_reply(APP_TRANSFER, 0, kind, &body)]
        }
    }
}

/// Reads a reply's first frame.
pub fn decode_reply(first: &Frame) -> Result<ReplyStart, TransferError> {
    check_app(first)?;
    if !first.flags.contains(Flags::RESP | Flags::START) {
        return Err(bad("a reply starts with RESP|START"));
    }
    if first.code != 0 {
        let body: ErrorBody = json(&first.payload)?;
        let kind = ErrorKind::from_status(first.code).unwrap_or(ErrorKind::Internal);
        return Ok(ReplyStart::Whole(TransferReply::Error { kind, body }));
    }
    if first.payload.starts_with(b"{\"providers\"") && first.flags.contains(Flags::END) {
        let head: ProvidersHead = json(&first.payload)?;
        if head.providers.len() > MAX_PROVIDERS
            || head.providers.iter().any(|p| p.addrs.len() > MAX_ADDRS)
        {
            return Err(bad("too many providers or addresses"));
        }
        return Ok(ReplyStart::Whole(TransferReply::Providers {
            providers: head.providers,
        }));
    }
    let head: Head = json(&first.payload)?;
    match (head.start, head.end) {
        (None, None) if first.flags.contains(Flags::END) => {
            Ok(ReplyStart::Whole(TransferReply::Have { size: head.size }))
        }
        (Some(start), Some(end)) if !first.flags.contains(Flags::END) => Ok(ReplyStart::Range {
            size: head.size,
            start,
            end,
        }),
        _ => Err(bad("reply head and flags disagree")),
    }
}

/// A range reply from its head and the frame of its bytes.
pub fn range_reply(
    (size, start, end): (u64, u64, u64),
    data: Frame,
) -> Result<TransferReply, TransferError> {
    check_app(&data)?;
    if !data.flags.contains(Flags::RESP | Flags::END) || data.code != 0 {
        return Err(bad("a range's bytes come in one RESP|END frame"));
    }
    Ok(TransferReply::Range {
        size,
        start,
        end,
        encoded: data.payload,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn round_trip(reply: TransferReply) -> TransferReply {
        let mut frames = reply_frames(reply).into_iter();
        match decode_reply(&frames.next().unwrap()).unwrap() {
            ReplyStart::Whole(whole) => {
                assert!(frames.next().is_none());
                whole
            }
            ReplyStart::Range { size, start, end } => {
                range_reply((size, start, end), frames.next().unwrap()).unwrap()
            }
        }
    }

    #[test]
    fn every_reply_reads_back_as_itself() {
        let replies = [
            TransferReply::Have { size: 7 },
            TransferReply::Range {
                size: 11,
                start: 0,
                end: 11,
                encoded: Bytes::from_static(b"hello world"),
            },
            TransferReply::Providers {
                providers: vec![ProviderEntry {
                    peer: "12D3KooW".into(),
                    addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                }],
            },
            TransferReply::Error {
                kind: ErrorKind::NotFound,
                body: ErrorBody::new(ErrorKind::NotFound, "no object"),
            },
        ];
        for reply in replies {
            assert_eq!(round_trip(reply.clone()), reply);
        }
        let request = TransferRequest::Range {
            addr: Address::of(b"x"),
            start: 0,
            end: 16384,
        };
        assert_eq!(decode_request(&request_frame(&request)).unwrap(), request);
    }

    #[test]
    fn malformed_replies_are_refused() {
        let too_many = ProvidersHead {
            providers: vec![
                ProviderEntry {
                    peer: "p".into(),
                    addrs: vec![],
                };
                MAX_PROVIDERS + 1
            ],
        };
        let frame = json_frame(Flags::RESP | Flags::START | Flags::END, &too_many);
        assert!(decode_reply(&frame).is_err());
        // A range head that claims to be whole.
        let head = Head {
            size: 1,
            start: Some(0),
            end: Some(1),
        };
        let frame = json_frame(Flags::RESP | Flags::START | Flags::END, &head);
        assert!(decode_reply(&frame).is_err());
        // A request frame where a reply is due, and a reply of another app.
        assert!(
            decode_reply(&request_frame(&TransferRequest::Have {
                addr: Address::of(b"")
            }))
            .is_err()
        );
        let mut other = json_frame(
            Flags::RESP | Flags::START | Flags::END,
            &Head {
                size: 1,
                start: None,
                end: None,
            },
        );
        other.app_proto_id = 0x0101;
        assert!(decode_reply(&other).is_err());
    }
}
