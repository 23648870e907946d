//! The swarm's actor and its handle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use libp2p::kad::{self, GetProvidersOk, Mode, QueryId, QueryResult, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, tcp, yamux};
use ron_proto::{Address, ErrorBody, ErrorKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec::{MAX_RANGE, PROTOCOL, TransferCodec, TransferReply, TransferRequest};
use crate::config::P2pSection;
use crate::fetch::Scores;
use crate::metrics::DhtMetrics;
use crate::verify::GROUP_BYTES;

/// Commands the actor's mailbox should hold.
pub const MAILBOX: usize = 256;
/// Answers from the node's store to peers' requests, queued for the actor.
const SERVED: usize = 64;
/// Peer requests being read from the store at once; more are refused (503).
const SERVING: usize = 32;
/// Requests of one peer being answered at once; more are refused (429).
const SERVING_PER_PEER: usize = 8;
/// Bytes a peer may take at once above its rate, in seconds of the rate.
const BURST: Duration = Duration::from_secs(1);
/// The longest a paced answer waits; a request that would wait longer is refused (429).
const MAX_PACE: Duration = Duration::from_secs(10);
/// How long a transfer request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the routing table is refreshed from the network.
const REFRESH: Duration = Duration::from_secs(60);

/// Why a peer-network operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    /// The actor is gone (the node is shutting down).
    #[error("the peer network is not running")]
    Stopped,
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
}

/// A request to the swarm's actor (queued in its supervised mailbox; build one through
/// [`DhtHandle`]).
pub struct Command(Inner);

enum Inner {
    Provide(Address),
    Unprovide(Address),
    Providers(Address, oneshot::Sender<Result<Vec<PeerId>, DhtError>>),
    Request(
        PeerId,
        TransferRequest,
        oneshot::Sender<Result<TransferReply, DhtError>>,
    ),
    Status(oneshot::Sender<P2pStatus>),
}

/// Talks to the swarm's actor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DhtHandle {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    pub(crate) scores: Scores,
    pub(crate) metrics: DhtMetrics,
}

impl DhtHandle {
    /// A handle on the actor reading `tx`'s mailbox, for the node whose PeerId is `peer_id`.
    pub fn new(tx: mpsc::Sender<Command>, peer_id: PeerId) -> Self {
        Self {
            tx,
            peer_id,
            scores: Scores::default(),
            metrics: DhtMetrics::default(),
        }
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

    /// Announces this node as a provider of `addr` (republished at libp2p's interval).
    pub async fn provide(&self, addr: Address) -> Result<(), DhtError> {
        self.tx
            .send(Command(Inner::Provide(addr)))
            .await
            .map_err(|_| DhtError::Stopped)
    }

    /// Stops announcing `addr`.
    pub async fn unprovide(&self, addr: Address) -> Result<(), DhtError> {
        self.tx
            .send(Command(Inner::Unprovide(addr)))
            .await
            .map_err(|_| DhtError::Stopped)
    }

    /// Peers providing `addr`: the first answer that names any, or an empty list once the
    /// lookup finished without one.
    pub async fn providers(&self, addr: Address) -> Result<Vec<PeerId>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command(Inner::Providers(addr, tx)))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)?
    }

    /// Sends one transfer request to `peer`.
    pub async fn request(
        &self,
        peer: PeerId,
        request: TransferRequest,
    ) -> Result<TransferReply, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command(Inner::Request(peer, request, tx)))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)?
    }

    /// The swarm's addresses and peers.
    pub async fn status(&self) -> Result<P2pStatus, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command(Inner::Status(tx)))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    transfer: request_response::Behaviour<TransferCodec>,
}

