//! App 0x0102 over the libp2p stream protocol `/ron/oap/1`: one request per stream, as OAP/1
//! frames. A request is one `REQ|START|END` frame with a JSON [`TransferRequest`]. A `have`
//! is answered by one `RESP|START|END` frame with `{"size":N}`; a `range` by a `RESP|START`
//! frame with `{"size":N,"start":S,"end":E}` and a `RESP|END` frame with the range as a BLAKE3
//! verified stream (bao-tree's encoding with 16 KiB groups: the receiver checks each group
//! against the address as it decodes); a failure by one error frame carrying the HTTP status
//! as `code` and the shared error body. `specs/OAP-1.md` has the layout and vectors.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use ron_proto::oap::{APP_TRANSFER, DEFAULT_MAX_FRAME, Flags, Frame, HEADER_LEN};
use ron_proto::{Address, ErrorBody, ErrorKind};
use serde::{Deserialize, Serialize};

/// The stream protocol node-to-node transfers run on.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ron/oap/1");

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

/// Reads and writes 0x0102 messages as OAP/1 frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferCodec;

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
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
        Ok(Some(frame)) if frame.app_proto_id == APP_TRANSFER => Ok(frame),
        Ok(Some(frame)) => Err(bad(format!("app {:#06x}", frame.app_proto_id))),
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

fn json_frame(flags: Flags, value: &impl Serialize) -> io::Result<Frame> {
    let mut frame = Frame::new(flags, APP_TRANSFER, 0);
    frame.payload = Bytes::from(serde_json::to_vec(value).map_err(io::Error::other)?);
    Ok(frame)
}

impl libp2p::request_response::Codec for TransferCodec {
    type Protocol = StreamProtocol;
    type Request = TransferRequest;
    type Response = TransferReply;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io).await?;
        if !frame.flags.contains(Flags::REQ | Flags::START | Flags::END) {
            return Err(bad("a request is one REQ|START|END frame"));
        }
        serde_json::from_slice(&frame.payload).map_err(|e| bad(e.to_string()))
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
        if !first.flags.contains(Flags::RESP | Flags::START) {
            return Err(bad("a reply starts with RESP|START"));
        }
        if first.code != 0 {
            let body: ErrorBody =
                serde_json::from_slice(&first.payload).map_err(|e| bad(e.to_string()))?;
            let kind = ErrorKind::from_status(first.code).unwrap_or(ErrorKind::Internal);
            return Ok(TransferReply::Error { kind, body });
        }
        if first.payload.starts_with(b"{\"providers\"") && first.flags.contains(Flags::END) {
            let head: ProvidersHead =
                serde_json::from_slice(&first.payload).map_err(|e| bad(e.to_string()))?;
            if head.providers.len() > MAX_PROVIDERS
                || head.providers.iter().any(|p| p.addrs.len() > MAX_ADDRS)
            {
                return Err(bad("too many providers or addresses"));
            }
            return Ok(TransferReply::Providers {
                providers: head.providers,
            });
        }
        let head: Head = serde_json::from_slice(&first.payload).map_err(|e| bad(e.to_string()))?;
        match (head.start, head.end) {
            (None, None) if first.flags.contains(Flags::END) => {
                Ok(TransferReply::Have { size: head.size })
            }
            (Some(start), Some(end)) if !first.flags.contains(Flags::END) => {
                let data = read_frame(io).await?;
                if !data.flags.contains(Flags::RESP | Flags::END) || data.code != 0 {
                    return Err(bad("a range's bytes come in one RESP|END frame"));
                }
                Ok(TransferReply::Range {
                    size: head.size,
                    start,
                    end,
                    encoded: data.payload,
                })
            }
            _ => Err(bad("reply head and flags disagree")),
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
        write_frame(
            io,
            &json_frame(Flags::REQ | Flags::START | Flags::END, &req)?,
        )
        .await?;
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
        match res {
            TransferReply::Have { size } => {
                let head = Head {
                    size,
                    start: None,
                    end: None,
                };
                write_frame(
                    io,
                    &json_frame(Flags::RESP | Flags::START | Flags::END, &head)?,
                )
                .await?;
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
                write_frame(io, &json_frame(Flags::RESP | Flags::START, &head)?).await?;
                let mut data = Frame::new(Flags::RESP | Flags::END, APP_TRANSFER, 0);
                data.payload = encoded;
                write_frame(io, &data).await?;
            }
            TransferReply::Providers { providers } => {
                write_frame(
                    io,
                    &json_frame(
                        Flags::RESP | Flags::START | Flags::END,
                        &ProvidersHead { providers },
                    )?,
                )
                .await?;
            }
            TransferReply::Error { kind, body } => {
                write_frame(io, &Frame::error_reply(APP_TRANSFER, 0, kind, &body)).await?;
            }
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::io::Cursor;
    use libp2p::request_response::Codec;

    const HELLO: &str = "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    async fn request_bytes(req: TransferRequest) -> Vec<u8> {
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
