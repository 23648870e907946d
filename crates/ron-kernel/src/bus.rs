//! The kernel bus: a bounded, lossy broadcast of [`KernelEvent`]s.
//!
//! Publishing never blocks. A subscriber that falls more than `capacity` events behind loses
//! the oldest ones; the loss is counted (`bus_lagged_total` occasions,
//! `bus_overflow_dropped_total` events) and announced by a throttled
//! `ServiceCrashed { service: "bus-overflow" }`. The announcement travels on the same ring, so
//! a subscriber that is still behind loses one more event to it (counted as another lag).

mod stats;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

use crate::{KernelEvent, Metrics};
use stats::{BusStats, SubscriberGuard};

/// The service name of the event announcing lost events.
pub const OVERFLOW_SERVICE: &str = "bus-overflow";
/// Default capacity: events a subscriber may fall behind before it loses some.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A cheap-to-clone handle on the kernel bus.
#[derive(Clone, Debug)]
pub struct Bus {
    tx: broadcast::Sender<KernelEvent>,
    stats: Arc<BusStats>,
    epoch: Instant,
}

impl Bus {
    /// A bus on which a subscriber may fall `capacity` events behind (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            stats: Arc::new(BusStats::new()),
            epoch: Instant::now(),
        }
    }

    /// Publishes `event` to every current subscriber without blocking; returns how many
    /// subscribers will see it (0 is not an error).
    pub fn publish(&self, event: KernelEvent) -> usize {
        self.tx.send(event).unwrap_or(0)
    }

    /// A new subscriber, seeing events published from now on.
    pub fn subscribe(&self) -> Subscriber {
        Subscriber {
            rx: self.tx.subscribe(),
            // Weak, so that subscribers alone do not keep the bus open.
            tx: self.tx.downgrade(),
            stats: self.stats.clone(),
            epoch: self.epoch,
            _guard: SubscriberGuard::new(self.stats.clone()),
        }
    }

    /// Current number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.stats.subscribers()
    }

    /// Times a subscriber found it had fallen behind.
    pub fn lagged_total(&self) -> u64 {
        self.stats.lagged()
    }

    /// Events lost by lagging subscribers.
    pub fn dropped_total(&self) -> u64 {
        self.stats.dropped()
    }

    /// Exposes the bus counters in `metrics` (read at scrape time, so publishing costs nothing
    /// extra).
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register_collector(Box::new(BusCollector {
            stats: self.stats.clone(),
        }));
    }
}

/// One subscriber's view of the bus.
#[derive(Debug)]
pub struct Subscriber {
    rx: broadcast::Receiver<KernelEvent>,
    tx: broadcast::WeakSender<KernelEvent>,
    stats: Arc<BusStats>,
    epoch: Instant,
    _guard: SubscriberGuard,
}

impl Subscriber {
    /// The next event, or `None` once every [`Bus`] handle is gone. Events lost because this
    /// subscriber fell behind are counted and skipped.
    ///
    /// # Cancel safety
    /// Cancel safe: an event is only taken when this resolves.
    pub async fn recv(&mut self) -> Option<KernelEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(RecvError::Lagged(n)) => self.on_lag(n),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<KernelEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::Lagged(n)) => self.on_lag(n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }

    fn on_lag(&self, dropped: u64) {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if self.stats.record_lag(dropped, now_ms) {
            tracing::warn!(dropped, "bus subscriber fell behind; events dropped");
            if let Some(tx) = self.tx.upgrade() {
                let _ = tx.send(KernelEvent::ServiceCrashed {
                    service: OVERFLOW_SERVICE.to_owned(),
                    reason: format!("a subscriber fell behind and lost {dropped} events"),
                });
            }
        }
    }
}

#[derive(Debug)]
struct BusCollector {
    stats: Arc<BusStats>,
}

