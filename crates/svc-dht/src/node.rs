//! The swarm's actor and its handle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use libp2p::PeerId;
use ron_proto::oap::settle::Cheque;
use ron_proto::{Address, ErrorKind};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{Traced, TransferReply, TransferRequest};
use crate::fetch::Scores;
use crate::metrics::DhtMetrics;
use tracing::Instrument;

/// Commands the actor's mailbox should hold.
pub const MAILBOX: usize = 256;

/// Why a peer-network operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    /// The actor is gone (the node is shutting down).
    #[error("the peer network is not running")]
    Stopped,
    /// The actor's mailbox stayed full past the enqueue deadline; retry later.
    #[error("the peer network is busy")]
    Busy,
    /// A lookup found nobody it could ask.
    #[error("no known peers to ask")]
    NoPeers,
    /// A lookup or request did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The peer could not be reached, broke the protocol, or sent bytes that are not the
    /// object.
    #[error("peer failed: {0}")]
    Peer(String),
    /// The peer answered with an error (404: it does not hold the object; 429/503: busy).
    #[error("peer refused ({status}): {1}", status = .0.status())]
    Refused(ErrorKind, String),
    /// Whatever took the fetched bytes failed.
    #[error("{0}")]
    Sink(String),
    /// The object is larger than the caller takes.
    #[error("the object is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Providers were found, and none delivered (each one's failure, joined).
    #[error("no provider delivered: {0}")]
    Unavailable(String),
    /// Lookups keep failing (the `dht` circuit), or this peer does (its `peer` circuit):
    /// not asked until a probe succeeds.
    #[error(transparent)]
    CircuitOpen(#[from] supervisor::Open),
}

impl DhtError {
    /// The shared error kind: the network's own state is `Overloaded` (worth a retry), a
    /// deadline `Timeout`, a peer's refusal its own kind, anything a peer did wrong or the
    /// sink failing `Internal`; an object past the caller's limit `TooLarge`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Stopped
            | Self::Busy
            | Self::NoPeers
            | Self::Unavailable(_)
            | Self::CircuitOpen(_) => ErrorKind::Overloaded,
            Self::Timeout => ErrorKind::Timeout,
            Self::Refused(kind, _) => *kind,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::Peer(_) | Self::Sink(_) => ErrorKind::Internal,
        }
    }
}

/// How long a caller waits for room in the actor's full mailbox before [`DhtError::Busy`].
const ENQUEUE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// How this node and its peers settle for the ranges they send each other (the node's
/// payment service behind it): ranges served and received are counted per peer, a peer owing
/// too much is refused, and what this node owes is paid with cheques (app 0x0401). Without
/// one nothing is counted and cheques are refused.
pub trait Settle: Send + Sync + 'static {
    /// Whether `peer` may be sent a range now: `Err(owed)`, the credits it owes, while that
    /// is past its limit.
    fn may_serve(&self, peer: &PeerId) -> Result<(), u64>;
    /// `bytes` of a range are being sent to `peer`.
    fn served(&self, peer: &PeerId, bytes: u64);
    /// `bytes` of a range came from `peer`: whether a cheque to it is due.
    fn received(&self, peer: &PeerId, bytes: u64) -> bool;
    /// A cheque for all this node owes `peer`, recorded before it is returned (`None`:
    /// nothing owed, or one on its way already).
    fn cheque(&self, peer: PeerId) -> BoxFuture<'static, Option<Cheque>>;
    /// `peer`'s answer to the cheque (or why there was none).
    fn answered(&self, peer: PeerId, reply: &Result<TransferReply, DhtError>);
    /// A cheque `peer` sent: checked and recorded before the answer
    /// ([`TransferReply::Cashed`] or [`TransferReply::ChequeRefused`]).
    fn cash(&self, peer: PeerId, cheque: Cheque) -> BoxFuture<'static, TransferReply>;
}

