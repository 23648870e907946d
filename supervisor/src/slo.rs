//! The node's SLOs tracked inside it, the degraded mode their burn drives, and anomaly hooks.
//!
//! Two SLOs, the blueprint's (sections 11 and 17):
//! - **object latency**: 95% of whole reads of objects held here (`GET /o/{addr}`) answered
//!   within `slo.object_latency_ms` (10 ms; the blueprint's "p95 < 10 ms local");
//! - **availability**: 99.9% of requests answered without a server error. The node's own
//!   refusals (429, and 503 while it sheds load) are not counted, or shedding would feed the
//!   burn that caused it; nor are failures of peers or of the data (providers unavailable,
//!   damaged, lost), which shedding cannot help.
//!
//! The edges feed a [`Meter`] as each request ends (the same observation that goes into the
//! `request_latency_seconds` histogram). A [`Tracker`] samples the meter once a second and
//! computes burn rates over a short and a long window: the fraction of bad events over the
//! fraction the objective allows (a burn rate of 1 spends the error budget exactly over the
//! SLO's period).
//!
//! The node is **degraded** while either SLO burns faster than `slo.burn_rate` over both
//! windows, with at least `slo.min_requests` in the window. It stays degraded at least one
//! short window, and recovers once the short window no longer burns. While degraded, the node
//! sheds writes (on every plane), keeps serving reads, and lowers its fan-out to peers.
//!
//! [`Anomalies`] watches for a restart storm and a queue-depth spike, and says when one
//! starts and ends.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use ron_kernel::config::{FieldError, Section};
use serde::{Deserialize, Serialize};

/// `[slo]`: the SLOs the node holds itself to, and when it degrades. Live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloSection {
    /// Degrade while an SLO burns (default true). Off, burn is still measured and shown.
    pub degrade: bool,
    /// `GET /o/{addr}` answered within this many milliseconds is fast (default 10, the
    /// blueprint's p95 < 10 ms).
    pub object_latency_ms: u64,
    /// The share of object reads that must be fast (default 0.95).
    pub latency_objective: f64,
    /// The share of requests that must be answered without a server error (default 0.999).
    pub error_objective: f64,
    /// The short window, in seconds (default 30).
    pub short_window_s: u64,
    /// The long window, in seconds (default 300).
    pub long_window_s: u64,
    /// The burn rate over both windows that degrades the node (default 14.4: at that rate a
    /// 30-day budget lasts about two days).
    pub burn_rate: f64,
    /// Fewer requests than this in a window say nothing about it (default 100).
    pub min_requests: u64,
}

impl Default for SloSection {
    fn default() -> Self {
        Self {
            degrade: true,
            object_latency_ms: 10,
            latency_objective: 0.95,
            error_objective: 0.999,
            short_window_s: 30,
            long_window_s: 300,
            burn_rate: 14.4,
            min_requests: 100,
        }
    }
}

impl Section for SloSection {
    const NAME: &'static str = "slo";

    fn validate(&self) -> Result<(), FieldError> {
        let objective = |field, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(FieldError::new(field, "must be between 0 and 1, exclusive"))
            }
        };
        objective("latency_objective", self.latency_objective)?;
        objective("error_objective", self.error_objective)?;
        if !(1..=60_000).contains(&self.object_latency_ms) {
            return Err(FieldError::new(
                "object_latency_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(1..=3600).contains(&self.short_window_s) {
            return Err(FieldError::new(
                "short_window_s",
                "must be between 1 and 3600",
            ));
        }
        if !(self.short_window_s..=3600).contains(&self.long_window_s) {
            return Err(FieldError::new(
                "long_window_s",
                "must be between short_window_s and 3600",
            ));
        }
        if !(self.burn_rate >= 1.0 && self.burn_rate <= 1000.0) {
            return Err(FieldError::new("burn_rate", "must be between 1 and 1000"));
        }
        Ok(())
    }
}

/// Requests counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Object reads answered (2xx, 304).
    pub objects: u64,
    /// Of those, answered after the latency threshold.
    pub objects_slow: u64,
    /// Requests answered, but for the node's own refusals.
    pub requests: u64,
    /// Of those, server errors.
    pub errors: u64,
}

