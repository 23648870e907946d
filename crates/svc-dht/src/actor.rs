//! The swarm's actor: builds the swarm, answers the handle's commands, serves peers' transfer
//! requests, runs provider lookups (hedged), paces announcements, and rejoins the network
//! when it has lost every peer.

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
    MAX_ADDRS, MAX_PROVIDERS, MAX_RANGE, PROTOCOL, ProviderEntry, TransferCodec, TransferReply,
    TransferRequest,
};
use crate::config::P2pSection;
use crate::metrics::DhtMetrics;
use crate::node::{Command, DhtError, Found, Inner, P2pStatus, PeerEvent, Source};
use crate::verify::GROUP_BYTES;

/// Answers from the node's store to peers' requests, queued for the actor.
const SERVED: usize = 64;
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
/// How often the routing table is refreshed from the network.
const REFRESH: Duration = Duration::from_secs(60);
/// Provider announcements (Kademlia queries) running at once; the rest wait their turn.
const ANNOUNCING: usize = 32;
/// Provider records this node keeps, its own and others' (libp2p's default is 1,024).
const RECORDS: usize = 1 << 18;
/// Peers a hedged lookup asks directly.
const HEDGE_PEERS: usize = 3;
/// Kademlia's parallelism: the closest peers a lookup asks first; a hedge asks others.
const ALPHA: usize = 3;
/// Lookup latencies the running p95 is taken over.
const SAMPLES: usize = 128;
/// The hedge delay before there are enough samples, and its bounds.
const HEDGE_DEFAULT: Duration = Duration::from_millis(250);
const HEDGE_MIN: Duration = Duration::from_millis(25);
const HEDGE_MAX: Duration = Duration::from_secs(2);
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
    } = setup;
    let (use_mdns, relay_server) = (section.mdns, section.relay_server);
    let ping_every = Duration::from_millis(section.ping_interval_ms);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            // TLS 1.3 first (AES-GCM: a fraction of Noise's ChaCha20 per byte), Noise for
            // peers without it (decision 0012).
            (tls::Config::new, noise::Config::new),
            muxer,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_relay_client((tls::Config::new, noise::Config::new), muxer)
        .map_err(|e| e.to_string())?
        .with_behaviour(|key, relay_client| {
            let id = key.public().to_peer_id();
            let store = kad::store::MemoryStore::with_config(
                id,
                kad::store::MemoryStoreConfig {
                    max_records: RECORDS,
                    max_provided_keys: RECORDS,
                    ..Default::default()
                },
            );
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?)
            } else {
                None
            };
            Ok(Behaviour {
                kad: kad::Behaviour::with_config(id, store, kad::Config::new(kad::PROTOCOL_NAME)),
                // Peers hear of new listen addresses (a relay reservation) as they appear.
                identify: identify::Behaviour::new(
                    identify::Config::new("/ron/1".into(), key.public())
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(ping_every)
                        .with_timeout(PING_TIMEOUT),
                ),
                mdns: Toggle::from(mdns),
                relay_client,
                relay: Toggle::from(relay_server.then(|| {
                    relay::Behaviour::new(
                        id,
                        relay::Config {
                            max_circuit_duration: CIRCUIT_DURATION,
                            max_circuit_bytes: CIRCUIT_BYTES,
                            ..relay::Config::default()
                        },
                    )
                })),
                dcutr: dcutr::Behaviour::new(id),
                autonat: autonat::Behaviour::new(id, autonat::Config::default()),
                transfer: request_response::Behaviour::with_codec(
                    TransferCodec,
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(REQUEST_TIMEOUT)
                        .with_max_concurrent_streams(SERVING),
                ),
            })
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    // Answer DHT queries from the start: on loopback and private networks nothing would
    // confirm an external address, and a node in client mode serves nobody.
    swarm.behaviour_mut().kad.set_mode(Some(Mode::Server));
    // An operator who turned the relay on wants it on: libp2p would wait for a confirmed
    // external address first, which loopback and private networks never produce.
    if let Some(relay) = swarm.behaviour_mut().relay.as_mut() {
        relay.set_status(Some(relay::Status::Enable));
    }
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
    // Reachable through each relay: a reservation there (the relay client dials the relay),
    // announced as a listen address `<relay>/p2p-circuit/p2p/<this node>`.
    let mut relays = Vec::new();
    for relay in &section.relays {
        relays.push(
            relay
                .parse::<Multiaddr>()
                .map_err(|e| format!("{relay}: {e}"))?,
        );
    }
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
        latencies: VecDeque::new(),
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
    /// Parts still running: the query, and each hedge question.
    open: usize,
    /// Peers the query had asked, as of its last progress.
    asked: u32,
    timed_out: bool,
    hedged: bool,
}

