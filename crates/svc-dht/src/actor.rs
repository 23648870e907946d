//! The swarm's actor: owns the one swarm, answers the handle's commands and dispatches the
//! swarm's events. By idea: `swarm` builds it, `lookups` runs provider lookups (hedged) and
//! paces announcements, `serving` answers peers' transfer requests and sends ours,
//! `connectivity` keeps the node joined (relays, redialling when it has lost every peer).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use libp2p::kad::{self, GetProvidersOk, KBucketKey, Mode, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, identify, mdns, noise, ping, relay, tcp, tls, yamux,
};
use ron_proto::{Address, ErrorBody, ErrorKind};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{
    MAX_ADDRS, MAX_PROVIDERS, MAX_RANGE, PROTOCOL, ProviderEntry, Traced, TransferCodec,
    TransferReply, TransferRequest,
};
use crate::config::P2pSection;
use crate::hedge::{Latencies, Parts};
use crate::metrics::DhtMetrics;
use crate::node::{
    Command, DhtError, Found, Inner, P2pStatus, PeerEvent, RecordPolicy, Settle, Source,
};
use crate::verify::GROUP_BYTES;
use ron_proto::trace::TraceParent;
use tracing::Instrument;

mod connectivity;
mod lookups;
mod records;
mod serving;
mod swarm;

/// Answers from the node's store to peers' requests, queued for the actor.
const SERVED: usize = 64;
/// How long a lookup of every provider waits at most for its query to end.
const WHOLE_WAIT: Duration = Duration::from_secs(5);
/// How long after its first finds a lookup of every provider waits for more: the closest
/// peers' answers come in the first round; later rounds wait on slow or departed peers.
const WHOLE_SETTLE: Duration = Duration::from_millis(750);
/// Peer requests being read from the store at once; more are refused (503).
const SERVING: usize = 64;
/// Requests of one peer being answered at once; more are refused (429).
const SERVING_PER_PEER: usize = 24;
/// Bytes a peer may take at once above its rate, in seconds of the rate.
const BURST: Duration = Duration::from_secs(1);
/// The longest a paced answer waits; a request that would wait longer is refused (429).
const MAX_PACE: Duration = Duration::from_secs(10);
/// The largest yamux data frame this node writes (yamux's default is 16 KiB). A 512 KiB range
/// goes out as 8 frames instead of 32: fewer hand-offs to the connection's task, TLS records
/// and writes to the socket; ~10-15% less CPU per byte on both nodes (decision 0013). A small
/// message waits behind at most one such frame per connection.
const YAMUX_FRAME: usize = 64 * 1024;
/// How long a transfer request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Provider announcements (Kademlia queries) running at once; the rest wait their turn.
const ANNOUNCING: usize = 32;
/// Provider records this node keeps, its own and others' (libp2p's default is 1,024).
const RECORDS: usize = 1 << 18;
/// Redialling while no peer is connected: first after this, doubling up to [`REDIAL_MAX`].
const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(30);
/// How long after a relay reservation ended or failed it is asked for again.
const RELISTEN: Duration = Duration::from_secs(2);
/// Seeds from discovery kept for redialling, besides the bootstrap list.
const SEEDS: usize = 64;
/// Peers from the routing table redialled at once when isolated, besides the bootstrap list.
const REDIAL_PEERS: usize = 16;
/// Liveness: a ping per connection every `p2p.ping_interval_ms`, each failing after this long;
/// libp2p reports the second failure in a row, and the connection is closed then (at the
/// default 3 s interval a dead path is noticed within about 16 s).
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC's keep-alive at most this often (its idle timeout twice as long): libp2p's default.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What [`run`] builds a swarm from; cloned for each start under the supervisor.
#[derive(Clone)]
pub struct Setup {
    /// The node's identity: its PeerId.
    pub keypair: libp2p::identity::Keypair,
    /// The node's configuration; `[p2p]`'s live settings are read from it as they change.
    pub config: ron_kernel::Config,
    /// `[p2p]` as it was at start, with command-line replacements (listen addresses).
    pub section: P2pSection,
    /// Bootstrap peers besides `section.bootstrap` (`--bootstrap`).
    pub bootstrap: Vec<Multiaddr>,
    /// Where peers' requests are read from.
    pub source: Arc<dyn Source>,
    /// Where lookups and hedges are counted (the handle's: [`crate::DhtHandle::metrics`]).
    pub metrics: DhtMetrics,
    /// Where peers seen and peers unreachable are told (a peer table), if anywhere.
    pub events: Option<broadcast::Sender<PeerEvent>>,
    /// Which records peers may store here.
    pub records: Arc<dyn RecordPolicy>,
    /// How ranges are settled with peers (the handle's too: [`crate::DhtHandle::settling`]);
    /// `None`: not counted, cheques refused.
    pub settle: Option<Arc<dyn Settle>>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("section", &self.section)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    transfer: request_response::Behaviour<TransferCodec>,
    /// Reachable through relays (`p2p.relays`), and dialling others through theirs.
    relay_client: relay::client::Behaviour,
    /// Serving as a relay for others (`p2p.relay_server`).
    relay: Toggle<relay::Behaviour>,
    /// Upgrading a relayed connection to a direct one (hole punching).
    dcutr: dcutr::Behaviour,
    /// Whether this node can be dialled from outside (asked of its peers).
    autonat: autonat::Behaviour,
}

