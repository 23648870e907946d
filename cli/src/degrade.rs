//! The node's SLO watch: once a second, the burn rates from what the edges measured; while
//! an SLO burns, the node degrades (writes shed on every plane, reads served, fan-out to
//! peers lowered, more traces sampled) and recovers by itself. The same tick watches for anomalies: a restart
//! storm, the overlay's queue filling.
//!
//! Each change is a log line with what was seen, and an event on the bus: `Health` with
//! service `slo-burn` (ok: not degraded) or `anomaly:<what>` (ok: it ended).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ron_kernel::health::Duty;
use ron_kernel::{Bus, Config, HealthState, KernelEvent};
use supervisor::Supervisor;
use supervisor::slo::{Anomalies, Anomaly, Burn, Change, Meter, SloSection, Tracker};
use svc_overlay::OverlayHandle;

/// What the watch reads and what it turns.
pub(crate) struct Watched {
    pub(crate) config: Config,
    pub(crate) meter: Meter,
    pub(crate) limiter: Arc<ron_transport::limits::Limiter>,
    pub(crate) dht: svc_dht::DhtHandle,
    pub(crate) overlay: OverlayHandle,
    pub(crate) overlay_queue: usize,
    pub(crate) health: HealthState,
    pub(crate) bus: Bus,
}

const TICK: Duration = Duration::from_secs(1);

/// Runs the watch under the supervisor.
pub(crate) fn spawn(sup: &mut Supervisor, watched: Watched) {
    let watched = Arc::new(watched);
    sup.spawn("slo", Duty::Background, move |ctx| {
        let w = watched.clone();
        async move {
            let mut tracker = Tracker::default();
            let mut anomalies = Anomalies::default();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = ctx.shutdown.cancelled() => return Ok::<(), String>(()),
                }
                let now = Instant::now();
                let slo = w.config.get::<SloSection>();
                w.meter
                    .set_threshold(Duration::from_millis(slo.object_latency_ms));
                let burn = tracker.tick(now, w.meter.counts(), &slo);
                apply(&w, &slo, burn);
                w.meter.publish(burn);
                let restarts: BTreeMap<String, u64> = w
                    .health
                    .services()
                    .into_iter()
                    .map(|(name, s)| (name, s.restarts))
                    .collect();
                let changes = [
                    anomalies.restarts(now, restarts),
                    anomalies.queue("overlay", w.overlay.queue_depth(), w.overlay_queue),
                ];
                for change in changes.into_iter().flatten() {
                    report(&w.bus, change);
                }
            }
        }
    });
}

/// Degrades the node, or ends it, when the tracker says so.
fn apply(w: &Watched, slo: &SloSection, burn: Burn) {
    if burn.degraded == w.limiter.degraded() {
        return;
    }
    w.limiter.set_degraded(burn.degraded);
    w.dht.set_frugal(burn.degraded);
    // An incident: new traces are sampled at `log.trace_sample_incident` meanwhile.
    supervisor::trace::set_incident(burn.degraded);
    let (lat, avail) = (burn.object_latency, burn.availability);
    if burn.degraded {
        tracing::warn!(
            object_latency_burn_short = lat.short,
            object_latency_burn_long = lat.long,
            availability_burn_short = avail.short,
            availability_burn_long = avail.long,
            burn_rate = slo.burn_rate,
            "an SLO burns: degraded (writes shed, reads served, fan-out to peers lowered)"
        );
    } else {
        tracing::info!(
            object_latency_burn_short = lat.short,
            availability_burn_short = avail.short,
            "the SLOs no longer burn: recovered (writes accepted, fan-out restored)"
        );
    }
    w.bus.publish(KernelEvent::Health {
        service: "slo-burn".into(),
        ok: !burn.degraded,
    });
}

/// Logs an anomaly starting or ending, and publishes it.
fn report(bus: &Bus, change: Change) {
    let (name, ok) = match &change {
        Change::Started(anomaly) => {
            match anomaly {
                Anomaly::RestartStorm { restarts, services } => tracing::warn!(
                    restarts,
                    window_s = supervisor::slo::STORM_WINDOW.as_secs(),
                    services = ?services,
                    "anomaly: a restart storm"
                ),
                Anomaly::QueueSpike {
                    queue,
                    depth,
                    capacity,
                } => tracing::warn!(queue, depth, capacity, "anomaly: a queue is filling"),
            }
            (anomaly.name(), false)
        }
        Change::Ended(name) => {
            tracing::info!(anomaly = %name, "anomaly ended");
            (name.clone(), true)
        }
    };
    bus.publish(KernelEvent::Health {
        service: format!("anomaly:{name}"),
        ok,
    });
}