type Timer = Pin<Box<dyn Future<Output = u64> + Send>>;
type Served = (PeerId, ResponseChannel<TransferReply>, TransferReply);

struct Actor {
    swarm: Swarm<Behaviour>,
    source: Arc<dyn Source>,
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
    /// Recent lookup latencies, seconds.
    latencies: VecDeque<f64>,
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
}

/// Yamux for TCP and relayed connections, writing data frames of up to [`YAMUX_FRAME`] bytes.
fn muxer() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_split_send_size(YAMUX_FRAME);
    config
}

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
                    if self.swarm.behaviour_mut().transfer.send_response(channel, reply).is_err() {
                        tracing::debug!("peer went away before its answer");
                    }
                }
                Some(lookup) = timers.next() => self.hedge(lookup),
                _ = refresh.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                _ = tick.tick() => {
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

    fn served(&mut self, peer: PeerId) {
        self.serving -= 1;
        if let Some(n) = self.serving_by.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.serving_by.remove(&peer);
            }
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
            Inner::Providers(addr, reply) => {
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
                        open: 1,
                        asked: 0,
                        timed_out: false,
                        hedged: false,
                    },
                );
                let delay = self.hedge_delay();
                timers.push(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    id
                }));
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
                    .send_request(&peer, request);
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
                    nat: self.nat.to_owned(),
                });
            }
        }
    }

    /// Queues `key` for announcement; at most [`ANNOUNCING`] run at once.
    fn provide(&mut self, key: RecordKey) {
        if self.queued.insert(key.clone()) {
            self.announce.push_back(key);
        }
        self.pump();
    }

    fn pump(&mut self) {
        while self.announcing.len() < ANNOUNCING {
            let Some(key) = self.announce.pop_front() else {
                return;
            };
            self.queued.remove(&key);
            match self.swarm.behaviour_mut().kad.start_providing(key.clone()) {
                Ok(query) => {
                    self.announcing.insert(query, key);
                }
                Err(e) => tracing::warn!(error = %e, "cannot provide"),
            }
        }
    }

    /// The running p95 of lookup latencies, bounded; a default until there are samples.
    fn hedge_delay(&self) -> Duration {
        if self.latencies.len() < 16 {
            return HEDGE_DEFAULT;
        }
        let mut sorted: Vec<f64> = self.latencies.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let p95 = sorted[(sorted.len() * 95).div_ceil(100) - 1];
        Duration::from_secs_f64(p95).clamp(HEDGE_MIN, HEDGE_MAX)
    }

    /// The lookup has not answered by the p95: ask up to [`HEDGE_PEERS`] connected peers
    /// other than the [`ALPHA`] closest to the key (whom the query asked first) for the
    /// provider records they hold.
    fn hedge(&mut self, id: u64) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        if lookup.hedged {
            return;
        }
        lookup.hedged = true;
        let addr = lookup.addr;
        let behaviour = self.swarm.behaviour_mut();
        let target = KBucketKey::new(key(&addr));
        let closest: HashSet<PeerId> = behaviour
            .kad
            .get_closest_local_peers(&target)
            .take(ALPHA)
            .map(|k| *k.preimage())
            .collect();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut ask: Vec<PeerId> = connected
            .iter()
            .filter(|p| !closest.contains(p))
            .take(HEDGE_PEERS)
            .copied()
            .collect();
        if ask.is_empty() {
            // A small network: everyone is among the closest; ask them directly anyway.
            ask = connected.into_iter().take(HEDGE_PEERS).collect();
        }
        if ask.is_empty() {
            return;
        }
        self.metrics.hedges.inc();
        tracing::debug!(%addr, peers = ask.len(), "hedging a slow provider lookup");
        for peer in ask {
            let request = TransferRequest::Providers { addr };
            let req = self
                .swarm
                .behaviour_mut()
                .transfer
                .send_request(&peer, request);
            self.by_hedge.insert(req, id);
            if let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.open += 1;
            }
        }
    }

    /// One part of lookup `id` ended: with providers (the lookup answers), or without.
    fn lookup_part(&mut self, id: u64, found: Result<HashSet<PeerId>, DhtError>, hedge: bool) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        match found {
            Ok(providers) if providers.iter().any(|p| *p != me) => {
                if hedge {
                    self.metrics.hedge_wins.inc();
                }
                self.answer(id, Ok(providers.into_iter().collect()));
                return;
            }
            // This node's own record, found in its store before the query asked anyone: the
            // query goes on.
            Ok(providers) if !hedge && !providers.is_empty() => return,
            Ok(_) => {}
            Err(DhtError::Timeout) => lookup.timed_out = true,
            Err(_) => {}
        }
        lookup.open -= 1;
        if lookup.open == 0 {
            let result = if lookup.timed_out {
                Err(DhtError::Timeout)
            } else {
                Ok(Vec::new())
            };
            self.answer(id, result);
        }
    }

    fn answer(&mut self, id: u64, result: Result<Vec<PeerId>, DhtError>) {
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        self.by_query.remove(&lookup.query);
        let mut asked = lookup.asked;
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&lookup.query) {
            asked = asked.max(query.stats().num_requests());
            query.finish();
        }
        let elapsed = lookup.started.elapsed();
        self.metrics.lookup_seconds.observe(elapsed.as_secs_f64());
        if self.latencies.len() == SAMPLES {
            self.latencies.pop_front();
        }
        self.latencies.push_back(elapsed.as_secs_f64());
        let hedged = lookup.hedged;
        let _ = lookup.reply.send(result.map(|providers| Found {
            providers,
            asked,
            elapsed,
            hedged,
        }));
    }

    /// Asks for a reservation on `relay`; tried again after [`RELISTEN`] if it ends.
    fn listen_through(&mut self, relay: Multiaddr) {
        match self
            .swarm
            .listen_on(relay.clone().with(Protocol::P2pCircuit))
        {
            Ok(id) => {
                self.relay_listeners.insert(id, relay);
            }
            Err(e) => {
                tracing::warn!(%relay, error = %e, "cannot listen through the relay");
                self.relisten.push((Instant::now() + RELISTEN, relay));
            }
        }
    }

    /// Dials the bootstrap peers and (when isolated) peers the routing table remembers.
    fn dial_known(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "cannot dial a bootstrap peer");
            }
        }
        self.redial_at = Some(Instant::now() + self.backoff);
    }

    fn redial(&mut self) {
        if !self.isolated {
            self.redial_at = None;
            return;
        }
        let known: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
            .take(REDIAL_PEERS)
            .collect();
        if !known.is_empty() || !self.bootstrap.is_empty() {
            tracing::info!(
                peers = known.len(),
                bootstrap = self.bootstrap.len(),
                "no peers: redialling"
            );
        }
        for peer in known {
            let _ = self.swarm.dial(peer);
        }
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
        self.dial_known();
    }

    fn connected(&mut self) {
        use kad::store::RecordStore;
        if !self.isolated {
            return;
        }
        self.isolated = false;
        self.redial_at = None;
        self.backoff = REDIAL_FIRST;
        // Back in a network (or in one for the first time): refresh the routing table and
        // announce again what this node provides; announcements made while alone reached
        // nobody.
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
        let provided: Vec<RecordKey> = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .provided()
            .map(|r| r.key.clone())
            .collect();
        if !provided.is_empty() {
            tracing::info!(
                objects = provided.len(),
                "joined the network: announcing again"
            );
        }
        for key in provided {
            self.provide(key);
        }
    }

    fn disconnected(&mut self) {
        if self.isolated || self.swarm.connected_peers().next().is_some() {
            return;
        }
        tracing::warn!("lost every peer: redialling");
        self.isolated = true;
        self.backoff = REDIAL_FIRST;
        self.redial_at = Some(Instant::now() + self.backoff);
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
            SwarmEvent::ConnectionClosed { .. } => self.disconnected(),
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

    fn query_progressed(
        &mut self,
        query: QueryId,
        result: QueryResult,
        last: bool,
        asked: u32,
        reached: u32,
    ) {
        match result {
            QueryResult::GetProviders(result) => {
                let Some(&id) = self.by_query.get(&query) else {
                    return;
                };
                if let Some(lookup) = self.lookups.get_mut(&id) {
                    lookup.asked = lookup.asked.max(asked);
                }
                let found = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => Ok(providers),
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => Ok(HashSet::new()),
                    Err(kad::GetProvidersError::Timeout { .. }) => Err(DhtError::Timeout),
                };
                let found_some = found.as_ref().is_ok_and(|p| !p.is_empty());
                if found_some || last {
                    self.lookup_part(id, found, false);
                }
            }
            QueryResult::StartProviding(result) if last => {
                let Some(key) = self.announcing.remove(&query) else {
                    return;
                };
                let outcome = match result {
                    Ok(_) if reached > 0 => "ok",
                    Ok(_) => {
                        self.unheard.insert(key);
                        "alone"
                    }
                    Err(_) => "failed",
                };
                self.metrics.announcement(outcome);
                self.pump();
            }
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
                } else if let Some(id) = self.by_hedge.remove(&request_id) {
                    let found = self.hedge_answer(response);
                    self.lookup_part(id, Ok(found), true);
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
                } else if let Some(id) = self.by_hedge.remove(&request_id) {
                    self.lookup_part(id, Ok(HashSet::new()), true);
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.request(peer, request, channel, served),
            _ => {}
        }
    }

    /// Learns the providers (and their addresses) a hedge question named.
    fn hedge_answer(&mut self, response: TransferReply) -> HashSet<PeerId> {
        let TransferReply::Providers { providers } = response else {
            return HashSet::new();
        };
        let mut found = HashSet::new();
        for entry in providers {
            let Ok(peer) = entry.peer.parse::<PeerId>() else {
                continue;
            };
            for addr in entry
                .addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
            {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            found.insert(peer);
        }
        found
    }

    fn request(
        &mut self,
        peer: PeerId,
        request: TransferRequest,
        channel: ResponseChannel<TransferReply>,
        served: &mpsc::Sender<Served>,
    ) {
        if let TransferRequest::Providers { addr } = request {
            let reply = self.providers_held(&addr);
            let _ = self
                .swarm
                .behaviour_mut()
                .transfer
                .send_response(channel, reply);
            return;
        }
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
            (None, Err(wait)) => Some(refusal(ErrorKind::RateLimited, "over its byte rate", wait)),
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

    /// The provider records held here for `addr`, with the addresses known for each.
    fn providers_held(&mut self, addr: &Address) -> TransferReply {
        use kad::store::RecordStore;
        let me = *self.swarm.local_peer_id();
        let records = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .providers(&key(addr));
        let providers = records
            .into_iter()
            .take(MAX_PROVIDERS)
            .map(|record| {
                let addrs = if record.provider == me {
                    self.listen.clone()
                } else if record.addresses.is_empty() {
                    // Providers announce only confirmed external addresses, often none:
                    // what the routing table knows of the peer.
                    self.routing_addresses(record.provider)
                } else {
                    record.addresses
                };
                ProviderEntry {
                    peer: record.provider.to_string(),
                    addrs: addrs
                        .iter()
                        .take(MAX_ADDRS)
                        .map(ToString::to_string)
                        .collect(),
                }
            })
            .collect();
        TransferReply::Providers { providers }
    }

    /// The addresses the routing table holds for `peer`.
    fn routing_addresses(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(peer) else {
            return Vec::new();
        };
        bucket
            .iter()
            .find(|e| *e.node.key.preimage() == peer)
            .map(|e| e.node.value.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Charges `bytes` to `peer`'s rate (`p2p.peer_bytes_per_sec`, live): how long its answer
    /// waits, or `Err(retry)` when that would be over [`MAX_PACE`].
    fn pace(&mut self, peer: PeerId, bytes: u64) -> Result<Duration, Duration> {
        let rate = self.config.get::<P2pSection>().peer_bytes_per_sec;
        if rate == 0 {
            return Ok(Duration::ZERO);
        }
        let now = Instant::now();
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

pub(crate) fn key(addr: &Address) -> RecordKey {
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
        // Answered by the actor from its records, never here.
        TransferRequest::Providers { addr } => not_found(&addr),
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
