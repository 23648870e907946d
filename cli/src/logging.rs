//! Structured logs on stderr: text on a terminal, JSON otherwise. The level follows
//! `[log] level` live, unless `RUST_LOG` is set, which wins. Sampled traces go to
//! `log.otlp_endpoint` over OTLP in a `ron` built with the `otlp` feature.

use std::fmt::Write as _;
use std::io::IsTerminal;

use anyhow::Context;
use ron_kernel::config::{FieldError, Section};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogSection {
    /// Filter directives, `tracing` syntax (default `"info"`). Live.
    pub(crate) level: String,
    /// `auto`, `json` or `text` (default `auto`). Fixed at start.
    pub(crate) format: Format,
    /// Where sampled traces go, over OTLP/HTTP: `http://host:port` (spans are posted to
    /// `/v1/traces`), or `""` (default) for none. Needs a `ron` built with the `otlp`
    /// feature. Fixed at start.
    pub(crate) otlp_endpoint: String,
    /// The share of new traces recorded (default 0.001). A request carrying a
    /// `traceparent` keeps its own sampled flag. Live.
    pub(crate) trace_sample: f64,
    /// The share recorded while an incident is open: the node degraded by an SLO burning
    /// (default 0.05). Live.
    pub(crate) trace_sample_incident: f64,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: Format::Auto,
            otlp_endpoint: String::new(),
            trace_sample: 0.001,
            trace_sample_incident: 0.05,
        }
    }
}

impl Section for LogSection {
    const NAME: &'static str = "log";

    fn validate(&self) -> Result<(), FieldError> {
        EnvFilter::try_new(&self.level)
            .map(drop)
            .map_err(|e| FieldError::new("level", e.to_string()))?;
        for (field, ratio) in [
            ("trace_sample", self.trace_sample),
            ("trace_sample_incident", self.trace_sample_incident),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(FieldError::new(field, "must be between 0 and 1"));
            }
        }
        if self.otlp_endpoint.is_empty() {
            return Ok(());
        }
        if !cfg!(feature = "otlp") {
            return Err(FieldError::new(
                "otlp_endpoint",
                "this ron was built without the otlp feature (cargo build --features otlp)",
            ));
        }
        let rest = self.otlp_endpoint.strip_prefix("http://").unwrap_or("");
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(FieldError::new(
                "otlp_endpoint",
                "must be http://host:port (OTLP over HTTP)",
            ));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        ron_kernel::config::unchanged("format", &self.format, &next.format)?;
        ron_kernel::config::unchanged("otlp_endpoint", &self.otlp_endpoint, &next.otlp_endpoint)
    }
}

/// The export of sampled traces, when there is one.
#[cfg(feature = "otlp")]
type Export = crate::otlp::Export;
/// No export in a `ron` built without the `otlp` feature.
#[cfg(not(feature = "otlp"))]
type Export = std::convert::Infallible;

/// Changes the log level of the running process, and the sampling of traces.
pub(crate) struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    env_wins: bool,
    export: std::sync::Mutex<Option<Export>>,
}

impl LogControl {
    /// Applies `section.level` (unless `RUST_LOG` governs) and the trace sampling ratios.
    pub(crate) fn apply(&self, section: &LogSection) {
        supervisor::trace::set_sampling(section.trace_sample, section.trace_sample_incident);
        if self.env_wins {
            return;
        }
        match EnvFilter::try_new(&section.level) {
            Ok(filter) => {
                if let Err(e) = self.handle.reload(filter) {
                    tracing::warn!(error = %e, "cannot change the log level");
                } else {
                    tracing::info!(level = %section.level, "log level changed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "invalid log level"),
        }
    }

    /// Sends the traces still batched (at shutdown; at most 5 s).
    pub(crate) async fn flush(&self) {
        let export = self
            .export
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(export) = export {
            // Dropping the export flushes it, waiting on its batch task: not on a worker.
            let flushed = tokio::task::spawn_blocking(move || {
                let _flushing = export;
            });
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flushed).await;
        }
    }
}

/// Log lines as JSON, one object per line, with the span's fields (the request id).
fn json_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fmt::layer()
        .json()
        .with_current_span(true)
        .fmt_fields(SpanFields)
        .with_writer(std::io::stderr)
}

/// Log lines as text, for a terminal.
fn text_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fmt::layer().with_writer(std::io::stderr)
}