/// What a relay this node serves allows each circuit (libp2p's defaults of 2 min and
/// 128 KiB are for hole-punching coordination only; objects go over circuits here when no
/// direct path exists).
const CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
const CIRCUIT_BYTES: u64 = 256 << 20;

/// Builds the swarm as `setup` says, listens, dials the bootstrap peers, and serves the
/// commands in `mailbox` until `shutdown` is cancelled or every handle is gone. A fresh swarm
/// on each call: under the supervisor a restart rebinds the same addresses.
pub async fn run(
    shutdown: CancellationToken,
    mailbox: supervisor::Mailbox<Command>,
    setup: Setup,
) -> Result<(), String> {
    let Setup {
        keypair,
        config,
        section,
        bootstrap: extra,
        source,
        metrics,
        events,
        records,
        settle,
    } = setup;
    let (swarm, mut bootstrap, relays) = swarm::build(keypair, &section)?;
    bootstrap.extend(extra);
    let mut actor = Actor {
        swarm,
        source,
        metrics,
        events,
        config,
        fixed_bootstrap: bootstrap.len(),
        bootstrap,
        requests: HashMap::new(),
        listen: Vec::new(),
        serving: 0,
        serving_by: HashMap::new(),
        paced: HashMap::new(),
        lookups: HashMap::new(),
        next_lookup: 0,
        by_query: HashMap::new(),
        by_hedge: HashMap::new(),
        latencies: Latencies::default(),
        announce: VecDeque::new(),
        queued: HashSet::new(),
        announcing: HashMap::new(),
        unheard: HashSet::new(),
        nat: "unknown",
        relay_listeners: HashMap::new(),
        relisten: Vec::new(),
        isolated: true,
        redial_at: None,
        backoff: REDIAL_FIRST,
        answering: tokio::task::JoinSet::new(),
        records,
        settle,
        puts: HashMap::new(),
        gets: HashMap::new(),
    };
    for relay in relays {
        actor.listen_through(relay);
    }
    actor.dial_known();
    let mut inbox = mailbox.lock().await;
    actor.run(shutdown, &mut inbox).await;
    Ok(())
}

/// A provider lookup: a Kademlia query, perhaps with a hedge of direct questions.
struct Lookup {
    addr: Address,
    reply: oneshot::Sender<Result<Found, DhtError>>,
    started: Instant,
    query: QueryId,
    /// Its parts still running: the query, and each hedge question.
    parts: Parts,
    /// Peers the query had asked, as of its last progress.
    asked: u32,
    hedged: bool,
    /// For a lookup of every provider: those found so far, and when the first were (it
    /// answers at the query's end, [`WHOLE_SETTLE`] after its first finds, or [`WHOLE_WAIT`]
    /// after its start with what it has, even nothing).
    whole: Option<(HashSet<PeerId>, Option<Instant>)>,
}

type Timer = Pin<Box<dyn Future<Output = u64> + Send>>;
type Served = (PeerId, ResponseChannel<TransferReply>, TransferReply);

