//! Usage rolled up per identity per minute and per hour, in one redb file. Plain code over
//! times passed in.
//!
//! [`Rollups::apply`] adds a batch of events and, in the same fsynced transaction, the ledger
//! position they were read up to: events read from the ledger are counted once, never twice,
//! never lost, whatever crashes. Every minute (hour) that has ended gets a row for each
//! identity active within the hour (day) before it, zeros included, so a missing window is
//! never read as zero: it is a zero row, or the identity was not active.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;

/// (identity, minute start ms) -> requests, bytes in, bytes out, mail messages sent.
const MINUTES: TableDefinition<(&str, u64), (u64, u64, u64, u64)> = TableDefinition::new("minutes");
/// (identity, hour start ms) -> requests, bytes in, bytes out, mail messages sent.
const HOURS: TableDefinition<(&str, u64), (u64, u64, u64, u64)> = TableDefinition::new("hours");
/// Identity -> the start of the last minute it was active in.
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
/// `cursor`: the ledger sequence read up to; `closed`: the last minute given zero rows.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A minute, in ms.
pub const MINUTE: u64 = 60_000;
/// An hour, in ms.
pub const HOUR: u64 = 3_600_000;
/// Minute rows are kept this long (hour rows are kept).
const KEEP_MINUTES: u64 = 48 * HOUR;

/// redb's page cache for this file at most.
const CACHE_BYTES: usize = 32 << 20;

/// Why the rollups' store failed.
#[derive(Debug, thiserror::Error)]
#[error("usage store: {0}")]
pub struct StoreError(String);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self(e.into().to_string())
    }
}

/// What an identity used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Requests.
    pub requests: u64,
    /// Bytes received (uploads).
    pub bytes_in: u64,
    /// Bytes sent (reads).
    pub bytes_out: u64,
    /// Mail messages sent (each envelope accepted from this identity).
    pub messages: u64,
}

impl Usage {
    /// `self + other` (saturating).
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            requests: self.requests.saturating_add(other.requests),
            bytes_in: self.bytes_in.saturating_add(other.bytes_in),
            bytes_out: self.bytes_out.saturating_add(other.bytes_out),
            messages: self.messages.saturating_add(other.messages),
        }
    }

    fn row(self) -> (u64, u64, u64, u64) {
        (self.requests, self.bytes_in, self.bytes_out, self.messages)
    }

    fn of(r: (u64, u64, u64, u64)) -> Usage {
        Usage {
            requests: r.0,
            bytes_in: r.1,
            bytes_out: r.2,
            messages: r.3,
        }
    }
}

/// One event: who, when (unix ms), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The identity (`owner`, `ed25519/<hex>`, `anon/<address>`).
    pub identity: String,
    /// When.
    pub at_ms: u64,
    /// What.
    pub usage: Usage,
}

/// A window's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Whose.
    pub identity: String,
    /// The window's start (unix ms).
    pub start_ms: u64,
    /// What was used in it.
    pub usage: Usage,
}

/// Minutes or hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Per minute (kept 48 hours).
    Minute,
    /// Per hour.
    Hour,
}

/// The rollups.
pub struct Rollups {
    db: Database,
}

impl std::fmt::Debug for Rollups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollups").finish_non_exhaustive()
    }
}

fn add(
    table: &mut redb::Table<'_, (&'static str, u64), (u64, u64, u64, u64)>,
    id: &str,
    start: u64,
    usage: Usage,
) -> Result<(), StoreError> {
    let old = table
        .get((id, start))?
        .map_or(Usage::default(), |v| Usage::of(v.value()));
    table.insert((id, start), old.plus(usage).row())?;
    Ok(())
}

