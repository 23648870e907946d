#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
use super::*;
use std::time::Duration;

use crate::Bus;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Net {
    listen: String,
    timeout_ms: u64,
}

impl Default for Net {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".into(),
            timeout_ms: 1000,
        }
    }
}

impl Section for Net {
    const NAME: &'static str = "net";
    fn validate(&self) -> Result<(), FieldError> {
        if self.timeout_ms == 0 {
            return Err(FieldError::new("timeout_ms", "must be positive"));
        }
        Ok(())
    }
    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        unchanged("listen", &self.listen, &next.listen)
    }
}

fn config_in(dir: &Path, text: &str) -> (PathBuf, Config, Metrics) {
    let path = dir.join("ron.toml");
    std::fs::write(&path, text).unwrap();
    let metrics = Metrics::new();
    let config = Config::builder()
        .optional_file(&path)
        .register::<Net>()
        .register::<KernelSection>()
        .metrics(&metrics)
        .build()
        .unwrap();
    (path, config, metrics)
}

#[test]
fn defaults_without_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::builder()
        .optional_file(dir.path().join("absent.toml"))
        .register::<Net>()
        .build()
        .unwrap();
    assert_eq!(*config.get::<Net>(), Net::default());
    assert_eq!(config.version(), 1);
}

#[test]
fn required_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let err = Config::builder()
        .file(dir.path().join("absent.toml"))
        .register::<Net>()
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
}

#[test]
fn overrides_beat_the_file_on_every_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ron.toml");
    std::fs::write(&path, "[net]\nlisten = \"0.0.0.0:1\"\ntimeout_ms = 5\n").unwrap();
    let config = Config::builder()
        .file(&path)
        .set("net.listen", "127.0.0.1:9")
        .register::<Net>()
        .build()
        .unwrap();
    assert_eq!(config.get::<Net>().listen, "127.0.0.1:9");
    assert_eq!(config.get::<Net>().timeout_ms, 5);
    // The file changes listen (overridden, so no live-change refusal) and the timeout.
    std::fs::write(&path, "[net]\nlisten = \"0.0.0.0:2\"\ntimeout_ms = 6\n").unwrap();
    assert_eq!(config.reload().unwrap(), Reload::Applied { version: 2 });
    assert_eq!(config.get::<Net>().listen, "127.0.0.1:9");
}

#[test]
fn bad_override_path_is_an_error() {
    let err = Config::builder()
        .set("nodot", 1)
        .register::<Net>()
        .build()
        .unwrap_err();
    assert_eq!(err.field(), Some("nodot"));
}

#[test]
fn errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[net]\ntimeout_ms = \"soon\"\n", "net.timeout_ms"),
        ("[net]\ntimeout_ms = 0\n", "net.timeout_ms"),
        ("[net]\ntimeot_ms = 5\n", "net.timeot_ms"),
        ("[nett]\ntimeout_ms = 5\n", "nett"),
        ("[kernel]\nbus_capacity = 0\n", "kernel.bus_capacity"),
    ];
    for (text, field) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let err = Config::builder()
            .file(&path)
            .register::<Net>()
            .register::<KernelSection>()
            .build()
            .unwrap_err();
        assert_eq!(err.field(), Some(field), "{text:?}: {err}");
    }
    let path = dir.path().join("syntax.toml");
    std::fs::write(&path, "[net]\n\ntimeout_ms = = 3\n").unwrap();
    let err = Config::builder()
        .file(&path)
        .register::<Net>()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn unknown_field_error_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[net]\ntimeot_ms = 5\n").unwrap();
    let err = Config::builder()
        .file(&path)
        .register::<Net>()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("timeot_ms"), "{err}");
}

