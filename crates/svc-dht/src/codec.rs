//! App 0x0102 over the libp2p stream protocol `/ron/oap/1`: one request per stream, as OAP/1
//! frames. The messages and their frames are [`ron_proto::oap::transfer`]'s (no I/O); this
//! codec reads and writes them on a stream, checking each frame's length before allocating it.
//! `specs/OAP-1.md` has the layout and vectors.

use std::io;

use bytes::BytesMut;
use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use ron_proto::oap::transfer::{self, ReplyStart, RequestStart};
pub use ron_proto::oap::transfer::{
    Keep, MAX_ADDRS, MAX_HOLD, MAX_KEEP, MAX_PROVIDERS, MAX_RANGE, ProviderEntry, Role,
    TransferReply, TransferRequest,
};
use ron_proto::oap::{DEFAULT_MAX_FRAME, Frame, HEADER_LEN};

/// The stream protocol node-to-node transfers run on.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ron/oap/1");

/// A request and the trace it is part of (carried in its START frame: see
/// [`transfer::trace_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traced {
    /// The request.
    pub request: TransferRequest,
    /// The sender's trace context, if its work is traced.
    pub trace: Option<ron_proto::trace::TraceParent>,
}

impl From<TransferRequest> for Traced {
    fn from(request: TransferRequest) -> Self {
        Self {
            request,
            trace: None,
        }
    }
}

