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

/// What peers read and keep on this node: the overlay's objects and blobs, and mail for the
/// mailboxes kept here (`keep` with role `mail`), which goes to the mailbox service.
pub(crate) struct NodeSource {
    pub(crate) overlay: Arc<dyn svc_dht::Source>,
    pub(crate) mail: svc_mailbox::Mailbox,
}

impl svc_dht::Source for NodeSource {
    fn size(
        &self,
        addr: ron_proto::Address,
    ) -> futures_util::future::BoxFuture<'static, Option<u64>> {
        self.overlay.size(addr)
    }

    fn encoded(
        &self,
        addr: ron_proto::Address,
        start: u64,
        end: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<(u64, bytes::Bytes)>, String>> {
        self.overlay.encoded(addr, start, end)
    }

    fn keep(
        &self,
        peer: svc_dht::PeerId,
        keep: svc_dht::Keep,
    ) -> futures_util::future::BoxFuture<'static, Result<u32, (ron_proto::ErrorKind, String)>> {
        if keep.role == svc_dht::Role::Mail {
            let mail = self.mail.clone();
            return async move { mail.accept_from_peer(peer.to_string(), keep).await }.boxed();
        }
        self.overlay.keep(peer, keep)
    }

    fn hold(
        &self,
        addrs: Vec<ron_proto::Address>,
        lease_s: u32,
    ) -> futures_util::future::BoxFuture<'static, (Vec<bool>, u32)> {
        self.overlay.hold(addrs, lease_s)
    }
}

/// What the node stores, for the usage service's storage tally.
pub(crate) struct NodeStored(pub(crate) svc_storage::Store);

impl svc_accounting::rollup::Stored for NodeStored {
    fn stored(&self, addrs: &[ron_proto::Address]) -> Vec<bool> {
        self.0.held_now(addrs)
    }
}

/// How this node settles ranges with its peers: the payment service's peer accounts and
/// cheques ([`svc_payment::Payment::peer_cheque`], [`svc_payment::Payment::cash`]).
pub(crate) struct NodeSettle {
    pub(crate) payment: svc_payment::Payment,
}

impl svc_dht::Settle for NodeSettle {
    fn may_serve(&self, peer: &svc_dht::PeerId) -> Result<(), u64> {
        self.payment.peer_may_take(peer)
    }

    fn served(&self, peer: &svc_dht::PeerId, bytes: u64) {
        self.payment.peer_served(peer, bytes);
    }

    fn received(&self, peer: &svc_dht::PeerId, bytes: u64) -> bool {
        self.payment.peer_received(peer, bytes)
    }

    fn cheque(
        &self,
        peer: svc_dht::PeerId,
    ) -> futures_util::future::BoxFuture<'static, Option<ron_proto::oap::settle::Cheque>> {
        let payment = self.payment.clone();
        async move {
            match payment.peer_cheque(&peer).await {
                Ok(cheque) => cheque,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot write a cheque to a peer");
                    None
                }
            }
        }
        .boxed()
    }

    fn answered(
        &self,
        peer: svc_dht::PeerId,
        reply: &Result<svc_dht::TransferReply, svc_dht::DhtError>,
    ) {
        match reply {
            Ok(svc_dht::TransferReply::Cashed(cashed)) => {
                tracing::debug!(%peer, cumulative = cashed.cumulative, credited = cashed.credited, "a peer cashed a cheque");
            }
            Ok(svc_dht::TransferReply::ChequeRefused { body, .. }) => {
                tracing::warn!(%peer, reason = %body.message, "a peer refused this node's cheque");
            }
            Ok(_) => tracing::warn!(%peer, "a peer answered a cheque with something else"),
            // Written already: the next cheque carries it (cheques are cumulative).
            Err(e) => tracing::debug!(%peer, error = %e, "a cheque did not reach its peer"),
        }
        self.payment.peer_answered(&peer);
    }

    fn cash(
        &self,
        peer: svc_dht::PeerId,
        cheque: ron_proto::oap::settle::Cheque,
    ) -> futures_util::future::BoxFuture<'static, svc_dht::TransferReply> {
        let payment = self.payment.clone();
        async move {
            match payment.cash(&peer, &cheque).await {
                Ok(cashed) => svc_dht::TransferReply::Cashed(cashed),
                Err(e) => {
                    let (kind, message) = <(ron_proto::ErrorKind, String)>::from(&e);
                    tracing::warn!(%peer, reason = %message, "refused a peer's cheque");
                    svc_dht::TransferReply::ChequeRefused {
                        kind,
                        body: ron_proto::ErrorBody::new(kind, message),
                    }
                }
            }
        }
        .boxed()
    }
}

/// The records this node keeps for peers: names and layout pointers
/// ([`svc_index::NamePolicy`]), and mail records (valid, never older than held).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeRecords;

impl svc_dht::RecordPolicy for NodeRecords {
    fn accept(&self, key: &[u8], value: &[u8], current: Option<&[u8]>) -> bool {
        svc_index::NamePolicy.accept(key, value, current)
            || svc_mailbox::record::MailRecord::acceptable(key, value, current)
    }
}
