//! The mailbox's durable state in one redb file: the mailboxes this node keeps, each
//! recipient's queues (messages and receipts), the ids acknowledged lately, and the outbox of
//! envelopes waiting to be forwarded. Plain code over a clock passed in (`now_ms`), so the
//! queue semantics are tested with a simulated clock.
//!
//! Every change is a redb write transaction committed with fsync; [`Queues::apply`] applies
//! many changes in one transaction (the group commit behind the service's writer).
//! Visibility (a fetched message is hidden until acknowledged or until its timeout) is kept
//! in memory: after a crash every unacknowledged message is visible again (at least once).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ron_proto::Address;

use crate::envelope::{Head, Lane};

/// Recipient (32) | lane (1) | sequence (8, big-endian) -> message id.
const QUEUE: TableDefinition<&[u8; 41], &[u8; 32]> = TableDefinition::new("queue");
/// Message id -> sequence (8) | stored at ms (8) | envelope.
const BODIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bodies");
/// Sequence -> message id, oldest first (what retention sweeps).
const AGE: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("age");
/// Recipient -> (messages, bytes) queued.
const USAGE: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("usage");
/// Message id -> when it was acknowledged (ms): a late duplicate is not queued again.
const ACKED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("acked");
/// Acknowledgement order -> message id (what retention sweeps of `ACKED`).
const ACK_AGE: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("ack_age");
/// Recipient -> its signed mail record naming this node (the mailboxes kept here).
const MAILBOXES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("mailboxes");
/// Message id -> next attempt ms (8) | attempts (4) | queued at ms (8) | envelope.
const OUTBOX: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("outbox");
/// Counters: the next sequence numbers.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the mailbox store failed.
#[derive(Debug, thiserror::Error)]
#[error("mailbox store: {0}")]
pub struct QueueError(String);

impl QueueError {
    #[cfg(feature = "service")]
    pub(crate) fn from_message(message: String) -> Self {
        Self(message)
    }
}

impl<E: Into<redb::Error>> From<E> for QueueError {
    fn from(e: E) -> Self {
        Self(e.into().to_string())
    }
}

/// The limits a queue insert is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Messages queued per recipient (both lanes).
    pub messages: u64,
    /// Envelope bytes queued per recipient.
    pub bytes: u64,
}

/// One change, applied with others in one transaction.
#[derive(Debug, Clone)]
pub enum Change {
    /// Queue an envelope for a recipient kept here.
    Insert {
        /// Its head (read and checked).
        head: Head,
        /// The envelope.
        envelope: bytes::Bytes,
        /// The quota it must fit.
        quota: Quota,
    },
    /// Acknowledge (delete) messages of `recipient`.
    Ack {
        /// Whose.
        recipient: [u8; 32],
        /// Which.
        ids: Vec<Address>,
    },
    /// Keep a mailbox here (its record, encoded).
    Register {
        /// Whose.
        recipient: [u8; 32],
        /// The record.
        record: Vec<u8>,
        /// Most mailboxes kept.
        max: u64,
    },
    /// Put an envelope in the outbox, first attempt at `next_ms`.
    Outbox {
        /// Its id.
        id: Address,
        /// The envelope.
        envelope: bytes::Bytes,
        /// When to try first.
        next_ms: u64,
        /// Most envelopes the outbox holds.
        max: u64,
    },
    /// An outbox entry was delivered (or given up): remove it.
    Sent {
        /// Its id.
        id: Address,
    },
    /// An outbox entry failed: try again at `next_ms`.
    Retry {
        /// Its id.
        id: Address,
        /// When.
        next_ms: u64,
    },
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Queued now (`true`) or already queued or acknowledged before (`false`).
    Inserted(bool),
    /// The ids acknowledged now, out of those asked (unknown ones are left out).
    Acked(Vec<Address>),
    /// Registered.
    Registered,
    /// Put in the outbox (`false`: it was there already).
    Queued(bool),
    /// An outbox entry updated or removed.
    Updated,
}

/// Why a change was refused (the transaction goes on with the others).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This node keeps no mailbox for the recipient.
    #[error("this node keeps no mailbox for that recipient")]
    NoMailbox,
    /// The recipient's quota is used up.
    #[error("the recipient's mailbox is full ({messages} messages, {bytes} bytes queued)")]
    Full {
        /// Messages queued.
        messages: u64,
        /// Bytes queued.
        bytes: u64,
    },
    /// The node keeps as many mailboxes as it may.
    #[error("this node keeps no more mailboxes")]
    TooManyMailboxes,
    /// The outbox is full.
    #[error("the outbox is full")]
    OutboxFull,
}

/// One message handed out by a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its id.
    pub id: Address,
    /// When it was queued here (ms).
    pub stored_at_ms: u64,
    /// The envelope.
    pub envelope: Vec<u8>,
}

