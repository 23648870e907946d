//! The mailbox service: a cheap-to-clone handle, and [`Mailbox::run`], its supervised loop
//! (the group committer, the retention sweeper and the outbox).

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use ron_kernel::{Config, Metrics};
use ron_proto::{Address, ErrorKind};
use svc_dht::{DhtError, DhtHandle, Keep, Multiaddr, PeerId, Role};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::envelope::{Head, Lane};
use crate::metrics::{MailCollector, MailMetrics};
use crate::proof::Verifier;
use crate::queue::{Change, Done, Fetched, Pending, Queues, Quota, Refusal};
use crate::record::{MailRecord, MailboxNode, identity_text};
use crate::{MailError, MailSection, now_ms};

/// Changes waiting for the committer at most (a send past it waits, up to [`ENQUEUE`]).
const JOBS: usize = 8192;
/// Changes one commit carries at most.
const BATCH: usize = 2048;
/// How long a change may wait for room in the committer's queue.
const ENQUEUE: Duration = Duration::from_secs(5);
/// Senders whose rate is tracked.
const SENDERS: usize = 65_536;
/// Mail records of recipients cached, and for how long.
const RECORDS: usize = 4096;
const RECORD_TTL: Duration = Duration::from_secs(60);
/// How long a lookup of a mail record waits for peers.
const LOOKUP: Duration = Duration::from_secs(10);
/// How long one delivery to a mailbox node may take (dial included).
const DELIVER: Duration = Duration::from_secs(5);
/// Outbox entries attempted at once.
const PARALLEL: usize = 16;
/// How often retention runs.
const SWEEP: Duration = Duration::from_secs(60);
/// How often the send log is folded into a durable commit of the database.
const FOLD: Duration = Duration::from_secs(1);
/// How often the records of the mailboxes kept here are stored on peers again.
const REPUBLISH: Duration = Duration::from_secs(30 * 60);
/// Push sockets open at most, in all and per identity.
const SOCKETS: usize = 1024;
const SOCKETS_EACH: usize = 4;
/// Recipients with new mail, for the push sockets (a socket that lags fetches anyway).
const NEWS: usize = 1024;

/// Who is sending: what the rate limit is kept by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A sender that proved its key.
    Key([u8; 32]),
    /// A client address.
    Addr(IpAddr),
    /// A peer of the peer network.
    Peer(String),
    /// The node's own user (`limits.exempt`): not limited.
    Local,
}

/// What became of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Kept (durably) in a mailbox on this node; `fresh` is false for an envelope already
    /// kept or acknowledged.
    Stored {
        /// The message id.
        id: Address,
        /// Whether it was new.
        fresh: bool,
    },
    /// Delivered (durably) to the recipient's mailbox node.
    Delivered(Delivered),
    /// The recipient's mailbox node could not be reached: kept in the outbox (durably), to
    /// be retried with backoff.
    Queued {
        /// The message id.
        id: Address,
    },
}

/// An envelope delivered to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The message id.
    pub id: Address,
    /// The mailbox node that has it.
    pub node: String,
}

type Reply = oneshot::Sender<Result<Result<Done, Refusal>, String>>;

/// One change for the committer and where its answer goes.
pub(crate) struct Job {
    change: Change,
    reply: Reply,
}

struct Inner {
    queues: Arc<Queues>,
    config: Config,
    jobs: tokio::sync::mpsc::Sender<Job>,
    mailbox: supervisor::Mailbox<Job>,
    metrics: Arc<MailMetrics>,
    verifier: Verifier,
    senders: Mutex<LruCache<Sender, (f64, Instant)>>,
    records: Mutex<LruCache<[u8; 32], (MailRecord, Instant)>>,
    dht: Option<DhtHandle>,
    outbox: Notify,
    news: tokio::sync::broadcast::Sender<[u8; 32]>,
    sockets: Mutex<std::collections::HashMap<[u8; 32], usize>>,
}

/// One open push socket, counted until dropped.
pub struct SocketGuard {
    mail: Mailbox,
    who: [u8; 32],
}

impl std::fmt::Debug for SocketGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketGuard")
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.mail.inner.sockets);
        if let Some(n) = open.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}

