//! The node's peer network: the `svc-dht` actor under the supervisor, the store as the source
//! peers read from, and the gateway's [`svc_gateway::Network`] over both.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use lru::LruCache;
use ron_kernel::Config;
use ron_proto::Address;
use svc_dht::{DhtError, DhtHandle, P2pSection};
use svc_discovery::PeerTable;
use svc_gateway::{FetchError, GatewaySection, Incoming};
use svc_overlay::OverlayHandle;
use svc_storage::{ObjectReader, PutOptions};
use tokio::sync::{mpsc, watch};

/// Ranges queued between the transfer and the store.
const PIPELINE: usize = 4;
/// What a request that joined another's fetch reads of the stored copy at a time.
const REPLAY_WINDOW: u64 = 1 << 20;

/// Objects whose readers stay open for the ranges peers ask next.
const OPEN_READERS: NonZeroUsize = NonZeroUsize::new(16).unwrap();
/// How long an open reader is reused before the object is looked up again (so one removed
/// since is not served from an old reader for longer than this).
const READER_REUSE: Duration = Duration::from_secs(5);

/// Peers read objects through the overlay, verified as for any reader. A transfer asks for an
/// object range after range: the reader stays open between them, since opening it (a trip
/// through the overlay's actor and a blocking thread to open the outboard) cost as much as
/// reading half a MiB.
pub(crate) struct StoreSource {
    overlay: OverlayHandle,
    open: Arc<OpenReaders>,
}

impl StoreSource {
    pub(crate) fn new(overlay: OverlayHandle) -> Self {
        Self {
            overlay,
            open: Arc::new(Mutex::new(LruCache::new(OPEN_READERS))),
        }
    }
}

/// The open readers, locked (a panic elsewhere cannot leave them inconsistent).
fn locked(open: &OpenReaders) -> MutexGuard<'_, LruCache<Address, (Instant, ObjectReader)>> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Open readers by object, with when each was opened.
type OpenReaders = Mutex<LruCache<Address, (Instant, ObjectReader)>>;

impl svc_dht::Source for StoreSource {
    fn size(&self, addr: Address) -> BoxFuture<'static, Option<u64>> {
        let overlay = self.overlay.clone();
        async move { overlay.open(addr).await.ok().flatten().map(|r| r.size()) }.boxed()
    }

    fn encoded(
        &self,
        addr: Address,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>, String>> {
        let (overlay, open) = (self.overlay.clone(), self.open.clone());
        let cached = locked(&open)
            .get(&addr)
            .filter(|(at, _)| at.elapsed() < READER_REUSE)
            .map(|(_, reader)| reader.clone());
        async move {
            let reader = match cached {
                Some(reader) => reader,
                None => {
                    let Some(reader) = overlay.open(addr).await.map_err(|e| e.to_string())? else {
                        locked(&open).pop(&addr);
                        return Ok(None);
                    };
                    locked(&open).put(addr, (Instant::now(), reader.clone()));
                    reader
                }
            };
            match reader.encode_range(start, end).await {
                Ok(encoded) => Ok(Some((reader.size(), encoded))),
                Err(e) => {
                    // Looked up afresh next time (the object may have been removed).
                    locked(&open).pop(&addr);
                    Err(e.to_string())
                }
            }
        }
        .boxed()
    }
}

/// The gateway's view of the peer network.
#[derive(Debug)]
pub(crate) struct PeerNetwork {
    pub(crate) dht: DhtHandle,
    pub(crate) table: Arc<PeerTable>,
    pub(crate) overlay: OverlayHandle,
    pub(crate) config: Config,
    /// The fetches under way: a request for an object already being fetched joins its fetch.
    flights: Flights,
}

impl PeerNetwork {
    /// What bounds a fetch, read live: its deadline (`p2p.fetch_timeout_ms`), the largest
    /// object (`gateway.max_put_bytes`), the fetch cache's budget (`p2p.cache_bytes`).
    fn fetch_limits(&self) -> (Duration, u64, u64) {
        let p2p = self.config.get::<P2pSection>();
        (
            Duration::from_millis(p2p.fetch_timeout_ms),
            self.config.get::<GatewaySection>().max_put_bytes,
            p2p.cache_bytes,
        )
    }