/// An outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its id.
    pub id: Address,
    /// Attempts made.
    pub attempts: u32,
    /// When it was put in the outbox (ms).
    pub queued_at_ms: u64,
    /// The envelope.
    pub envelope: Vec<u8>,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Unacknowledged messages past retention.
    pub messages: u64,
    /// Acknowledged ids forgotten.
    pub acked: u64,
    /// Outbox entries given up.
    pub outbox: u64,
}

/// The mailbox store.
pub struct Queues {
    db: Database,
    /// Message id -> hidden until (ms).
    hidden: Mutex<HashMap<[u8; 32], u64>>,
    /// Recipients kept here.
    hosted: Mutex<HashSet<[u8; 32]>>,
    /// Outbox entries by next attempt.
    due: Mutex<BTreeSet<(u64, [u8; 32])>>,
    /// Messages queued in all.
    depth: AtomicU64,
    /// Envelopes queued since the last durable commit (none in memory: every commit is).
    log: Option<Mutex<Log>>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn queue_key(recipient: &[u8; 32], lane: Lane, seq: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[..32].copy_from_slice(recipient);
    key[32] = lane as u8;
    key[33..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn next(meta: &mut redb::Table<&str, u64>, name: &str) -> Result<u64, QueueError> {
    let n = meta.get(name)?.map_or(0, |g| g.value());
    meta.insert(name, n + 1)?;
    Ok(n)
}

/// The tables of one write transaction.
struct Tabs<'t> {
    queue: redb::Table<'t, &'static [u8; 41], &'static [u8; 32]>,
    bodies: redb::Table<'t, &'static [u8; 32], &'static [u8]>,
    age: redb::Table<'t, u64, &'static [u8; 32]>,
    usage: redb::Table<'t, &'static [u8; 32], (u64, u64)>,
    acked: redb::Table<'t, &'static [u8; 32], u64>,
    ack_age: redb::Table<'t, u64, &'static [u8; 32]>,
    mailboxes: redb::Table<'t, &'static [u8; 32], &'static [u8]>,
    outbox: redb::Table<'t, &'static [u8; 32], &'static [u8]>,
    meta: redb::Table<'t, &'static str, u64>,
}

impl<'t> Tabs<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, QueueError> {
        Ok(Self {
            queue: txn.open_table(QUEUE)?,
            bodies: txn.open_table(BODIES)?,
            age: txn.open_table(AGE)?,
            usage: txn.open_table(USAGE)?,
            acked: txn.open_table(ACKED)?,
            ack_age: txn.open_table(ACK_AGE)?,
            mailboxes: txn.open_table(MAILBOXES)?,
            outbox: txn.open_table(OUTBOX)?,
            meta: txn.open_table(META)?,
        })
    }

    /// Queues an envelope (stored at `at_ms`) unless it is queued or acknowledged already;
    /// within `quota` when one is given (a replay of the log checks none: it was accepted).
    fn insert(
        &mut self,
        head: &Head,
        envelope: &[u8],
        quota: Option<Quota>,
        at_ms: u64,
    ) -> Result<Result<Done, Refusal>, QueueError> {
        let id = head.id.as_bytes();
        if self.bodies.get(id)?.is_some() || self.acked.get(id)?.is_some() {
            return Ok(Ok(Done::Inserted(false)));
        }
        if self.mailboxes.get(&head.recipient)?.is_none() {
            return Ok(Err(Refusal::NoMailbox));
        }
        let (messages, bytes) = self
            .usage
            .get(&head.recipient)?
            .map_or((0, 0), |g| g.value());
        let size = envelope.len() as u64;
        if let Some(quota) = quota
            && (messages >= quota.messages || bytes + size > quota.bytes)
        {
            return Ok(Err(Refusal::Full { messages, bytes }));
        }
        let seq = next(&mut self.meta, "seq")?;
        let mut body = Vec::with_capacity(16 + envelope.len());
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(&at_ms.to_be_bytes());
        body.extend_from_slice(envelope);
        self.bodies.insert(id, body.as_slice())?;
        self.queue
            .insert(&queue_key(&head.recipient, head.lane, seq), id)?;
        self.age.insert(seq, id)?;
        self.usage
            .insert(&head.recipient, (messages + 1, bytes + size))?;
        Ok(Ok(Done::Inserted(true)))
    }
}

impl Tabs<'_> {
    /// Deletes those of `ids` queued for `recipient` (others are left out) and remembers
    /// them as acknowledged at `now_ms`: the ids deleted.
    fn ack(
        &mut self,
        recipient: &[u8; 32],
        ids: &[Address],
        now_ms: u64,
    ) -> Result<Vec<Address>, QueueError> {
        let mut done = Vec::new();
        for id in ids {
            let key = id.as_bytes();
            let Some(body) = self.bodies.get(key)?.map(|g| g.value().to_vec()) else {
                continue;
            };
            let Ok(head) = Head::read(&body[16..], usize::MAX) else {
                continue;
            };
            if head.recipient != *recipient {
                continue;
            }
            let seq = u64_at(&body, 0);
            self.bodies.remove(key)?;
            self.queue.remove(&queue_key(recipient, head.lane, seq))?;
            self.age.remove(seq)?;
            let (m, b) = self.usage.get(recipient)?.map_or((0, 0), |g| g.value());
            let left = (m.saturating_sub(1), b.saturating_sub(head.size as u64));
            if left.0 == 0 {
                self.usage.remove(recipient)?;
            } else {
                self.usage.insert(recipient, left)?;
            }
            let order = next(&mut self.meta, "ack")?;
            self.acked.insert(key, now_ms)?;
            self.ack_age.insert(order, key)?;
            done.push(*id);
        }
        Ok(done)
    }
}

