//! One Prometheus registry per node. Services register their own counters, gauges and
//! histograms here; the blueprint's shared families are created up front.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Label set naming a service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service's name.
    pub service: String,
}

/// Label set naming why a request was rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A snake_case reason (`rate_limited`, `too_large`, ...).
    pub reason: String,
}

/// Label set of a served request. Borrowed `'static` text where possible: building the key
/// costs no allocation on the hot path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/o/{addr}`), never the raw path.
    pub route: Cow<'static, str>,
    /// HTTP method or OAP/1 operation.
    pub method: Cow<'static, str>,
    /// Status class: `2xx`, `4xx`, ...
    pub status: Cow<'static, str>,
}

/// A histogram family of request latencies.
pub type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Shows a family's HELP and TYPE even before its first sample (the registry skips empty
/// families otherwise), so every blueprint name is present from the first scrape.
#[derive(Debug)]
struct AlwaysShown<M>(M);

impl<M: EncodeMetric> EncodeMetric for AlwaysShown<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

struct Inner {
    registry: Mutex<Registry>,
    service_restarts: Family<ServiceLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    request_latency: LatencyFamily,
}

/// The node's metrics: a cheap-to-clone handle on one registry.
///
/// ```
/// let metrics = ron_kernel::Metrics::new();
/// let puts = metrics.register("objects_put", "Objects stored", prometheus_client::metrics::counter::Counter::<u64>::default());
/// puts.inc();
/// assert!(metrics.encode().contains("objects_put_total 1"));
/// ```
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the blueprint's shared families: `service_restarts_total{service}`,
    /// `rejected_total{reason}` and `request_latency_seconds{route,method,status}`.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let service_restarts = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "service_restarts",
            "Service restarts by the supervisor",
            AlwaysShown(service_restarts.clone()),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rejected",
            "Requests rejected before being served, by reason",
            AlwaysShown(rejected.clone()),
        );
        let request_latency: LatencyFamily =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_latency_seconds",
            "Time to serve a request",
            AlwaysShown(request_latency.clone()),
        );
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                service_restarts,
                rejected,
                request_latency,
            }),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while registering leaves the registry usable; take it back.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `metric` under `name` (counters get `_total` appended on output) and returns
    /// it for the caller to update.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        self.registry().register(name, help, metric.clone());
        metric
    }

    /// Registers a collector read at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// `service_restarts_total{service}`.
    pub fn service_restarts(&self) -> &Family<ServiceLabel, Counter> {
        &self.inner.service_restarts
    }

    /// `rejected_total{reason}`.
    pub fn rejected(&self) -> &Family<ReasonLabel, Counter> {
        &self.inner.rejected
    }

    /// `request_latency_seconds{route,method,status}`.
    pub fn request_latency(&self) -> &LatencyFamily {
        &self.inner.request_latency
    }

    /// The registry in the OpenMetrics text format, every family with HELP and TYPE.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

#[cfg(all(test, not(ron_loom)))]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn blueprint_families_are_exported_with_help_and_type() {
        let m = Metrics::new();
        m.service_restarts()
            .get_or_create(&ServiceLabel {
                service: "overlay".into(),
            })
            .inc();
        m.rejected()
            .get_or_create(&ReasonLabel {
                reason: "too_large".into(),
            })
            .inc();
        m.request_latency()
            .get_or_create(&RequestLabels {
                route: Cow::Borrowed("/healthz"),
                method: Cow::Borrowed("GET"),
                status: Cow::Borrowed("2xx"),
            })
            .observe(0.002);
        let g: Gauge = m.register("queue_depth", "Commands waiting", Gauge::default());
        g.set(3);
        let text = m.encode();
        for want in [
            "# HELP service_restarts Service restarts by the supervisor",
            "# TYPE service_restarts counter",
            "service_restarts_total{service=\"overlay\"} 1",
            "# TYPE rejected counter",
            "rejected_total{reason=\"too_large\"} 1",
            "# TYPE request_latency_seconds histogram",
            "request_latency_seconds_count{route=\"/healthz\",method=\"GET\",status=\"2xx\"} 1",
            "queue_depth 3",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
