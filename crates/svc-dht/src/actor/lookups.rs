//! Provider lookups and announcements: Kademlia queries, hedged at the running p95 with
//! direct questions to other peers, their answers merged; announcements paced. When to
//! hedge, whom to ask and when a lookup has its answer are `crate::hedge`'s, as plain code.

use super::*;
use crate::hedge::{ALPHA, Step, hedge_targets};

impl Actor {
    /// Queues `key` for announcement; at most [`ANNOUNCING`] run at once.
    pub(super) fn provide(&mut self, key: RecordKey) {
        if self.queued.insert(key.clone()) {
            self.announce.push_back(key);
        }
        self.pump();
    }

    pub(super) fn pump(&mut self) {
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

    /// The lookup has not answered by the p95: ask up to [`HEDGE_PEERS`] connected peers
    /// other than the [`ALPHA`] closest to the key (whom the query asked first) for the
    /// provider records they hold.
    pub(super) fn hedge(&mut self, id: u64) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        if let Some((found, _)) = &lookup.whole {
            // A lookup of every provider is not hedged; its time is up: it answers with
            // what it found, if anything (a query on a loaded network can run for a minute,
            // and whoever counts holders counts again at its next pass).
            let providers = found.iter().copied().collect();
            self.answer(id, Ok(providers));
            return;
        }
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
        let ask = hedge_targets(&connected, &closest);
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
                .send_request(&peer, request.into());
            self.by_hedge.insert(req, id);
            if let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.parts.hedged(1);
            }
        }
    }

    /// One part of lookup `id` ended: with providers (the lookup answers), or without.
    pub(super) fn lookup_part(
        &mut self,
        id: u64,
        found: Result<HashSet<PeerId>, DhtError>,
        hedge: bool,
    ) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        if let Step::Answer(result) = lookup.parts.end(found, !hedge, me) {
            if hedge && result.as_ref().is_ok_and(|p| !p.is_empty()) {
                self.metrics.hedge_wins.inc();
            }
            self.answer(id, result);
        }
    }

    pub(super) fn answer(&mut self, id: u64, result: Result<Vec<PeerId>, DhtError>) {
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
        self.latencies.record(elapsed);
        let hedged = lookup.hedged;
        let _ = lookup.reply.send(result.map(|providers| Found {
            providers,
            asked,
            elapsed,
            hedged,
        }));
    }

    pub(super) fn query_progressed(
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
                let me = *self.swarm.local_peer_id();
                if let Some(lookup) = self.lookups.get_mut(&id)
                    && let Some((all, first)) = &mut lookup.whole
                {
                    if let Ok(providers) = &found {
                        all.extend(providers.iter().filter(|p| **p != me));
                    }
                    if first.is_none() && !all.is_empty() {
                        *first = Some(Instant::now());
                    }
                    if last {
                        let result = match found {
                            Err(e) if all.is_empty() => Err(e),
                            _ => Ok(all.iter().copied().collect()),
                        };
                        self.answer(id, result);
                    }
                    return;
                }
                let found_some = found.as_ref().is_ok_and(|p| !p.is_empty());
                if found_some || last {
                    self.lookup_part(id, found, false);
                }
            }
            QueryResult::GetRecord(result) => self.record_found(query, result, last),
            QueryResult::PutRecord(result) if last => self.record_put(query, result, reached),
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

    /// Answers the lookups of every provider whose first finds are [`WHOLE_SETTLE`] old.
    pub(super) fn settle_whole(&mut self) {
        let due: Vec<(u64, Vec<PeerId>)> = self
            .lookups
            .iter()
            .filter_map(|(id, lookup)| {
                let (found, first) = lookup.whole.as_ref()?;
                first
                    .is_some_and(|at| at.elapsed() >= WHOLE_SETTLE)
                    .then(|| (*id, found.iter().copied().collect()))
            })
            .collect();
        for (id, providers) in due {
            self.answer(id, Ok(providers));
        }
    }

    /// Learns the providers (and their addresses) a hedge question named.
    pub(super) fn hedge_answer(&mut self, response: TransferReply) -> HashSet<PeerId> {
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
}