/// The log of envelopes queued since the last durable commit of the database: appended and
/// fsynced (one `fdatasync` per batch, sequential bytes) before a batch of sends is answered,
/// replayed at open, emptied once a durable commit holds everything in it. Records:
/// length (u32 LE) | stored at ms (u64 BE) | envelope | the first 8 bytes of the BLAKE3 of
/// the two before; a torn or damaged tail ends the replay.
struct Log {
    file: std::fs::File,
    len: u64,
}

/// Pages of `mail.redb` cached in memory at most.
const CACHE_BYTES: usize = 64 << 20;

/// A log past this many bytes is folded into the database at once.
const LOG_MAX: u64 = 64 << 20;

impl Log {
    fn open(path: &Path) -> Result<Self, QueueError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| QueueError(format!("open {}: {e}", path.display())))?;
        Ok(Self { file, len: 0 })
    }

    /// The records of the log, oldest first, up to the first torn or damaged one.
    fn records(&self) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
        use std::io::Read;
        let mut all = Vec::new();
        (&self.file)
            .read_to_end(&mut all)
            .map_err(|e| QueueError(format!("read the mail log: {e}")))?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 4 <= all.len() {
            let len = u32::from_le_bytes(all[at..at + 4].try_into().unwrap_or_default()) as usize;
            let Some(end) = at.checked_add(4 + len + 8).filter(|e| *e <= all.len()) else {
                break;
            };
            let body = &all[at + 4..at + 4 + len];
            if len < 8 || blake3::hash(body).as_bytes()[..8] != all[at + 4 + len..end] {
                break;
            }
            out.push((u64_at(body, 0), body[8..].to_vec()));
            at = end;
        }
        Ok(out)
    }

    /// Appends one record per envelope and makes them durable.
    fn append(&mut self, envelopes: &[&bytes::Bytes], at_ms: u64) -> Result<(), QueueError> {
        use std::os::unix::fs::FileExt;
        let mut buf = Vec::with_capacity(envelopes.iter().map(|e| e.len() + 20).sum());
        for e in envelopes {
            let len = u32::try_from(e.len() + 8).map_err(|_| QueueError("record size".into()))?;
            buf.extend_from_slice(&len.to_le_bytes());
            let start = buf.len();
            buf.extend_from_slice(&at_ms.to_be_bytes());
            buf.extend_from_slice(e);
            let sum = blake3::hash(&buf[start..]);
            buf.extend_from_slice(&sum.as_bytes()[..8]);
        }
        self.file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| QueueError(format!("append to the mail log: {e}")))?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Empties the log (its records are durable in the database now).
    fn clear(&mut self) -> Result<(), QueueError> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| QueueError(format!("truncate the mail log: {e}")))?;
        self.len = 0;
        Ok(())
    }
}