impl Counts {
    fn since(self, earlier: Self) -> Self {
        Self {
            objects: self.objects.saturating_sub(earlier.objects),
            objects_slow: self.objects_slow.saturating_sub(earlier.objects_slow),
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }
}

#[derive(Debug, Default)]
struct MeterInner {
    objects: AtomicU64,
    objects_slow: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// The latency threshold, in microseconds (0: 10 ms).
    threshold_us: AtomicU64,
    /// Where the SLOs stood at the last tick.
    burn: Mutex<Burn>,
}

/// What the edges tell the SLOs (one observation per request, a few relaxed atomic adds),
/// and where the SLOs stood at the last tick ([`Meter::publish`]), for `/status` and
/// `/metrics`. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<MeterInner>);

/// What kind of request ended, for [`Meter::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// An object read answered (2xx, 304): its latency counts.
    Object,
    /// Any other request answered by the node (its status decides).
    Other,
    /// Not counted: refused by the node's own admission (429, or 503 while shedding), or
    /// failed for a reason shedding load cannot help (peers failing, damaged data).
    Excluded,
}

impl Meter {
    /// Counts one request that took `latency` and answered `status`.
    pub fn observe(&self, answered: Answered, status: u16, latency: Duration) {
        let m = &self.0;
        if answered == Answered::Excluded {
            return;
        }
        m.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
        if answered == Answered::Object {
            m.objects.fetch_add(1, Ordering::Relaxed);
            let threshold = match m.threshold_us.load(Ordering::Relaxed) {
                0 => 10_000,
                us => us,
            };
            if latency.as_micros() > u128::from(threshold) {
                m.objects_slow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sets the latency threshold (`slo.object_latency_ms`, live).
    pub fn set_threshold(&self, threshold: Duration) {
        let us = u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX);
        self.0.threshold_us.store(us, Ordering::Relaxed);
    }

    /// Shows `burn` as where the SLOs stand now.
    pub fn publish(&self, burn: Burn) {
        *self.0.burn.lock().unwrap_or_else(PoisonError::into_inner) = burn;
    }

    /// Where the SLOs stood at the last tick.
    pub fn burn(&self) -> Burn {
        *self.0.burn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shows the burn rates and the degraded mode in `metrics`: `slo_burn_rate{slo,window}`,
    /// `slo_degraded`, `slo_degradations_total`.
    pub fn register_metrics(&self, metrics: &ron_kernel::Metrics) {
        metrics.register_collector(Box::new(BurnCollector(self.clone())));
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        let m = &self.0;
        Counts {
            objects: m.objects.load(Ordering::Relaxed),
            objects_slow: m.objects_slow.load(Ordering::Relaxed),
            requests: m.requests.load(Ordering::Relaxed),
            errors: m.errors.load(Ordering::Relaxed),
        }
    }
}

/// One SLO's burn rate over the two windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Windows {
    /// Over the short window.
    pub short: f64,
    /// Over the long window.
    pub long: f64,
}

/// Drops samples older than `window`, but for the newest one at or before its start: what
/// the window is measured from.
fn keep_window<T>(samples: &mut VecDeque<(Instant, T)>, now: Instant, window: Duration) {
    while samples
        .get(1)
        .is_some_and(|(t, _)| now.duration_since(*t) >= window)
    {
        samples.pop_front();
    }
}

/// Where the SLOs stand after a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Burn {
    /// The object-latency SLO's burn rates.
    pub object_latency: Windows,
    /// The availability SLO's burn rates.
    pub availability: Windows,
    /// Whether the node is degraded.
    pub degraded: bool,
    /// Times the node degraded since start.
    pub degradations: u64,
}

/// The burn rates and the degraded mode, from the meter's counts sampled once a second.
/// Plain arithmetic: the caller passes the time.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Counts by sampling time, oldest first: one long window and a sample more.
    samples: VecDeque<(Instant, Counts)>,
    degraded_since: Option<Instant>,
    degradations: u64,
}