impl Collector for BusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let lagged = ConstCounter::new(self.stats.lagged());
        lagged.encode(encoder.encode_descriptor(
            "bus_lagged",
            "Times a bus subscriber found it had fallen behind",
            None,
            lagged.metric_type(),
        )?)?;
        let dropped = ConstCounter::new(self.stats.dropped());
        dropped.encode(encoder.encode_descriptor(
            "bus_overflow_dropped",
            "Bus events lost by subscribers that fell behind",
            None,
            dropped.metric_type(),
        )?)?;
        let subs = ConstGauge::new(i64::try_from(self.stats.subscribers()).unwrap_or(i64::MAX));
        subs.encode(encoder.encode_descriptor(
            "bus_subscribers",
            "Current bus subscribers",
            None,
            subs.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(all(test, not(ron_loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_every_event() {
        let bus = Bus::new(8);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        assert_eq!(bus.publish(KernelEvent::Shutdown), 2);
        assert_eq!(a.recv().await, Some(KernelEvent::Shutdown));
        assert_eq!(b.recv().await, Some(KernelEvent::Shutdown));
        assert_eq!(bus.subscribers(), 2);
        drop(a);
        assert_eq!(bus.subscribers(), 1);
    }

    #[test]
    fn publishing_without_subscribers_is_fine() {
        let bus = Bus::new(4);
        for v in 0..100 {
            assert_eq!(bus.publish(KernelEvent::ConfigUpdated { version: v }), 0);
        }
    }

    /// Drains what is waiting; returns (events, overflow announcements among them).
    fn drain(sub: &mut Subscriber) -> (Vec<KernelEvent>, usize) {
        let events: Vec<_> = std::iter::from_fn(|| sub.try_recv()).collect();
        let announced = events
            .iter()
            .filter(|e| matches!(e, KernelEvent::ServiceCrashed { service, .. } if service == OVERFLOW_SERVICE))
            .count();
        (events, announced)
    }

    #[tokio::test(start_paused = true)]
    async fn lag_is_counted_and_announced_once_per_throttle_window() {
        let bus = Bus::new(4);
        let mut slow = bus.subscribe();
        for v in 0..10 {
            bus.publish(KernelEvent::ConfigUpdated { version: v });
        }
        // 10 published into a ring of 4: 0..=5 are lost. The announcement then goes into the
        // full ring too and displaces 6, which counts as a second (unannounced) lag.
        assert_eq!(
            slow.recv().await,
            Some(KernelEvent::ConfigUpdated { version: 7 })
        );
        assert_eq!((bus.lagged_total(), bus.dropped_total()), (2, 7));
        let (rest, announced) = drain(&mut slow);
        assert_eq!(rest.len(), 3, "{rest:?}");
        assert_eq!(announced, 1);

        // A lag within the throttle window is counted but not announced.
        for v in 0..10 {
            bus.publish(KernelEvent::ConfigUpdated { version: v });
        }
        assert_eq!(
            slow.recv().await,
            Some(KernelEvent::ConfigUpdated { version: 6 })
        );
        assert_eq!((bus.lagged_total(), bus.dropped_total()), (3, 13));
        assert_eq!(drain(&mut slow).1, 0);

        // After the window it is announced again.
        tokio::time::advance(std::time::Duration::from_millis(stats::THROTTLE_MS + 1)).await;
        for v in 0..10 {
            bus.publish(KernelEvent::ConfigUpdated { version: v });
        }
        let _ = slow.recv().await;
        assert_eq!(drain(&mut slow).1, 1);
        assert_eq!((bus.lagged_total(), bus.dropped_total()), (5, 20));
    }

    #[tokio::test]
    async fn recv_ends_when_the_bus_is_gone() {
        let bus = Bus::new(4);
        let mut sub = bus.subscribe();
        drop(bus);
        assert_eq!(sub.recv().await, None);
    }

    #[test]
    fn metrics_show_bus_counters() {
        let metrics = Metrics::new();
        let bus = Bus::new(2);
        bus.register_metrics(&metrics);
        let mut sub = bus.subscribe();
        for _ in 0..5 {
            bus.publish(KernelEvent::Shutdown);
        }
        let _ = sub.try_recv();
        let text = metrics.encode();
        assert!(text.contains("# TYPE bus_lagged counter"), "{text}");
        // Lost 0..=2, then 3 displaced by the overflow announcement.
        assert!(text.contains("bus_lagged_total 2"), "{text}");
        assert!(text.contains("bus_overflow_dropped_total 4"), "{text}");
        assert!(text.contains("bus_subscribers 1"), "{text}");
    }
}
