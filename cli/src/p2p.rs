//! The node's peer network: the `svc-dht` actor under the supervisor, the store as the source
//! peers read from, and the gateway's [`svc_gateway::Network`] over both.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use ron_kernel::Config;
use ron_proto::Address;
use svc_dht::{DhtError, DhtHandle, P2pSection};
use svc_gateway::{FetchError, GatewaySection};
use svc_overlay::OverlayHandle;
use svc_storage::PutOptions;
use tokio::sync::mpsc;

/// Ranges queued between the transfer and the store.
const PIPELINE: usize = 4;

/// Peers read objects through the overlay, verified as for any reader.
pub(crate) struct StoreSource(pub(crate) OverlayHandle);

impl svc_dht::Source for StoreSource {
    fn size(&self, addr: Address) -> BoxFuture<'static, Option<u64>> {
        let overlay = self.0.clone();
        async move { overlay.open(addr).await.ok().flatten().map(|r| r.size()) }.boxed()
    }

    fn read(
        &self,
        addr: Address,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>, String>> {
        let overlay = self.0.clone();
        async move {
            let Some(reader) = overlay.open(addr).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let size = reader.size();
            let end = end.min(size);
            if start >= end {
                return Err(format!("range {start}..{end} outside {size} bytes"));
            }
            let bytes = reader
                .read_verified(start, end)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some((size, bytes)))
        }
        .boxed()
    }
}

/// The gateway's view of the peer network.
#[derive(Debug)]
pub(crate) struct PeerNetwork {
    pub(crate) dht: DhtHandle,
    pub(crate) overlay: OverlayHandle,
    pub(crate) config: Config,
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

    fn fetch(&self, addr: Address) -> BoxFuture<'static, Result<(), FetchError>> {
        let (dht, overlay) = (self.dht.clone(), self.overlay.clone());
        let deadline = Duration::from_millis(self.config.get::<P2pSection>().fetch_timeout_ms);
        let max = self.config.get::<GatewaySection>().max_put_bytes;
        async move {
            match tokio::time::timeout(deadline, fetch(dht, overlay, addr, max)).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout),
            }
        }
        .boxed()
    }

    fn status(&self) -> BoxFuture<'static, Option<serde_json::Value>> {
        let dht = self.dht.clone();
        async move { dht.status().await.ok().map(|s| serde_json::json!(s)) }.boxed()
    }
}

/// Looks `addr` up and fetches it from its providers in turn, into the store (unpinned, its
/// address checked before anything is committed); announces the copy once stored.
async fn fetch(
    dht: DhtHandle,
    overlay: OverlayHandle,
    addr: Address,
    max: u64,
) -> Result<(), FetchError> {
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
    let mut failures = Vec::new();
    for peer in providers {
        match fetch_from(&dht, &overlay, peer, addr, max).await {
            Ok(size) => {
                tracing::info!(%addr, %peer, size, "fetched from a peer");
                if let Err(e) = dht.provide(addr).await {
                    tracing::warn!(%addr, error = %e, "cannot announce a fetched object");
                }
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%addr, %peer, error = %e, "fetch from a peer failed");
                failures.push(format!("{peer}: {e}"));
            }
        }
    }
    Err(FetchError::Unavailable(format!(
        "no provider delivered {addr} ({})",
        failures.join("; ")
    )))
}

async fn fetch_from(
    dht: &DhtHandle,
    overlay: &OverlayHandle,
    peer: svc_dht::PeerId,
    addr: Address,
    max: u64,
) -> Result<u64, String> {
    let options = PutOptions {
        media_type: None,
        expect: Some(addr),
        max_bytes: Some(max),
        unpinned: true,
    };
    let mut upload = overlay.writer(options).map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPELINE);
    let transfer = dht.fetch_to(peer, addr, max, move |bytes| {
        let tx = tx.clone();
        async move {
            tx.send(bytes)
                .await
                .map_err(|_| "the store stopped".to_owned())
        }
    });
    let writer = &mut upload.writer;
    let store = async move {
        while let Some(bytes) = rx.recv().await {
            writer.write(&bytes).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let (fetched, stored) = tokio::join!(transfer, store);
    let size = fetched.map_err(|e| e.to_string())?;
    stored?;
    // The store checks the address again before anything becomes visible.
    upload.writer.finish().await.map_err(|e| e.to_string())?;
    Ok(size)
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

/// Shared so the gateway holds it as a trait object.
pub(crate) fn network(
    dht: DhtHandle,
    overlay: OverlayHandle,
    config: Config,
) -> Arc<dyn svc_gateway::Network> {
    Arc::new(PeerNetwork {
        dht,
        overlay,
        config,
    })
}
