//! Configuration: one TOML file, typed sections registered by the services that own them,
//! an immutable snapshot swapped atomically, and reloads that check everything before
//! applying anything.
//!
//! The file is `--config FILE`, else `<data dir>/ron.toml` when it exists; values set on the
//! command line ([`Builder::set`]) override the file on every load. A reload that fails to
//! parse, fails a validator, names an unknown section or field, or changes a setting that
//! cannot change live leaves the running snapshot in place (version unchanged) and is reported
//! by field name.
//!
//! ```
//! use ron_kernel::Config;
//! use ron_kernel::config::{FieldError, Section};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[serde(deny_unknown_fields, default)]
//! struct Cache {
//!     /// Entries kept (default 1024).
//!     entries: usize,
//! }
//! impl Default for Cache {
//!     fn default() -> Self { Self { entries: 1024 } }
//! }
//! impl Section for Cache {
//!     const NAME: &'static str = "cache";
//!     fn validate(&self) -> Result<(), FieldError> {
//!         if self.entries == 0 { return Err(FieldError::new("entries", "must be at least 1")); }
//!         Ok(())
//!     }
//! }
//!
//! let config = Config::builder().register::<Cache>().set("cache.entries", 64).build().unwrap();
//! assert_eq!(config.get::<Cache>().entries, 64);
//! assert_eq!(config.version(), 1);
//! ```

mod watch;

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::{Mutex, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Metrics;

/// A typed section of the config file, owned by one service.
///
/// Implementors use `#[serde(deny_unknown_fields, default)]` and document each field's
/// default beside it.
pub trait Section:
    Serialize + DeserializeOwned + Default + Clone + PartialEq + Debug + Send + Sync + 'static
{
    /// The section's name in the file (`[NAME]`).
    const NAME: &'static str;

    /// Checks values serde cannot (ranges, relations between fields). Field names are
    /// relative to the section.
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }

    /// Refuses a change to a field that cannot change while the node runs; use
    /// [`unchanged`]. Field names are relative to the section.
    fn check_live(&self, _next: &Self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// A problem with one field, named by its dotted path (`gateway.listen`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    fn within(mut self, section: &str) -> Self {
        self.field = if self.field.is_empty() {
            section.to_owned()
        } else {
            format!("{section}.{}", self.field)
        };
        self
    }
}

/// For [`Section::check_live`]: refuses any change of `field` from `old` to `new`.
pub fn unchanged<V: PartialEq + Debug>(field: &str, old: &V, new: &V) -> Result<(), FieldError> {
    if old == new {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "cannot change while the node runs (running {old:?}, file says {new:?}); restart to apply"
            ),
        ))
    }
}

/// Why a configuration could not be loaded or reloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field is unknown, of the wrong type, or fails validation.
    #[error("invalid config: {0}")]
    Invalid(FieldError),
    /// A field that cannot change live was changed.
    #[error("config change refused: {0}")]
    NotLive(FieldError),
}

impl ConfigError {
    /// The dotted field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(f) | Self::NotLive(f) => Some(&f.field),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// A new snapshot is in force.
    Applied {
        /// Its version.
        version: u64,
    },
    /// The effective configuration did not change; the version stays.
    Unchanged {
        /// The running version.
        version: u64,
    },
}

type AnySection = Arc<dyn Any + Send + Sync>;

struct Registration {
    name: &'static str,
    load: fn(toml::Value) -> Result<AnySection, FieldError>,
    differs: fn(&AnySection, &AnySection) -> Result<bool, FieldError>,
}

fn load_section<T: Section>(value: toml::Value) -> Result<AnySection, FieldError> {
    let section: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(field, e.into_inner().to_string()).within(T::NAME)
    })?;
    section.validate().map_err(|e| e.within(T::NAME))?;
    Ok(Arc::new(section))
}

fn section_differs<T: Section>(old: &AnySection, new: &AnySection) -> Result<bool, FieldError> {
    match (old.downcast_ref::<T>(), new.downcast_ref::<T>()) {
        (Some(old), Some(new)) => {
            old.check_live(new).map_err(|e| e.within(T::NAME))?;
            Ok(old != new)
        }
        _ => Ok(true),
    }
}

