//! The peer network of a RustyOnions node: one libp2p swarm, owned by one actor, whose PeerId
//! is the node's Ed25519 identity. TCP (TLS 1.3 first, AES-GCM before ChaCha20; Noise for
//! peers without it) + Yamux, and QUIC; Kademlia in server mode with
//! provider records keyed by the 32-byte address; identify; and node-to-node transfer of
//! object ranges over the stream protocol `/ron/oap/1`, one OAP/1 request per range
//! (app 0x0102, `specs/OAP-1.md`).
//!
//! [`run`] is the actor (run it under the supervisor with a mailbox of [`Command`]s);
//! [`DhtHandle`] talks to it: announce and withdraw provider
//! records, look providers up, fetch a range from a peer, put and get records (signed names,
//! kept by each node only as its [`RecordPolicy`] says), and read the swarm's state. Objects
//! asked for by peers are read through a [`Source`] the node supplies.
#![forbid(unsafe_code)]

mod actor;
mod codec;
mod config;
mod fetch;
mod hedge;
mod metrics;
mod node;
mod verify;

pub use actor::{Setup, run};
pub use codec::{
    Keep, MAX_ADDRS, MAX_HOLD, MAX_KEEP, MAX_PROVIDERS, MAX_RANGE, PROTOCOL, ProviderEntry, Role,
    Traced, TransferCodec, TransferReply, TransferRequest,
};
pub use config::{P2pSection, check_listen_free};
pub use fetch::{INFLIGHT, PER_PEER, Probe, Transferred};
pub use libp2p::{Multiaddr, PeerId, identity};
pub use metrics::DhtMetrics;
pub use node::{
    Command, DhtError, DhtHandle, Found, MAILBOX, NoRecords, P2pStatus, PeerEvent, RecordPolicy,
    Settle, Source,
};
pub use verify::GROUP_BYTES;