/// Builds the swarm with `keypair` as its identity, listens and dials as `section` says
/// (`extra_bootstrap` adds to `section.bootstrap`; live settings are read from `config`'s
/// `[p2p]` as they change), and serves the commands in `mailbox` until
/// `shutdown` is cancelled or every handle is gone. A fresh swarm on each call: under the
/// supervisor a restart rebinds the same addresses.
pub async fn run(
    shutdown: CancellationToken,
    mailbox: supervisor::Mailbox<Command>,
    keypair: libp2p::identity::Keypair,
    config: ron_kernel::Config,
    section: P2pSection,
    extra_bootstrap: Vec<Multiaddr>,
    source: Arc<dyn Source>,
) -> Result<(), String> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let kad = kad::Behaviour::with_config(
                id,
                kad::store::MemoryStore::new(id),
                kad::Config::new(kad::PROTOCOL_NAME),
            );
            Behaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/ron/1".into(),
                    key.public(),
                )),
                transfer: request_response::Behaviour::with_codec(
                    TransferCodec,
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(REQUEST_TIMEOUT)
                        .with_max_concurrent_streams(SERVING),
                ),
            }
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    // Answer DHT queries from the start: on loopback and private networks nothing would
    // confirm an external address, and a node in client mode serves nobody.
    swarm.behaviour_mut().kad.set_mode(Some(Mode::Server));
    for addr in &section.listen {
        let addr: Multiaddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        swarm
            .listen_on(addr.clone())
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    let mut bootstrap: Vec<Multiaddr> = Vec::new();
    for addr in &section.bootstrap {
        bootstrap.push(addr.parse().map_err(|e| format!("{addr}: {e}"))?);
    }
    bootstrap.extend(extra_bootstrap);
    for addr in bootstrap {
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let actor = Actor {
        swarm,
        source,
        providers: HashMap::new(),
        requests: HashMap::new(),
        listen: Vec::new(),
        serving: 0,
        serving_by: HashMap::new(),
        paced: HashMap::new(),
        config,
    };
    let mut inbox = mailbox.lock().await;
    actor.run(shutdown, &mut inbox).await;
    Ok(())
}

struct Actor {
    swarm: Swarm<Behaviour>,
    source: Arc<dyn Source>,
    providers: HashMap<QueryId, oneshot::Sender<Result<Vec<PeerId>, DhtError>>>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<TransferReply, DhtError>>>,
    listen: Vec<Multiaddr>,
    serving: usize,
    /// Requests being answered, per peer.
    serving_by: HashMap<PeerId, usize>,
    /// When each peer's byte budget is next clear (theoretical arrival time of the pacing).
    paced: HashMap<PeerId, tokio::time::Instant>,
    config: ron_kernel::Config,
}

type Served = (PeerId, ResponseChannel<TransferReply>, TransferReply);

fn refusal(kind: ErrorKind, message: &str, retry: Duration) -> TransferReply {
    let ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX).max(1);
    TransferReply::Error {
        kind,
        body: ErrorBody::new(kind, message).retry_after_ms(ms),
    }
}

impl Actor {
    async fn run(mut self, shutdown: CancellationToken, commands: &mut mpsc::Receiver<Command>) {
        let (served_tx, mut served_rx) = mpsc::channel::<Served>(SERVED);
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command(command)) => self.command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event, &served_tx),
                Some((peer, channel, reply)) = served_rx.recv() => {
                    self.serving -= 1;
                    if let Some(n) = self.serving_by.get_mut(&peer) {
                        *n -= 1;
                        if *n == 0 {
                            self.serving_by.remove(&peer);
                        }
                    }
                    if self.swarm.behaviour_mut().transfer.send_response(channel, reply).is_err() {
                        tracing::debug!("peer went away before its answer");
                    }
                }
                _ = refresh.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
    }

    fn command(&mut self, command: Inner) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Inner::Provide(addr) => {
                if let Err(e) = behaviour.kad.start_providing(key(&addr)) {
                    tracing::warn!(%addr, error = %e, "cannot provide");
                }
            }
            Inner::Unprovide(addr) => behaviour.kad.stop_providing(&key(&addr)),
            Inner::Providers(addr, reply) => {
                let query = behaviour.kad.get_providers(key(&addr));
                self.providers.insert(query, reply);
            }
            Inner::Request(peer, request, reply) => {
                let id = behaviour.transfer.send_request(&peer, request);
                self.requests.insert(id, reply);
            }
            Inner::Status(reply) => {
                let me = *self.swarm.local_peer_id();
                let _ = reply.send(P2pStatus {
                    peer_id: me.to_string(),
                    listen: self
                        .listen
                        .iter()
                        .map(|a| a.clone().with_p2p(me).unwrap_or_else(|a| a).to_string())
                        .collect(),
                    peers: self
                        .swarm
                        .connected_peers()
                        .map(ToString::to_string)
                        .collect(),
                });
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>, served: &mpsc::Sender<Served>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
                self.listen.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.listen.retain(|a| a != &address),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                let found = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        Some(Ok(providers.into_iter().collect::<HashSet<_>>()))
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {
                        Some(Ok(HashSet::new()))
                    }
                    Err(kad::GetProvidersError::Timeout { .. }) => Some(Err(DhtError::Timeout)),
                };
                let done = step.last || matches!(&found, Some(Ok(p)) if !p.is_empty());
                if done && let Some(reply) = self.providers.remove(&id) {
                    let answer = found
                        .unwrap_or(Ok(HashSet::new()))
                        .map(|p| p.into_iter().collect());
                    let _ = reply.send(answer);
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Transfer(event)) => self.transfer(event, served),
            _ => {}
        }
    }

    fn transfer(
        &mut self,
        event: request_response::Event<TransferRequest, TransferReply>,
        served: &mpsc::Sender<Served>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(match error {
                        request_response::OutboundFailure::Timeout => DhtError::Timeout,
                        other => DhtError::Peer(other.to_string()),
                    }));
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let by_peer = self.serving_by.get(&peer).copied().unwrap_or(0);
                let refused = if self.serving >= SERVING {
                    let wait = Duration::from_millis(1000);
                    Some(refusal(ErrorKind::Overloaded, "too many transfers", wait))
                } else if by_peer >= SERVING_PER_PEER {
                    let wait = Duration::from_millis(500);
                    Some(refusal(
                        ErrorKind::RateLimited,
                        "too many transfers from you",
                        wait,
                    ))
                } else {
                    None
                };
                let pace = match (&refused, &request) {
                    (None, TransferRequest::Range { start, end, .. }) => {
                        self.pace(peer, end.saturating_sub(*start))
                    }
                    _ => Ok(Duration::ZERO),
                };
                let reply = match (refused, pace) {
                    (Some(reply), _) => Some(reply),
                    (None, Err(wait)) => {
                        Some(refusal(ErrorKind::RateLimited, "over its byte rate", wait))
                    }
                    (None, Ok(_)) => None,
                };
                if let Some(reply) = reply {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .transfer
                        .send_response(channel, reply);
                    return;
                }
                let pace = pace.unwrap_or_default();
                self.serving += 1;
                *self.serving_by.entry(peer).or_default() += 1;
                let (source, served) = (self.source.clone(), served.clone());
                tokio::spawn(async move {
                    let reply = answer(source.as_ref(), request).await;
                    // Paced after reading: the read overlaps the wait.
                    tokio::time::sleep(pace).await;
                    let _ = served.send((peer, channel, reply)).await;
                });
            }
            _ => {}
        }
    }
}

