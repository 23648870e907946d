//! App 0x0102, node-to-node transfers, as OAP/1 frames (no I/O: `svc-dht` moves the frames
//! over libp2p streams). A request is one `REQ|START|END` frame with a JSON
//! [`TransferRequest`]. A `have` is answered by one `RESP|START|END` frame with `{"size":N}`; a
//! `range` by a `RESP|START` frame with `{"size":N,"start":S,"end":E}` and a `RESP|END` frame
//! with the range as a BLAKE3 verified stream (bao-tree's encoding with 16 KiB groups); a
//! `providers` by one `RESP|START|END` frame with `{"providers":[…]}`; a failure by one error
//! frame carrying the HTTP status as `code` and the shared error body.
//!
//! Shards of protected objects travel here too: a `keep` request is a `REQ|START` frame with
//! its JSON head, then its bytes in `REQ` frames of at most [`MAX_RANGE`], the last one `END`;
//! it is answered `{"lease_s":L}`. A `hold` (one frame) asks which of up to [`MAX_HOLD`]
//! addresses the peer keeps, renewing their leases: `{"held":[…],"lease_s":L}`.
//! `specs/OAP-1.md` has the layout and vectors.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::settle::{self, Cashed, Cheque};
use super::{APP_SETTLE, APP_TRANSFER, DEFAULT_MAX_FRAME, Flags, Frame, HEADER_LEN};
use crate::manifest::CHUNK_MAX_BYTES;
use crate::trace::TraceParent;
use crate::{Address, ErrorBody, ErrorKind};

/// Largest range one request may ask for: its encoding (the bytes plus 64 bytes per tree node
/// crossed, under 1% more) fits one frame with room to spare.
pub const MAX_RANGE: u64 = 512 * 1024;
const _: () = assert!(MAX_RANGE + MAX_RANGE / 64 < (DEFAULT_MAX_FRAME - HEADER_LEN) as u64);

/// Most providers a `providers` answer may name (Kademlia's replication factor).
pub const MAX_PROVIDERS: usize = 20;
/// Most addresses per provider in a `providers` answer.
pub const MAX_ADDRS: usize = 8;

/// Largest `keep`: a shard of the largest chunk (a `1+m` scheme), or a layout.
pub const MAX_KEEP: u64 = CHUNK_MAX_BYTES as u64;
/// Most addresses one `hold` asks about.
pub const MAX_HOLD: usize = 1024;

/// What a kept blob is to the node that keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// One shard of a chunk of a protected object.
    Shard,
    /// The layout of a protected object (the keeper then watches over the object too).
    Layout,
    /// A mail envelope for a mailbox the peer hosts (its address is the message id; `object`
    /// is the same, `lease_s` 0): answered once the envelope is durable in the recipient's
    /// queue, or refused (507 `mailbox_full`, 403 when the peer hosts no such mailbox).
    Mail,
}

/// A `keep` request: a blob to hold for the sender, under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    /// The blob's address (BLAKE3 of `bytes`: checked by the keeper before it answers).
    pub addr: Address,
    /// The protected object it belongs to.
    pub object: Address,
    /// What it is.
    pub role: Role,
    /// How long the sender asks it be kept without a renewal.
    pub lease_s: u32,
    /// Its bytes (at most [`MAX_KEEP`]).
    pub bytes: Bytes,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepHead {
    op: String,
    addr: Address,
    object: Address,
    role: Role,
    lease_s: u32,
    size: u64,
}

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
    /// Keep a blob (its head and bytes travel in several frames: see [`request_frames`]).
    #[serde(skip)]
    Keep(Keep),
    /// Which of `addrs` the peer keeps; each one kept has its lease renewed.
    Hold {
        /// At most [`MAX_HOLD`] addresses.
        addrs: Vec<Address>,
        /// The lease asked for, in seconds.
        lease_s: u32,
    },
    /// A cheque for ranges received (app 0x0401: [`settle`]).
    #[serde(skip)]
    Cheque(Cheque),
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
    /// A `keep` was verified and made durable.
    Kept {
        /// The lease granted, in seconds (perhaps shorter than asked).
        lease_s: u32,
    },
    /// Which of a `hold`'s addresses the peer keeps (in order).
    Held {
        /// One answer per address asked about.
        held: Vec<bool>,
        /// The lease granted to each one kept, in seconds.
        lease_s: u32,
    },
    /// A cheque was checked and recorded (app 0x0401).
    Cashed(Cashed),
    /// A cheque was refused (app 0x0401): forged (403), not above the one held (409),
    /// malformed (400).
    ChequeRefused {
        /// Its kind.
        kind: ErrorKind,
        /// The shared error body.
        body: ErrorBody,
    },
    /// A refusal: not here (404), busy (429/503), a bad request (400, 416), no room for a
    /// shard within the keeper's budget (413).
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

