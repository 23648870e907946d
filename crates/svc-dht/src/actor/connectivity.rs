//! Staying connected: relay reservations, dialling the bootstrap and known peers, redialling
//! with backoff while alone, and the addresses the routing table knows.

use super::*;

impl Actor {
    /// Asks for a reservation on `relay`; tried again after [`RELISTEN`] if it ends.
    pub(super) fn listen_through(&mut self, relay: Multiaddr) {
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
    pub(super) fn dial_known(&mut self) {
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

    pub(super) fn redial(&mut self) {
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

    pub(super) fn connected(&mut self) {
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

    pub(super) fn disconnected(&mut self) {
        if self.isolated || self.swarm.connected_peers().next().is_some() {
            return;
        }
        tracing::warn!("lost every peer: redialling");
        self.isolated = true;
        self.backoff = REDIAL_FIRST;
        self.redial_at = Some(Instant::now() + self.backoff);
    }

    /// The addresses the routing table holds for `peer`.
    pub(super) fn routing_addresses(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(peer) else {
            return Vec::new();
        };
        bucket
            .iter()
            .find(|e| *e.node.key.preimage() == peer)
            .map(|e| e.node.value.iter().cloned().collect())
            .unwrap_or_default()
    }
}