struct Actor {
    swarm: Swarm<Behaviour>,
    source: Arc<dyn Source>,
    settle: Option<Arc<dyn Settle>>,
    metrics: DhtMetrics,
    events: Option<broadcast::Sender<PeerEvent>>,
    config: ron_kernel::Config,
    /// Dialled at start and whenever the node is alone: the bootstrap peers and the seeds
    /// discovery asked for (the newest [`SEEDS`]).
    bootstrap: Vec<Multiaddr>,
    /// How many of `bootstrap` came from the configuration and flags (kept for good).
    fixed_bootstrap: usize,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<TransferReply, DhtError>>>,
    listen: Vec<Multiaddr>,
    serving: usize,
    /// Requests being answered, per peer.
    serving_by: HashMap<PeerId, usize>,
    /// When each peer's byte budget is next clear (theoretical arrival time of the pacing).
    paced: HashMap<PeerId, Instant>,
    lookups: HashMap<u64, Lookup>,
    next_lookup: u64,
    by_query: HashMap<QueryId, u64>,
    by_hedge: HashMap<OutboundRequestId, u64>,
    /// Recent lookup latencies: when to hedge.
    latencies: Latencies,
    /// Keys waiting to be announced, and the set of them (no key waits twice).
    announce: VecDeque<RecordKey>,
    queued: HashSet<RecordKey>,
    /// Announcements running, and the key each announces.
    announcing: HashMap<QueryId, RecordKey>,
    /// Keys whose last announcement reached nobody (the routing table was still empty, which
    /// it can be for a moment after a connection opens): announced again as soon as a peer
    /// enters the routing table. At most the provided keys.
    unheard: HashSet<RecordKey>,
    /// What autonat concluded: `public`, `private` or `unknown`.
    nat: &'static str,
    /// Listeners through relays, and the relay each goes through.
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, Multiaddr>,
    /// Relays to listen through again (their reservation ended or could not be made), when.
    relisten: Vec<(Instant, Multiaddr)>,
    /// No peer connected: redialling.
    isolated: bool,
    redial_at: Option<Instant>,
    backoff: Duration,
    /// The reads answering peers' range requests (at most [`SERVING`]); aborted with the
    /// actor.
    answering: tokio::task::JoinSet<()>,
    /// Which records peers may store here.
    records: Arc<dyn RecordPolicy>,
    /// Records being stored on peers, and who waits for the count.
    puts: HashMap<QueryId, oneshot::Sender<Result<usize, DhtError>>>,
    /// Record lookups, the values found so far, and who waits for them.
    gets: HashMap<QueryId, records::Gathering>,
}

