//! Structured logs on stderr: text on a terminal, JSON otherwise. The level follows
//! `[log] level` live, unless `RUST_LOG` is set, which wins.

use std::io::IsTerminal;

use anyhow::Context;
use ron_kernel::config::{FieldError, Section};
use serde::{Deserialize, Serialize};
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