impl Tracker {
    /// Samples `counts` at `now`, and says where the SLOs stand under `slo`.
    pub fn tick(&mut self, now: Instant, counts: Counts, slo: &SloSection) -> Burn {
        let long = Duration::from_secs(slo.long_window_s);
        let short = Duration::from_secs(slo.short_window_s);
        self.samples.push_back((now, counts));
        keep_window(&mut self.samples, now, long);
        let burn = |window: Duration| {
            let start = self
                .samples
                .iter()
                .rev()
                .find(|(t, _)| now.duration_since(*t) >= window)
                .or(self.samples.front())
                .map_or(counts, |(_, c)| *c);
            let d = counts.since(start);
            let rate = |bad: u64, all: u64, objective: f64| {
                if all < slo.min_requests.max(1) {
                    0.0
                } else {
                    (bad as f64 / all as f64) / (1.0 - objective)
                }
            };
            (
                rate(d.objects_slow, d.objects, slo.latency_objective),
                rate(d.errors, d.requests, slo.error_objective),
            )
        };
        let ((lat_short, err_short), (lat_long, err_long)) = (burn(short), burn(long));
        let over = slo.burn_rate;
        let burning =
            (lat_short > over && lat_long > over) || (err_short > over && err_long > over);
        let cooled = lat_short <= over && err_short <= over;
        match self.degraded_since {
            None if burning && slo.degrade => {
                self.degraded_since = Some(now);
                self.degradations += 1;
            }
            Some(since) if !slo.degrade || (cooled && now.duration_since(since) >= short) => {
                self.degraded_since = None;
            }
            _ => {}
        }
        Burn {
            object_latency: Windows {
                short: lat_short,
                long: lat_long,
            },
            availability: Windows {
                short: err_short,
                long: err_long,
            },
            degraded: self.degraded_since.is_some(),
            degradations: self.degradations,
        }
    }
}

#[derive(Debug)]
struct BurnCollector(Meter);

impl Collector for BurnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let burn = self.0.burn();
        {
            let mut family = encoder.encode_descriptor(
                "slo_burn_rate",
                "How fast an SLO spends its error budget, over the short and the long window (1: exactly over the period)",
                None,
                MetricType::Gauge,
            )?;
            for (slo, w) in [
                ("object_latency", burn.object_latency),
                ("availability", burn.availability),
            ] {
                for (window, rate) in [("short", w.short), ("long", w.long)] {
                    let g = ConstGauge::new(rate);
                    g.encode(family.encode_family(&[("slo", slo), ("window", window)])?)?;
                }
            }
        }
        let g = ConstGauge::new(i64::from(burn.degraded));
        g.encode(encoder.encode_descriptor(
            "slo_degraded",
            "1 while the node is degraded (an SLO burning): writes shed, fan-out lowered",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(burn.degradations);
        c.encode(encoder.encode_descriptor(
            "slo_degradations",
            "Times the node degraded since start",
            None,
            c.metric_type(),
        )?)
    }
}

/// An anomaly seen, or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// Services restarted `restarts` times within the window (the services named, with
    /// their restarts in it).
    RestartStorm {
        /// Restarts within the window.
        restarts: u64,
        /// Which services, and how many times each.
        services: BTreeMap<String, u64>,
    },
    /// A queue holds `depth` of its `capacity`.
    QueueSpike {
        /// The queue.
        queue: &'static str,
        /// Entries waiting.
        depth: usize,
        /// Its bound.
        capacity: usize,
    },
}

impl Anomaly {
    /// Its name as the event and the log carry it.
    pub fn name(&self) -> String {
        match self {
            Self::RestartStorm { .. } => "restart-storm".into(),
            Self::QueueSpike { queue, .. } => format!("queue-spike:{queue}"),
        }
    }
}

/// A change in an anomaly: it started (with what was seen) or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It started.
    Started(Anomaly),
    /// It ended.
    Ended(String),
}

/// Restarts within this window...
pub const STORM_WINDOW: Duration = Duration::from_secs(60);
/// ...this many or more are a storm.
pub const STORM_RESTARTS: u64 = 3;

/// Watches for a restart storm (3 or more restarts within 60 s, all services together) and
/// queue-depth spikes (a queue half full or more). Plain arithmetic: the caller passes the
/// time and what it read.
#[derive(Debug, Default)]
pub struct Anomalies {
    /// Each service's restart count at each sample, oldest first (within the window).
    restarts: VecDeque<(Instant, BTreeMap<String, u64>)>,
    storm: bool,
    spiking: BTreeMap<&'static str, bool>,
}

