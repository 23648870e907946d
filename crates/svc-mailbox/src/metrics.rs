//! What the mailbox shows in `/metrics`: counters kept as atomics, queue depths read at scrape
//! time, refusals by a reason from a closed set.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::queue::Queues;

/// The reasons a send is refused (the `reason` label's closed set).
pub(crate) const REASONS: [&str; 8] = [
    "invalid_envelope",
    "too_large",
    "no_mailbox",
    "unknown_recipient",
    "mailbox_full",
    "rate_limited",
    "outbox_full",
    "bad_mail_proof",
];

/// The mailbox's counters.
#[derive(Debug, Default)]
pub struct MailMetrics {
    /// Envelopes accepted into a queue here.
    pub(crate) stored: AtomicU64,
    /// Envelopes delivered from this node to another's mailbox (at once or from the outbox).
    pub(crate) forwarded: AtomicU64,
    /// Envelopes put in the outbox.
    pub(crate) outboxed: AtomicU64,
    /// Messages handed out by fetches (a message fetched again counts again).
    pub(crate) delivered: AtomicU64,
    /// Messages acknowledged.
    pub(crate) acked: AtomicU64,
    /// Messages removed past retention, unacknowledged.
    pub(crate) expired: AtomicU64,
    /// Outbox entries given up past retention.
    pub(crate) given_up: AtomicU64,
    /// Commits made and changes they carried (group commit: changes / commits).
    pub(crate) commits: AtomicU64,
    pub(crate) changes: AtomicU64,
    /// Refusals by reason, in [`REASONS`] order.
    pub(crate) refused: [AtomicU64; REASONS.len()],
}

impl MailMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn refuse(&self, code: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == code) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub(crate) struct MailCollector {
    pub(crate) metrics: Arc<MailMetrics>,
    pub(crate) queues: Arc<Queues>,
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: &AtomicU64,
) -> std::fmt::Result {
    let c = ConstCounter::new(v.load(Ordering::Relaxed));
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for MailCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (m, q) = (&self.metrics, &self.queues);
        gauge(
            &mut e,
            "mail_queue_depth",
            "Messages queued in the mailboxes kept here",
            q.depth(),
        )?;
        gauge(
            &mut e,
            "mail_outbox_depth",
            "Envelopes waiting to be forwarded",
            q.outbox_len() as u64,
        )?;
        gauge(
            &mut e,
            "mail_mailboxes",
            "Mailboxes kept here",
            q.mailboxes() as u64,
        )?;
        counter(
            &mut e,
            "mail_sends",
            "Envelopes accepted into a mailbox here",
            &m.stored,
        )?;
        counter(
            &mut e,
            "mail_forwarded",
            "Envelopes delivered to another node's mailbox",
            &m.forwarded,
        )?;
        counter(
            &mut e,
            "mail_outboxed",
            "Envelopes put in the outbox",
            &m.outboxed,
        )?;
        counter(
            &mut e,
            "mail_deliveries",
            "Messages handed out by fetches",
            &m.delivered,
        )?;
        counter(&mut e, "mail_acks", "Messages acknowledged", &m.acked)?;
        counter(
            &mut e,
            "mail_expired",
            "Unacknowledged messages removed past retention",
            &m.expired,
        )?;
        counter(
            &mut e,
            "mail_outbox_given_up",
            "Outbox entries given up past retention",
            &m.given_up,
        )?;
        counter(
            &mut e,
            "mail_commits",
            "Fsynced commits of the mailbox store",
            &m.commits,
        )?;
        counter(
            &mut e,
            "mail_commit_changes",
            "Changes carried by those commits",
            &m.changes,
        )?;
        let refused = ConstCounter::new(0u64);
        let mut family = e.encode_descriptor(
            "mail_refused",
            "Sends refused, by reason",
            None,
            refused.metric_type(),
        )?;
        for (reason, n) in REASONS.iter().zip(&m.refused) {
            let c = ConstCounter::new(n.load(Ordering::Relaxed));
            let labels = [("reason", *reason)];
            c.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
