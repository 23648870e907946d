//! The trace context of the work in hand, and when a trace is recorded.
//!
//! An edge (the gateway's middleware, the OAP/1 listener, the peer network serving a
//! peer's request) starts or continues a trace ([`start`]) and runs the request inside
//! [`scope`]. Everything it calls sees the context ([`current`]); the peer network sends it on
//! with each request to another node ([`outgoing`]), so one trace covers a read on this node
//! and the transfer it caused on another. Work handed to another task carries it with
//! [`scope`] too.
//!
//! Sampling: a request that arrives with a `traceparent` keeps its sampled flag; a new trace
//! is sampled at `log.trace_sample` (0.1%), or at `log.trace_sample_incident` (5%) while an
//! incident is open (the node degraded by an SLO burning). Both are live.
//!
//! Recording is an [`Exporter`]'s (the node's OTLP export, behind the `otlp` feature). With
//! none installed the context still travels, and logs carry the trace id as the request id.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use ron_proto::trace::TraceParent;

tokio::task_local! {
    static CURRENT: Context;
}

/// The trace a piece of work belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The trace, and the span that asked for this work (the caller's, or a random root).
    pub parent: TraceParent,
    /// The work started the trace here: no remote parent to adopt.
    pub root: bool,
}

/// Parts per million of new traces sampled normally (0.1%) and during an incident (5%).
static NORMAL_PPM: AtomicU32 = AtomicU32::new(1_000);
static INCIDENT_PPM: AtomicU32 = AtomicU32::new(50_000);
static INCIDENT: AtomicBool = AtomicBool::new(false);

fn ppm(ratio: f64) -> u32 {
    // Clamped to [0, 1]; NaN is 0.
    (ratio.clamp(0.0, 1.0) * 1_000_000.0) as u32
}

/// Sets the sampling ratios (`log.trace_sample`, `log.trace_sample_incident`; 0 to 1).
pub fn set_sampling(normal: f64, incident: f64) {
    NORMAL_PPM.store(ppm(normal), Ordering::Relaxed);
    INCIDENT_PPM.store(ppm(incident), Ordering::Relaxed);
}

/// Opens (`true`) or closes an incident: new traces are sampled at the incident ratio
/// meanwhile.
pub fn set_incident(open: bool) {
    INCIDENT.store(open, Ordering::Relaxed);
}

/// Whether an incident is open.
pub fn incident() -> bool {
    INCIDENT.load(Ordering::Relaxed)
}

/// Whether a new trace is sampled now.
pub fn sample() -> bool {
    let ratio = if incident() {
        &INCIDENT_PPM
    } else {
        &NORMAL_PPM
    };
    fastrand::u32(0..1_000_000) < ratio.load(Ordering::Relaxed)
}

/// The context for a request that arrived with `incoming` (its `traceparent`, if any): that
/// trace continued, or a new one, sampled as [`sample`] says.
pub fn start(incoming: Option<TraceParent>) -> Context {
    match incoming {
        Some(parent) => Context {
            parent,
            root: false,
        },
        None => Context {
            parent: TraceParent::new_root(sample()),
            root: true,
        },
    }
}

/// Runs `work` in `context`.
pub async fn scope<F: Future>(context: Context, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// An edge's span for the work in `context`, made by `make`: made in the context (so an
/// exporter sees whether the trace is sampled), and a child of the remote span that sent the
/// work, if any, when traces are recorded.
pub fn edge_span(context: Context, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    let span = CURRENT.sync_scope(context, make);
    if let (Some(exporter), false) = (EXPORTER.get(), context.root) {
        exporter.adopt(&span, &context.parent);
    }
    span
}

/// The context of the work in hand, if it is part of a trace.
pub fn current() -> Option<Context> {
    CURRENT.try_with(|c| *c).ok()
}

/// Whether the work in hand belongs to a sampled trace.
pub fn sampled() -> bool {
    current().is_some_and(|c| c.parent.sampled)
}

/// What records sampled traces: installed once by the node when it exports them.
pub trait Exporter: Send + Sync {
    /// The id of the span in hand, as the exporter knows it (the parent of a request sent
    /// to a peer now).
    fn span_id(&self) -> Option<u64>;

    /// Makes `span` a child of `parent`, a span on another node (or of the client).
    fn adopt(&self, span: &tracing::Span, parent: &TraceParent);
}

static EXPORTER: OnceLock<Box<dyn Exporter>> = OnceLock::new();

/// Installs the exporter (once; later calls are ignored).
pub fn install(exporter: Box<dyn Exporter>) {
    let _ = EXPORTER.set(exporter);
}

/// The `traceparent` for a request this work sends to a peer: the same trace, with the
/// span in hand as its parent.
pub fn outgoing() -> Option<TraceParent> {
    let context = current()?;
    let span = EXPORTER.get().and_then(|e| e.span_id());
    Some(context.parent.child(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_travels_with_the_work_and_outgoing_keeps_the_trace() {
        assert_eq!(current(), None);
        assert_eq!(outgoing(), None);
        let incoming: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let context = start(Some(incoming));
        assert!(!context.root);
        scope(context, async {
            assert!(sampled());
            let sent = outgoing().unwrap_or_else(|| unreachable!());
            assert_eq!(sent.trace_id, incoming.trace_id);
            assert_ne!(sent.parent_id, incoming.parent_id, "a span of this node");
            // Handed to another task, it goes along when scoped.
            let inner = tokio::spawn(scope(context, async { current() }));
            assert_eq!(inner.await.ok().flatten(), Some(context));
        })
        .await;
    }

    #[test]
    fn sampling_follows_the_ratio_and_the_incident() {
        set_sampling(0.0, 1.0);
        assert!((0..1000).all(|_| !sample()));
        set_incident(true);
        assert!((0..1000).all(|_| sample()));
        let root = start(None);
        assert!(root.root && root.parent.sampled);
        set_incident(false);
        set_sampling(0.001, 0.05);
    }
}