struct Snapshot {
    version: u64,
    sections: HashMap<&'static str, AnySection>,
}

#[derive(Clone)]
struct ConfigMetrics {
    version: Gauge,
    reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    rejected: Family<Vec<(&'static str, String)>, Counter>,
}

struct Inner {
    path: Option<PathBuf>,
    required: bool,
    overrides: toml::Table,
    registrations: Vec<Registration>,
    current: RwLock<Arc<Snapshot>>,
    reloading: Mutex<()>,
    last_error: Mutex<Option<String>>,
    metrics: Option<ConfigMetrics>,
}

/// The node's configuration: a cheap-to-clone handle on the current immutable snapshot.
#[derive(Clone)]
pub struct Config {
    inner: Arc<Inner>,
}

impl Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.inner.path)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// Assembles a [`Config`]: the file, command-line overrides, and every service's section.
#[derive(Default)]
pub struct Builder {
    path: Option<PathBuf>,
    required: bool,
    overrides: toml::Table,
    registrations: Vec<Registration>,
    metrics: Option<Metrics>,
    error: Option<FieldError>,
}

impl Builder {
    /// Reads `path`, which must exist (`--config FILE`).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self.required = true;
        self
    }

    /// Reads `path` when it exists (`<data dir>/ron.toml`); it is watched either way.
    pub fn optional_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self.required = false;
        self
    }

    /// Sets a dotted field (`gateway.listen`) that overrides the file on every load.
    pub fn set(mut self, field: &str, value: impl Into<toml::Value>) -> Self {
        let mut parts: Vec<&str> = field.split('.').collect();
        let Some(leaf) = parts.pop().filter(|l| !l.is_empty() && !parts.is_empty()) else {
            self.error = Some(FieldError::new(field, "override must be section.field"));
            return self;
        };
        let mut nested = toml::Table::new();
        nested.insert(leaf.to_owned(), value.into());
        for part in parts.into_iter().rev() {
            let mut outer = toml::Table::new();
            outer.insert(part.to_owned(), toml::Value::Table(nested));
            nested = outer;
        }
        merge(&mut self.overrides, &nested);
        self
    }

    /// Registers section `T`.
    pub fn register<T: Section>(mut self) -> Self {
        self.registrations.push(Registration {
            name: T::NAME,
            load: load_section::<T>,
            differs: section_differs::<T>,
        });
        self
    }

    /// Exports `config_version` and reload outcomes in `metrics`.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Loads and validates everything; the first snapshot has version 1.
    pub fn build(self) -> Result<Config, ConfigError> {
        if let Some(e) = self.error {
            return Err(ConfigError::Invalid(e));
        }
        let metrics = self.metrics.map(|m| ConfigMetrics {
            version: m.register(
                "config_version",
                "Version of the configuration in force",
                Gauge::default(),
            ),
            reloads: m.register(
                "config_reloads",
                "Config reloads by result (applied, unchanged, rejected)",
                Family::default(),
            ),
            rejected: m.register(
                "config_rejected",
                "Rejected config reloads by the field at fault",
                Family::default(),
            ),
        });
        let mut inner = Inner {
            path: self.path,
            required: self.required,
            overrides: self.overrides,
            registrations: self.registrations,
            current: RwLock::new(Arc::new(Snapshot {
                version: 0,
                sections: HashMap::new(),
            })),
            reloading: Mutex::new(()),
            last_error: Mutex::new(None),
            metrics,
        };
        let sections = inner.load()?;
        inner.current = RwLock::new(Arc::new(Snapshot {
            version: 1,
            sections,
        }));
        if let Some(m) = &inner.metrics {
            m.version.set(1);
        }
        Ok(Config {
            inner: Arc::new(inner),
        })
    }
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Inner {
    fn read_table(&self) -> Result<toml::Table, ConfigError> {
        let Some(path) = &self.path else {
            return Ok(toml::Table::new());
        };
        // A config file is small; reading it inline is cheaper than a hop to a blocking pool.
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.required => {
                return Ok(toml::Table::new());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        text.parse::<toml::Table>().map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (line {})", line_of(&text, s.start)))
                .unwrap_or_default();
            ConfigError::Syntax {
                path: path.clone(),
                message: format!("{}{at}", e.message().trim()),
            }
        })
    }

    fn load(&self) -> Result<HashMap<&'static str, AnySection>, ConfigError> {
        let mut table = self.read_table()?;
        merge(&mut table, &self.overrides);
        if let Some(unknown) = table
            .keys()
            .find(|k| !self.registrations.iter().any(|r| r.name == k.as_str()))
        {
            return Err(ConfigError::Invalid(FieldError::new(
                unknown.clone(),
                "unknown section",
            )));
        }
        let mut sections = HashMap::with_capacity(self.registrations.len());
        for reg in &self.registrations {
            let value = table
                .remove(reg.name)
                .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
            sections.insert(reg.name, (reg.load)(value).map_err(ConfigError::Invalid)?);
        }
        Ok(sections)
    }
}

