//! Usage rolled up per identity per minute and per hour, in one redb file. Plain code over
//! times passed in.
//!
//! [`Rollups::apply`] adds a batch of events and, in the same fsynced transaction, the ledger
//! position they were read up to: events read from the ledger are counted once, never twice,
//! never lost, whatever crashes. Every minute (hour) that has ended gets a row for each
//! identity active within the hour (day) before it, zeros included, so a missing window is
//! never read as zero: it is a zero row, or the identity was not active.
//!
//! Storage is tallied each minute: every object an identity uploaded and the node still
//! stores counts its bytes for that minute (byte-minutes; byte-hours are a sixtieth of them).
//! The tally is one more kind of event, made in the same transaction that records the minute
//! as tallied, so each minute is tallied once.

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ron_proto::Address;
use serde::Serialize;

/// (identity, minute start ms) -> requests, bytes in, bytes out, mail messages sent.
const MINUTES: TableDefinition<(&str, u64), (u64, u64, u64, u64)> = TableDefinition::new("minutes");
/// (identity, hour start ms) -> requests, bytes in, bytes out, mail messages sent.
const HOURS: TableDefinition<(&str, u64), (u64, u64, u64, u64)> = TableDefinition::new("hours");
/// (identity, minute start ms) -> byte-minutes stored (a table of its own: files written
/// before storage was tallied open unchanged).
const STORED_MINUTES: TableDefinition<(&str, u64), u64> = TableDefinition::new("stored_minutes");
/// (identity, hour start ms) -> byte-minutes stored.
const STORED_HOURS: TableDefinition<(&str, u64), u64> = TableDefinition::new("stored_hours");
/// (identity, object) -> its size: what each identity uploaded, tallied while stored.
const HOLDINGS: TableDefinition<(&str, &[u8; 32]), u64> = TableDefinition::new("holdings");
/// Identity -> the start of the last minute it was active in.
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
/// `cursor`: the ledger sequence read up to; `closed`: the last minute given zero rows;
/// `tallied`: the last minute whose storage was tallied.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A minute, in ms.
pub const MINUTE: u64 = 60_000;
/// An hour, in ms.
pub const HOUR: u64 = 3_600_000;
/// Minute rows are kept this long (hour rows are kept).
const KEEP_MINUTES: u64 = 48 * HOUR;

/// redb's page cache for this file at most.
const CACHE_BYTES: usize = 32 << 20;
/// Holdings tallied at most (the oldest-keyed first; past it an identity's further uploads
/// are not tallied).
pub const MAX_HOLDINGS: usize = 1_000_000;
/// Minutes missed (the node stopped) tallied at most when it runs again.
const CATCH_UP: u64 = 60;

/// What the node still stores, asked once a minute by the tally (blocking: called off the
/// async workers).
pub trait Stored: Send + Sync + 'static {
    /// For each address, whether the node stores the object now.
    fn stored(&self, addrs: &[Address]) -> Vec<bool>;
}

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests.
    pub requests: u64,
    /// Bytes received (uploads).
    pub bytes_in: u64,
    /// Bytes sent (reads).
    pub bytes_out: u64,
    /// Mail messages sent (each envelope accepted from this identity).
    pub messages: u64,
    /// Bytes of its uploads the node stored, times the minutes (byte-hours × 60).
    pub byte_minutes: u64,
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Usage", 5)?;
        st.serialize_field("requests", &self.requests)?;
        st.serialize_field("bytes_in", &self.bytes_in)?;
        st.serialize_field("bytes_out", &self.bytes_out)?;
        st.serialize_field("messages", &self.messages)?;
        // Storj's unit; a minute's tally is a sixtieth of an hour.
        st.serialize_field("byte_hours", &(self.byte_minutes as f64 / 60.0))?;
        st.end()
    }
}