/// A cheap-to-clone handle on the mailbox service.
#[derive(Clone)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("queues", &self.inner.queues)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn refusal(r: Refusal, recipient: &[u8; 32]) -> MailError {
    match r {
        Refusal::NoMailbox => MailError::NoMailbox(identity_text(recipient)),
        Refusal::Full { .. } => MailError::Full(format!(
            "the mailbox of {} is full: {r}",
            identity_text(recipient)
        )),
        Refusal::TooManyMailboxes => MailError::TooManyMailboxes,
        Refusal::OutboxFull => MailError::OutboxFull,
    }
}

/// Whether a mailbox node's refusal settles it (the sender is told) rather than asks for a
/// later attempt.
fn is_final(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::BadInput
            | ErrorKind::NotFound
            | ErrorKind::Forbidden
            | ErrorKind::TooLarge
            | ErrorKind::InsufficientStorage
    )
}

/// The wait before attempt `attempts + 1`: doubling from 1 s up to `max_s`, with jitter of
/// ±50%.
pub(crate) fn backoff_ms(attempts: u32, max_s: u64) -> u64 {
    let base = 1000u64
        .saturating_mul(1u64 << attempts.min(30))
        .min(max_s.saturating_mul(1000));
    base / 2 + fastrand::u64(0..=base)
}

