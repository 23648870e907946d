//! OAP/1, the binary envelope RustyOnions speaks natively (`specs/OAP-1.md`).
//!
//! - [`Frame`] is one frame; [`Frame::encode`] and [`Frame::decode`] follow the spec byte for
//!   byte, checking the length before allocating anything.
//! - [`FrameCodec`] adapts that to `tokio_util::codec` for byte streams.
//! - [`StreamTracker`] is the per-connection stream state machine (START/END, duplicate START,
//!   RESP before REQ, capability on a non-START frame, `max_inflight`), as plain code without I/O.
//! - [`Hello`] is the negotiation payload of app 0; [`inflate`] and [`compress`] handle `COMP`.
//! - [`objects`] and [`transfer`] are the messages of apps 0x0101 and 0x0102; [`verify`] checks
//!   a 0x0102 range reply against the object's address, group by group; [`settle`] is app
//!   0x0401, the cheques nodes pay each other with (carried beside 0x0102).

mod codec;
mod comp;
mod frame;
mod hello;
pub mod mail;
pub mod objects;
pub mod settle;
mod stream;
pub mod transfer;
pub mod verify;

pub use codec::{CodecError, FrameCodec};
pub use comp::{InflateError, compress, inflate};
pub use frame::{Flags, Frame, FrameError};
pub use hello::{Hello, check_client_hello};
pub use stream::{StreamError, StreamTracker};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes of the fixed header, including the 4-byte length.
pub const HEADER_LEN: usize = 37;
/// Default `max_frame`: the whole frame, length field included (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Default `max_inflight`: open streams per connection.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;
/// A `COMP` payload may inflate to at most this many times `max_frame`.
pub const MAX_INFLATE_RATIO: usize = 8;

/// `app_proto_id` of HELLO (negotiation).
pub const APP_HELLO: u16 = 0x0000;
/// `app_proto_id` of objects: get / put / stat by `b3:` address.
pub const APP_OBJECTS: u16 = 0x0101;
/// `app_proto_id` of node-to-node transfer of verified ranges, chunks and shards.
pub const APP_TRANSFER: u16 = 0x0102;
/// Verification groups of app 0x0102 (and of every store's outboard) are `1 << GROUP_CHUNK_LOG`
/// BLAKE3 chunks of 1 KiB: 16 KiB. A byte that fails verification fails its whole group.
pub const GROUP_CHUNK_LOG: u8 = 4;
/// `app_proto_id` of the mailbox.
pub const APP_MAILBOX: u16 = 0x0201;
/// `app_proto_id` of the index: name records, providers.
pub const APP_INDEX: u16 = 0x0301;
/// `app_proto_id` of settlement between nodes: signed cumulative cheques.
pub const APP_SETTLE: u16 = 0x0401;
