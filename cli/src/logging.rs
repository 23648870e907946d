//! Structured logs on stderr: text on a terminal, JSON otherwise. The level follows
//! `[log] level` live, unless `RUST_LOG` is set, which wins.

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogSection {
    /// Filter directives, `tracing` syntax (default `"info"`). Live.
    pub(crate) level: String,
    /// `auto`, `json` or `text` (default `auto`). Fixed at start.
    pub(crate) format: Format,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: Format::Auto,
        }
    }
}

impl Section for LogSection {
    const NAME: &'static str = "log";

    fn validate(&self) -> Result<(), FieldError> {
        EnvFilter::try_new(&self.level)
            .map(drop)
            .map_err(|e| FieldError::new("level", e.to_string()))
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        ron_kernel::config::unchanged("format", &self.format, &next.format)
    }
}

/// Changes the log level of the running process.
pub(crate) struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    env_wins: bool,
}

impl LogControl {
    /// Applies `section.level`, unless `RUST_LOG` governs.
    pub(crate) fn apply(&self, section: &LogSection) {
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
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .fmt_fields(SpanFields)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    installed.context("cannot install the logger")?;
    Ok(LogControl {
        handle,
        env_wins: env.is_some(),
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
}
