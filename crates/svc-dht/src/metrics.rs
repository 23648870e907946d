//! What the peer network counts: bytes fetched, peers' faults, lookups and their hedges.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Label naming what a peer did wrong.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FaultLabel {
    /// `lie` (bytes that fail verification or break the protocol), `dead` (no answer or
    /// connection lost), `missing` (does not hold what it provides), `busy` (refused for load).
    pub(crate) fault: &'static str,
}

/// Label naming how a fetch ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    /// `ok`, `not_found`, `timeout`, `failed`.
    pub(crate) outcome: &'static str,
}

/// The peer network's metrics. Cheap to clone: clones count into the same series.
#[derive(Clone, Debug)]
pub struct DhtMetrics {
    pub(crate) fetched_bytes: Counter,
    pub(crate) faults: Family<FaultLabel, Counter>,
    pub(crate) fetches: Family<OutcomeLabel, Counter>,
    pub(crate) lookup_seconds: Histogram,
    pub(crate) hedges: Counter,
    pub(crate) hedge_wins: Counter,
    pub(crate) holepunch: Family<OutcomeLabel, Counter>,
    pub(crate) announcements: Family<OutcomeLabel, Counter>,
    pub(crate) records: Family<OutcomeLabel, Counter>,
}

impl Default for DhtMetrics {
    fn default() -> Self {
        Self {
            fetched_bytes: Counter::default(),
            faults: Family::default(),
            fetches: Family::default(),
            // 1 ms .. ~33 s
            lookup_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            hedges: Counter::default(),
            hedge_wins: Counter::default(),
            holepunch: Family::default(),
            announcements: Family::default(),
            records: Family::default(),
        }
    }
}

impl DhtMetrics {
    /// Adds these series to the node's registry.
    pub fn register(&self, metrics: &ron_kernel::Metrics) {
        metrics.register(
            "p2p_fetched_bytes",
            "Object bytes fetched from peers, each verified against its address",
            self.fetched_bytes.clone(),
        );
        metrics.register(
            "p2p_peer_faults",
            "Transfer requests a peer failed, by fault",
            self.faults.clone(),
        );
        metrics.register(
            "p2p_fetches",
            "Fetches of objects from peers, by outcome",
            self.fetches.clone(),
        );
        metrics.register(
            "p2p_lookup_seconds",
            "Provider lookups: time to the first answer",
            self.lookup_seconds.clone(),
        );
        metrics.register(
            "p2p_lookup_hedges",
            "Provider lookups that started a second, hedged lookup",
            self.hedges.clone(),
        );
        metrics.register(
            "p2p_lookup_hedge_wins",
            "Hedged lookups whose direct questions answered first",
            self.hedge_wins.clone(),
        );
        metrics.register(
            "p2p_holepunch",
            "Attempts to replace a relayed connection by a direct one, by outcome",
            self.holepunch.clone(),
        );
        metrics.register(
            "p2p_announcements",
            "Announcements of this node as a provider of an object, by outcome (ok: sent to \
             the closest peers; alone: no peer to send them to; failed: timed out)",
            self.announcements.clone(),
        );
        metrics.register(
            "p2p_records",
            "Records (signed names) peers asked this node to keep, by outcome (stored, or \
             refused: forged, stale or malformed)",
            self.records.clone(),
        );
    }

    /// Lookups that started a hedge, and those the hedge answered first.
    pub fn hedges(&self) -> (u64, u64) {
        (self.hedges.get(), self.hedge_wins.get())
    }

    /// Announcements of this node as a provider that were sent to peers.
    pub fn announced(&self) -> u64 {
        self.announcements
            .get_or_create(&OutcomeLabel { outcome: "ok" })
            .get()
    }

    /// Counts one fetch's outcome.
    pub fn fetch_ended(&self, outcome: &'static str) {
        self.fetches.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn announcement(&self, outcome: &'static str) {
        self.announcements
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub(crate) fn record(&self, outcome: &'static str) {
        self.records.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn holepunch(&self, outcome: &'static str) {
        self.holepunch
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub(crate) fn fault(&self, fault: &'static str) {
        self.faults.get_or_create(&FaultLabel { fault }).inc();
    }
}