impl Mailbox {
    /// The service over `queues`, reading `[mail]` from `config`, reaching other nodes through
    /// `dht` (none: mail for mailboxes kept here only).
    pub fn new(queues: Queues, config: Config, dht: Option<DhtHandle>) -> Self {
        let (jobs, mailbox) = supervisor::mailbox(JOBS);
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(Inner {
                queues: Arc::new(queues),
                config,
                jobs,
                mailbox,
                metrics: Arc::default(),
                verifier: Verifier::default(),
                senders: Mutex::new(LruCache::new(cap(SENDERS))),
                records: Mutex::new(LruCache::new(cap(RECORDS))),
                dht,
                outbox: Notify::new(),
                news: tokio::sync::broadcast::channel(NEWS).0,
                sockets: Mutex::default(),
            }),
        }
    }

    /// Adds the mailbox's series to the node's metrics.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register_collector(Box::new(MailCollector {
            metrics: self.inner.metrics.clone(),
            queues: self.inner.queues.clone(),
        }));
    }

    fn section(&self) -> Arc<MailSection> {
        self.inner.config.get::<MailSection>()
    }

    /// Facts for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let s = self.section();
        serde_json::json!({
            "enabled": s.enabled,
            "mailboxes": self.inner.queues.mailboxes(),
            "queued": self.inner.queues.depth(),
            "outbox": self.inner.queues.outbox_len(),
            "max_message_bytes": s.max_message_bytes,
        })
    }

    /// Applies one change through the committer: durable when it answers.
    async fn commit(&self, change: Change) -> Result<Result<Done, Refusal>, MailError> {
        let (reply, answer) = oneshot::channel();
        let permit = tokio::time::timeout(ENQUEUE, self.inner.jobs.reserve())
            .await
            .map_err(|_| MailError::Stopped)?
            .map_err(|_| MailError::Stopped)?;
        permit.send(Job { change, reply });
        answer
            .await
            .map_err(|_| MailError::Stopped)?
            .map_err(|e| MailError::Store(crate::queue::QueueError::from_message(e)))
    }

    /// Proves a request's key: the identity its `ron-mail-auth` header proves.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<[u8; 32], MailError> {
        let now_s = now_ms() / 1000;
        self.inner
            .verifier
            .check(header, method, path, body, now_s)
            .inspect_err(|_| self.inner.metrics.refuse("bad_mail_proof"))
            .map_err(MailError::from)
    }

    /// Takes one send from `from`'s bucket, or says when the next one may come.
    fn admit(&self, from: &Sender) -> Result<(), MailError> {
        if *from == Sender::Local {
            return Ok(());
        }
        let s = self.section();
        let (rate, burst) = (f64::from(s.sender_rate_per_s), f64::from(s.sender_burst));
        let now = Instant::now();
        let mut senders = lock(&self.inner.senders);
        let (tokens, at) = senders.get_or_insert_mut(from.clone(), || (burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let retry_ms = ((1.0 - *tokens) / rate * 1000.0).ceil() as u64;
        self.inner.metrics.refuse("rate_limited");
        Err(MailError::RateLimited {
            retry_ms: retry_ms.max(1),
        })
    }

    /// Reads and checks an envelope's head against this node's limits.
    fn head(&self, envelope: &[u8]) -> Result<Head, MailError> {
        let s = self.section();
        if !s.enabled {
            return Err(MailError::Disabled);
        }
        if envelope.len() > s.max_message_bytes {
            self.inner.metrics.refuse("too_large");
            return Err(MailError::TooLarge {
                max: s.max_message_bytes,
            });
        }
        Head::read(envelope, s.max_message_bytes).map_err(|e| {
            self.inner.metrics.refuse("invalid_envelope");
            MailError::from(e)
        })
    }

    /// Queues an envelope in a mailbox kept here: durable when it answers.
    async fn store(&self, head: Head, envelope: Bytes) -> Result<Sent, MailError> {
        let s = self.section();
        let quota = Quota {
            messages: s.quota_messages,
            bytes: s.quota_bytes,
        };
        let change = Change::Insert {
            head,
            envelope,
            quota,
        };
        match self.commit(change).await? {
            Ok(Done::Inserted(fresh)) => {
                MailMetrics::add(&self.inner.metrics.stored, u64::from(fresh));
                if fresh {
                    let _ = self.inner.news.send(head.recipient);
                }
                Ok(Sent::Stored { id: head.id, fresh })
            }
            Ok(_) => Err(MailError::Stopped),
            Err(r) => {
                let e = refusal(r, &head.recipient);
                self.inner.metrics.refuse(ron_proto::Failure::code(&e));
                Err(e)
            }
        }
    }

    /// Sends an envelope: kept here when this node keeps the recipient's mailbox; else, when
    /// `relay` (the sender is one of this node's users), delivered to the recipient's mailbox
    /// node, or kept in the outbox when that node cannot be reached now. A refusal from the
    /// recipient's node (full, no such mailbox) is the sender's answer.
    pub async fn send(
        &self,
        envelope: Bytes,
        from: Sender,
        relay: bool,
    ) -> Result<Sent, MailError> {
        let head = self.head(&envelope)?;
        self.admit(&from)?;
        if self.inner.queues.hosts(&head.recipient) {
            return self.store(head, envelope).await;
        }
        if !relay || self.inner.dht.is_none() {
            self.inner.metrics.refuse("no_mailbox");
            return Err(MailError::NoMailbox(identity_text(&head.recipient)));
        }
        match self.deliver(&head, envelope.clone()).await {
            Ok(node) => {
                MailMetrics::add(&self.inner.metrics.forwarded, 1);
                Ok(Sent::Delivered(Delivered { id: head.id, node }))
            }
            Err(MailError::Refused(kind, message)) if is_final(kind) => {
                let e = MailError::Refused(kind, message);
                self.inner.metrics.refuse(ron_proto::Failure::code(&e));
                Err(e)
            }
            Err(e @ MailError::Unknown(_)) => {
                self.inner.metrics.refuse("unknown_recipient");
                Err(e)
            }
            Err(e) => {
                tracing::debug!(id = %head.id, error = %e, "mailbox node unreachable; outbox");
                self.outbox(head.id, envelope).await
            }
        }
    }

    async fn outbox(&self, id: Address, envelope: Bytes) -> Result<Sent, MailError> {
        let s = self.section();
        let change = Change::Outbox {
            id,
            envelope,
            next_ms: now_ms() + backoff_ms(0, s.retry_max_s),
            max: s.outbox_max,
        };
        match self.commit(change).await? {
            Ok(_) => {
                MailMetrics::add(&self.inner.metrics.outboxed, 1);
                self.inner.outbox.notify_one();
                Ok(Sent::Queued { id })
            }
            Err(r) => {
                self.inner.metrics.refuse("outbox_full");
                Err(refusal(r, &[0; 32]))
            }
        }
    }

    /// An envelope a peer delivers (`keep` with role `mail`): kept only for a mailbox kept
    /// here, checked against its id, durable before the answer.
    pub async fn accept_from_peer(
        &self,
        peer: String,
        keep: Keep,
    ) -> Result<u32, (ErrorKind, String)> {
        let fail = |e: MailError| (ron_proto::Failure::kind(&e), e.to_string());
        let head = self.head(&keep.bytes).map_err(fail)?;
        if head.id != keep.addr {
            self.inner.metrics.refuse("invalid_envelope");
            return Err((
                ErrorKind::ContentMismatch,
                "the envelope is not its id".into(),
            ));
        }
        if !self.inner.queues.hosts(&head.recipient) {
            self.inner.metrics.refuse("no_mailbox");
            return Err(fail(MailError::NoMailbox(identity_text(&head.recipient))));
        }
        self.admit(&Sender::Peer(peer)).map_err(fail)?;
        self.store(head, keep.bytes).await.map_err(fail)?;
        Ok(0)
    }

    /// The newest valid mail record of `recipient`: this node's for a mailbox kept here, else
    /// cached, else from the peers.
    pub async fn lookup(&self, recipient: &[u8; 32]) -> Result<MailRecord, MailError> {
        if let Some(bytes) = self.inner.queues.record(recipient)? {
            return Ok(MailRecord::decode(&bytes)?);
        }
        if let Some((record, at)) = lock(&self.inner.records).get(recipient).cloned()
            && at.elapsed() < RECORD_TTL
        {
            return Ok(record);
        }
        let unknown = || MailError::Unknown(identity_text(recipient));
        let dht = self.inner.dht.as_ref().ok_or_else(unknown)?;
        let values = tokio::time::timeout(LOOKUP, dht.get_records(MailRecord::dht_key(recipient)))
            .await
            .map_err(|_| unknown())?
            .map_err(|_| unknown())?;
        let record =
            MailRecord::newest(recipient, values.iter().map(Vec::as_slice)).ok_or_else(unknown)?;
        lock(&self.inner.records).put(*recipient, (record.clone(), Instant::now()));
        Ok(record)
    }

    /// Delivers an envelope to one of the recipient's mailbox nodes: the node that took it.
    async fn deliver(&self, head: &Head, envelope: Bytes) -> Result<String, MailError> {
        let record = self.lookup(&head.recipient).await?;
        let dht = self.inner.dht.as_ref().ok_or(MailError::Stopped)?;
        let mut last = MailError::Refused(ErrorKind::Overloaded, "no mailbox node".into());
        for node in &record.mailboxes {
            let Ok(peer) = node.peer.parse::<PeerId>() else {
                continue;
            };
            if peer == dht.peer_id() {
                // The record names this node, which keeps no such mailbox (any more).
                last = MailError::NoMailbox(identity_text(&head.recipient));
                continue;
            }
            let connected = dht.connected().await.unwrap_or_default();
            if !connected.contains(&peer) {
                let addrs: Vec<Multiaddr> =
                    node.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                let _ = dht.dial(addrs).await;
            }
            let keep = Keep {
                addr: head.id,
                object: head.id,
                role: Role::Mail,
                lease_s: 0,
                bytes: envelope.clone(),
            };
            match tokio::time::timeout(DELIVER, dht.keep(peer, keep)).await {
                Ok(Ok(_)) => return Ok(node.peer.clone()),
                Ok(Err(DhtError::Refused(kind, message))) => {
                    last = MailError::Refused(kind, message);
                }
                Ok(Err(e)) => last = MailError::Refused(ErrorKind::Overloaded, e.to_string()),
                Err(_) => last = MailError::Refused(ErrorKind::Timeout, "timed out".into()),
            }
        }
        Err(last)
    }

    /// Keeps the mailbox a record (signed by its owner) names this node for, and publishes
    /// the record to the peers. A record not naming this node, or older than the one kept,
    /// is refused.
    pub async fn register(&self, bytes: &[u8]) -> Result<MailRecord, MailError> {
        if !self.section().enabled {
            return Err(MailError::Disabled);
        }
        let record = MailRecord::decode(bytes)?;
        let identity = record
            .identity()
            .ok_or_else(|| MailError::BadRecord("bad key".into()))?;
        if let Some(dht) = &self.inner.dht {
            let me = dht.peer_id().to_string();
            if !record.mailboxes.iter().any(|n| n.peer == me) {
                return Err(MailError::BadRecord(format!(
                    "the record does not name this node ({me}) as a mailbox"
                )));
            }
        }
        if let Some(held) = self.inner.queues.record(&identity)?
            && let Ok(held) = MailRecord::decode(&held)
            && !(record.seq > held.seq || (record.seq == held.seq && record == held))
        {
            return Err(MailError::Stale { held: held.seq });
        }
        let change = Change::Register {
            recipient: identity,
            record: bytes.to_vec(),
            max: self.section().max_mailboxes,
        };
        if let Err(r) = self.commit(change).await? {
            return Err(refusal(r, &identity));
        }
        if let Some(dht) = &self.inner.dht {
            let key = MailRecord::dht_key(&identity);
            match dht.put_record(key, bytes.to_vec()).await {
                Ok(peers) => tracing::debug!(peers, key = %record.key, "published a mail record"),
                Err(e) => tracing::debug!(error = %e, "cannot publish a mail record yet"),
            }
        }
        Ok(record)
    }

    /// This node as a mailbox node: its peer id and the addresses peers dial it at.
    pub async fn node(&self) -> Option<MailboxNode> {
        let dht = self.inner.dht.as_ref()?;
        let status = dht.status().await.ok()?;
        let mut addrs = status.listen;
        addrs.truncate(crate::record::MAX_ADDRS);
        Some(MailboxNode {
            peer: status.peer_id,
            addrs,
        })
    }

    /// Up to `limit` visible messages (or receipts) of `who`, hidden then for the visibility
    /// timeout unless acknowledged.
    pub async fn fetch(
        &self,
        who: [u8; 32],
        lane: Lane,
        limit: usize,
    ) -> Result<Vec<Fetched>, MailError> {
        let s = self.section();
        let queues = self.inner.queues.clone();
        let vis = s.visibility_timeout_s * 1000;
        let max_bytes = s.max_message_bytes.max(4 << 20);
        let got = tokio::task::spawn_blocking(move || {
            queues.fetch(&who, lane, now_ms(), vis, limit.clamp(1, 1000), max_bytes)
        })
        .await
        .map_err(|_| MailError::Stopped)??;
        MailMetrics::add(&self.inner.metrics.delivered, got.len() as u64);
        Ok(got)
    }

    /// Recipients that get new mail from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<[u8; 32]> {
        self.inner.news.subscribe()
    }

    /// Counts a push socket of `who`: refused past 1,024 in all or 4 per identity.
    pub fn open_socket(&self, who: [u8; 32]) -> Result<SocketGuard, MailError> {
        let mut open = lock(&self.inner.sockets);
        let total: usize = open.values().sum();
        let mine = open.entry(who).or_insert(0);
        if total >= SOCKETS || *mine >= SOCKETS_EACH {
            if *mine == 0 {
                open.remove(&who);
            }
            return Err(MailError::RateLimited { retry_ms: 5_000 });
        }
        *mine += 1;
        Ok(SocketGuard {
            mail: self.clone(),
            who,
        })
    }

    /// One message of `who`, hidden or not.
    pub async fn get(&self, who: [u8; 32], id: Address) -> Result<Option<Fetched>, MailError> {
        Ok(self.inner.queues.get(&who, &id)?)
    }

    /// Acknowledges (deletes) messages of `who`: the ids that were queued (others are left
    /// out, including other recipients' ids).
    pub async fn ack(&self, who: [u8; 32], ids: Vec<Address>) -> Result<Vec<Address>, MailError> {
        match self
            .commit(Change::Ack {
                recipient: who,
                ids,
            })
            .await?
        {
            Ok(Done::Acked(done)) => {
                MailMetrics::add(&self.inner.metrics.acked, done.len() as u64);
                Ok(done)
            }
            _ => Err(MailError::Stopped),
        }
    }

    /// The service's loop, under the supervisor: the group committer, retention and the
    /// outbox, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let mut jobs = self.inner.mailbox.lock().await;
        let mut sweep = tokio::time::interval(SWEEP);
        let mut fold = tokio::time::interval(FOLD);
        let mut republish =
            tokio::time::interval_at(Instant::now() + Duration::from_secs(5), REPUBLISH);
        let outbox = tokio::spawn(self.clone().run_outbox(shutdown.clone()));
        let _outbox = AbortOnDrop(outbox);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let queues = self.inner.queues.clone();
                    let _ = tokio::task::spawn_blocking(move || queues.checkpoint()).await;
                    return Ok(());
                }
                first = jobs.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await?;
                }
                _ = sweep.tick() => self.sweep().await,
                _ = fold.tick() => {
                    let queues = self.inner.queues.clone();
                    match tokio::task::spawn_blocking(move || queues.checkpoint()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot fold the mail log in"),
                        Err(e) => return Err(format!("the mail log fold failed: {e}")),
                    }
                }
                _ = republish.tick() => self.republish().await,
            }
        }
    }

    /// Commits a batch of changes in one fsynced transaction and answers each.
    async fn apply(&self, batch: Vec<Job>) -> Result<(), String> {
        let (changes, replies): (Vec<Change>, Vec<Reply>) =
            batch.into_iter().map(|j| (j.change, j.reply)).unzip();
        let queues = self.inner.queues.clone();
        let n = changes.len() as u64;
        let result = tokio::task::spawn_blocking(move || queues.apply(&changes, now_ms()))
            .await
            .map_err(|e| format!("the mailbox committer failed: {e}"))?;
        MailMetrics::add(&self.inner.metrics.commits, 1);
        MailMetrics::add(&self.inner.metrics.changes, n);
        match result {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a mailbox commit failed");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        Ok(())
    }

    async fn sweep(&self) {
        let retention_ms = self.section().retention_s.saturating_mul(1000);
        let queues = self.inner.queues.clone();
        match tokio::task::spawn_blocking(move || queues.expire(now_ms(), retention_ms)).await {
            Ok(Ok(expired)) => {
                let m = &self.inner.metrics;
                MailMetrics::add(&m.expired, expired.messages);
                MailMetrics::add(&m.given_up, expired.outbox);
                if expired.messages + expired.outbox > 0 {
                    tracing::info!(
                        messages = expired.messages,
                        outbox = expired.outbox,
                        "removed mail past its retention"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep the mailboxes"),
            Err(e) => tracing::warn!(error = %e, "the mailbox sweep failed"),
        }
    }

    /// Stores the records of the mailboxes kept here on peers again (their copies expire).
    async fn republish(&self) {
        let Some(dht) = &self.inner.dht else { return };
        let Ok(records) = self.inner.queues.records() else {
            return;
        };
        for bytes in records {
            if let Ok(record) = MailRecord::decode(&bytes)
                && let Some(identity) = record.identity()
            {
                let _ = dht.put_record(MailRecord::dht_key(&identity), bytes).await;
            }
        }
    }

    /// The outbox: attempts what is due, [`PARALLEL`] at a time, until `shutdown`.
    async fn run_outbox(self, shutdown: CancellationToken) {
        loop {
            let wait = self
                .inner
                .queues
                .next_due()
                .map_or(Duration::from_secs(60), |at| {
                    Duration::from_millis(at.saturating_sub(now_ms()))
                });
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.outbox.notified() => continue,
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
            }
            let due = match self.inner.queues.due(now_ms(), PARALLEL) {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    continue;
                }
            };
            let mut tasks = tokio::task::JoinSet::new();
            for pending in due {
                let this = self.clone();
                tasks.spawn(async move { this.attempt(pending).await });
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    /// One attempt of an outbox entry.
    async fn attempt(&self, pending: Pending) {
        let envelope = Bytes::from(pending.envelope);
        let change = match Head::read(&envelope, usize::MAX) {
            Err(_) => Change::Sent { id: pending.id },
            Ok(head) => match self.deliver(&head, envelope).await {
                Ok(node) => {
                    MailMetrics::add(&self.inner.metrics.forwarded, 1);
                    tracing::debug!(id = %pending.id, node, attempts = pending.attempts + 1,
                        "delivered from the outbox");
                    Change::Sent { id: pending.id }
                }
                Err(e) => {
                    let next = backoff_ms(pending.attempts + 1, self.section().retry_max_s);
                    tracing::debug!(id = %pending.id, error = %e, retry_ms = next,
                        "outbox delivery failed");
                    Change::Retry {
                        id: pending.id,
                        next_ms: now_ms() + next,
                    }
                }
            },
        };
        if let Err(e) = self.commit(change).await {
            tracing::warn!(error = %e, "cannot update the outbox");
        }
    }
}

/// Aborts a task when dropped (a restarted service does not leave its outbox loop behind).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envelope::{MAX_BUCKET, MailKey, seal};
    use ron_auth::SigningKey;

    fn mailbox(rate: i64, burst: i64, quota: i64) -> Mailbox {
        let config = Config::builder()
            .register::<MailSection>()
            .set("mail.sender_rate_per_s", rate)
            .set("mail.sender_burst", burst)
            .set("mail.quota_messages", quota)
            .build()
            .unwrap();
        Mailbox::new(Queues::in_memory().unwrap(), config, None)
    }

    /// Runs the service's loop while `f` runs.
    async fn with_service<T>(mail: &Mailbox, f: impl std::future::Future<Output = T>) -> T {
        let stop = CancellationToken::new();
        let service = tokio::spawn(mail.clone().run(stop.clone()));
        let out = f.await;
        stop.cancel();
        service.await.unwrap().unwrap();
        out
    }

    async fn register(mail: &Mailbox, who: &SigningKey) -> MailKey {
        let key = MailKey::derive(who);
        let record = MailRecord::sign(
            who,
            key.public(),
            vec![MailboxNode {
                peer: "self".into(),
                addrs: vec![],
            }],
            1,
        )
        .unwrap();
        mail.register(&record.encode().unwrap()).await.unwrap();
        key
    }

    #[tokio::test]
    async fn senders_are_limited_by_key_or_address_but_the_nodes_own_user_is_not() {
        let mail = mailbox(1, 2, 1000);
        with_service(&mail, async {
            let bob = SigningKey::generate();
            let bob_key = register(&mail, &bob).await;
            let alice = SigningKey::generate();
            let env = |n: u8| -> Bytes {
                seal(
                    &alice,
                    &bob.public_bytes(),
                    &bob_key.public(),
                    Lane::Message,
                    0,
                    &[n],
                    MAX_BUCKET,
                )
                .unwrap()
                .into()
            };
            let addr = Sender::Addr("192.0.2.7".parse().unwrap());
            assert!(mail.send(env(1), addr.clone(), false).await.is_ok());
            assert!(mail.send(env(2), addr.clone(), false).await.is_ok());
            let err = mail.send(env(3), addr, false).await.unwrap_err();
            assert!(matches!(err, MailError::RateLimited { retry_ms } if retry_ms > 0));
            assert_eq!(ron_proto::Failure::kind(&err).status(), 429);
            // Another sender has its own bucket; the node's own user has none.
            let other = Sender::Key([7; 32]);
            assert!(mail.send(env(4), other, false).await.is_ok());
            for n in 10..20 {
                assert!(mail.send(env(n), Sender::Local, false).await.is_ok());
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_full_mailbox_is_refused_with_507_and_the_queue_keeps_what_it_had() {
        let mail = mailbox(100, 1000, 2);
        with_service(&mail, async {
            let bob = SigningKey::generate();
            let bob_key = register(&mail, &bob).await;
            let alice = SigningKey::generate();
            let mut ids = Vec::new();
            for n in 0..3u8 {
                let env: Bytes = seal(
                    &alice,
                    &bob.public_bytes(),
                    &bob_key.public(),
                    Lane::Message,
                    0,
                    &[n],
                    MAX_BUCKET,
                )
                .unwrap()
                .into();
                match mail.send(env, Sender::Local, false).await {
                    Ok(Sent::Stored { id, fresh: true }) => ids.push(id),
                    Err(e) => {
                        assert_eq!(n, 2);
                        assert_eq!(ron_proto::Failure::kind(&e).status(), 507);
                        assert_eq!(ron_proto::Failure::code(&e), "mailbox_full");
                    }
                    other => panic!("{other:?}"),
                }
            }
            let got = mail
                .fetch(bob.public_bytes(), Lane::Message, 10)
                .await
                .unwrap();
            assert_eq!(got.iter().map(|f| f.id).collect::<Vec<_>>(), ids);
            // Not kept here, and no relay allowed: 404 no_mailbox.
            let stranger = seal(
                &alice,
                &[5; 32],
                &bob_key.public(),
                Lane::Message,
                0,
                b"x",
                MAX_BUCKET,
            )
            .unwrap();
            let err = mail
                .send(stranger.into(), Sender::Local, false)
                .await
                .unwrap_err();
            assert_eq!(ron_proto::Failure::code(&err), "no_mailbox");
        })
        .await;
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for attempts in 0..40 {
            let ms = backoff_ms(attempts, 300);
            let base = (1000u64 << attempts.min(30)).min(300_000);
            assert!(ms >= base / 2 && ms <= base / 2 + base, "{attempts}: {ms}");
        }
    }
}