#[test]
fn reload_applies_valid_and_keeps_previous_on_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let (path, config, metrics) = config_in(dir.path(), "[net]\ntimeout_ms = 10\n");

    std::fs::write(&path, "[net]\ntimeout_ms = 20\n").unwrap();
    assert_eq!(config.reload().unwrap(), Reload::Applied { version: 2 });
    assert_eq!(config.get::<Net>().timeout_ms, 20);

    // Same effective config: no new version.
    std::fs::write(&path, "# comment only changes\n[net]\ntimeout_ms = 20\n").unwrap();
    assert_eq!(config.reload().unwrap(), Reload::Unchanged { version: 2 });

    // Invalid: version and values stay, the error names the field.
    std::fs::write(&path, "[net]\ntimeout_ms = 0\n").unwrap();
    let err = config.reload().unwrap_err();
    assert_eq!(err.field(), Some("net.timeout_ms"));
    assert_eq!(config.version(), 2);
    assert_eq!(config.get::<Net>().timeout_ms, 20);
    assert!(config.last_error().unwrap().contains("net.timeout_ms"));

    // A field that cannot change live is refused by name.
    std::fs::write(&path, "[net]\nlisten = \"0.0.0.0:80\"\ntimeout_ms = 30\n").unwrap();
    let err = config.reload().unwrap_err();
    assert!(matches!(err, ConfigError::NotLive(_)));
    assert_eq!(err.field(), Some("net.listen"));
    assert_eq!(
        config.get::<Net>().timeout_ms,
        20,
        "nothing of a refused file applies"
    );

    std::fs::write(&path, "[net]\ntimeout_ms = 30\n").unwrap();
    assert_eq!(config.reload().unwrap(), Reload::Applied { version: 3 });
    assert_eq!(config.last_error(), None);

    let text = metrics.encode();
    assert!(text.contains("config_version 3"), "{text}");
    assert!(
        text.contains("config_reloads_total{result=\"rejected\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("config_rejected_total{field=\"net.listen\"} 1"),
        "{text}"
    );
}

#[tokio::test]
#[cfg_attr(miri, ignore = "inotify is a foreign function Miri cannot run")]
async fn watcher_publishes_applied_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    let (path, config, metrics) = config_in(dir.path(), "[net]\ntimeout_ms = 10\n");
    let bus = Bus::new(16);
    let mut events = bus.subscribe();
    let watcher = {
        let (config, bus) = (config.clone(), bus.clone());
        tokio::spawn(async move { config.watch(&bus, Duration::from_millis(50)).await })
    };
    // Give the watcher a moment to install its inotify watch; the write below is then
    // retried until seen, so a slow start cannot lose it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 11;
    let event = loop {
        std::fs::write(&path, format!("[net]\ntimeout_ms = {n}\n")).unwrap();
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Some(e)) => break e,
            _ if tokio::time::Instant::now() < deadline => n += 1,
            _ => panic!("no ConfigUpdated within 20 s"),
        }
    };
    assert!(
        matches!(event, crate::KernelEvent::ConfigUpdated { version: 2 }),
        "{event:?}"
    );

    // An invalid edit publishes nothing and keeps the version.
    std::fs::write(&path, "[net]\ntimeout_ms = 0\n").unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(600), events.recv()).await;
    assert!(quiet.is_err(), "invalid file must not publish: {quiet:?}");
    assert_eq!(config.version(), 2);
    assert!(config.last_error().is_some());
    // Left in place, read by the reload, touched with the same bytes: reported once (a
    // reload's own read of the file is not a change, nor is a rewrite of the same bytes).
    std::fs::write(&path, "[net]\ntimeout_ms = 0\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = metrics.encode();
    assert!(
        text.contains("config_reloads_total{result=\"rejected\"} 1"),
        "{text}"
    );
    watcher.abort();
}

#[tokio::test]
async fn a_watcher_without_a_directory_waits_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::builder()
        .optional_file(dir.path().join("missing/ron.toml"))
        .build()
        .unwrap();
    let bus = Bus::new(4);
    let watched = tokio::time::timeout(
        Duration::from_millis(300),
        config.watch(&bus, Duration::from_millis(50)),
    )
    .await;
    assert!(watched.is_err(), "still waiting, not an error: {watched:?}");
}