impl Usage {
    /// `self + other` (saturating).
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            requests: self.requests.saturating_add(other.requests),
            bytes_in: self.bytes_in.saturating_add(other.bytes_in),
            bytes_out: self.bytes_out.saturating_add(other.bytes_out),
            messages: self.messages.saturating_add(other.messages),
            byte_minutes: self.byte_minutes.saturating_add(other.byte_minutes),
        }
    }

    fn of(r: (u64, u64, u64, u64), byte_minutes: u64) -> Usage {
        Usage {
            requests: r.0,
            bytes_in: r.1,
            bytes_out: r.2,
            messages: r.3,
            byte_minutes,
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

/// A window's two tables: requests and bytes, and storage.
struct Tables<'t> {
    rows: redb::Table<'t, (&'static str, u64), (u64, u64, u64, u64)>,
    stored: redb::Table<'t, (&'static str, u64), u64>,
}

impl Tables<'_> {
    fn add(&mut self, id: &str, start: u64, usage: Usage) -> Result<(), StoreError> {
        let old = self
            .rows
            .get((id, start))?
            .map_or((0, 0, 0, 0), |v| v.value());
        self.rows.insert(
            (id, start),
            (
                old.0.saturating_add(usage.requests),
                old.1.saturating_add(usage.bytes_in),
                old.2.saturating_add(usage.bytes_out),
                old.3.saturating_add(usage.messages),
            ),
        )?;
        if usage.byte_minutes > 0 {
            let old = self.stored.get((id, start))?.map_or(0, |v| v.value());
            self.stored
                .insert((id, start), old.saturating_add(usage.byte_minutes))?;
        }
        Ok(())
    }
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
        txn.open_table(STORED_MINUTES)?;
        txn.open_table(STORED_HOURS)?;
        txn.open_table(HOLDINGS)?;
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

    /// Adds `events` and `holdings` (who uploaded which object of what size), records
    /// `cursor` (when given), gives every minute and hour that has ended by `now_ms` its zero
    /// rows, and, with `stored`, tallies the storage of the minutes ended since the last
    /// tally (at most the last hour's); one fsynced transaction.
    pub fn apply(
        &self,
        events: &[Event],
        cursor: Option<u64>,
        now_ms: u64,
        holdings: &[(String, Address, u64)],
        stored: Option<&dyn Stored>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut minutes = Tables {
                rows: txn.open_table(MINUTES)?,
                stored: txn.open_table(STORED_MINUTES)?,
            };
            let mut hours = Tables {
                rows: txn.open_table(HOURS)?,
                stored: txn.open_table(STORED_HOURS)?,
            };
            let mut held = txn.open_table(HOLDINGS)?;
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
                        minutes.add(id, m, Usage::default())?;
                    }
                    // The last minute of an hour closes that hour.
                    let end = m + MINUTE;
                    if end.is_multiple_of(HOUR) && *last <= m && end - HOUR < last + 24 * HOUR {
                        hours.add(id, end - HOUR, Usage::default())?;
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
            // The storage of the minutes ended since the last tally, then the new holdings
            // (uploaded in the open minute: tallied from its end on).
            let tally = match stored {
                Some(stored) => tally(&mut held, &mut meta, stored, open_minute)?,
                None => Vec::new(),
            };
            for (id, addr, bytes) in holdings {
                if held.len()? < MAX_HOLDINGS as u64 {
                    held.insert((id.as_str(), addr.as_bytes()), *bytes)?;
                }
            }
            // Then the events (a late one adds to its window's row, zero or not).
            for e in events.iter().chain(&tally) {
                let minute = e.at_ms - e.at_ms % MINUTE;
                minutes.add(&e.identity, minute, e.usage)?;
                hours.add(&e.identity, e.at_ms - e.at_ms % HOUR, e.usage)?;
                let last = active.get(e.identity.as_str())?.map_or(0, |v| v.value());
                if minute > last {
                    active.insert(e.identity.as_str(), minute)?;
                }
            }
            // Old minute rows go (hour rows stay).
            let cutoff = open_minute.saturating_sub(KEEP_MINUTES);
            let old: Vec<(String, u64)> = minutes
                .rows
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
                minutes.rows.remove((id.as_str(), start))?;
                minutes.stored.remove((id.as_str(), start))?;
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
        let (table, stored) = match window {
            Window::Minute => (txn.open_table(MINUTES)?, txn.open_table(STORED_MINUTES)?),
            Window::Hour => (txn.open_table(HOURS)?, txn.open_table(STORED_HOURS)?),
        };
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
            let byte_minutes = stored.get((id, start))?.map_or(0, |v| v.value());
            out.push(Row {
                identity: id.to_owned(),
                start_ms: start,
                usage: Usage::of(v.value(), byte_minutes),
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
        let stored = txn.open_table(STORED_HOURS)?;
        let byte_minutes = stored.get((identity, hour_ms))?.map_or(0, |v| v.value());
        Ok(table
            .get((identity, hour_ms))?
            .map_or(Usage::default(), |v| Usage::of(v.value(), byte_minutes)))
    }

    /// The holdings being tallied: how many, and their bytes.
    pub fn holdings(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let held = txn.open_table(HOLDINGS)?;
        let mut bytes = 0u64;
        for entry in held.iter()? {
            bytes = bytes.saturating_add(entry?.1.value());
        }
        Ok((held.len()?, bytes))
    }
}

/// The storage tally of the minutes ended since the last one (the minute before `open_minute`
/// and at most [`CATCH_UP`] before it; only that one on the first tally): one event per
/// identity and minute with the bytes of its holdings the node still stores. Holdings no longer
/// stored are dropped; the minute is recorded as tallied.
fn tally(
    held: &mut redb::Table<'_, (&'static str, &'static [u8; 32]), u64>,
    meta: &mut redb::Table<'_, &'static str, u64>,
    stored: &dyn Stored,
    open_minute: u64,
) -> Result<Vec<Event>, StoreError> {
    let Some(last) = open_minute.checked_sub(MINUTE) else {
        return Ok(Vec::new());
    };
    let tallied = meta.get("tallied")?.map(|v| v.value());
    let first = match tallied {
        Some(t) if t >= last => return Ok(Vec::new()),
        Some(t) => (t + MINUTE).max(last.saturating_sub((CATCH_UP - 1) * MINUTE)),
        None => last,
    };
    meta.insert("tallied", last)?;
    let all: Vec<(String, Address, u64)> = held
        .iter()?
        .map(|e| {
            e.map(|(k, v)| {
                let (id, addr) = k.value();
                (id.to_owned(), Address::from_bytes(*addr), v.value())
            })
        })
        .collect::<Result<_, _>>()?;
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let addrs: Vec<Address> = all.iter().map(|(_, a, _)| *a).collect();
    let present = stored.stored(&addrs);
    let mut sums: HashMap<String, u64> = HashMap::new();
    for ((id, addr, bytes), here) in all.into_iter().zip(present) {
        if here {
            let sum = sums.entry(id).or_default();
            *sum = sum.saturating_add(bytes);
        } else {
            held.remove((id.as_str(), addr.as_bytes()))?;
        }
    }
    let mut events = Vec::new();
    let mut m = first;
    while m <= last {
        for (id, bytes) in &sums {
            events.push(Event {
                identity: id.clone(),
                at_ms: m,
                usage: Usage {
                    byte_minutes: *bytes,
                    ..Usage::default()
                },
            });
        }
        m += MINUTE;
    }
    Ok(events)
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
                ..Usage::default()
            },
        }
    }

    #[test]
    fn active_identities_get_zero_rows_for_quiet_minutes() {
        let r = Rollups::in_memory().unwrap();
        let t0 = 10 * HOUR;
        r.apply(&[ev("a", t0 + 5, 1, 10)], Some(1), t0 + 10, &[], None)
            .unwrap();
        // Four minutes later, nothing happened: minutes 1-3 are zero rows for "a".
        r.apply(&[], None, t0 + 4 * MINUTE + 1, &[], None).unwrap();
        let rows = r.rows(Window::Minute, Some("a"), 0, 100).unwrap();
        let starts: Vec<u64> = rows.iter().map(|r| (r.start_ms - t0) / MINUTE).collect();
        assert_eq!(starts, vec![0, 1, 2, 3]);
        assert_eq!(rows[0].usage.requests, 1);
        assert!(rows[1..].iter().all(|r| r.usage == Usage::default()));
        assert_eq!(r.cursor().unwrap(), 1);
        // An hour on, its hour row is there, and the quiet minutes past an hour are not.
        r.apply(&[], None, t0 + 2 * HOUR + 1, &[], None).unwrap();
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

    /// What the tests' node stores: every address but those listed.
    struct AllBut(Vec<Address>);

    impl Stored for AllBut {
        fn stored(&self, addrs: &[Address]) -> Vec<bool> {
            addrs.iter().map(|a| !self.0.contains(a)).collect()
        }
    }

    #[test]
    fn storage_is_tallied_once_a_minute_while_stored() {
        let r = Rollups::in_memory().unwrap();
        let t0 = 10 * HOUR;
        let (x, y) = (Address::of(b"x"), Address::of(b"y"));
        let held = [
            ("a".to_owned(), x, 1000),
            ("a".to_owned(), y, 24),
            ("b".to_owned(), x, 1000),
        ];
        let all = AllBut(Vec::new());
        // Uploaded in minute 0; its end tallies nothing yet (the first tally is minute 0's).
        r.apply(&[], None, t0 + 5, &held, Some(&all)).unwrap();
        r.apply(&[], None, t0 + MINUTE + 5, &[], Some(&all))
            .unwrap();
        // The same minute again (a second roll-up within it, or a restart): not tallied twice.
        r.apply(&[], None, t0 + MINUTE + 900, &[], Some(&all))
            .unwrap();
        // y is deleted during minute 1.
        let gone = AllBut(vec![y]);
        r.apply(&[], None, t0 + 2 * MINUTE + 5, &[], Some(&gone))
            .unwrap();
        // Three minutes pass unseen (the node stopped): caught up, one row each.
        r.apply(&[], None, t0 + 6 * MINUTE + 5, &[], Some(&gone))
            .unwrap();
        let stored = |id| -> Vec<u64> {
            r.rows(Window::Minute, Some(id), 0, 100)
                .unwrap()
                .iter()
                .map(|row| row.usage.byte_minutes)
                .collect()
        };
        assert_eq!(stored("a"), [1024, 1000, 1000, 1000, 1000, 1000]);
        assert_eq!(stored("b"), [1000; 6]);
        assert_eq!(r.holdings().unwrap(), (2, 2000));
        let hour = r.hour("a", t0).unwrap();
        assert_eq!(hour.byte_minutes, 6024);
        let json = serde_json::to_value(hour).unwrap();
        assert_eq!(json["byte_hours"], 100.4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever the events and however they are batched, each identity's minute rows and
        /// hour rows both sum to its raw events.
        #[test]
        fn rollups_sum_to_the_raw_events(
            events in proptest::collection::vec((0..4usize, 0..(3 * HOUR), 0..5u64, 0..1000u64, 0..3u64), 1..200),
            cut in 1..10usize,
        ) {
            let r = Rollups::in_memory().unwrap();
            let ids = ["a", "b", "ed25519/c", "anon/1.2.3.4"];
            let mut events: Vec<Event> = events.into_iter().map(|(i, at, q, b, s)| {
                let mut e = ev(ids[i], HOUR + at, q, b);
                e.usage.byte_minutes = s * 4096;
                e
            }).collect();
            events.sort_by_key(|e| e.at_ms);
            for (i, batch) in events.chunks(cut).enumerate() {
                let now = batch.last().unwrap().at_ms + 1;
                r.apply(batch, Some(i as u64), now, &[], None).unwrap();
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