impl Actor {
    async fn run(mut self, shutdown: CancellationToken, commands: &mut mpsc::Receiver<Command>) {
        let (served_tx, mut served_rx) = mpsc::channel::<Served>(SERVED);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut timers: FuturesUnordered<Timer> = FuturesUnordered::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command(command)) => self.command(command, &mut timers),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event, &served_tx),
                Some((peer, channel, reply)) = served_rx.recv() => {
                    self.served(peer);
                    if let (Some(settle), TransferReply::Range { start, end, .. }) =
                        (&self.settle, &reply)
                    {
                        settle.served(&peer, end.saturating_sub(*start));
                    }
                    if self.swarm.behaviour_mut().transfer.send_response(channel, reply).is_err() {
                        tracing::debug!("peer went away before its answer");
                    }
                }
                Some(lookup) = timers.next() => self.hedge(lookup),
                // Reap the answering reads (their answers come back through `served`).
                Some(_) = self.answering.join_next(), if !self.answering.is_empty() => {}
                _ = tick.tick() => {
                    self.settle_whole();
                    if self.redial_at.is_some_and(|at| at <= Instant::now()) {
                        self.redial();
                    }
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut self.relisten).into_iter().partition(|(at, _)| *at <= now);
                    self.relisten = later;
                    for (_, relay) in due {
                        self.listen_through(relay);
                    }
                }
            }
        }
    }

    fn tell(&self, event: PeerEvent) {
        if let Some(events) = &self.events {
            // Nobody listening is fine; a slow listener loses old events, counted there.
            let _ = events.send(event);
        }
    }

    fn command(&mut self, command: Inner, timers: &mut FuturesUnordered<Timer>) {
        match command {
            Inner::Provide(addr) => self.provide(key(&addr)),
            Inner::Unprovide(addr) => {
                let key = key(&addr);
                if self.queued.remove(&key) {
                    self.announce.retain(|k| k != &key);
                }
                self.unheard.remove(&key);
                self.swarm.behaviour_mut().kad.stop_providing(&key);
            }
            Inner::Providers(addr, whole, frugal, reply) => {
                let query = self.swarm.behaviour_mut().kad.get_providers(key(&addr));
                let id = self.next_lookup;
                self.next_lookup += 1;
                self.by_query.insert(query, id);
                self.lookups.insert(
                    id,
                    Lookup {
                        addr,
                        reply,
                        started: Instant::now(),
                        query,
                        parts: Parts::default(),
                        asked: 0,
                        hedged: false,
                        whole: whole.then(|| (HashSet::new(), None)),
                    },
                );
                // A whole lookup is not hedged: its timer ends its wait instead. A frugal
                // one is not hedged either: the query alone answers it.
                let delay = if whole {
                    Some(WHOLE_WAIT)
                } else {
                    (!frugal.0).then(|| self.latencies.hedge_delay())
                };
                if let Some(delay) = delay {
                    timers.push(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        id
                    }));
                }
            }
            Inner::Dial(addrs) => {
                for addr in addrs {
                    if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer, addr.clone());
                    }
                    let _ = self.swarm.dial(addr.clone());
                    if !self.bootstrap.contains(&addr) {
                        self.bootstrap.push(addr);
                    }
                }
                let excess = self
                    .bootstrap
                    .len()
                    .saturating_sub(SEEDS + self.fixed_bootstrap);
                self.bootstrap
                    .drain(self.fixed_bootstrap..self.fixed_bootstrap + excess);
            }
            Inner::Request(peer, request, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .transfer
                    .send_request(&peer, *request);
                self.requests.insert(id, reply);
            }
            Inner::PutRecord(key, value, reply) => self.put_record(key, value, reply),
            Inner::GetRecords(key, reply) => self.get_records(key, reply),
            Inner::Known(reply) => {
                let mut known: std::collections::BTreeSet<PeerId> =
                    self.swarm.connected_peers().copied().collect();
                for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
                    for entry in bucket.iter() {
                        known.insert(*entry.node.key.preimage());
                    }
                }
                let _ = reply.send(known.into_iter().collect());
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
                    nat: self.nat.to_owned(),
                });
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>, served: &mpsc::Sender<Served>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
                // The addresses this node listens on are the ones it offers: provider records
                // carry a node's external addresses, and a node answering a lookup leaves out
                // a provider it has no address for. Without this, on loopback and private
                // networks (where nothing confirms an external address) a record would be
                // handed out only by nodes that happen to know the provider. A relay hands
                // the same addresses to the nodes it holds reservations for.
                if !address.iter().any(|p| p == Protocol::P2pCircuit) {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
                self.listen.retain(|a| a != &address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.listen.retain(|a| !addresses.contains(a));
                if let Err(e) = &reason {
                    tracing::warn!(error = %e, "a listener closed");
                }
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    tracing::debug!(%relay, "no reservation on the relay: asking again soon");
                    self.relisten.push((Instant::now() + RELISTEN, relay));
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "a listener failed");
            }
            SwarmEvent::ConnectionEstablished { .. } => self.connected(),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.tell(PeerEvent::Left { peer: peer_id });
                self.disconnected();
            }
            SwarmEvent::ConnectionClosed { .. } => {}
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } => self.tell(PeerEvent::Unreachable { peer }),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) => {
                tracing::debug!(%peer, error = %e, "ping failed: closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                tracing::info!(relay = %relay_peer_id, "reachable through a relay");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                let outcome = if result.is_ok() { "ok" } else { "failed" };
                self.metrics.holepunch(outcome);
                match result {
                    Ok(_) => {
                        tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection replaces the relayed one")
                    }
                    Err(e) => {
                        tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed: staying on the relay")
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                self.nat = match new {
                    autonat::NatStatus::Public(_) => "public",
                    autonat::NatStatus::Private => "private",
                    autonat::NatStatus::Unknown => "unknown",
                };
                tracing::info!(nat = self.nat, "reachability from outside");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::info!(%peer, %addr, "found a peer on the local network");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                self.tell(PeerEvent::Seen {
                    peer: peer_id,
                    addrs: info.listen_addrs,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            })) => {
                let (asked, reached) = (stats.num_requests(), stats.num_successes());
                self.query_progressed(id, result, step.last, asked, reached);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
                self.inbound(request);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                is_new_peer: true,
                ..
            })) => {
                for key in std::mem::take(&mut self.unheard) {
                    self.provide(key);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Transfer(event)) => self.transfer(event, served),
            _ => {}
        }
    }
}

pub(crate) fn key(addr: &Address) -> RecordKey {
    RecordKey::new(addr.as_bytes())
}
