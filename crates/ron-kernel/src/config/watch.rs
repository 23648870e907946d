//! The config file watcher: notices edits (including editors' write-and-rename), waits for a
//! quiet moment, reloads, and announces an applied change on the bus.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Config, Reload};
use crate::{Bus, KernelEvent};

/// Why the watcher stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The operating system's file watching failed.
    #[error("cannot watch {}: {source}", dir.display())]
    Notify {
        /// The directory watched.
        dir: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
    /// The watcher's event source went away.
    #[error("config watcher stopped delivering events")]
    Closed,
}

impl Config {
    /// Watches the config file until the returned future is dropped: after each burst of
    /// changes (quiet for `debounce`) it reloads; an applied change is published as
    /// `ConfigUpdated { version }`, a refused one is logged by field name and counted.
    /// Without a file it waits forever.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it stops watching; a reload in progress completes first because
    /// reloads are synchronous.
    pub async fn watch(&self, bus: &Bus, debounce: Duration) -> Result<(), WatchError> {
        let Some(path) = self.path().map(Path::to_path_buf) else {
            std::future::pending::<()>().await;
            return Ok(());
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            // Amnesia, or a data dir not made yet: there is nothing to watch, and trying
            // again would only fail again.
            tracing::info!(dir = %dir.display(), "no config directory to watch");
            std::future::pending::<()>().await;
            return Ok(());
        }
        let name = path.file_name().map(|n| n.to_os_string());
        // One pending signal is enough: any number of events means "look again".
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reading the file (as a reload does) is an access event: not a change.
            if let Ok(event) = res
                && !matches!(event.kind, notify::EventKind::Access(_))
                && event.paths.iter().any(|p| p.file_name() == name.as_deref())
            {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| WatchError::Notify {
            dir: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                dir: dir.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), "watching config file");
        // What the file held when it was last looked at: a touch, a metadata change or a
        // rewrite with the same bytes is not a change (and an invalid file is reported once
        // per change, not once per event).
        let mut seen = contents(&path);
        loop {
            rx.recv().await.ok_or(WatchError::Closed)?;
            // Debounce: wait until the file has been quiet for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return Err(WatchError::Closed),
                    Err(_quiet) => break,
                }
            }
            let now = contents(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(Reload::Applied { version }) => {
                    tracing::info!(version, "config reloaded");
                    bus.publish(KernelEvent::ConfigUpdated { version });
                }
                Ok(Reload::Unchanged { version }) => {
                    tracing::debug!(version, "config file touched; nothing changed");
                }
                Err(e) => tracing::warn!(
                    field = e.field().unwrap_or("<file>"),
                    error = %e,
                    version = self.version(),
                    "config reload refused; keeping the running config"
                ),
            }
        }
    }
}

/// A digest of the file's contents (`None` while it cannot be read).
fn contents(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