/// The node's [`Settle`], if it has one.
#[derive(Clone, Default)]
pub(crate) struct Settler(pub(crate) Option<Arc<dyn Settle>>);

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Settler(on)"
        } else {
            "Settler(off)"
        })
    }
}

/// Reads objects for peers that ask.
pub trait Source: Send + Sync + 'static {
    /// The object's size, if held.
    fn size(&self, addr: Address) -> BoxFuture<'static, Option<u64>>;
    /// The object's size and the verified-stream encoding (bao-tree, 16 KiB groups) of bytes
    /// `start..end` widened to whole groups and clamped to the size, each group checked
    /// against the address before it is encoded; `None` if the object is not held.
    fn encoded(
        &self,
        addr: Address,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>, String>>;

    /// Keeps a blob `peer` sends (a shard or a layout of an object it protects) under a lease:
    /// verified against its address and durable before the answer, which is the lease granted
    /// in seconds, or the refusal (its kind and a message). A node that keeps nothing for
    /// others refuses every one (the default).
    fn keep(
        &self,
        peer: PeerId,
        keep: crate::Keep,
    ) -> BoxFuture<'static, Result<u32, (ErrorKind, String)>> {
        let _ = (peer, keep);
        Box::pin(async {
            Err((
                ErrorKind::Forbidden,
                "this node keeps no shards for others".to_string(),
            ))
        })
    }

    /// Which of `addrs` this node keeps for others, renewing each one's lease to `lease_s`
    /// (or less): one answer per address, and the lease granted. A node that keeps nothing
    /// for others holds none (the default).
    fn hold(&self, addrs: Vec<Address>, lease_s: u32) -> BoxFuture<'static, (Vec<bool>, u32)> {
        let _ = lease_s;
        Box::pin(async move { (vec![false; addrs.len()], 0) })
    }
}

/// Which records (Kademlia keys and values: signed names) this node keeps when peers ask it
/// to, or replicate to it. The DHT knows no record format: the node decides.
pub trait RecordPolicy: Send + Sync + 'static {
    /// Whether to keep `value` under `key`, in place of `current` (what is held now, if
    /// anything): a valid record that is not older than the one held.
    fn accept(&self, key: &[u8], value: &[u8], current: Option<&[u8]>) -> bool;
}

/// The policy of a node that keeps no records for others.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecords;

impl RecordPolicy for NoRecords {
    fn accept(&self, _key: &[u8], _value: &[u8], _current: Option<&[u8]>) -> bool {
        false
    }
}

/// A provider lookup's answer and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The providers named first (none when the lookup finished without any).
    pub providers: Vec<PeerId>,
    /// Peers the Kademlia query had asked by then.
    pub asked: u32,
    /// Time to the answer.
    pub elapsed: std::time::Duration,
    /// Whether a hedge had started.
    pub hedged: bool,
}

/// What the swarm learns of peers, for whoever keeps a peer table (`svc-discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer answered (identify) and listens on these addresses.
    Seen {
        /// Which peer.
        peer: PeerId,
        /// Where it says it listens.
        addrs: Vec<libp2p::Multiaddr>,
    },
    /// Dialling the peer failed.
    Unreachable {
        /// Which peer.
        peer: PeerId,
    },
    /// The last connection to the peer closed (it left, failed its pings, or sat idle).
    Left {
        /// Which peer.
        peer: PeerId,
    },
}

/// What the swarm looks like now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct P2pStatus {
    /// This node's PeerId.
    pub peer_id: String,
    /// Where it listens, each with `/p2p/<peer id>`: another node bootstraps from these.
    pub listen: Vec<String>,
    /// Peers connected now.
    pub peers: Vec<String>,
    /// Whether peers can dial this node (autonat): `public`, `private` or `unknown`.
    pub nat: String,
}

/// A request to the swarm's actor (queued in its supervised mailbox; build one through
/// [`DhtHandle`]).
pub struct Command(pub(crate) Inner);

