//! The OAP/1 listener: TCP + TLS 1.3 with ALPN `ron/1`, HELLO, and app 0x0101 (objects:
//! get / put / stat) with the same outcomes and codes as the HTTP gateway, because both are
//! thin edges over the same overlay: a `get` of an object only another node holds is fetched
//! from peers and streamed as it verifies, exactly as over HTTP. Capability tokens ride in
//! the `cap` bytes of a START frame and are checked by [`ron_auth::Auth`] exactly as
//! `Authorization: Bearer` is on HTTP; admission is the node's one [`ron_transport::limits`].
//!
//! Per connection ([`serve`]): one reader (the codec checks `len` and `ver` before
//! allocating), one writer fed by a bounded queue, the stream state machine shared by both,
//! and one task per request stream (at most `max_inflight`). Upload bytes waiting for their
//! handlers, `COMP` payloads at their inflated size, are bounded per connection and per
//! client address, and inflated bytes count against the address's byte rate. A malformed frame
//! closes only its own connection. The object handlers decode, authorise, call one overlay method and encode;
//! every failure leaves through one function over [`ron_proto::Failure`].
#![forbid(unsafe_code)]

mod budget;
mod config;
mod listener;
mod mail;
mod objects;

pub use config::OapSection;
pub use listener::{ALPN, OapState, serve};
