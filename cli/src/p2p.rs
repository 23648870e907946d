//! The node's peer-network wiring: the known-peers gauge and the peer network's part of
//! `/status` (the swarm's addresses and peers, and the peer table's). Fetching, caching and
//! announcing objects are the overlay's.

use std::sync::Arc;

use futures_util::FutureExt;
use svc_dht::DhtHandle;
use svc_discovery::PeerTable;

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

/// The peer network's part of `/status`: the swarm's state and the peer table's size and seeds.
pub(crate) fn status(dht: DhtHandle, table: Arc<PeerTable>) -> svc_gateway::PeerStatus {
    svc_gateway::PeerStatus(Arc::new(move || {
        let (dht, table) = (dht.clone(), table.clone());
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
    }))
}