/// A request's first frame, read: the whole request, or the head of a `keep` whose bytes
/// follow ([`keep_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStart {
    /// The request is complete.
    Whole(TransferRequest),
    /// A `keep`'s head: its bytes follow, `size` of them.
    Keep {
        /// The blob's address.
        addr: Address,
        /// The object it belongs to.
        object: Address,
        /// What it is.
        role: Role,
        /// The lease asked for.
        lease_s: u32,
        /// Its size (at most [`MAX_KEEP`]: checked before anything is allocated).
        size: u64,
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

/// A reply's JSON head: each shape has fields no other has (and refuses unknown ones).
#[derive(Deserialize)]
#[serde(untagged)]
enum ReplyHead {
    Providers(ProvidersHead),
    Held(HeldHead),
    Kept(KeptHead),
    Sized(Head),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldHead {
    held: Vec<bool>,
    lease_s: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeptHead {
    lease_s: u32,
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

/// Checks that a frame read from a transfer stream is of app 0x0102 or 0x0401 (cheques).
pub fn check_app(frame: &Frame) -> Result<(), TransferError> {
    if frame.app_proto_id == APP_TRANSFER || frame.app_proto_id == APP_SETTLE {
        Ok(())
    } else {
        Err(bad(format!("app {:#06x}", frame.app_proto_id)))
    }
}

/// Checks that a frame continuing a 0x0102 message (a keep's bytes, a range's) is of 0x0102.
fn check_transfer(frame: &Frame) -> Result<(), TransferError> {
    if frame.app_proto_id == APP_TRANSFER {
        Ok(())
    } else {
        Err(bad(format!("app {:#06x}", frame.app_proto_id)))
    }
}

fn settle_error(e: settle::SettleError) -> TransferError {
    bad(e.to_string())
}

/// Puts `trace` on a request's START frame (see [`crate::trace`]): `tenant_id` the trace id,
/// `corr_id` the parent span, flag bit 8 the sampled bit.
pub fn trace_frame(frame: &mut Frame, trace: TraceParent) {
    let (trace_id, parent, sampled) = trace.to_frame();
    frame.tenant_id = trace_id;
    frame.corr_id = parent;
    frame.flags.set(Flags::TRACE_SAMPLED, sampled);
}

/// The trace context a request's START frame carries, if any.
pub fn trace_of(frame: &Frame) -> Option<TraceParent> {
    TraceParent::from_frame(
        frame.tenant_id,
        frame.corr_id,
        frame.flags.contains(Flags::TRACE_SAMPLED),
    )
}

/// The frames of a request: one, or for a `keep` its head and then its bytes in frames of
/// at most [`MAX_RANGE`] (the last one `END`).
pub fn request_frames(request: &TransferRequest) -> Vec<Frame> {
    let keep = match request {
        TransferRequest::Keep(keep) => keep,
        TransferRequest::Cheque(cheque) => return vec![settle::request_frame(cheque)],
        _ => return vec![json_frame(Flags::REQ | Flags::START | Flags::END, request)],
    };
    let head = KeepHead {
        op: "keep".into(),
        addr: keep.addr,
        object: keep.object,
        role: keep.role,
        lease_s: keep.lease_s,
        size: keep.bytes.len() as u64,
    };
    let mut frames = vec![json_frame(Flags::REQ | Flags::START, &head)];
    let mut rest = keep.bytes.clone();
    loop {
        let piece = rest.split_to(rest.len().min(MAX_RANGE as usize));
        let flags = if rest.is_empty() {
            Flags::REQ | Flags::END
        } else {
            Flags::REQ
        };
        let mut frame = Frame::new(flags, APP_TRANSFER, 0);
        frame.payload = piece;
        frames.push(frame);
        if rest.is_empty() {
            return frames;
        }
    }
}

/// Reads a request's first frame.
pub fn decode_request(frame: &Frame) -> Result<RequestStart, TransferError> {
    check_app(frame)?;
    if frame.app_proto_id == APP_SETTLE {
        let cheque = settle::decode_request(frame).map_err(settle_error)?;
        return Ok(RequestStart::Whole(TransferRequest::Cheque(cheque)));
    }
    if !frame.flags.contains(Flags::REQ | Flags::START) || frame.flags.contains(Flags::RESP) {
        return Err(bad("a request starts with REQ|START"));
    }
    if frame.flags.contains(Flags::END) {
        let request: TransferRequest = json(&frame.payload)?;
        if let TransferRequest::Hold { addrs, .. } = &request
            && addrs.len() > MAX_HOLD
        {
            return Err(bad(format!(
                "a hold asks about at most {MAX_HOLD} addresses"
            )));
        }
        return Ok(RequestStart::Whole(request));
    }
    let head: KeepHead = json(&frame.payload)?;
    if head.op != "keep" {
        return Err(bad("only a keep request spans frames"));
    }
    if head.size == 0 || head.size > MAX_KEEP {
        return Err(bad(format!("a keep carries 1 to {MAX_KEEP} bytes")));
    }
    Ok(RequestStart::Keep {
        addr: head.addr,
        object: head.object,
        role: head.role,
        lease_s: head.lease_s,
        size: head.size,
    })
}

/// Adds one frame of a `keep`'s bytes to `bytes` (sized for the head's `size`, which it must
/// not pass); `Ok(true)` when it was the last.
pub fn keep_piece(size: u64, bytes: &mut Vec<u8>, frame: &Frame) -> Result<bool, TransferError> {
    check_transfer(frame)?;
    if !frame.flags.contains(Flags::REQ)
        || frame.flags.intersects(Flags::START | Flags::RESP)
        || frame.code != 0
    {
        return Err(bad("a keep's bytes come in REQ frames"));
    }
    if (bytes.len() + frame.payload.len()) as u64 > size {
        return Err(bad("a keep carries more bytes than its head says"));
    }
    bytes.extend_from_slice(&frame.payload);
    let last = frame.flags.contains(Flags::END);
    if last && bytes.len() as u64 != size {
        return Err(bad("a keep carries fewer bytes than its head says"));
    }
    Ok(last)
}

/// A `keep` request from its head and its bytes.
pub fn keep_request(start: RequestStart, bytes: Vec<u8>) -> Result<TransferRequest, TransferError> {
    match start {
        RequestStart::Keep {
            addr,
            object,
            role,
            lease_s,
            size,
        } if bytes.len() as u64 == size => Ok(TransferRequest::Keep(Keep {
            addr,
            object,
            role,
            lease_s,
            bytes: Bytes::from(bytes),
        })),
        _ => Err(bad("not a whole keep")),
    }
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
        TransferReply::Kept { lease_s } => {
            let head = KeptHead { lease_s };
            vec![json_frame(Flags::RESP | Flags::START | Flags::END, &head)]
        }
        TransferReply::Held { held, lease_s } => {
            let head = HeldHead { held, lease_s };
            vec![json_frame(Flags::RESP | Flags::START | Flags::END, &head)]
        }
        TransferReply::Cashed(cashed) => vec![settle::reply_frame(&Ok(cashed))],
        TransferReply::ChequeRefused { kind, body } => {
            vec![settle::reply_frame(&Err((kind, body)))]
        }
        TransferReply::Error { kind, body } => {
            vec![Frame::error_reply(APP_TRANSFER, 0, kind, &body)]
        }
    }
}

/// Reads a reply's first frame.
pub fn decode_reply(first: &Frame) -> Result<ReplyStart, TransferError> {
    check_app(first)?;
    if first.app_proto_id == APP_SETTLE {
        return Ok(ReplyStart::Whole(
            match settle::decode_reply(first).map_err(settle_error)? {
                Ok(cashed) => TransferReply::Cashed(cashed),
                Err((kind, body)) => TransferReply::ChequeRefused { kind, body },
            },
        ));
    }
    if !first.flags.contains(Flags::RESP | Flags::START) {
        return Err(bad("a reply starts with RESP|START"));
    }
    if first.code != 0 {
        let body: ErrorBody = json(&first.payload)?;
        let kind = ErrorKind::from_status(first.code).unwrap_or(ErrorKind::Internal);
        return Ok(ReplyStart::Whole(TransferReply::Error { kind, body }));
    }
    let whole = first.flags.contains(Flags::END);
    let reply = match json::<ReplyHead>(&first.payload)? {
        ReplyHead::Providers(head) if whole => {
            if head.providers.len() > MAX_PROVIDERS
                || head.providers.iter().any(|p| p.addrs.len() > MAX_ADDRS)
            {
                return Err(bad("too many providers or addresses"));
            }
            TransferReply::Providers {
                providers: head.providers,
            }
        }
        ReplyHead::Held(head) if whole => {
            if head.held.len() > MAX_HOLD {
                return Err(bad("too many answers"));
            }
            TransferReply::Held {
                held: head.held,
                lease_s: head.lease_s,
            }
        }
        ReplyHead::Kept(head) if whole => TransferReply::Kept {
            lease_s: head.lease_s,
        },
        ReplyHead::Sized(Head {
            size,
            start: None,
            end: None,
        }) if whole => TransferReply::Have { size },
        ReplyHead::Sized(Head {
            size,
            start: Some(start),
            end: Some(end),
        }) if !whole => return Ok(ReplyStart::Range { size, start, end }),
        _ => return Err(bad("reply head and flags disagree")),
    };
    Ok(ReplyStart::Whole(reply))
}

/// A range reply from its head and the frame of its bytes.
pub fn range_reply(
    (size, start, end): (u64, u64, u64),
    data: Frame,
) -> Result<TransferReply, TransferError> {
    check_transfer(&data)?;
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
    fn a_traced_request_carries_its_context_in_the_start_frame_as_the_spec_says() {
        let request = TransferRequest::Have {
            addr: Address::of(b"hello world"),
        };
        let mut frames = request_frames(&request);
        assert_eq!(trace_of(&frames[0]), None, "untraced: both ids 0");
        let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        trace_frame(&mut frames[0], tp);
        // The spec's field values.
        assert_eq!(
            frames[0].tenant_id,
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736
        );
        assert_eq!(frames[0].corr_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(frames[0].flags.bits(), 0x0119);
        let mut wire = bytes::BytesMut::new();
        frames[0].encode(&mut wire, DEFAULT_MAX_FRAME).unwrap();
        let back = Frame::decode(&mut wire, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(trace_of(&back), Some(tp));
        assert!(matches!(decode_request(&back), Ok(RequestStart::Whole(r)) if r == request));
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
            TransferReply::Cashed(Cashed {
                cumulative: 9,
                credited: 4,
            }),
            TransferReply::ChequeRefused {
                kind: ErrorKind::Forbidden,
                body: ErrorBody::new(ErrorKind::Forbidden, "forged"),
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
        let frames = request_frames(&request);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            decode_request(&frames[0]).unwrap(),
            RequestStart::Whole(request)
        );
        let cheque = TransferRequest::Cheque(Cheque {
            issuer: [1; 32],
            beneficiary: [2; 32],
            cumulative: 5,
            signature: [3; 64],
        });
        let frames = request_frames(&cheque);
        assert_eq!(frames[0].app_proto_id, APP_SETTLE);
        assert_eq!(
            decode_request(&frames[0]).unwrap(),
            RequestStart::Whole(cheque)
        );
        // A cheque's app does not continue a keep or a range.
        let mut piece = frames[0].clone();
        piece.flags = Flags::REQ | Flags::END;
        assert!(keep_piece(1, &mut Vec::new(), &piece).is_err());
    }

    fn read_request(frames: &[Frame]) -> Result<TransferRequest, TransferError> {
        let start = decode_request(&frames[0])?;
        let RequestStart::Keep { size, .. } = start else {
            return match start {
                RequestStart::Whole(whole) if frames.len() == 1 => Ok(whole),
                _ => Err(bad("frames after a whole request")),
            };
        };
        let mut bytes = Vec::new();
        for (i, frame) in frames[1..].iter().enumerate() {
            if keep_piece(size, &mut bytes, frame)? {
                if i + 2 != frames.len() {
                    return Err(bad("frames after the last"));
                }
                return keep_request(start, bytes);
            }
        }
        Err(bad("no last frame"))
    }

    #[test]
    #[cfg_attr(miri, ignore = "megabytes hashed and copied: minutes under Miri")]
    fn keep_and_hold_read_back_as_themselves() {
        for len in [
            1usize,
            100,
            MAX_RANGE as usize,
            MAX_RANGE as usize + 1,
            3 << 20,
        ] {
            let bytes = Bytes::from(vec![7u8; len]);
            let keep = TransferRequest::Keep(Keep {
                addr: Address::of(&bytes),
                object: Address::of(b"object"),
                role: Role::Shard,
                lease_s: 600,
                bytes,
            });
            let frames = request_frames(&keep);
            assert_eq!(frames.len(), 1 + len.div_ceil(MAX_RANGE as usize));
            assert_eq!(read_request(&frames).unwrap(), keep);
            // One frame short, or one too many, is refused.
            assert!(read_request(&frames[..frames.len() - 1]).is_err());
            let mut more = frames.clone();
            more.push(frames[1].clone());
            assert!(read_request(&more).is_err());
        }
        let hold = TransferRequest::Hold {
            addrs: vec![Address::of(b"a"), Address::of(b"b")],
            lease_s: 60,
        };
        assert_eq!(read_request(&request_frames(&hold)).unwrap(), hold);
        let too_many = TransferRequest::Hold {
            addrs: vec![Address::of(b"a"); MAX_HOLD + 1],
            lease_s: 60,
        };
        assert!(read_request(&request_frames(&too_many)).is_err());
        for reply in [
            TransferReply::Kept { lease_s: 600 },
            TransferReply::Held {
                held: vec![true, false],
                lease_s: 60,
            },
        ] {
            assert_eq!(round_trip(reply.clone()), reply);
        }
    }

    #[test]
    fn malformed_keeps_are_refused() {
        let head = |op: &str, size: u64| KeepHead {
            op: op.into(),
            addr: Address::of(b"x"),
            object: Address::of(b"y"),
            role: Role::Layout,
            lease_s: 1,
            size,
        };
        // Too large before any byte is read, empty, or not a keep.
        for bad_head in [head("keep", MAX_KEEP + 1), head("keep", 0), head("have", 1)] {
            let frame = json_frame(Flags::REQ | Flags::START, &bad_head);
            assert!(decode_request(&frame).is_err());
        }
        // A keep's head where a whole request is due.
        let frame = json_frame(Flags::REQ | Flags::START | Flags::END, &head("keep", 1));
        assert!(decode_request(&frame).is_err());
        // Bytes in a START frame, or past the size.
        let mut piece = Frame::new(Flags::REQ | Flags::START | Flags::END, APP_TRANSFER, 0);
        piece.payload = Bytes::from_static(b"x");
        assert!(keep_piece(1, &mut Vec::new(), &piece).is_err());
        piece.flags = Flags::REQ | Flags::END;
        piece.payload = Bytes::from_static(b"xy");
        assert!(keep_piece(1, &mut Vec::new(), &piece).is_err());
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
            decode_reply(
                &request_frames(&TransferRequest::Have {
                    addr: Address::of(b"")
                })[0]
            )
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
