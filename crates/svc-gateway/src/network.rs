//! The peer network as the gateway sees it: announce what this node stores, and fetch what
//! it lacks from other nodes. The node supplies the implementation (over `svc-dht`); a node
//! without a peer network has none and answers 404 for what it does not hold.

use futures_util::future::BoxFuture;
use ron_proto::Address;

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

/// The peer network: the node's implementation of it.
pub trait Network: std::fmt::Debug + Send + Sync + 'static {
    /// This node now holds `addr`: announce it as a provider.
    fn stored(&self, addr: Address);
    /// This node no longer offers `addr` (unpinned by its owner): stop announcing it.
    fn withdrawn(&self, addr: Address);
    /// Finds `addr` on other nodes and stores a verified, unpinned copy here.
    fn fetch(&self, addr: Address) -> BoxFuture<'static, Result<(), FetchError>>;
    /// The network's part of `/status` (addresses, peers).
    fn status(&self) -> BoxFuture<'static, Option<serde_json::Value>>;
}