impl Queues {
    /// Opens (creating) the store at `path`, a file only this user may read.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        use std::os::unix::fs::PermissionsExt;
        // redb caches up to 1 GiB of pages by default, growing with the file (acknowledged
        // ids are kept for the retention window): the mailbox's memory is bounded instead.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| QueueError(format!("chmod {}: {e}", path.display())))?;
        let log = Log::open(&path.with_extension("log"))?;
        let queues = Self::init(db, Some(log))?;
        let replayed = queues.replay()?;
        if replayed > 0 {
            tracing::info!(replayed, "mail the log held is queued again");
        }
        Ok(queues)
    }

    /// A store in memory (`--amnesia`, tests).
    pub fn in_memory() -> Result<Self, QueueError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::init(db, None)
    }

    fn init(db: Database, log: Option<Log>) -> Result<Self, QueueError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(QUEUE)?;
            txn.open_table(BODIES)?;
            txn.open_table(AGE)?;
            txn.open_table(USAGE)?;
            txn.open_table(ACKED)?;
            txn.open_table(ACK_AGE)?;
            txn.open_table(MAILBOXES)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let queues = Self {
            db,
            hidden: Mutex::default(),
            hosted: Mutex::default(),
            due: Mutex::default(),
            depth: AtomicU64::new(0),
            log: log.map(Mutex::new),
        };
        let read = queues.db.begin_read()?;
        let mut depth = 0;
        for row in read.open_table(USAGE)?.iter()? {
            depth += row?.1.value().0;
        }
        queues.depth.store(depth, Ordering::Relaxed);
        for row in read.open_table(MAILBOXES)?.iter()? {
            lock(&queues.hosted).insert(*row?.0.value());
        }
        for row in read.open_table(OUTBOX)?.iter()? {
            let (id, value) = row?;
            lock(&queues.due).insert((u64_at(value.value(), 0), *id.value()));
        }
        Ok(queues)
    }

    /// Queues again what the log holds (after a crash: sends answered, not yet in a durable
    /// commit of the database), then empties it. Each id is queued once.
    fn replay(&self) -> Result<usize, QueueError> {
        let Some(log) = &self.log else { return Ok(0) };
        let mut log = lock(log);
        let records = log.records()?;
        if records.is_empty() {
            log.clear()?;
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut fresh = 0u64;
        {
            let mut t = Tabs::open(&txn)?;
            for (at_ms, envelope) in &records {
                let Ok(head) = Head::read(envelope, usize::MAX) else {
                    continue;
                };
                if t.insert(&head, envelope, None, *at_ms)? == Ok(Done::Inserted(true)) {
                    fresh += 1;
                }
            }
        }
        txn.commit()?;
        log.clear()?;
        self.depth.fetch_add(fresh, Ordering::Relaxed);
        Ok(fresh as usize)
    }

    /// Makes everything applied so far durable in the database and empties the log: `true`
    /// when there was something to fold in.
    pub fn checkpoint(&self) -> Result<bool, QueueError> {
        let Some(log) = &self.log else {
            return Ok(false);
        };
        let mut log = lock(log);
        if log.len == 0 {
            return Ok(false);
        }
        // An empty durable commit persists every non-durable one before it.
        self.db.begin_write()?.commit()?;
        log.clear()?;
        Ok(true)
    }

    /// Messages queued in all.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Envelopes in the outbox.
    pub fn outbox_len(&self) -> usize {
        lock(&self.due).len()
    }

    /// Whether this node keeps `recipient`'s mailbox.
    pub fn hosts(&self, recipient: &[u8; 32]) -> bool {
        lock(&self.hosted).contains(recipient)
    }

    /// Mailboxes kept here.
    pub fn mailboxes(&self) -> usize {
        lock(&self.hosted).len()
    }

    /// The records of the mailboxes kept here (to publish again).
    pub fn records(&self) -> Result<Vec<Vec<u8>>, QueueError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(MAILBOXES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(row?.1.value().to_vec());
        }
        Ok(out)
    }

    /// The record of `recipient`'s mailbox, if kept here.
    pub fn record(&self, recipient: &[u8; 32]) -> Result<Option<Vec<u8>>, QueueError> {
        let read = self.db.begin_read()?;
        Ok(read
            .open_table(MAILBOXES)?
            .get(recipient)?
            .map(|g| g.value().to_vec()))
    }

    /// Messages and bytes queued for `recipient`.
    pub fn usage(&self, recipient: &[u8; 32]) -> Result<(u64, u64), QueueError> {
        let read = self.db.begin_read()?;
        Ok(read
            .open_table(USAGE)?
            .get(recipient)?
            .map_or((0, 0), |g| g.value()))
    }

    /// Applies `changes` in one transaction, committed (fsynced) before it returns: one
    /// answer per change, in order. A refused change does not stop the others; a failing
    /// store fails them all.
    pub fn apply(
        &self,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Vec<Result<Done, Refusal>>, QueueError> {
        let mut txn = self.db.begin_write()?;
        let mut answers = Vec::with_capacity(changes.len());
        // What the in-memory views learn once the commit is durable.
        let mut depth_delta: i64 = 0;
        let mut hosted = Vec::new();
        let mut due_add = Vec::new();
        let mut due_remove = Vec::new();
        let mut acked_ids = Vec::new();
        // Envelopes queued now, and whether any other change needs a durable commit.
        let mut fresh: Vec<&bytes::Bytes> = Vec::new();
        let mut lasting = false;
        {
            let mut t = Tabs::open(&txn)?;
            for change in changes {
                let answer = match change {
                    Change::Insert {
                        head,
                        envelope,
                        quota,
                    } => {
                        let answer = t.insert(head, envelope, Some(*quota), now_ms)?;
                        if answer == Ok(Done::Inserted(true)) {
                            depth_delta += 1;
                            fresh.push(envelope);
                        }
                        answer
                    }
                    Change::Ack { recipient, ids } => {
                        lasting = true;
                        let done = t.ack(recipient, ids, now_ms)?;
                        depth_delta -= done.len() as i64;
                        acked_ids.extend(done.iter().map(|id| *id.as_bytes()));
                        Ok(Done::Acked(done))
                    }
                    Change::Register {
                        recipient,
                        record,
                        max,
                    } => {
                        lasting = true;
                        let known = t.mailboxes.get(recipient)?.is_some();
                        if !known && t.mailboxes.len()? >= *max {
                            Err(Refusal::TooManyMailboxes)
                        } else {
                            t.mailboxes.insert(recipient, record.as_slice())?;
                            hosted.push(*recipient);
                            Ok(Done::Registered)
                        }
                    }
                    Change::Outbox {
                        id,
                        envelope,
                        next_ms,
                        max,
                    } => {
                        lasting = true;
                        if t.outbox.get(id.as_bytes())?.is_some() {
                            Ok(Done::Queued(false))
                        } else if t.outbox.len()? >= *max {
                            Err(Refusal::OutboxFull)
                        } else {
                            let mut value = Vec::with_capacity(20 + envelope.len());
                            value.extend_from_slice(&next_ms.to_be_bytes());
                            value.extend_from_slice(&0u32.to_be_bytes());
                            value.extend_from_slice(&now_ms.to_be_bytes());
                            value.extend_from_slice(envelope);
                            t.outbox.insert(id.as_bytes(), value.as_slice())?;
                            due_add.push((*next_ms, *id.as_bytes()));
                            Ok(Done::Queued(true))
                        }
                    }
                    Change::Sent { id } => {
                        lasting = true;
                        if let Some(old) = t.outbox.remove(id.as_bytes())? {
                            due_remove.push((u64_at(old.value(), 0), *id.as_bytes()));
                        }
                        Ok(Done::Updated)
                    }
                    Change::Retry { id, next_ms } => {
                        lasting = true;
                        let old = t.outbox.get(id.as_bytes())?.map(|g| g.value().to_vec());
                        if let Some(mut value) = old {
                            due_remove.push((u64_at(&value, 0), *id.as_bytes()));
                            let attempts =
                                u32::from_be_bytes(value[8..12].try_into().unwrap_or_default())
                                    .saturating_add(1);
                            value[..8].copy_from_slice(&next_ms.to_be_bytes());
                            value[8..12].copy_from_slice(&attempts.to_be_bytes());
                            t.outbox.insert(id.as_bytes(), value.as_slice())?;
                            due_add.push((*next_ms, *id.as_bytes()));
                        }
                        Ok(Done::Updated)
                    }
                };
                answers.push(answer);
            }
        }
        // Sends alone: their envelopes go to the log (sequential, one fdatasync) and the
        // database commits without one; any other change commits durably.
        let mut folded = false;
        if let (Some(log), false) = (&self.log, lasting) {
            let mut log = lock(log);
            if !fresh.is_empty() {
                log.append(&fresh, now_ms)?;
            }
            txn.set_durability(redb::Durability::None)
                .map_err(|e| QueueError(e.to_string()))?;
            folded = log.len > LOG_MAX;
        }
        txn.commit()?;
        if folded {
            self.checkpoint()?;
        }
        if depth_delta >= 0 {
            self.depth
                .fetch_add(depth_delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.depth
                .fetch_sub(depth_delta.unsigned_abs(), Ordering::Relaxed);
        }
        lock(&self.hosted).extend(hosted);
        {
            let mut due = lock(&self.due);
            for entry in due_remove {
                due.remove(&entry);
            }
            due.extend(due_add);
        }
        let mut hidden = lock(&self.hidden);
        for id in acked_ids {
            hidden.remove(&id);
        }
        Ok(answers)
    }

    /// Up to `limit` visible messages of `recipient`'s `lane` (oldest first, at most
    /// `max_bytes` of envelopes past the first), each then hidden until `now_ms +
    /// visibility_ms` unless acknowledged.
    pub fn fetch(
        &self,
        recipient: &[u8; 32],
        lane: Lane,
        now_ms: u64,
        visibility_ms: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Fetched>, QueueError> {
        let read = self.db.begin_read()?;
        let queue = read.open_table(QUEUE)?;
        let bodies = read.open_table(BODIES)?;
        let mut hidden = lock(&self.hidden);
        let mut out = Vec::new();
        let mut bytes = 0;
        let (lo, hi) = (
            queue_key(recipient, lane, 0),
            queue_key(recipient, lane, u64::MAX),
        );
        for row in queue.range::<&[u8; 41]>(&lo..=&hi)? {
            if out.len() >= limit {
                break;
            }
            let id = *row?.1.value();
            if hidden.get(&id).is_some_and(|until| *until > now_ms) {
                continue;
            }
            let Some(body) = bodies.get(&id)? else {
                continue;
            };
            let body = body.value();
            if !out.is_empty() && bytes + body.len() - 16 > max_bytes {
                break;
            }
            bytes += body.len() - 16;
            hidden.insert(id, now_ms.saturating_add(visibility_ms));
            out.push(Fetched {
                id: Address::from_bytes(id),
                stored_at_ms: u64_at(body, 8),
                envelope: body[16..].to_vec(),
            });
        }
        Ok(out)
    }

    /// One queued message of `recipient`, whether hidden or not (for a receipt's sender).
    pub fn get(&self, recipient: &[u8; 32], id: &Address) -> Result<Option<Fetched>, QueueError> {
        let read = self.db.begin_read()?;
        let bodies = read.open_table(BODIES)?;
        let Some(body) = bodies.get(id.as_bytes())? else {
            return Ok(None);
        };
        let body = body.value();
        let mine = Head::read(&body[16..], usize::MAX).is_ok_and(|h| h.recipient == *recipient);
        Ok(mine.then(|| Fetched {
            id: *id,
            stored_at_ms: u64_at(body, 8),
            envelope: body[16..].to_vec(),
        }))
    }

    /// Outbox entries due by `now_ms`, at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<Pending>, QueueError> {
        let ids: Vec<[u8; 32]> = lock(&self.due)
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        let read = self.db.begin_read()?;
        let outbox = read.open_table(OUTBOX)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(value) = outbox.get(&id)? {
                let value = value.value();
                out.push(Pending {
                    id: Address::from_bytes(id),
                    attempts: u32::from_be_bytes(value[8..12].try_into().unwrap_or_default()),
                    queued_at_ms: u64_at(value, 12),
                    envelope: value[20..].to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// When the next outbox entry is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        lock(&self.due).first().map(|(at, _)| *at)
    }

    /// Removes what is past `retention_ms`: unacknowledged messages stored before `now_ms -
    /// retention_ms`, acknowledged ids remembered that long, and outbox entries queued that
    /// long ago (given up). Nothing younger is ever removed.
    pub fn expire(&self, now_ms: u64, retention_ms: u64) -> Result<Expired, QueueError> {
        // What the log holds is folded in first: a replay never brings back what this removes.
        self.checkpoint()?;
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut expired = Expired::default();
        let mut gone = Vec::new();
        let mut given_up = Vec::new();
        let txn = self.db.begin_write()?;
        {
            let mut queue = txn.open_table(QUEUE)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut age = txn.open_table(AGE)?;
            let mut usage = txn.open_table(USAGE)?;
            let mut old = Vec::new();
            for row in age.iter()? {
                let (seq, id) = row?;
                let Some(body) = bodies.get(id.value())? else {
                    old.push((seq.value(), None));
                    continue;
                };
                if u64_at(body.value(), 8) >= cutoff {
                    break;
                }
                old.push((seq.value(), Some((*id.value(), body.value().to_vec()))));
            }
            for (seq, entry) in old {
                age.remove(seq)?;
                let Some((id, body)) = entry else { continue };
                let Ok(head) = Head::read(&body[16..], usize::MAX) else {
                    bodies.remove(&id)?;
                    continue;
                };
                bodies.remove(&id)?;
                queue.remove(&queue_key(&head.recipient, head.lane, seq))?;
                let (m, b) = usage.get(&head.recipient)?.map_or((0, 0), |g| g.value());
                let left = (m.saturating_sub(1), b.saturating_sub(head.size as u64));
                if left.0 == 0 {
                    usage.remove(&head.recipient)?;
                } else {
                    usage.insert(&head.recipient, left)?;
                }
                expired.messages += 1;
                gone.push(id);
            }
            let mut acked = txn.open_table(ACKED)?;
            let mut ack_age = txn.open_table(ACK_AGE)?;
            let mut old = Vec::new();
            for row in ack_age.iter()? {
                let (order, id) = row?;
                let at = acked.get(id.value())?.map_or(0, |g| g.value());
                if at >= cutoff {
                    break;
                }
                old.push((order.value(), *id.value()));
            }
            for (order, id) in old {
                ack_age.remove(order)?;
                acked.remove(&id)?;
                expired.acked += 1;
            }
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut old = Vec::new();
            for row in outbox.iter()? {
                let (id, value) = row?;
                if u64_at(value.value(), 12) < cutoff {
                    old.push((*id.value(), u64_at(value.value(), 0)));
                }
            }
            for (id, next_ms) in old {
                outbox.remove(&id)?;
                given_up.push((next_ms, id));
                expired.outbox += 1;
            }
        }
        txn.commit()?;
        self.depth.fetch_sub(expired.messages, Ordering::Relaxed);
        let mut hidden = lock(&self.hidden);
        for id in gone {
            hidden.remove(&id);
        }
        let mut due = lock(&self.due);
        for entry in given_up {
            due.remove(&entry);
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envelope::{MAX_BUCKET, MailKey, seal};
    use proptest::prelude::*;
    use ron_auth::SigningKey;

    const QUOTA: Quota = Quota {
        messages: 1000,
        bytes: 1 << 30,
    };

    struct World {
        queues: Queues,
        alice: SigningKey,
        bob: SigningKey,
        bob_key: MailKey,
    }

    impl World {
        fn new() -> Self {
            let bob = SigningKey::generate();
            let bob_key = MailKey::derive(&bob);
            let queues = Queues::in_memory().unwrap();
            let done = queues
                .apply(
                    &[Change::Register {
                        recipient: bob.public_bytes(),
                        record: b"record".to_vec(),
                        max: 10,
                    }],
                    0,
                )
                .unwrap();
            assert_eq!(done, vec![Ok(Done::Registered)]);
            Self {
                queues,
                alice: SigningKey::generate(),
                bob,
                bob_key,
            }
        }

        fn envelope(&self, text: &[u8]) -> (Head, bytes::Bytes) {
            let env = seal(
                &self.alice,
                &self.bob.public_bytes(),
                &self.bob_key.public(),
                Lane::Message,
                0,
                text,
                MAX_BUCKET,
            )
            .unwrap();
            (Head::read(&env, MAX_BUCKET).unwrap(), env.into())
        }

        fn insert(&self, head: Head, envelope: bytes::Bytes, now: u64) -> Result<Done, Refusal> {
            self.queues
                .apply(
                    &[Change::Insert {
                        head,
                        envelope,
                        quota: QUOTA,
                    }],
                    now,
                )
                .unwrap()
                .remove(0)
        }
    }

    #[test]
    fn sends_in_the_log_survive_a_crash_and_are_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.redb");
        let w = World::new();
        let envs: Vec<_> = (0..3).map(|i| w.envelope(&[i])).collect();
        {
            let q = Queues::open(&path).unwrap();
            let register = Change::Register {
                recipient: w.bob.public_bytes(),
                record: b"record".to_vec(),
                max: 10,
            };
            q.apply(&[register], 0).unwrap();
            let sends: Vec<Change> = envs
                .iter()
                .map(|(head, envelope)| Change::Insert {
                    head: *head,
                    envelope: envelope.clone(),
                    quota: QUOTA,
                })
                .collect();
            let answers = q.apply(&sends, 5).unwrap();
            assert!(answers.iter().all(|a| *a == Ok(Done::Inserted(true))));
            assert!(std::fs::metadata(path.with_extension("log")).unwrap().len() > 3 * 1024);
            // Dropped without a checkpoint: the database's last durable commit is the
            // registration; the log holds the sends.
        }
        let q = Queues::open(&path).unwrap();
        assert_eq!(
            std::fs::metadata(path.with_extension("log")).unwrap().len(),
            0
        );
        assert_eq!(q.depth(), 3);
        let got = q
            .fetch(
                &w.bob.public_bytes(),
                Lane::Message,
                10,
                30_000,
                10,
                usize::MAX,
            )
            .unwrap();
        let mut ids: Vec<_> = got.iter().map(|f| f.id).collect();
        ids.sort();
        let mut want: Vec<_> = envs.iter().map(|(h, _)| h.id).collect();
        want.sort();
        assert_eq!(ids, want);
        assert!(got.iter().all(|f| f.stored_at_ms == 5));
        // A torn record at the tail is ignored; what came before it is kept.
        drop(q);
        std::fs::write(path.with_extension("log"), [9u8, 0, 0, 0, 1, 2]).unwrap();
        let q = Queues::open(&path).unwrap();
        assert_eq!(q.depth(), 3);
        assert!(q.checkpoint().is_ok());
    }

    #[test]
    fn a_duplicate_is_kept_once_even_after_its_ack() {
        let w = World::new();
        let (head, env) = w.envelope(b"once");
        assert_eq!(w.insert(head, env.clone(), 1), Ok(Done::Inserted(true)));
        assert_eq!(w.insert(head, env.clone(), 2), Ok(Done::Inserted(false)));
        let got = w
            .queues
            .fetch(&w.bob.public_bytes(), Lane::Message, 3, 30_000, 10, 1 << 20)
            .unwrap();
        assert_eq!(got.len(), 1);
        let acked = w
            .queues
            .apply(
                &[Change::Ack {
                    recipient: w.bob.public_bytes(),
                    ids: vec![head.id],
                }],
                4,
            )
            .unwrap();
        assert_eq!(acked, vec![Ok(Done::Acked(vec![head.id]))]);
        assert_eq!(w.insert(head, env, 5), Ok(Done::Inserted(false)));
        assert_eq!(w.queues.depth(), 0);
    }

    #[test]
    fn a_full_mailbox_and_an_unknown_one_are_refused_clearly() {
        let w = World::new();
        let (head, env) = w.envelope(b"x");
        let tight = Quota {
            messages: 1,
            bytes: 1 << 20,
        };
        let answers = w
            .queues
            .apply(
                &[
                    Change::Insert {
                        head,
                        envelope: env,
                        quota: tight,
                    },
                    {
                        let (head, envelope) = w.envelope(b"y");
                        Change::Insert {
                            head,
                            envelope,
                            quota: tight,
                        }
                    },
                ],
                0,
            )
            .unwrap();
        assert_eq!(answers[0], Ok(Done::Inserted(true)));
        assert!(matches!(answers[1], Err(Refusal::Full { messages: 1, .. })));
        let mut stranger = head;
        stranger.recipient = [9; 32];
        stranger.id = Address::of(b"other");
        assert_eq!(
            w.insert(stranger, bytes::Bytes::from_static(b"z"), 0),
            Err(Refusal::NoMailbox)
        );
    }

    #[test]
    fn someone_else_cannot_ack_bobs_messages() {
        let w = World::new();
        let (head, env) = w.envelope(b"private");
        w.insert(head, env, 0).unwrap();
        let done = w
            .queues
            .apply(
                &[Change::Ack {
                    recipient: [1; 32],
                    ids: vec![head.id],
                }],
                1,
            )
            .unwrap();
        assert_eq!(done, vec![Ok(Done::Acked(vec![]))]);
        assert_eq!(w.queues.depth(), 1);
        assert!(w.queues.get(&[1; 32], &head.id).unwrap().is_none());
    }

    #[test]
    fn the_outbox_retries_and_forgets_what_was_sent() {
        let q = Queues::in_memory().unwrap();
        let id = Address::of(b"e");
        let out = |c: Change| q.apply(&[c], 0).unwrap().remove(0);
        let env = bytes::Bytes::from_static(b"e");
        assert_eq!(
            out(Change::Outbox {
                id,
                envelope: env.clone(),
                next_ms: 10,
                max: 1
            }),
            Ok(Done::Queued(true))
        );
        assert_eq!(
            out(Change::Outbox {
                id: Address::of(b"f"),
                envelope: env,
                next_ms: 10,
                max: 1
            }),
            Err(Refusal::OutboxFull)
        );
        assert!(q.due(9, 10).unwrap().is_empty());
        assert_eq!(q.due(10, 10).unwrap()[0].attempts, 0);
        out(Change::Retry { id, next_ms: 50 }).unwrap();
        assert!(q.due(40, 10).unwrap().is_empty());
        assert_eq!(q.due(50, 10).unwrap()[0].attempts, 1);
        assert_eq!(q.next_due(), Some(50));
        out(Change::Sent { id }).unwrap();
        assert_eq!(q.next_due(), None);
    }

    /// What the model says a fetch at some time returns.
    #[derive(Debug, Clone)]
    enum Step {
        Send(u8),
        Fetch,
        Ack(u8),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => any::<u8>().prop_map(|n| Step::Send(n % 8)),
            3 => Just(Step::Fetch),
            2 => any::<u8>().prop_map(|n| Step::Ack(n % 8)),
            2 => (0u64..40_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Against a model, on a simulated clock: a fetched message is hidden for the
        /// visibility timeout, then comes back; an acked one never does; nothing is removed
        /// inside the retention window and everything past it is; an id is queued once.
        #[test]
        fn queue_semantics_follow_the_model(steps in proptest::collection::vec(step(), 1..60)) {
            const VIS: u64 = 30_000;
            const RETAIN: u64 = 100_000;
            let w = World::new();
            let envs: Vec<(Head, bytes::Bytes)> =
                (0..8).map(|i| w.envelope(format!("m{i}").as_bytes())).collect();
            // id index -> (stored at, hidden until); acked ids.
            let mut queued: HashMap<u8, (u64, u64)> = HashMap::new();
            let mut acked: HashMap<u8, u64> = HashMap::new();
            let mut now = 1_000u64;
            for s in steps {
                match s {
                    Step::Send(i) => {
                        let (head, env) = envs[i as usize].clone();
                        let fresh = w.insert(head, env, now).unwrap();
                        let expect = !queued.contains_key(&i) && !acked.contains_key(&i);
                        prop_assert_eq!(fresh, Done::Inserted(expect));
                        if expect {
                            queued.insert(i, (now, 0));
                        }
                    }
                    Step::Fetch => {
                        let got = w.queues.fetch(&w.bob.public_bytes(), Lane::Message, now, VIS,
                            100, usize::MAX).unwrap();
                        let mut ids: Vec<Address> = got.iter().map(|f| f.id).collect();
                        ids.sort();
                        let mut want: Vec<Address> = queued.iter()
                            .filter(|(_, (_, hidden))| *hidden <= now)
                            .map(|(i, _)| envs[*i as usize].0.id).collect();
                        want.sort();
                        prop_assert_eq!(ids, want);
                        for (_, (_, hidden)) in queued.iter_mut() {
                            if *hidden <= now { *hidden = now + VIS; }
                        }
                        for f in &got {
                            let opened = crate::envelope::open(&w.bob_key, &f.envelope).unwrap();
                            prop_assert_eq!(opened.sender, w.alice.public_bytes());
                        }
                    }
                    Step::Ack(i) => {
                        let id = envs[i as usize].0.id;
                        let done = w.queues.apply(&[Change::Ack {
                            recipient: w.bob.public_bytes(), ids: vec![id] }], now).unwrap();
                        let was = queued.remove(&i).is_some();
                        if was { acked.insert(i, now); }
                        let want = if was { vec![id] } else { vec![] };
                        prop_assert_eq!(done, vec![Ok(Done::Acked(want))]);
                    }
                    Step::Wait(ms) => {
                        now += ms;
                        let expired = w.queues.expire(now, RETAIN).unwrap();
                        let before = queued.len();
                        let cutoff = now.saturating_sub(RETAIN);
                        queued.retain(|_, (at, _)| *at >= cutoff);
                        acked.retain(|_, at| *at >= cutoff);
                        prop_assert_eq!(expired.messages, (before - queued.len()) as u64);
                    }
                }
                prop_assert_eq!(w.queues.depth(), queued.len() as u64);
                let (m, _) = w.queues.usage(&w.bob.public_bytes()).unwrap();
                prop_assert_eq!(m, queued.len() as u64);
            }
        }
    }
}
