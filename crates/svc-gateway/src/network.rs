//! The peer network as the gateway sees it: announce what this node stores, and fetch what
//! it lacks from other nodes. The node supplies the implementation (over `svc-dht`); a node
//! without a peer network has none and answers 404 for what it does not hold.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use ron_proto::Address;
use tokio::sync::{mpsc, oneshot};

/// Why an object could not be fetched from other nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The lookups finished and no node provides the object (404).
    #[error("no node provides {0}")]
    NotFound(Address),
    /// The deadline passed with lookups or transfers unanswered (504).
    #[error("no provider answered in time")]
    Timeout,
    /// Providers were found but none delivered the object (503, worth a retry).
    #[error("{0}")]
    Unavailable(String),
}

/// An object arriving from other nodes, handed on as it is verified.
#[derive(Debug)]
pub struct Incoming {
    /// The object's size (proven before any byte is handed on).
    pub size: u64,
    /// The object's bytes in order, each verified against its address before it is sent
    /// here. An `Err` ends it early: the transfer failed, and the bytes so far are all there
    /// will be. Storing goes on while the receiver is dropped.
    pub bytes: mpsc::Receiver<Result<Bytes, String>>,
    /// How the fetch ended: `Ok` once the copy is committed in this node's store.
    pub done: oneshot::Receiver<Result<(), FetchError>>,
}

/// The peer network: the node's implementation of it.
pub trait Network: std::fmt::Debug + Send + Sync + 'static {
    /// This node now holds `addr`: announce it as a provider.
    fn stored(&self, addr: Address);
    /// This node no longer offers `addr` (unpinned by its owner): stop announcing it.
    fn withdrawn(&self, addr: Address);
    /// Finds `addr` on other nodes and starts fetching it: answers once its size is proven
    /// (within the node's fetch deadline), with its verified bytes to follow in order while a
    /// verified, unpinned copy is stored here; the transfer goes on while it makes progress.
    /// A request for an object already being fetched joins that fetch (the object moves
    /// once): its answer comes with the size, its bytes from the copy once it is committed.
    fn stream(&self, addr: Address) -> BoxFuture<'static, Result<Incoming, FetchError>>;
    /// The network's part of `/status` (addresses, peers).
    fn status(&self) -> BoxFuture<'static, Option<serde_json::Value>>;
}