/// Installs the global subscriber.
pub(crate) fn init(section: &LogSection) -> anyhow::Result<LogControl> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = match &env {
        Some(directives) => {
            EnvFilter::try_new(directives).context("RUST_LOG is not a valid filter")?
        }
        None => EnvFilter::try_new(&section.level).context("log.level is not a valid filter")?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let json = match section.format {
        Format::Json => true,
        Format::Text => false,
        Format::Auto => !std::io::stderr().is_terminal(),
    };
    supervisor::trace::set_sampling(section.trace_sample, section.trace_sample_incident);
    #[cfg(feature = "otlp")]
    if !section.otlp_endpoint.is_empty() {
        // The log filter lets spans of sampled traces through too: they reach the exporter
        // whatever the log level.
        let started = crate::otlp::Export::start(&section.otlp_endpoint)?;
        let registry = tracing_subscriber::registry().with(crate::otlp::LogsOrSampled(filter));
        let installed = if json {
            let registry = registry.with(json_layer());
            registry.with(started.layer()).try_init()
        } else {
            let registry = registry.with(text_layer());
            registry.with(started.layer()).try_init()
        };
        installed.context("cannot install the logger")?;
        tracing::info!(endpoint = %section.otlp_endpoint, "exporting sampled traces over OTLP");
        return Ok(LogControl {
            handle,
            env_wins: env.is_some(),
            export: std::sync::Mutex::new(Some(started)),
        });
    }
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry.with(json_layer()).try_init()
    } else {
        registry.with(text_layer()).try_init()
    };
    installed.context("cannot install the logger")?;
    Ok(LogControl {
        handle,
        env_wins: env.is_some(),
        export: std::sync::Mutex::new(None),
    })
}

/// Span fields as one compact JSON object, written straight out. The gateway opens a span on
/// every request (its request id), and the JSON layer formats a span's fields when the span
/// is made; `JsonFields` builds a map of JSON values to do it, which cost ~7% of a small GET's
/// instructions (decision 0016). Events' own fields are formatted by the JSON layer as before.
struct SpanFields;

impl<'w> fmt::FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut object = JsonObject::new(&mut writer);
        fields.record(&mut object);
        object.end()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        // Reopen the object: `{...}` loses its `}` and goes on (a field recorded again
        // appears twice; readers keep the last).
        let reopened = current.fields.ends_with('}');
        if reopened {
            current.fields.pop();
        }
        let any = reopened && current.fields.len() > 1;
        let mut writer = current.as_writer();
        let mut object = JsonObject::continuing(&mut writer, reopened, any);
        fields.record(&mut object);
        object.end()
    }
}

/// Writes `{"name":value,...}`: strings escaped, numbers and booleans as they are, anything
/// else by its `Debug` text as a string.
struct JsonObject<'a, 'w> {
    writer: &'a mut Writer<'w>,
    /// Whether a field was written (the next one needs a comma).
    any: bool,
    result: std::fmt::Result,
}

impl<'a, 'w> JsonObject<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>) -> Self {
        let result = writer.write_char('{');
        Self {
            writer,
            any: false,
            result,
        }
    }

    /// Goes on with an object already `open` (`any`: it holds fields), or starts one.
    fn continuing(writer: &'a mut Writer<'w>, open: bool, any: bool) -> Self {
        if open {
            Self {
                writer,
                any,
                result: Ok(()),
            }
        } else {
            Self::new(writer)
        }
    }

    fn key(&mut self, field: &Field) -> std::fmt::Result {
        self.result?;
        if std::mem::replace(&mut self.any, true) {
            self.writer.write_char(',')?;
        }
        self.writer.write_char('"')?;
        Escaping(self.writer).write_str(field.name())?;
        self.writer.write_str("\":")
    }

    fn field(&mut self, field: &Field, value: std::fmt::Arguments<'_>, string: bool) {
        self.result = self.key(field).and_then(|()| {
            if string {
                quoted(self.writer, value)
            } else {
                self.writer.write_fmt(value)
            }
        });
    }

    fn text(&mut self, field: &Field, value: &str) {
        self.result = self.key(field).and_then(|()| {
            self.writer.write_char('"')?;
            Escaping(self.writer).write_str(value)?;
            self.writer.write_char('"')
        });
    }

    fn end(self) -> std::fmt::Result {
        self.result?;
        self.writer.write_char('}')
    }
}