pub(crate) enum Inner {
    Provide(Address),
    Unprovide(Address),
    /// A provider lookup: to its end (`true`) or the first answer, hedged unless frugal.
    Providers(
        Address,
        bool,
        Frugal,
        oneshot::Sender<Result<Found, DhtError>>,
    ),
    /// A request to a peer, with the trace it is part of.
    Request(
        PeerId,
        Box<Traced>,
        oneshot::Sender<Result<TransferReply, DhtError>>,
    ),
    Status(oneshot::Sender<P2pStatus>),
    Known(oneshot::Sender<Vec<PeerId>>),
    Dial(Vec<libp2p::Multiaddr>),
    PutRecord(Vec<u8>, Vec<u8>, oneshot::Sender<Result<usize, DhtError>>),
    GetRecords(Vec<u8>, oneshot::Sender<Result<Vec<Vec<u8>>, DhtError>>),
}

/// Talks to the swarm's actor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DhtHandle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    pub(crate) scores: Scores,
    pub(crate) metrics: DhtMetrics,
    settle: Settler,
    pub(crate) circuits: Circuits,
    frugal: Arc<std::sync::atomic::AtomicBool>,
}

/// Whether a lookup may be hedged: not while the node is frugal (degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frugal(pub(crate) bool);

/// The peer network's circuit breakers: lookups (`dht`) and each peer (`peer`).
#[derive(Clone, Debug)]
pub(crate) struct Circuits {
    lookups: supervisor::Breaker,
    pub(crate) peers: supervisor::circuit::Circuits<PeerId>,
}

/// Peers whose circuits are kept (past it, closed ones are forgotten first).
const PEER_CIRCUITS: usize = 4096;

impl Circuits {
    /// Lookups: 5 timeouts in a row open the circuit (a lookup has its own deadline, so a
    /// stall is one still running after a minute). Peers: 5 failed requests in a row, or
    /// answers slower than 10 s. Either is probed after 1 s, then up to 10 s: a healed
    /// partition is used again within seconds.
    const LOOKUPS: supervisor::CircuitPolicy = supervisor::CircuitPolicy {
        failures: 5,
        slow: Duration::from_secs(60),
        stall: Duration::from_secs(60),
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(10),
    };
    const PEERS: supervisor::CircuitPolicy = supervisor::CircuitPolicy {
        failures: 5,
        slow: Duration::from_secs(10),
        stall: Duration::from_secs(60),
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(10),
    };

    fn on(board: &supervisor::Board) -> Self {
        Self {
            lookups: board.breaker("dht", Self::LOOKUPS),
            peers: board.keyed("peer", Self::PEERS, PEER_CIRCUITS),
        }
    }
}

impl DhtHandle {
    /// A handle on the actor reading `tx`'s mailbox, for the node whose PeerId is `peer_id`.
    pub fn new(tx: mpsc::Sender<Command>, peer_id: PeerId) -> Self {
        Self {
            tx,
            peer_id,
            scores: Scores::default(),
            metrics: DhtMetrics::default(),
            settle: Settler::default(),
            circuits: Circuits::on(&supervisor::Board::default()),
            frugal: Arc::default(),
        }
    }

