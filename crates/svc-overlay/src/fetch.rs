//! Objects this node lacks, fetched from peers: one flight per object (requests for an object
//! already being fetched join its flight), the lookup and size proof within the fetch
//! deadline, the verified transfer into the store (unpinned, within the fetch cache's budget)
//! with its bytes handed on as they verify, the commit, and the announcement.
//!
//! A flight runs in its own task: it goes on, and stores the copy, whoever leaves. It is owned
//! by the flight table: its task ends with its transfer (every range request has a deadline),
//! and its entry leaves the table however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ron_kernel::Config;
use ron_proto::Address;
use svc_dht::{DhtError, DhtHandle, P2pSection};
use svc_storage::PutOptions;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::error::FetchError;
use crate::{OverlayError, OverlayHandle};

/// Ranges queued between the transfer and the store.
const PIPELINE: usize = 4;
/// What a request that joined another's fetch reads of the stored copy at a time.
const REPLAY_WINDOW: u64 = 1 << 20;

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
    pub done: Done,
}

/// How a fetch ended: resolves once its copy is committed (`Ok`) or the fetch failed.
#[derive(Debug)]
pub struct Done(oneshot::Receiver<Result<(), FetchError>>);

impl std::future::IntoFuture for Done {
    type Output = Result<(), OverlayError>;
    type IntoFuture = futures_util::future::BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.0.await {
                Ok(result) => result.map_err(OverlayError::from),
                Err(_) => Err(stopped().into()),
            }
        })
    }
}

/// Where a fetch is: finding the object and proving its size, moving its bytes, or ended
/// (with its size once the copy is committed).
#[derive(Debug, Clone)]
enum Flight {
    Finding,
    Moving(u64),
    Ended(Result<u64, FetchError>),
}

/// The fetches under way, by object.
type Flights = Arc<Mutex<HashMap<Address, watch::Receiver<Flight>>>>;

/// Takes a fetch off [`Flights`] when its task ends, however it ends.
struct Landing {
    flights: Flights,
    addr: Address,
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.addr);
    }
}

fn stopped() -> FetchError {
    FetchError::Failed("the fetch stopped".into())
}

/// The overlay's side of the peer network.
pub(crate) struct Net {
    dht: DhtHandle,
    config: Config,
    flights: Flights,
    /// Whether peers may read this node's objects now ([`crate::OverlaySetup`]).
    peers_may_read: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The runtime the overlay was made on, where fetches run: a fetch is the object's, not
    /// the asking request's, and must not live or die with the thread that asked (the
    /// gateway serves connections on threads of their own).
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("dht", &self.dht)
            .field("flights", &self.flights)
            .field("peers_may_read", &self.peers_may_read())
            .finish_non_exhaustive()
    }
}