impl Visit for JsonObject<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, format_args!("{value}"), false);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, format_args!("{value}"), false);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, format_args!("{value}"), false);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those go as text.
        self.field(field, format_args!("{value}"), !value.is_finite());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field, format_args!("{value:?}"), true);
    }
}

/// Writes `text` as a JSON string: quoted, with `"`, `\\` and control characters escaped.
fn quoted(writer: &mut Writer<'_>, text: std::fmt::Arguments<'_>) -> std::fmt::Result {
    writer.write_char('"')?;
    Escaping(writer).write_fmt(text)?;
    writer.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl std::fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(at) = rest
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || b < b' ')
        {
            self.0.write_str(&rest[..at])?;
            // An ASCII byte: one character.
            match rest.as_bytes()[at] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                b => write!(self.0, "\\u{b:04x}")?,
            }
            rest = &rest[at + 1..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The JSON lines the node's JSON layer (with [`SpanFields`]) writes while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .json()
                .with_current_span(true)
                .fmt_fields(SpanFields)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, f);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The JSON layer reads span fields back as a JSON object: every kind of value, escapes
    /// and fields recorded later come through intact.
    #[test]
    fn span_fields_reach_the_json_lines_intact() {
        let lines = logged(|| {
            let span = tracing::info_span!(
                "request",
                request_id = "a\"b\\c\nd\u{1}é",
                n = 7u64,
                neg = -3i64,
                ok = true,
                ratio = 0.5f64,
                nan = f64::NAN,
                debug = ?("x", 1),
                later = tracing::field::Empty,
            );
            span.record("later", "recorded");
            span.in_scope(|| tracing::info!("inside"));
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({
                "name": "request",
                "request_id": "a\"b\\c\nd\u{1}é",
                "n": 7,
                "neg": -3,
                "ok": true,
                "ratio": 0.5,
                "nan": "NaN",
                "debug": "(\"x\", 1)",
                "later": "recorded",
            })
        );
    }

    /// A span with no fields, and one whose only field comes later, are objects too.
    #[test]
    fn spans_without_fields_are_empty_objects() {
        let lines = logged(|| {
            let bare = tracing::info_span!("bare");
            bare.in_scope(|| tracing::info!("one"));
            let late = tracing::info_span!("late", id = tracing::field::Empty);
            late.record("id", 5u64);
            late.in_scope(|| tracing::info!("two"));
        });
        assert_eq!(lines[0]["span"], serde_json::json!({"name": "bare"}));
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({"name": "late", "id": 5})
        );
    }

    #[test]
    fn trace_settings_are_checked() {
        let with = |endpoint: &str, sample: f64| LogSection {
            otlp_endpoint: endpoint.to_owned(),
            trace_sample: sample,
            ..LogSection::default()
        };
        assert!(with("", 0.001).validate().is_ok());
        let err = with("", 1.5).validate().unwrap_err();
        assert!(err.to_string().contains("trace_sample"), "{err}");
        let endpoint = with("http://127.0.0.1:4318", 0.001).validate();
        if cfg!(feature = "otlp") {
            assert!(endpoint.is_ok());
            assert!(with("https://collector:4318", 0.001).validate().is_err());
            assert!(with("http://", 0.001).validate().is_err());
        } else {
            let err = endpoint.unwrap_err();
            assert!(err.to_string().contains("otlp feature"), "{err}");
        }
    }
}
