//! The config snapshot's hand-over under loom: reloads racing each other, and a reader that
//! learns of a reload (as a service does from `ConfigUpdated` on the bus) racing the swap.
//! The file is written before each model run; loom explores the interleavings of the locks.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::path::PathBuf;
use std::sync::Arc;

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use serde::{Deserialize, Serialize};

use super::{Config, Reload, Section};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Demo {
    value: u32,
}

impl Section for Demo {
    const NAME: &'static str = "demo";
}

/// A config at version 1 reading `value = 1`, whose file now says `value = 2`.
fn config_about_to_change(dir: &std::path::Path) -> Config {
    let path: PathBuf = dir.join("ron.toml");
    std::fs::write(&path, "[demo]\nvalue = 1\n").unwrap();
    let config = Config::builder()
        .file(&path)
        .register::<Demo>()
        .build()
        .unwrap();
    std::fs::write(&path, "[demo]\nvalue = 2\n").unwrap();
    config
}

#[test]
fn loom_racing_reloads_apply_a_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = Arc::new(dir.path().to_path_buf());
    loom::model(move || {
        let config = config_about_to_change(&dir);
        let other = config.clone();
        let racer = thread::spawn(move || other.reload().unwrap());
        let mine = config.reload().unwrap();
        let theirs = racer.join().unwrap();
        // One reload applies version 2; the other finds nothing left to change.
        let mut outcomes = [mine, theirs];
        outcomes.sort_by_key(|r| matches!(r, Reload::Applied { .. }));
        assert_eq!(
            outcomes,
            [
                Reload::Unchanged { version: 2 },
                Reload::Applied { version: 2 }
            ]
        );
        assert_eq!(config.version(), 2);
        assert_eq!(config.get::<Demo>().value, 2);
    });
}

#[test]
fn loom_a_reader_told_of_a_reload_sees_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let dir = Arc::new(dir.path().to_path_buf());
    loom::model(move || {
        let config = config_about_to_change(&dir);
        // The watcher's announcement, as the bus carries it: the version, after the swap.
        let announced = Arc::new(AtomicU64::new(0));
        let (watcher, told) = (config.clone(), announced.clone());
        let reloader = thread::spawn(move || {
            if let Ok(Reload::Applied { version }) = watcher.reload() {
                told.store(version, Ordering::Release);
            }
        });
        // Snapshots only move forward: a value read after the version is never older.
        let (version, value) = (config.version(), config.get::<Demo>().value);
        assert!(
            u64::from(value) >= version,
            "version {version} then value {value}"
        );
        // Once told, it sees the announced snapshot or a later one.
        if announced.load(Ordering::Acquire) == 2 {
            assert_eq!(config.version(), 2);
            assert_eq!(config.get::<Demo>().value, 2);
        }
        reloader.join().unwrap();
        assert_eq!(config.get::<Demo>().value, 2);
    });
}