    /// Joins the fetch of `addr` under way, or starts one in its own task (it goes on, and
    /// stores the copy, whoever leaves); the receiver of its verified bytes as they arrive
    /// when this request started it.
    fn join(
        &self,
        addr: Address,
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
        let (dht, overlay) = (self.dht.clone(), self.overlay.clone());
        let limits = self.fetch_limits();
        tokio::spawn(async move {
            fly(dht, overlay, addr, limits, &state, tee).await;
            drop(landing);
        });
        (flight, Some(bytes))
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
    FetchError::Unavailable("the fetch stopped".into())
}

/// One fetch, start to end, told to `state`: the lookup and size proof within the deadline,
/// then the transfer into the store, its verified bytes handed to `tee` while it listens.
async fn fly(
    dht: DhtHandle,
    overlay: OverlayHandle,
    addr: Address,
    (deadline, max, budget): (Duration, u64, u64),
    state: &watch::Sender<Flight>,
    tee: mpsc::Sender<Result<Bytes, String>>,
) {
    // A fetch that ended between a request's look in the store and its joining.
    if let Ok(Some(reader)) = overlay.open(addr).await {
        state.send_replace(Flight::Ended(Ok(reader.size())));
        return;
    }
    // The deadline covers finding the object and proving its size; the transfer then runs
    // while it makes progress (every range request has its own timeout).
    let ready = tokio::time::timeout(deadline, prepare(&dht, overlay, addr, max, budget))
        .await
        .unwrap_or(Err(FetchError::Timeout));
    let ready = match ready {
        Ok(ready) => ready,
        Err(e) => {
            dht.metrics().fetch_ended(outcome(Some(&e)));
            state.send_replace(Flight::Ended(Err(e)));
            return;
        }
    };
    let size = ready.probe.size;
    state.send_replace(Flight::Moving(size));
    let result = transfer(&dht, ready, tee).await;
    dht.metrics().fetch_ended(outcome(result.as_ref().err()));
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
    let reader = match overlay.open(addr).await {
        Ok(Some(reader)) => reader,
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
    while at < reader.size() {
        let piece = match reader.read_verified(at, at + REPLAY_WINDOW).await {
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

impl svc_gateway::Network for PeerNetwork {
    fn stored(&self, addr: Address) {
        let dht = self.dht.clone();
        tokio::spawn(async move {
            if let Err(e) = dht.provide(addr).await {
                tracing::warn!(%addr, error = %e, "cannot announce a stored object");
            }
        });
    }

    fn withdrawn(&self, addr: Address) {
        let dht = self.dht.clone();
        tokio::spawn(async move {
            let _ = dht.unprovide(addr).await;
        });
    }

    fn stream(&self, addr: Address) -> BoxFuture<'static, Result<Incoming, FetchError>> {
        let (mut flight, tee) = self.join(addr);
        let overlay = self.overlay.clone();
        async move {
            let state = match flight.wait_for(|f| !matches!(f, Flight::Finding)).await {
                Ok(state) => state.clone(),
                Err(_) => Flight::Ended(Err(stopped())),
            };
            let (ended, done) = tokio::sync::oneshot::channel();
            let (size, bytes, replay) = match (state, tee) {
                (Flight::Finding, _) => return Err(stopped()),
                (Flight::Ended(Err(e)), _) => return Err(e),
                // The fetch this request started: its bytes as they verify.
                (Flight::Moving(size), Some(tee)) => (size, tee, None),
                // Another request's fetch, or one already ended: the stored copy once it is
                // committed.
                (Flight::Moving(size) | Flight::Ended(Ok(size)), _) => {
                    let (tx, rx) = mpsc::channel(PIPELINE);
                    (size, rx, Some((overlay, tx)))
                }
            };
            tokio::spawn(async move {
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
            Ok(Incoming { size, bytes, done })
        }
        .boxed()
    }

    fn status(&self) -> BoxFuture<'static, Option<serde_json::Value>> {
        let (dht, table) = (self.dht.clone(), self.table.clone());
        async move {
            let mut status = serde_json::json!(dht.status().await.ok()?);
            let (known, seeds) = tokio::task::spawn_blocking(move || {
                let seeds = table
                    .seeds(8, svc_discovery::unix_now())
                    .unwrap_or_default();
                (table.len().unwrap_or(0), seeds)
            })
            .await
            .ok()?;
            status["known"] = known.into();
            status["seeds"] = seeds.into_iter().map(|(peer, _)| peer).collect();
            Some(status)
        }
        .boxed()
    }
}

/// The `outcome` label of `p2p_fetches_total`: `ok`, or the kind of `error`.
fn outcome(error: Option<&FetchError>) -> &'static str {
    match error {
        None => "ok",
        Some(FetchError::NotFound(_)) => "not_found",
        Some(FetchError::Timeout) => "timeout",
        Some(FetchError::Unavailable(_)) => "failed",
    }
}

/// A fetch with its providers found, the object's size proven and room made for it.
struct Ready {
    providers: Vec<svc_dht::PeerId>,
    probe: svc_dht::Probe,
    upload: svc_overlay::Upload,
}

/// The first half of a fetch: lookup, size proof, room in the cache, an upload started.
async fn prepare(
    dht: &DhtHandle,
    overlay: OverlayHandle,
    addr: Address,
    max: u64,
    budget: u64,
) -> Result<Ready, FetchError> {
    let providers = match dht.providers(addr).await {
        Ok(providers) => providers,
        Err(DhtError::Timeout) => return Err(FetchError::Timeout),
        Err(e) => return Err(FetchError::Unavailable(e.to_string())),
    };
    let me = dht.peer_id();
    let providers: Vec<_> = providers.into_iter().filter(|p| *p != me).collect();
    if providers.is_empty() {
        return Err(FetchError::NotFound(addr));
    }
    let probe = dht
        .probe(addr, &providers, max.min(budget))
        .await
        .map_err(|e| match e {
            DhtError::TooLarge { size, .. } if size > budget => FetchError::Unavailable(format!(
                "{addr} is {size} bytes, over the fetch cache's budget (p2p.cache_bytes = {budget})"
            )),
            e => FetchError::Unavailable(e.to_string()),
        })?;
    make_room(dht, &overlay, budget.saturating_sub(probe.size)).await;
    let options = PutOptions {
        media_type: None,
        expect: Some(addr),
        max_bytes: Some(max),
        unpinned: true,
        // Nothing reads the copy back now: its outboard comes from the transfer.
        around_cache: true,
    };
    let upload = overlay
        .writer(options)
        .map_err(|e| FetchError::Unavailable(e.to_string()))?;
    Ok(Ready {
        providers,
        probe,
        upload,
    })
}

/// The second half: the transfer into the store, each verified piece also handed to `tee`
/// while it listens (an `Err` there when the transfer fails); the commit; the announcement.
async fn transfer(
    dht: &DhtHandle,
    ready: Ready,
    tee: mpsc::Sender<Result<Bytes, String>>,
) -> Result<(), FetchError> {
    let Ready {
        providers,
        probe,
        mut upload,
    } = ready;
    let addr = probe.addr;
    let unavailable = |e: DhtError| FetchError::Unavailable(e.to_string());
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPELINE);
    let started = std::time::Instant::now();
    let transfer = dht.transfer(probe, &providers, tx);
    let writer = &mut upload.writer;
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
            if let Err(e) = writer.write(&bytes).await {
                return (Err(e.to_string()), tee);
            }
        }
        (Ok(()), tee)
    };
    let (transferred, (stored, tee)) = tokio::join!(transfer, store);
    let result = transferred
        .map_err(unavailable)
        .and_then(|t| stored.map(|()| t).map_err(FetchError::Unavailable));
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
    upload
        .writer
        .finish_with_outboard(std::mem::take(&mut transferred.outboard))
        .await
        .map_err(|e| FetchError::Unavailable(e.to_string()))?;
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
    if let Err(e) = dht.provide(addr).await {
        tracing::warn!(%addr, error = %e, "cannot announce a fetched object");
    }
    Ok(())
}

/// Evicts unpinned objects, oldest first, until they take at most `budget` bytes, and stops
/// announcing them.
async fn make_room(dht: &DhtHandle, overlay: &OverlayHandle, budget: u64) {
    match overlay.evict(budget).await {
        Ok((report, removed)) => {
            if !removed.is_empty() {
                tracing::info!(
                    objects = report.objects,
                    bytes = report.bytes,
                    "evicted cached objects"
                );
            }
            for addr in removed {
                let _ = dht.unprovide(addr).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot evict cached objects"),
    }
}

/// Announces every object the store holds, once, at start (provider records live in other
/// nodes' memory for libp2p's TTL and are republished only by a provider that remembers
/// providing them: a restarted node must say it again).
pub(crate) fn announce_all(dht: DhtHandle, overlay: OverlayHandle) {
    tokio::spawn(async move {
        let store = overlay.store().clone();
        let held = match tokio::task::spawn_blocking(move || store.addresses()).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => return tracing::warn!(error = %e, "cannot list stored objects"),
            Err(e) => return tracing::warn!(error = %e, "cannot list stored objects"),
        };
        let n = held.len();
        for addr in held {
            // The actor's bounded mailbox paces this.
            if dht.provide(addr).await.is_err() {
                return;
            }
        }
        tracing::info!(objects = n, "announced stored objects to the peer network");
    });
}

/// Keeps the unpinned objects within `p2p.cache_bytes`, checked every
/// `storage.gc_interval_s` (the fetch path makes room before each fetch as well).
pub(crate) async fn keep_cache(dht: &DhtHandle, overlay: &OverlayHandle, config: &Config) {
    make_room(dht, overlay, config.get::<P2pSection>().cache_bytes).await;
}

/// `discovery_known_peers` in `/metrics`, kept from discovery's `PeersUpdated`.
pub(crate) fn count_known(
    metrics: &ron_kernel::Metrics,
    table: &PeerTable,
    mut updates: tokio::sync::broadcast::Receiver<svc_discovery::PeersUpdated>,
) {
    let known: prometheus_client::metrics::gauge::Gauge = metrics.register(
        "discovery_known_peers",
        "Peers in the node's peer table",
        Default::default(),
    );
    known.set(i64::try_from(table.len().unwrap_or(0)).unwrap_or(i64::MAX));
    tokio::spawn(async move {
        loop {
            match updates.recv().await {
                Ok(update) => {
                    known.set(i64::try_from(update.known).unwrap_or(i64::MAX));
                    tracing::debug!(
                        known = update.known,
                        seen = update.seen.len(),
                        dropped = update.dropped.len(),
                        "peers updated"
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Shared so the gateway holds it as a trait object.
pub(crate) fn network(
    dht: DhtHandle,
    table: Arc<PeerTable>,
    overlay: OverlayHandle,
    config: Config,
) -> Arc<dyn svc_gateway::Network> {
    Arc::new(PeerNetwork {
        dht,
        table,
        overlay,
        config,
        flights: Flights::default(),
    })
}