impl Config {
    /// Starts assembling a configuration.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current value of section `T`. A section that was never registered yields its
    /// defaults (and an error in the log: that is a wiring bug).
    pub fn get<T: Section>(&self) -> Arc<T> {
        let snapshot = self.snapshot();
        match snapshot
            .sections
            .get(T::NAME)
            .cloned()
            .map(Arc::downcast::<T>)
        {
            Some(Ok(section)) => section,
            _ => {
                tracing::error!(
                    section = T::NAME,
                    "config section read but never registered"
                );
                Arc::new(T::default())
            }
        }
    }

    /// The version of the snapshot in force: 1 at start, +1 per applied change.
    pub fn version(&self) -> u64 {
        self.snapshot().version
    }

    /// The file read, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The last reload failure, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file and, if every section loads, validates and may change live, swaps in
    /// the new snapshot. On any error the running snapshot stays.
    pub fn reload(&self) -> Result<Reload, ConfigError> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload();
        let mut last_error = self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(reload) => {
                *last_error = None;
                if let Some(m) = &self.inner.metrics {
                    let (result, version) = match reload {
                        Reload::Applied { version } => ("applied", version),
                        Reload::Unchanged { version } => ("unchanged", version),
                    };
                    m.reloads.get_or_create(&vec![("result", result)]).inc();
                    m.version.set(i64::try_from(*version).unwrap_or(i64::MAX));
                }
            }
            Err(e) => {
                *last_error = Some(e.to_string());
                if let Some(m) = &self.inner.metrics {
                    m.reloads.get_or_create(&vec![("result", "rejected")]).inc();
                    let field = e.field().unwrap_or("<file>").to_owned();
                    m.rejected.get_or_create(&vec![("field", field)]).inc();
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reload, ConfigError> {
        let next = self.inner.load()?;
        let current = self.snapshot();
        let mut changed = false;
        for reg in &self.inner.registrations {
            if let (Some(old), Some(new)) = (current.sections.get(reg.name), next.get(reg.name)) {
                changed |= (reg.differs)(old, new).map_err(ConfigError::NotLive)?;
            }
        }
        if !changed {
            return Ok(Reload::Unchanged {
                version: current.version,
            });
        }
        let version = current.version + 1;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot {
            version,
            sections: next,
        });
        Ok(Reload::Applied { version })
    }
}

/// The kernel's own section, `[kernel]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelSection {
    /// Events a bus subscriber may fall behind before it loses some (default 4096, 1 to
    /// 1,048,576). Fixed at start.
    pub bus_capacity: usize,
}

impl Default for KernelSection {
    fn default() -> Self {
        Self {
            bus_capacity: crate::bus::DEFAULT_CAPACITY,
        }
    }
}

impl Section for KernelSection {
    const NAME: &'static str = "kernel";

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=1 << 20).contains(&self.bus_capacity) {
            return Err(FieldError::new(
                "bus_capacity",
                "must be between 1 and 1048576",
            ));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        unchanged("bus_capacity", &self.bus_capacity, &next.bus_capacity)
    }
}

#[cfg(all(test, not(ron_loom)))]
mod tests;

/// Model-checked with `RUSTFLAGS="--cfg ron_loom" cargo test -p ron-kernel --lib --release loom`.
#[cfg(all(test, ron_loom))]
mod loom_tests;