impl Actor {
    /// Charges `bytes` to `peer`'s rate (`p2p.peer_bytes_per_sec`, live): how long its answer
    /// waits, or `Err(retry)` when that would be over [`MAX_PACE`].
    fn pace(&mut self, peer: PeerId, bytes: u64) -> Result<Duration, Duration> {
        let rate = self.config.get::<P2pSection>().peer_bytes_per_sec;
        if rate == 0 {
            return Ok(Duration::ZERO);
        }
        let now = tokio::time::Instant::now();
        if self.paced.len() > 4096 {
            self.paced.retain(|_, t| *t > now);
        }
        let clear = self.paced.get(&peer).copied().unwrap_or(now).max(now);
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let wait = (clear + cost).saturating_duration_since(now + BURST);
        if wait > MAX_PACE {
            return Err(wait - MAX_PACE);
        }
        self.paced.insert(peer, clear + cost);
        Ok(wait)
    }
}

fn key(addr: &Address) -> RecordKey {
    RecordKey::new(addr.as_bytes())
}

fn not_found(addr: &Address) -> TransferReply {
    let body = ErrorBody::new(ErrorKind::NotFound, format!("no object {addr}"));
    TransferReply::Error {
        kind: ErrorKind::NotFound,
        body,
    }
}

async fn answer(source: &dyn Source, request: TransferRequest) -> TransferReply {
    match request {
        TransferRequest::Have { addr } => match source.size(addr).await {
            Some(size) => TransferReply::Have { size },
            None => not_found(&addr),
        },
        TransferRequest::Range { addr, start, end } => {
            if end <= start || end - start > MAX_RANGE {
                let body = ErrorBody::new(
                    ErrorKind::BadInput,
                    format!("a range is 1 to {MAX_RANGE} bytes"),
                );
                return TransferReply::Error {
                    kind: ErrorKind::BadInput,
                    body,
                };
            }
            if start % GROUP_BYTES != 0 {
                let body = ErrorBody::new(
                    ErrorKind::BadInput,
                    format!("a range starts and ends at multiples of {GROUP_BYTES}"),
                );
                return TransferReply::Error {
                    kind: ErrorKind::BadInput,
                    body,
                };
            }
            match source.encoded(addr, start, end).await {
                Ok(Some((size, _))) if start >= size => {
                    let body = ErrorBody::new(
                        ErrorKind::RangeNotSatisfiable,
                        format!("the object has {size} bytes"),
                    );
                    TransferReply::Error {
                        kind: ErrorKind::RangeNotSatisfiable,
                        body,
                    }
                }
                Ok(Some((size, _))) if end % GROUP_BYTES != 0 && end < size => {
                    let body = ErrorBody::new(
                        ErrorKind::BadInput,
                        format!("a range ends at a multiple of {GROUP_BYTES} or the object's end"),
                    );
                    TransferReply::Error {
                        kind: ErrorKind::BadInput,
                        body,
                    }
                }
                Ok(Some((size, encoded))) => TransferReply::Range {
                    size,
                    start,
                    end: end.min(size),
                    encoded,
                },
                Ok(None) => not_found(&addr),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot serve a range to a peer");
                    let body = ErrorBody::new(ErrorKind::Internal, "internal error");
                    TransferReply::Error {
                        kind: ErrorKind::Internal,
                        body,
                    }
                }
            }
        }
    }
}