    /// Lowers this node's fan-out to peers while it is degraded (`true`): lookups are not
    /// hedged, and a transfer asks the provider that proved the size and one spare, not
    /// every provider. Shared by the handle's clones.
    pub fn set_frugal(&self, frugal: bool) {
        self.frugal
            .store(frugal, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the fan-out is lowered now.
    pub fn frugal(&self) -> bool {
        self.frugal.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same handle, its lookups and each peer guarded by circuit breakers listed on
    /// `board` (the node's, shown in `/metrics` and `/status`).
    pub fn guarded_by(mut self, board: &supervisor::Board) -> Self {
        self.circuits = Circuits::on(board);
        self
    }

    /// The same handle, counting the ranges it receives with `settle` and paying the peers
    /// they came from (give the actor the same one: [`crate::Setup::settle`]).
    pub fn settling(mut self, settle: Arc<dyn Settle>) -> Self {
        self.settle = Settler(Some(settle));
        self
    }

    /// The handle's metrics (add them to the node's registry with [`DhtMetrics::register`]).
    pub fn metrics(&self) -> &DhtMetrics {
        &self.metrics
    }

    /// How `peer` has behaved in transfers: positive for verified ranges, far below zero
    /// once it sent bytes that are not what it claimed.
    pub fn score(&self, peer: &PeerId) -> i64 {
        self.scores.get(peer)
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Queues `command`, waiting at most [`ENQUEUE_DEADLINE`] for room: busy, never a silent
    /// wait.
    async fn send(&self, command: Inner) -> Result<(), DhtError> {
        match self
            .tx
            .send_timeout(Command(command), ENQUEUE_DEADLINE)
            .await
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(DhtError::Busy),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(DhtError::Stopped),
        }
    }

    /// Announces this node as a provider of `addr` (republished at libp2p's interval).
    pub async fn provide(&self, addr: Address) -> Result<(), DhtError> {
        self.send(Inner::Provide(addr)).await
    }

    /// Stops announcing `addr`.
    pub async fn unprovide(&self, addr: Address) -> Result<(), DhtError> {
        self.send(Inner::Unprovide(addr)).await
    }

    /// Peers providing `addr`: the first answer that names any, or an empty list once the
    /// lookup finished without one.
    pub async fn providers(&self, addr: Address) -> Result<Vec<PeerId>, DhtError> {
        self.lookup(addr).await.map(|found| found.providers)
    }

    /// Like [`DhtHandle::providers`], with how the lookup went.
    /// Refused at once with [`DhtError::CircuitOpen`] while lookups keep timing out.
    pub async fn lookup(&self, addr: Address) -> Result<Found, DhtError> {
        let lookup = async {
            let (tx, rx) = oneshot::channel();
            let frugal = Frugal(self.frugal());
            self.send(Inner::Providers(addr, false, frugal, tx)).await?;
            rx.await.map_err(|_| DhtError::Stopped)?
        };
        let timed_out = |e: &DhtError| matches!(e, DhtError::Timeout);
        let span = tracing::debug_span!("dht.lookup", %addr);
        self.circuits
            .lookups
            .run(lookup, timed_out)
            .instrument(span)
            .await?
    }

    /// Every provider of `addr` the lookup finds, not only the first to answer: the query
    /// runs to its end (or for at most a few seconds). For counting
    /// who holds something, where a stale record answering first would hide a live one.
    pub async fn holders(&self, addr: Address) -> Result<Vec<PeerId>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Inner::Providers(addr, true, Frugal(true), tx))
            .await?;
        rx.await
            .map_err(|_| DhtError::Stopped)?
            .map(|found| found.providers)
    }

    /// Sends one transfer request to `peer`: refused at once with [`DhtError::CircuitOpen`]
    /// while its requests keep failing.
    pub async fn request(
        &self,
        peer: PeerId,
        request: TransferRequest,
    ) -> Result<TransferReply, DhtError> {
        let ticket = self.circuits.peers.admit(&peer)?;
        let (tx, rx) = oneshot::channel();
        // A span of its own (recorded when the trace is sampled): the peer's work hangs
        // off it.
        let span = tracing::debug_span!("peer.request", %peer);
        let reply = async {
            let traced = Traced {
                request,
                trace: supervisor::trace::outgoing(),
            };
            self.send(Inner::Request(peer, Box::new(traced), tx))
                .await?;
            rx.await.map_err(|_| DhtError::Stopped)
        }
        .instrument(span)
        .await?;
        match &reply {
            // Any answer, a refusal too, is the peer alive.
            Ok(_) => ticket.succeeded(),
            Err(DhtError::Timeout | DhtError::Peer(_)) => ticket.failed(),
            // This node's own state: nothing said of the peer.
            Err(_) => drop(ticket),
        }
        if let (Some(settle), Ok(answer)) = (&self.settle.0, &reply) {
            let due = match answer {
                TransferReply::Range { start, end, .. } => {
                    settle.received(&peer, end.saturating_sub(*start))
                }
                // Refused for a debt: pay it now.
                TransferReply::Error {
                    kind: ErrorKind::RateLimited,
                    body,
                } => body.payment.is_some(),
                _ => false,
            };
            if due {
                self.pay(peer);
            }
        }
        reply
    }

    /// Sends `peer` a cheque for all this node owes it, on a task of its own (one at a time
    /// per peer: the settlement says when one is on its way).
    fn pay(&self, peer: PeerId) {
        let Some(settle) = self.settle.0.clone() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let Some(cheque) = settle.cheque(peer).await else {
                return;
            };
            let reply = this.request(peer, TransferRequest::Cheque(cheque)).await;
            settle.answered(peer, &reply);
        });
    }

    /// Asks `peer` to keep a blob (a shard or a layout): the lease it granted, in seconds.
    pub async fn keep(&self, peer: PeerId, keep: crate::Keep) -> Result<u32, DhtError> {
        match self.request(peer, TransferRequest::Keep(keep)).await? {
            TransferReply::Kept { lease_s } => Ok(lease_s),
            TransferReply::Error { kind, body } => Err(DhtError::Refused(kind, body.message)),
            _ => Err(DhtError::Peer("answered keep with something else".into())),
        }
    }

    /// Which of `addrs` `peer` keeps, renewing their leases to `lease_s` (or what it grants).
    pub async fn hold(
        &self,
        peer: PeerId,
        addrs: Vec<Address>,
        lease_s: u32,
    ) -> Result<Vec<bool>, DhtError> {
        let asked = addrs.len();
        match self
            .request(peer, TransferRequest::Hold { addrs, lease_s })
            .await?
        {
            TransferReply::Held { held, .. } if held.len() == asked => Ok(held),
            TransferReply::Error { kind, body } => Err(DhtError::Refused(kind, body.message)),
            _ => Err(DhtError::Peer("answered hold with something else".into())),
        }
    }

    /// The peers connected now.
    pub async fn connected(&self) -> Result<Vec<PeerId>, DhtError> {
        let status = self.status().await?;
        Ok(status.peers.iter().filter_map(|p| p.parse().ok()).collect())
    }

    /// The peers this node knows: connected now, or in its routing table (each one dialled
    /// when asked for something).
    pub async fn known(&self) -> Result<Vec<PeerId>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Inner::Known(tx)).await?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// Dials `addrs` (each ending in `/p2p/<peer id>` when known: the peer goes into the
    /// routing table, and is redialled with the bootstrap peers while the node is alone).
    pub async fn dial(&self, addrs: Vec<libp2p::Multiaddr>) -> Result<(), DhtError> {
        self.send(Inner::Dial(addrs)).await
    }

    /// Stores `value` under `key` here and on the closest peers, asking up to three of them
    /// (fewer when fewer are connected) to keep it: the number that did. Each peer applies
    /// its own [`RecordPolicy`]. [`DhtError::Unavailable`] when none kept it while peers were
    /// connected.
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<usize, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Inner::PutRecord(key, value, tx)).await?;
        rx.await.map_err(|_| DhtError::Stopped)?
    }

    /// Every value found under `key`, here and on the peers closest to it (the caller picks
    /// among them: they are unchecked bytes from the network).
    pub async fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Inner::GetRecords(key, tx)).await?;
        rx.await.map_err(|_| DhtError::Stopped)?
    }

    /// The swarm's addresses and peers.
    pub async fn status(&self) -> Result<P2pStatus, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.send(Inner::Status(tx)).await?;
        rx.await.map_err(|_| DhtError::Stopped)
    }
}
