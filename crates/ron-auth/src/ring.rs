//! The node's capability-signing keys and their rotation.
//!
//! The newest key signs; every older key is retired at the moment its successor was created
//! and stays verify-only for the grace window, after which it is forgotten (and its file
//! removed). No key signs past the maximum age: [`KeyRing::maintain`] creates a successor
//! first. On disk each key is `sign-<created unix seconds>.key` (0600) in the ring's folder,
//! so a rotation done by `ron key rotate` while the node runs is picked up at its next
//! maintenance.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use biscuit_auth::PublicKey;

use crate::keys::{KeyError, SigningKey, key_id};

const DAY: u64 = 86_400;

/// One key of the ring.
#[derive(Debug, Clone)]
pub struct RingKey {
    /// Its id, as carried in tokens.
    pub id: u32,
    /// Created at (unix seconds).
    pub created: u64,
    /// Retired at (unix seconds): when the next key was created. `None` for the active key.
    pub retired: Option<u64>,
    /// The key.
    pub key: Arc<SigningKey>,
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// A new signing key was created.
    pub rotated: bool,
    /// Keys past their grace window were forgotten.
    pub pruned: usize,
    /// The set of keys changed in any way (including keys found on disk).
    pub changed: bool,
}

/// The node's capability-signing keys: on disk, or in memory only.
#[derive(Debug)]
pub struct KeyRing {
    dir: Option<PathBuf>,
    /// Sorted by creation time, oldest first.
    keys: RwLock<Arc<Vec<RingKey>>>,
}

