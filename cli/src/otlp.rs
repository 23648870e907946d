//! OTLP export of sampled traces (the `otlp` cargo feature; on with `log.otlp_endpoint`).
//!
//! Spans reach OpenTelemetry through `tracing-opentelemetry`, behind a filter that lets
//! through only spans of sampled traces ([`supervisor::trace::sampled`]): an unsampled
//! request costs the exporter nothing. Batches go out over OTLP/HTTP (JSON) from a tokio task,
//! to `<endpoint>/v1/traces`.
//!
//! The trace ids are the node's own. A trace started here gets the trace id the request's
//! logs carry as `request_id` ([`IdGenerator`]), and a request from a peer or a client that
//! carried a `traceparent` becomes a child of the span that sent it ([`supervisor::trace::edge_span`]).
//! Requests sent to peers carry the span in hand as their parent
//! ([`supervisor::trace::outgoing`]).

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
use ron_proto::trace::TraceParent;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// New trace ids are the trace id of the work in hand (the one its logs carry), random
/// otherwise; span ids are random.
#[derive(Debug, Default)]
struct IdGenerator(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for IdGenerator {
    fn new_trace_id(&self) -> TraceId {
        match supervisor::trace::current() {
            Some(context) => TraceId::from_bytes(context.parent.trace_id.to_be_bytes()),
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Lets spans of sampled traces through, and no events (logs stay logs).
struct Sampled;

impl<S> Filter<S> for Sampled {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        meta.is_span() && supervisor::trace::sampled()
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.is_span() {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

/// The log filter, letting spans of sampled traces through too (so the exporter sees every
/// hop of a sampled request, whatever the log level). The log filter stays the global one:
/// as a per-layer filter it would be asked on every enter and exit of every span.
pub(crate) struct LogsOrSampled<L>(pub(crate) L);

impl<S, L> Layer<S> for LogsOrSampled<L>
where
    S: Subscriber,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        let logs = self.0.register_callsite(meta);
        if meta.is_span() && logs.is_never() {
            tracing::subscriber::Interest::sometimes()
        } else {
            logs
        }
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: Context<'_, S>) -> bool {
        self.0.enabled(meta, cx) || (meta.is_span() && supervisor::trace::sampled())
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let debug = tracing::level_filters::LevelFilter::DEBUG;
        Some(
            self.0
                .max_level_hint()
                .map_or(debug, |logs| logs.max(debug)),
        )
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: Context<'_, S>,
    ) {
        self.0.on_record(id, values, cx);
    }

    fn on_follows_from(
        &self,
        id: &tracing::span::Id,
        follows: &tracing::span::Id,
        cx: Context<'_, S>,
    ) {
        self.0.on_follows_from(id, follows, cx);
    }

    fn on_event(&self, event: &tracing::Event<'_>, cx: Context<'_, S>) {
        self.0.on_event(event, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }

    fn on_id_change(&self, old: &tracing::span::Id, new: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_id_change(old, new, cx);
    }
}

/// The node's side of [`supervisor::trace::Exporter`]: span ids and remote parents as the
/// OpenTelemetry layer knows them.
struct Hooks;

impl supervisor::trace::Exporter for Hooks {
    fn span_id(&self) -> Option<u64> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let id = span.span_context().span_id();
        (id != SpanId::INVALID).then(|| u64::from_be_bytes(id.to_bytes()))
    }

    fn adopt(&self, span: &tracing::Span, parent: &TraceParent) {
        let flags = if parent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id.to_be_bytes()),
            SpanId::from_bytes(parent.parent_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        // A span the filter left out (not sampled) has nothing to adopt: fine.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The export of sampled traces: flushes what is batched when dropped (at shutdown).
pub(crate) struct Export {
    provider: SdkTracerProvider,
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("ron: the last traces were not exported: {e}");
        }
    }
}

impl Export {
    /// Starts exporting to `endpoint` (`http://host:port`, OTLP/HTTP with JSON). Made inside
    /// the tokio runtime: batches leave from a task of its own.
    pub(crate) fn start(endpoint: &str) -> anyhow::Result<Self> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .context("cannot set up the OTLP exporter")?;
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(
                BatchConfigBuilder::default()
                    // Bounded: past this many spans waiting, new ones are dropped.
                    .with_max_queue_size(4096)
                    .with_scheduled_delay(Duration::from_secs(2))
                    .build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("ron")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(IdGenerator::default())
            // The filter sampled already: everything that reaches the SDK is recorded.
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        supervisor::trace::install(Box::new(Hooks));
        Ok(Self { provider })
    }

    /// The layer handing spans of sampled traces to the export.
    pub(crate) fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("ron"))
            .with_tracked_inactivity(false)
            // Span ids are read from the span (`Hooks`), not from OpenTelemetry's current
            // context: nothing to attach on every poll.
            .with_context_activation(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(Sampled)
    }
}