/// Reads and writes 0x0102 messages as OAP/1 frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferCodec;

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn invalid(e: transfer::TransferError) -> io::Error {
    bad(e.to_string())
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let total = u32::from_le_bytes(len) as usize + 4;
    // The length is checked before anything is allocated for it.
    if !(HEADER_LEN..=DEFAULT_MAX_FRAME).contains(&total) {
        return Err(bad(format!("frame of {total} bytes")));
    }
    let mut buf = BytesMut::zeroed(total);
    buf[..4].copy_from_slice(&len);
    io.read_exact(&mut buf[4..]).await?;
    match Frame::decode(&mut buf, DEFAULT_MAX_FRAME) {
        Ok(Some(frame)) => transfer::check_app(&frame).map(|()| frame).map_err(invalid),
        Ok(None) => Err(bad("short frame")),
        Err(e) => Err(bad(e.to_string())),
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, frame: &Frame) -> io::Result<()> {
    let mut head = BytesMut::with_capacity(frame.encoded_len() - frame.payload.len());
    frame
        .encode_head(&mut head, DEFAULT_MAX_FRAME)
        .map_err(|e| bad(e.to_string()))?;
    io.write_all(&head).await?;
    // The payload (up to half a MiB of an object) goes from where it is.
    io.write_all(&frame.payload).await
}

impl libp2p::request_response::Codec for TransferCodec {
    type Protocol = StreamProtocol;
    type Request = Traced;
    type Response = TransferReply;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io).await?;
        let trace = transfer::trace_of(&frame);
        let start = transfer::decode_request(&frame).map_err(invalid)?;
        let RequestStart::Keep { size, .. } = start else {
            let RequestStart::Whole(request) = start else {
                return Err(bad("unreadable request"));
            };
            return Ok(Traced { request, trace });
        };
        // The size was checked against MAX_KEEP by the head's decoder: bounded.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        loop {
            let piece = read_frame(io).await?;
            if transfer::keep_piece(size, &mut bytes, &piece).map_err(invalid)? {
                let request = transfer::keep_request(start, bytes).map_err(invalid)?;
                return Ok(Traced { request, trace });
            }
        }
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let first = read_frame(io).await?;
        match transfer::decode_reply(&first).map_err(invalid)? {
            ReplyStart::Whole(reply) => Ok(reply),
            ReplyStart::Range { size, start, end } => {
                let data = read_frame(io).await?;
                transfer::range_reply((size, start, end), data).map_err(invalid)
            }
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let mut frames = transfer::request_frames(&req.request);
        if let (Some(trace), Some(first)) = (req.trace, frames.first_mut()) {
            transfer::trace_frame(first, trace);
        }
        for frame in &frames {
            write_frame(io, frame).await?;
        }
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        for frame in transfer::reply_frames(res) {
            write_frame(io, &frame).await?;
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use futures_util::io::Cursor;
    use libp2p::request_response::Codec;
    use ron_proto::oap::Flags;
    use ron_proto::{Address, ErrorBody, ErrorKind};

    const HELLO: &str = "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    async fn request_bytes(req: impl Into<Traced>) -> Vec<u8> {
        let req = req.into();
        let mut out = Cursor::new(Vec::new());
        TransferCodec
            .write_request(&PROTOCOL, &mut out, req.clone())
            .await
            .unwrap();
        let bytes = out.into_inner();
        let back = TransferCodec
            .read_request(&PROTOCOL, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(back, req);
        bytes
    }

    #[tokio::test]
    async fn a_traced_request_keeps_its_trace_on_the_wire() {
        let trace: ron_proto::trace::TraceParent =
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap();
        let traced = Traced {
            request: TransferRequest::Have {
                addr: HELLO.parse().unwrap(),
            },
            trace: Some(trace),
        };
        let bytes = request_bytes(traced).await;
        // flags 0x0119, then tenant_id (the trace id) and corr_id (the parent) little-endian.
        assert_eq!(hex(&bytes[5..7]), "1901");
        assert_eq!(hex(&bytes[11..27]), "36470e0e9d92cea3a64db377352ff94b");
        assert_eq!(hex(&bytes[29..37]), "b702a90baa67f000");
    }

    async fn reply_bytes(res: TransferReply) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        TransferCodec
            .write_response(&PROTOCOL, &mut out, res.clone())
            .await
            .unwrap();
        let bytes = out.into_inner();
        let back = TransferCodec
            .read_response(&PROTOCOL, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(back, res);
        bytes
    }

    /// The vectors of `specs/OAP-1.md`, app 0x0102.
    #[tokio::test]
    async fn frames_match_the_spec_vectors() {
        let addr: Address = HELLO.parse().unwrap();
        let vectors = [
            (
                request_bytes(TransferRequest::Have { addr }).await,
                "7b0000000119000000020100000000000000000000000000000000000000000000000000007b226f70223a2268617665222c2261646472223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234227d",
            ),
            (
                reply_bytes(TransferReply::Have { size: 11 }).await,
                "2c000000011a000000020100000000000000000000000000000000000000000000000000007b2273697a65223a31317d",
            ),
            (
                request_bytes(TransferRequest::Range {
                    addr,
                    start: 0,
                    end: 16384,
                })
                .await,
                "920000000119000000020100000000000000000000000000000000000000000000000000007b226f70223a2272616e6765222c2261646472223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234222c227374617274223a302c22656e64223a31363338347d",
            ),
            (
                reply_bytes(TransferReply::Range {
                    size: 11,
                    start: 0,
                    end: 11,
                    encoded: Bytes::from_static(b"hello world"),
                })
                .await,
                "3f000000010a000000020100000000000000000000000000000000000000000000000000007b2273697a65223a31312c227374617274223a302c22656e64223a31317d2c00000001120000000201000000000000000000000000000000000000000000000000000068656c6c6f20776f726c64",
            ),
            (
                reply_bytes(TransferReply::Error {
                    kind: ErrorKind::NotFound,
                    body: ErrorBody::new(ErrorKind::NotFound, format!("no object {addr}")),
                })
                .await,
                "8f000000011a009401020100000000000000000000000000000000000000000000000000007b22636f6465223a226e6f745f666f756e64222c226d657373616765223a226e6f206f626a6563742062333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234227d",
            ),
        ];
        for (i, (got, want)) in vectors.iter().enumerate() {
            println!("vector {i}: {} {}", got.len(), hex(got));
            assert_eq!(hex(got), *want, "vector {i}");
        }
    }

    /// The vectors of `specs/OAP-1.md`, app 0x0102 `keep` and `hold`.
    #[tokio::test]
    async fn keep_and_hold_frames_match_the_spec_vectors() {
        let addr: Address = HELLO.parse().unwrap();
        let vectors = [
            (
                request_bytes(TransferRequest::Keep(Keep {
                    addr,
                    object: addr,
                    role: Role::Shard,
                    lease_s: 3600,
                    bytes: Bytes::from_static(b"hello world"),
                }))
                .await,
                "f20000000109000000020100000000000000000000000000000000000000000000000000007b226f70223a226b656570222c2261646472223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234222c226f626a656374223a2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234222c22726f6c65223a227368617264222c226c656173655f73223a333630302c2273697a65223a31317d2c00000001110000000201000000000000000000000000000000000000000000000000000068656c6c6f20776f726c64",
            ),
            (
                reply_bytes(TransferReply::Kept { lease_s: 3600 }).await,
                "31000000011a000000020100000000000000000000000000000000000000000000000000007b226c656173655f73223a333630307d",
            ),
            (
                request_bytes(TransferRequest::Hold {
                    addrs: vec![addr],
                    lease_s: 3600,
                })
                .await,
                "8d0000000119000000020100000000000000000000000000000000000000000000000000007b226f70223a22686f6c64222c226164647273223a5b2262333a64373439383165666137306130633838306238643863313938356430373564626362663637396239396135663939313465356161663936623833316139653234225d2c226c656173655f73223a333630307d",
            ),
            (
                reply_bytes(TransferReply::Held {
                    held: vec![true],
                    lease_s: 3600,
                })
                .await,
                "3f000000011a000000020100000000000000000000000000000000000000000000000000007b2268656c64223a5b747275655d2c226c656173655f73223a333630307d",
            ),
        ];
        for (i, (got, _)) in vectors.iter().enumerate() {
            println!("vector {i}: {} {}", got.len(), hex(got));
        }
        for (i, (got, want)) in vectors.iter().enumerate() {
            assert_eq!(hex(got), *want, "vector {i}");
        }
    }

    #[tokio::test]
    async fn oversized_or_foreign_frames_are_refused_before_allocation() {
        // A length field of 2 GiB: refused from the 4 bytes alone.
        let huge = [0xff, 0xff, 0xff, 0x7f, 1];
        let err = TransferCodec
            .read_request(&PROTOCOL, &mut Cursor::new(huge.to_vec()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("frame of"), "{err}");
        // An app 0x0101 frame on the transfer protocol.
        let mut frame = Frame::new(Flags::REQ | Flags::START | Flags::END, 0x0101, 0);
        frame.payload = Bytes::from_static(b"{}");
        let mut buf = BytesMut::new();
        frame.encode(&mut buf, DEFAULT_MAX_FRAME).unwrap();
        let err = TransferCodec
            .read_request(&PROTOCOL, &mut Cursor::new(buf.to_vec()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("app 0x0101"), "{err}");
    }
}