impl Rollups {
    /// Opens (or creates) the rollups at `path`, a file only this user may read.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        // A bounded page cache (redb's default grows to 1 GiB with the file).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError(format!("chmod {}: {e}", path.display())))?;
        Self::with(db)
    }

    /// Rollups in memory (amnesia mode, tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?)
    }

    fn with(db: Database) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(MINUTES)?;
        txn.open_table(HOURS)?;
        txn.open_table(ACTIVE)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// The ledger sequence the rollups hold events up to.
    pub fn cursor(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("cursor")?.map_or(0, |v| v.value()))
    }

    /// Adds `events`, records `cursor` (when given), and gives every minute and hour that has
    /// ended by `now_ms` its zero rows; one fsynced transaction.
    pub fn apply(
        &self,
        events: &[Event],
        cursor: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut minutes = txn.open_table(MINUTES)?;
            let mut hours = txn.open_table(HOURS)?;
            let mut active = txn.open_table(ACTIVE)?;
            let mut meta = txn.open_table(META)?;
            if let Some(c) = cursor {
                meta.insert("cursor", c)?;
            }
            // Zero rows for the windows that have ended since the last time, for those active
            // before this batch.
            let open_minute = now_ms - now_ms % MINUTE;
            let closed = meta.get("closed")?.map_or(0, |v| v.value());
            let first = if closed == 0 {
                open_minute.saturating_sub(MINUTE)
            } else {
                closed + MINUTE
            };
            // After a long stop, the last day is enough: older windows had no one active.
            let first = first.max(open_minute.saturating_sub(24 * HOUR));
            let ids: Vec<(String, u64)> = active
                .iter()?
                .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value())))
                .collect::<Result<_, _>>()?;
            let mut m = first;
            while m < open_minute {
                for (id, last) in &ids {
                    if *last <= m && m < last + HOUR {
                        add(&mut minutes, id, m, Usage::default())?;
                    }
                    // The last minute of an hour closes that hour.
                    let end = m + MINUTE;
                    if end.is_multiple_of(HOUR) && *last <= m && end - HOUR < last + 24 * HOUR {
                        add(&mut hours, id, end - HOUR, Usage::default())?;
                    }
                }
                m += MINUTE;
            }
            if open_minute > 0 {
                meta.insert("closed", open_minute - MINUTE)?;
            }
            for (id, last) in &ids {
                if last + 24 * HOUR < open_minute {
                    active.remove(id.as_str())?;
                }
            }
            // Then the events (a late one adds to its window's row, zero or not).
            for e in events {
                let minute = e.at_ms - e.at_ms % MINUTE;
                add(&mut minutes, &e.identity, minute, e.usage)?;
                add(&mut hours, &e.identity, e.at_ms - e.at_ms % HOUR, e.usage)?;
                let last = active.get(e.identity.as_str())?.map_or(0, |v| v.value());
                if minute > last {
                    active.insert(e.identity.as_str(), minute)?;
                }
            }
            // Old minute rows go (hour rows stay).
            let cutoff = open_minute.saturating_sub(KEEP_MINUTES);
            let old: Vec<(String, u64)> = minutes
                .iter()?
                .filter_map(|e| e.ok())
                .map(|(k, _)| {
                    let (id, start) = k.value();
                    (id.to_owned(), start)
                })
                .filter(|(_, start)| *start < cutoff)
                .take(10_000)
                .collect();
            for (id, start) in old {
                minutes.remove((id.as_str(), start))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Rows of `window` from `from_ms` on, for `identity` (`None`: everyone), at most `limit`.
    pub fn rows(
        &self,
        window: Window,
        identity: Option<&str>,
        from_ms: u64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(match window {
            Window::Minute => MINUTES,
            Window::Hour => HOURS,
        })?;
        let rows: Box<dyn Iterator<Item = _>> = match identity {
            Some(id) => Box::new(table.range((id, from_ms)..=(id, u64::MAX))?),
            None => Box::new(table.iter()?),
        };
        let mut out = Vec::new();
        for entry in rows {
            let (k, v) = entry?;
            let (id, start) = k.value();
            if start < from_ms {
                continue;
            }
            out.push(Row {
                identity: id.to_owned(),
                start_ms: start,
                usage: Usage::of(v.value()),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Identities active within the last day.
    pub fn active(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ACTIVE)?.len()?)
    }

    /// What `identity` used in the hour starting at `hour_ms`.
    pub fn hour(&self, identity: &str, hour_ms: u64) -> Result<Usage, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HOURS)?;
        Ok(table
            .get((identity, hour_ms))?
            .map_or(Usage::default(), |v| Usage::of(v.value())))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ev(id: &str, at_ms: u64, requests: u64, bytes_out: u64) -> Event {
        Event {
            identity: id.into(),
            at_ms,
            usage: Usage {
                requests,
                bytes_in: 0,
                bytes_out,
                messages: 0,
            },
        }
    }

    #[test]
    fn active_identities_get_zero_rows_for_quiet_minutes() {
        let r = Rollups::in_memory().unwrap();
        let t0 = 10 * HOUR;
        r.apply(&[ev("a", t0 + 5, 1, 10)], Some(1), t0 + 10)
            .unwrap();
        // Four minutes later, nothing happened: minutes 1-3 are zero rows for "a".
        r.apply(&[], None, t0 + 4 * MINUTE + 1).unwrap();
        let rows = r.rows(Window::Minute, Some("a"), 0, 100).unwrap();
        let starts: Vec<u64> = rows.iter().map(|r| (r.start_ms - t0) / MINUTE).collect();
        assert_eq!(starts, vec![0, 1, 2, 3]);
        assert_eq!(rows[0].usage.requests, 1);
        assert!(rows[1..].iter().all(|r| r.usage == Usage::default()));
        assert_eq!(r.cursor().unwrap(), 1);
        // An hour on, its hour row is there, and the quiet minutes past an hour are not.
        r.apply(&[], None, t0 + 2 * HOUR + 1).unwrap();
        let hours = r.rows(Window::Hour, Some("a"), 0, 100).unwrap();
        assert_eq!(
            hours
                .iter()
                .map(|h| (h.start_ms - t0) / HOUR)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(hours[0].usage.bytes_out, 10);
        assert_eq!(
            r.rows(Window::Minute, Some("a"), 0, 1000).unwrap().len(),
            60
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever the events and however they are batched, each identity's minute rows and
        /// hour rows both sum to its raw events.
        #[test]
        fn rollups_sum_to_the_raw_events(
            events in proptest::collection::vec((0..4usize, 0..(3 * HOUR), 0..5u64, 0..1000u64), 1..200),
            cut in 1..10usize,
        ) {
            let r = Rollups::in_memory().unwrap();
            let ids = ["a", "b", "ed25519/c", "anon/1.2.3.4"];
            let mut events: Vec<Event> = events.into_iter().map(|(i, at, q, b)| ev(ids[i], HOUR + at, q, b)).collect();
            events.sort_by_key(|e| e.at_ms);
            for (i, batch) in events.chunks(cut).enumerate() {
                let now = batch.last().unwrap().at_ms + 1;
                r.apply(batch, Some(i as u64), now).unwrap();
            }
            for id in ids {
                let raw = events.iter().filter(|e| e.identity == id).fold(Usage::default(), |a, e| a.plus(e.usage));
                let m = r.rows(Window::Minute, Some(id), 0, 100_000).unwrap().iter().fold(Usage::default(), |a, r| a.plus(r.usage));
                let h = r.rows(Window::Hour, Some(id), 0, 100_000).unwrap().iter().fold(Usage::default(), |a, r| a.plus(r.usage));
                prop_assert_eq!(raw, m);
                prop_assert_eq!(raw, h);
            }
        }
    }
}