impl Anomalies {
    /// Samples each service's restarts so far; a storm starting or ending.
    pub fn restarts(&mut self, now: Instant, restarts: BTreeMap<String, u64>) -> Option<Change> {
        self.restarts.push_back((now, restarts));
        keep_window(&mut self.restarts, now, STORM_WINDOW);
        let (first, last) = (self.restarts.front()?, self.restarts.back()?);
        let services: BTreeMap<String, u64> = last
            .1
            .iter()
            .filter_map(|(name, n)| {
                let before = first.1.get(name).copied().unwrap_or(0);
                (*n > before).then(|| (name.clone(), n - before))
            })
            .collect();
        let restarts: u64 = services.values().sum();
        match (self.storm, restarts >= STORM_RESTARTS) {
            (false, true) => {
                self.storm = true;
                Some(Change::Started(Anomaly::RestartStorm {
                    restarts,
                    services,
                }))
            }
            (true, false) if restarts == 0 => {
                self.storm = false;
                Some(Change::Ended("restart-storm".into()))
            }
            _ => None,
        }
    }

    /// Samples a queue's depth; a spike (half full or more) starting or ending (under a
    /// quarter).
    pub fn queue(&mut self, queue: &'static str, depth: usize, capacity: usize) -> Option<Change> {
        let spiking = self.spiking.entry(queue).or_default();
        let capacity = capacity.max(1);
        if !*spiking && depth * 2 >= capacity {
            *spiking = true;
            return Some(Change::Started(Anomaly::QueueSpike {
                queue,
                depth,
                capacity,
            }));
        }
        if *spiking && depth * 4 < capacity {
            *spiking = false;
            return Some(Change::Ended(format!("queue-spike:{queue}")));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo() -> SloSection {
        SloSection {
            short_window_s: 10,
            long_window_s: 60,
            min_requests: 10,
            ..SloSection::default()
        }
    }

    /// Ticks once a second for `secs`, `fast` and `slow` object reads each second.
    fn run(
        t: &mut Tracker,
        now: &mut Instant,
        c: &mut Counts,
        secs: u64,
        (fast, slow): (u64, u64),
    ) -> Burn {
        let mut burn = Burn::default();
        for _ in 0..secs {
            *now += Duration::from_secs(1);
            c.objects += fast + slow;
            c.objects_slow += slow;
            c.requests += fast + slow;
            burn = t.tick(*now, *c, &slo());
        }
        burn
    }

    #[test]
    fn a_burn_over_both_windows_degrades_and_a_cool_short_window_recovers() {
        let (mut t, mut now, mut c) = (Tracker::default(), Instant::now(), Counts::default());
        // A minute of good traffic: 1% slow (a burn of 0.2).
        let burn = run(&mut t, &mut now, &mut c, 60, (99, 1));
        assert!((burn.object_latency.long - 0.2).abs() < 1e-9, "{burn:?}");
        assert!(!burn.degraded);
        // A flood: every read slow. The short window (10 s) burns past 14.4 once 72% of it is
        // the flood; the long one (60 s) later.
        let burn = run(&mut t, &mut now, &mut c, 8, (0, 100));
        assert!(
            burn.object_latency.short > 14.4 && !burn.degraded,
            "{burn:?}"
        );
        let burn = run(&mut t, &mut now, &mut c, 60, (0, 100));
        assert!(burn.degraded && burn.degradations == 1, "{burn:?}");
        // Good again: recovered once the short window cools (and a short window has passed).
        let burn = run(&mut t, &mut now, &mut c, 2, (100, 0));
        assert!(burn.degraded, "the short window still burns: {burn:?}");
        let burn = run(&mut t, &mut now, &mut c, 10, (100, 0));
        assert!(!burn.degraded, "{burn:?}");
        assert!(
            burn.object_latency.long > 14.4,
            "the long window still remembers"
        );
        assert_eq!(burn.degradations, 1);
    }

    #[test]
    fn errors_burn_the_availability_slo_and_too_few_requests_say_nothing() {
        let (mut t, mut now) = (Tracker::default(), Instant::now());
        let mut c = Counts::default();
        let mut burn = Burn::default();
        for _ in 0..30 {
            now += Duration::from_secs(1);
            c.requests += 5;
            c.errors += 5;
            burn = t.tick(now, c, &slo());
        }
        // 5 a second: each window holds enough requests, and every one failed.
        assert!((burn.availability.short - 1000.0).abs() < 1e-6, "{burn:?}");
        assert!(burn.degraded);
        let quiet = SloSection {
            min_requests: 1000,
            ..slo()
        };
        let (mut t, mut now) = (Tracker::default(), Instant::now());
        let mut c = Counts::default();
        for _ in 0..30 {
            now += Duration::from_secs(1);
            c.requests += 5;
            c.errors += 5;
            assert_eq!(t.tick(now, c, &quiet).availability, Windows::default());
        }
    }

    #[test]
    fn with_degrade_off_the_burn_is_measured_but_nothing_degrades() {
        let off = SloSection {
            degrade: false,
            ..slo()
        };
        let (mut t, mut now, mut c) = (Tracker::default(), Instant::now(), Counts::default());
        let mut burn = Burn::default();
        for _ in 0..70 {
            now += Duration::from_secs(1);
            c.objects += 100;
            c.objects_slow += 100;
            burn = t.tick(now, c, &off);
        }
        assert!(burn.object_latency.short > 14.4 && !burn.degraded);
    }

    #[test]
    fn the_meter_counts_by_kind_and_threshold_and_skips_refusals() {
        let m = Meter::default();
        m.set_threshold(Duration::from_millis(2));
        m.observe(Answered::Object, 200, Duration::from_millis(1));
        m.observe(Answered::Object, 206, Duration::from_millis(3));
        m.observe(Answered::Other, 503, Duration::from_millis(1));
        m.observe(Answered::Excluded, 503, Duration::from_millis(1));
        m.observe(Answered::Other, 404, Duration::from_millis(1));
        assert_eq!(
            m.counts(),
            Counts {
                objects: 2,
                objects_slow: 1,
                requests: 4,
                errors: 1
            }
        );
    }

    #[test]
    fn sections_out_of_range_are_refused() {
        let bad = [
            SloSection {
                latency_objective: 1.0,
                ..SloSection::default()
            },
            SloSection {
                long_window_s: 5,
                ..SloSection::default()
            },
            SloSection {
                burn_rate: 0.5,
                ..SloSection::default()
            },
            SloSection {
                object_latency_ms: 0,
                ..SloSection::default()
            },
        ];
        for section in bad {
            assert!(section.validate().is_err(), "{section:?}");
        }
        assert!(SloSection::default().validate().is_ok());
    }

    #[test]
    fn a_restart_storm_starts_at_three_in_a_minute_and_ends_when_they_stop() {
        let mut a = Anomalies::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let counts = |overlay: u64, dht: u64| {
            BTreeMap::from([("overlay".to_owned(), overlay), ("dht".to_owned(), dht)])
        };
        assert_eq!(a.restarts(at(0), counts(0, 0)), None);
        assert_eq!(a.restarts(at(10), counts(1, 0)), None);
        let Some(Change::Started(Anomaly::RestartStorm { restarts, services })) =
            a.restarts(at(20), counts(2, 1))
        else {
            panic!("three restarts in 20 s are a storm");
        };
        assert_eq!(restarts, 3);
        assert_eq!(
            services,
            BTreeMap::from([("dht".into(), 1), ("overlay".into(), 2)])
        );
        assert_eq!(a.restarts(at(30), counts(2, 1)), None, "said once");
        assert_eq!(
            a.restarts(at(90), counts(2, 1)),
            Some(Change::Ended("restart-storm".into()))
        );
        // Spread out, restarts never make a storm.
        let mut a = Anomalies::default();
        for i in 0..10 {
            assert_eq!(a.restarts(at(i * 40), counts(i, 0)), None);
        }
    }

    #[test]
    fn a_queue_half_full_is_a_spike_until_under_a_quarter() {
        let mut a = Anomalies::default();
        assert_eq!(a.queue("overlay", 10, 64), None);
        assert!(matches!(
            a.queue("overlay", 32, 64),
            Some(Change::Started(Anomaly::QueueSpike { depth: 32, .. }))
        ));
        assert_eq!(a.queue("overlay", 20, 64), None);
        assert_eq!(
            a.queue("overlay", 15, 64),
            Some(Change::Ended("queue-spike:overlay".into()))
        );
    }
}
