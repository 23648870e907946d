//! What payment shows in `/metrics`: counters, registered once per node.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use ron_kernel::Metrics;

/// Payment's counters.
#[derive(Debug, Clone, Default)]
pub struct PaymentMetrics {
    /// Transfers applied (charges, grants, reservations and their resolutions).
    pub(crate) transfers: Counter,
    /// Credits charged for requests.
    pub(crate) charged: Counter,
    /// Requests refused with 402 for lack of credits.
    pub(crate) refused: Counter,
    /// Charges admitted ahead of the ledger that it then refused (served unpaid; only with
    /// `durable_charges = false`, when credits were spent elsewhere at the same moment).
    pub(crate) unpaid: Counter,
    /// Ledger commits (transfers per commit: the group commit).
    pub(crate) commits: Counter,
    /// Proof-of-work challenges handed out.
    pub(crate) pow_challenges: Counter,
    /// Proof-of-work answers accepted.
    pub(crate) pow_accepted: Counter,
    /// Proof-of-work answers refused (forged, expired, short, replayed).
    pub(crate) pow_refused: Counter,
    /// The difficulty of the last challenge, in bits.
    pub(crate) pow_bits: Gauge,
    /// Cheques written to peers.
    pub(crate) cheques_sent: Counter,
    /// Cheques from peers kept and credited.
    pub(crate) cheques_cashed: Counter,
    /// Cheques from peers refused as forged (not for this node, not the sender's, a bad
    /// signature).
    pub(crate) cheques_forged: Counter,
    /// Cheques from peers refused as replayed or not above the one held.
    pub(crate) cheques_stale: Counter,
    /// Ranges refused to peers over their debt limit.
    pub(crate) peer_refused: Counter,
}

impl PaymentMetrics {
    /// Adds the series to the node's metrics.
    pub fn register(&self, metrics: &Metrics) {
        let m = self.clone();
        metrics.register("payment_transfers", "Ledger transfers applied", m.transfers);
        metrics.register(
            "payment_charged_credits",
            "Credits charged for requests",
            m.charged,
        );
        metrics.register(
            "payment_refused",
            "Requests refused with 402 for lack of credits",
            m.refused,
        );
        metrics.register("payment_commits", "Ledger commits", m.commits);
        metrics.register(
            "payment_unpaid",
            "Charges admitted ahead of the ledger that it refused (durable_charges = false)",
            m.unpaid,
        );
        metrics.register(
            "pow_challenges",
            "Proof-of-work challenges handed out",
            m.pow_challenges,
        );
        metrics.register(
            "pow_accepted",
            "Proof-of-work answers accepted",
            m.pow_accepted,
        );
        metrics.register(
            "pow_refused",
            "Proof-of-work answers refused (forged, expired, short, replayed)",
            m.pow_refused,
        );
        metrics.register(
            "payment_cheques_sent",
            "Cheques written to peers",
            m.cheques_sent,
        );
        metrics.register(
            "payment_cheques_cashed",
            "Cheques from peers kept and credited",
            m.cheques_cashed,
        );
        metrics.register(
            "payment_cheques_forged",
            "Cheques from peers refused as forged (another node's, not the sender's, a bad signature)",
            m.cheques_forged,
        );
        metrics.register(
            "payment_cheques_stale",
            "Cheques from peers refused as replayed or not above the one held",
            m.cheques_stale,
        );
        metrics.register(
            "payment_peer_refused",
            "Ranges refused to peers owing their debt limit",
            m.peer_refused,
        );
        metrics.register(
            "pow_bits",
            "The difficulty of the last proof-of-work challenge",
            m.pow_bits,
        );
    }
}