impl KeyRing {
    /// The ring kept in `dir` (created if missing). Keys are read now; none is created until
    /// [`KeyRing::maintain`].
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        fs::create_dir_all(dir).map_err(|e| KeyError::io(dir, e))?;
        let ring = Self {
            dir: Some(dir.to_owned()),
            keys: RwLock::new(Arc::new(Vec::new())),
        };
        ring.reload()?;
        Ok(ring)
    }

    /// A ring that lives in memory only (amnesia).
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            keys: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// All keys, oldest first.
    pub fn keys(&self) -> Arc<Vec<RingKey>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The signing key, if there is one.
    pub fn active(&self) -> Option<RingKey> {
        self.keys().last().cloned()
    }

    /// The keys whose signatures are accepted at `now`: the active key, and retired keys
    /// within `grace_days` of their retirement.
    pub fn verifying(&self, now: u64, grace_days: u32) -> Vec<(u32, PublicKey)> {
        self.keys()
            .iter()
            .filter(|k| {
                k.retired
                    .is_none_or(|r| now < r + u64::from(grace_days) * DAY)
            })
            .map(|k| (k.id, k.key.public()))
            .collect()
    }

    /// Picks up keys written by another process, makes sure a signing key younger than
    /// `max_age_days` exists (creating one if not), and forgets keys retired more than
    /// `grace_days` ago.
    pub fn maintain(
        &self,
        now: u64,
        max_age_days: u32,
        grace_days: u32,
    ) -> Result<Maintenance, KeyError> {
        let mut done = Maintenance {
            changed: self.reload()?,
            ..Maintenance::default()
        };
        let due = self
            .active()
            .is_none_or(|k| now >= k.created + u64::from(max_age_days) * DAY);
        if due {
            self.rotate(now)?;
            done.rotated = true;
            done.changed = true;
        }
        done.pruned = self.prune(now, grace_days)?;
        done.changed |= done.pruned > 0;
        Ok(done)
    }

    /// Creates a new signing key now; the current one retires into its grace window.
    pub fn rotate(&self, now: u64) -> Result<RingKey, KeyError> {
        let key = Arc::new(SigningKey::generate());
        let mut created = now.max(self.active().map_or(0, |k| k.created + 1));
        if let Some(dir) = &self.dir {
            // Another process may have taken this second: take the next free one.
            loop {
                match key.write(&dir.join(file_name(created))) {
                    Ok(()) => break,
                    Err(KeyError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        created += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let entry = RingKey {
            id: key_id(&key.public()),
            created,
            retired: None,
            key,
        };
        let mut guard = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let mut keys = guard.as_ref().clone();
        keys.push(entry.clone());
        *guard = Arc::new(with_retirement(keys));
        tracing::info!(key_id = entry.id, "new capability-signing key");
        Ok(entry)
    }

    fn prune(&self, now: u64, grace_days: u32) -> Result<usize, KeyError> {
        let keys = self.keys();
        let (expired, kept): (Vec<_>, Vec<_>) = keys.iter().cloned().partition(|k| {
            k.retired
                .is_some_and(|r| now >= r + u64::from(grace_days) * DAY)
        });
        if expired.is_empty() {
            return Ok(0);
        }
        if let Some(dir) = &self.dir {
            for k in &expired {
                let path = dir.join(file_name(k.created));
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(KeyError::io(&path, e)),
                }
            }
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(kept);
        for k in &expired {
            tracing::info!(key_id = k.id, "retired capability-signing key forgotten");
        }
        Ok(expired.len())
    }

    /// Re-reads the folder; true if the set of keys changed.
    fn reload(&self) -> Result<bool, KeyError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| KeyError::io(dir, e))? {
            let entry = entry.map_err(|e| KeyError::io(dir, e))?;
            let name = entry.file_name();
            let Some(created) = name
                .to_str()
                .and_then(|n| n.strip_prefix("sign-"))
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            found.push(created);
        }
        found.sort_unstable();
        let current = self.keys();
        if current.iter().map(|k| k.created).eq(found.iter().copied()) {
            return Ok(false);
        }
        let mut keys = Vec::with_capacity(found.len());
        for created in found {
            let key = match current.iter().find(|k| k.created == created) {
                Some(k) => k.key.clone(),
                None => Arc::new(SigningKey::read(&dir.join(file_name(created)))?),
            };
            keys.push(RingKey {
                id: key_id(&key.public()),
                created,
                retired: None,
                key,
            });
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(with_retirement(keys));
        Ok(true)
    }
}

fn file_name(created: u64) -> String {
    format!("sign-{created:020}.key")
}

/// Sets each key's retirement to its successor's creation.
fn with_retirement(mut keys: Vec<RingKey>) -> Vec<RingKey> {
    keys.sort_by_key(|k| k.created);
    let next: Vec<Option<u64>> = keys.iter().skip(1).map(|k| Some(k.created)).collect();
    for (k, retired) in keys.iter_mut().zip(next.into_iter().chain([None])) {
        k.retired = retired;
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_790_000_000;

    #[test]
    fn rotates_at_max_age_and_forgets_after_grace() {
        let ring = KeyRing::in_memory();
        assert!(ring.maintain(T0, 30, 7).unwrap().rotated, "first key");
        let first = ring.active().unwrap();
        assert!(!ring.maintain(T0 + 29 * DAY, 30, 7).unwrap().rotated);
        let done = ring.maintain(T0 + 30 * DAY, 30, 7).unwrap();
        assert!(done.rotated);
        let second = ring.active().unwrap();
        assert_ne!(first.id, second.id);
        let verifying = |now| -> Vec<u32> { ring.verifying(now, 7).iter().map(|k| k.0).collect() };
        assert_eq!(verifying(T0 + 36 * DAY), [first.id, second.id]);
        assert_eq!(verifying(T0 + 37 * DAY), [second.id]);
        assert_eq!(ring.maintain(T0 + 37 * DAY, 30, 7).unwrap().pruned, 1);
        assert_eq!(ring.keys().len(), 1);
    }

    #[test]
    fn a_folder_ring_sees_rotations_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let node = KeyRing::open(dir.path()).unwrap();
        node.maintain(T0, 30, 7).unwrap();
        let cli = KeyRing::open(dir.path()).unwrap();
        assert_eq!(cli.active().unwrap().id, node.active().unwrap().id);
        let new = cli.rotate(T0 + 60).unwrap();
        let done = node.maintain(T0 + 120, 30, 7).unwrap();
        assert!(done.changed && !done.rotated);
        assert_eq!(node.active().unwrap().id, new.id);
        // Pruning removes the file as well.
        node.maintain(T0 + 60 + 7 * DAY, 30, 7).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(KeyRing::open(dir.path()).unwrap().keys().len(), 1);
    }

    #[test]
    fn two_rotations_in_one_second_keep_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyRing::open(dir.path()).unwrap();
        let b = KeyRing::open(dir.path()).unwrap();
        a.rotate(T0).unwrap();
        b.rotate(T0).unwrap();
        assert_eq!(KeyRing::open(dir.path()).unwrap().keys().len(), 2);
    }
}