impl Net {
    pub(crate) fn new(
        dht: DhtHandle,
        config: Config,
        peers_may_read: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        Self {
            dht,
            config,
            flights: Flights::default(),
            peers_may_read,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Runs `task` on the overlay's runtime (the caller's when it was made outside one).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    pub(crate) fn dht(&self) -> &DhtHandle {
        &self.dht
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Whether peers may read this node's objects now: when not, none is served or announced.
    pub(crate) fn peers_may_read(&self) -> bool {
        (self.peers_may_read)()
    }

    pub(crate) async fn announce(&self, addr: Address) {
        if !self.peers_may_read() {
            return;
        }
        if let Err(e) = self.dht.provide(addr).await {
            tracing::warn!(%addr, error = %e, "cannot announce a stored object");
        }
    }

    /// Announces `addr`, waiting out a busy network (announcing a whole store at start);
    /// `false` once the network has stopped.
    pub(crate) async fn announce_patiently(&self, addr: Address) -> bool {
        if !self.peers_may_read() {
            return true;
        }
        loop {
            match self.dht.provide(addr).await {
                Ok(()) => return true,
                Err(DhtError::Busy) => continue,
                Err(_) => return false,
            }
        }
    }

    pub(crate) async fn withdraw(&self, addr: Address) {
        let _ = self.dht.unprovide(addr).await;
    }

    /// The fetch cache's budget, `p2p.cache_bytes` (live).
    pub(crate) fn cache_budget(&self) -> u64 {
        self.config.get::<P2pSection>().cache_bytes
    }

    /// Joins the fetch of `addr` under way, or starts one; answers once its size is proven,
    /// with its verified bytes as they arrive (the stored copy, replayed once committed, for
    /// a request that joined another's fetch). `repair`: fetch although a (damaged) copy is
    /// stored, replacing its damaged files.
    pub(crate) async fn stream(
        &self,
        overlay: &OverlayHandle,
        addr: Address,
        repair: bool,
    ) -> Result<Incoming, OverlayError> {
        let (mut flight, tee) = self.join(overlay, addr, repair);
        let state = match flight.wait_for(|f| !matches!(f, Flight::Finding)).await {
            Ok(state) => state.clone(),
            Err(_) => Flight::Ended(Err(stopped())),
        };
        let (ended, done) = oneshot::channel();
        let (size, bytes, replay) = match (state, tee) {
            (Flight::Finding, _) => return Err(stopped().into()),
            (Flight::Ended(Err(e)), _) => return Err(e.into()),
            // The fetch this request started: its bytes as they verify.
            (Flight::Moving(size), Some(tee)) => (size, tee, None),
            // Another request's fetch, or one already ended: the stored copy once committed.
            (Flight::Moving(size) | Flight::Ended(Ok(size)), _) => {
                let (tx, rx) = mpsc::channel(PIPELINE);
                (size, rx, Some((overlay.clone(), tx)))
            }
        };
        // Ends when the flight does (its transfer is bounded by per-range deadlines).
        self.spawn(async move {
            let result = match flight.wait_for(|f| matches!(f, Flight::Ended(_))).await {
                Ok(state) => match &*state {
                    Flight::Ended(result) => result.clone().map(|_| ()),
                    _ => Err(stopped()),
                },
                Err(_) => Err(stopped()),
            };
            let _ = ended.send(result.clone());
            if let Some((overlay, tx)) = replay {
                match result {
                    Ok(()) => replay_stored(overlay, addr, tx).await,
                    Err(e) => drop(tx.send(Err(e.to_string())).await),
                }
            }
        });
        Ok(Incoming {
            size,
            bytes,
            done: Done(done),
        })
    }

    fn join(
        &self,
        overlay: &OverlayHandle,
        addr: Address,
        repair: bool,
    ) -> (
        watch::Receiver<Flight>,
        Option<mpsc::Receiver<Result<Bytes, String>>>,
    ) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get(&addr) {
            return (flight.clone(), None);
        }
        let (state, flight) = watch::channel(Flight::Finding);
        let (tee, bytes) = mpsc::channel(PIPELINE);
        flights.insert(addr, flight.clone());
        let landing = Landing {
            flights: self.flights.clone(),
            addr,
        };
        let p2p = self.config.get::<P2pSection>();
        let limits = Limits {
            deadline: Duration::from_millis(p2p.fetch_timeout_ms),
            max: overlay.max_object_bytes(),
            budget: p2p.cache_bytes,
        };
        let (dht, overlay) = (self.dht.clone(), overlay.clone());
        // The flight is the object's, but it runs in the trace (and under the request id) of
        // the request that started it.
        let span = tracing::info_span!("peer.transfer", %addr);
        let flying = async move {
            fly(&dht, &overlay, addr, limits, repair, &state, tee).await;
            drop(landing);
        }
        .instrument(span);
        match supervisor::trace::current() {
            Some(context) => self.spawn(supervisor::trace::scope(context, flying)),
            None => self.spawn(flying),
        }
        (flight, Some(bytes))
    }

    /// Evicts unpinned objects, oldest first, until they take at most `budget` bytes (the
    /// overlay stops announcing them).
    pub(crate) async fn make_room(&self, overlay: &OverlayHandle, budget: u64) {
        match overlay.evict(budget).await {
            Ok((report, removed)) if !removed.is_empty() => {
                tracing::info!(
                    objects = report.objects,
                    bytes = report.bytes,
                    "evicted cached objects"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot evict cached objects"),
        }
    }
}

/// What bounds one fetch, read live when it starts: its deadline (`p2p.fetch_timeout_ms`),
/// the largest object (`gateway.max_put_bytes`), the fetch cache's budget (`p2p.cache_bytes`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    deadline: Duration,
    max: u64,
    budget: u64,
}

/// One fetch, start to end, told to `state`: the lookup and size proof within the deadline,
/// then the transfer into the store, its verified bytes handed to `tee` while it listens.
async fn fly(
    dht: &DhtHandle,
    overlay: &OverlayHandle,
    addr: Address,
    limits: Limits,
    repair: bool,
    state: &watch::Sender<Flight>,
    tee: mpsc::Sender<Result<Bytes, String>>,
) {
    // A fetch that ended between a request's look in the store and its joining.
    if !repair && let Ok(Some(reader)) = overlay.reader(addr).await {
        state.send_replace(Flight::Ended(Ok(reader.size())));
        return;
    }
    // The deadline covers finding the object and proving its size; the transfer then runs
    // while it makes progress (every range request has its own timeout).
    let ready = tokio::time::timeout(limits.deadline, prepare(dht, overlay, addr, limits, repair))
        .await
        .unwrap_or(Err(FetchError::Timeout));
    let ready = match ready {
        Ok(ready) => ready,
        Err(e) => {
            dht.metrics().fetch_ended(e.outcome());
            state.send_replace(Flight::Ended(Err(e)));
            return;
        }
    };
    let size = ready.probe.size;
    state.send_replace(Flight::Moving(size));
    let result = transfer(dht, ready, tee).await;
    if result.is_ok() {
        overlay.announce(addr).await;
    }
    dht.metrics()
        .fetch_ended(result.as_ref().err().map_or("ok", FetchError::outcome));
    state.send_replace(Flight::Ended(result.map(|()| size)));
}

/// Sends the stored copy of `addr` to `tx`, verified a window at a time (for a request that
/// joined another's fetch); an `Err` cuts it short.
async fn replay_stored(
    overlay: OverlayHandle,
    addr: Address,
    tx: mpsc::Sender<Result<Bytes, String>>,
) {
    if tx.is_closed() {
        return;
    }
    let object = match overlay.open(addr).await {
        Ok(Some(object)) => object,
        Ok(None) => {
            let _ = tx
                .send(Err(format!("the fetched copy of {addr} is gone")))
                .await;
            return;
        }
        Err(e) => {
            let _ = tx.send(Err(e.to_string())).await;
            return;
        }
    };
    let mut at = 0;
    while at < object.size() {
        let piece = match object.read_verified(at, at + REPLAY_WINDOW).await {
            Ok(piece) if !piece.is_empty() => Ok(piece),
            Ok(_) => Err(format!("the stored copy of {addr} ends at {at}")),
            Err(e) => Err(e.to_string()),
        };
        let failed = piece.is_err();
        at += piece.as_ref().map_or(0, |p| p.len() as u64);
        if tx.send(piece).await.is_err() || failed {
            return;
        }
    }
}

/// A fetch with its providers found, the object's size proven and room made for it.
struct Ready {
    providers: Vec<svc_dht::PeerId>,
    probe: svc_dht::Probe,
    writer: svc_storage::ObjectWriter,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The first half of a fetch: lookup, size proof, room in the cache, an upload started.
async fn prepare(
    dht: &DhtHandle,
    overlay: &OverlayHandle,
    addr: Address,
    Limits { max, budget, .. }: Limits,
    repair: bool,
) -> Result<Ready, FetchError> {
    let providers = match dht.providers(addr).await {
        Ok(providers) => providers,
        Err(DhtError::Timeout) => return Err(FetchError::Timeout),
        Err(DhtError::CircuitOpen(open)) => return Err(FetchError::CircuitOpen(open)),
        Err(e) => return Err(FetchError::Failed(e.to_string())),
    };
    let me = dht.peer_id();
    let providers: Vec<_> = providers.into_iter().filter(|p| *p != me).collect();
    if providers.is_empty() {
        return Err(FetchError::NotFound(addr));
    }
    // A repair rewrites a copy whose space is already counted.
    let cap = if repair { max } else { max.min(budget) };
    let probe = dht
        .probe(addr, &providers, cap)
        .await
        .map_err(|e| match e {
            DhtError::TooLarge { size, .. } if size > budget => FetchError::Failed(format!(
                "{addr} is {size} bytes, over the fetch cache's budget (p2p.cache_bytes = {budget})"
            )),
            e => FetchError::Failed(e.to_string()),
        })?;
    if !repair && let Some(net) = &overlay.net {
        net.make_room(overlay, budget.saturating_sub(probe.size))
            .await;
    }
    let options = PutOptions {
        media_type: None,
        expect: Some(addr),
        max_bytes: Some(max),
        // A fetched copy is cached; a repaired one keeps its pin (committing an object
        // already stored changes no pin).
        unpinned: true,
        // Nothing reads the copy back now: its outboard comes from the transfer.
        around_cache: true,
        lease: None,
    };
    let permit = overlay
        .admit_upload()
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    Ok(Ready {
        providers,
        probe,
        writer: overlay.store.writer(options),
        _permit: permit,
    })
}

/// The second half: the transfer into the store, each verified piece also handed to `tee`
/// while it listens (an `Err` there when the transfer fails); the commit.
async fn transfer(
    dht: &DhtHandle,
    ready: Ready,
    tee: mpsc::Sender<Result<Bytes, String>>,
) -> Result<(), FetchError> {
    let Ready {
        providers,
        probe,
        mut writer,
        _permit,
    } = ready;
    let addr = probe.addr;
    let failed = |e: DhtError| FetchError::Failed(e.to_string());
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPELINE);
    let started = std::time::Instant::now();
    let transfer = dht.transfer(probe, &providers, tx);
    let sink = &mut writer;
    // Hands back the listener, still there unless the client went away.
    let store = async move {
        let mut tee = Some(tee);
        while let Some(bytes) = rx.recv().await {
            if let Some(listener) = &tee
                && listener.send(Ok(bytes.clone())).await.is_err()
            {
                // The client went away: the copy is still worth storing.
                tee = None;
            }
            if let Err(e) = sink.write(&bytes).await {
                return (Err(e.to_string()), tee);
            }
        }
        (Ok(()), tee)
    };
    let (transferred, (stored, tee)) = tokio::join!(transfer, store);
    let result = transferred
        .map_err(failed)
        .and_then(|t| stored.map(|()| t).map_err(FetchError::Failed));
    let mut transferred = match result {
        Ok(t) => t,
        Err(e) => {
            if let Some(listener) = tee {
                let _ = listener.send(Err(e.to_string())).await;
            }
            return Err(e);
        }
    };
    // Every byte has been handed on; the client's response ends when `tee` drops.
    drop(tee);
    let transfer_ms = started.elapsed().as_millis();
    // The outboard is the one the transfer assembled from verified pairs (no second BLAKE3
    // pass over the stored bytes); the store checks it fits the address before anything
    // becomes visible.
    writer
        .finish_with_outboard(std::mem::take(&mut transferred.outboard))
        .await
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let from: Vec<String> = transferred
        .delivered
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(peer, n)| format!("{peer}={n}"))
        .collect();
    let (commit_ms, faults) = (
        started.elapsed().as_millis() - transfer_ms,
        transferred.faults.len(),
    );
    tracing::info!(%addr, size = transferred.size, from = %from.join(","), faults, transfer_ms, commit_ms, "fetched from peers");
    Ok(())
}
