//! The payment service: one committer applies every ledger change in batches (one fsynced
//! transaction each); the edges ask it what a request costs and charge it before serving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ron_auth::Holder;
use ron_kernel::Config;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ledger::{
    self, Account, Change, Charges, Done, Kind, Ledger, NO_OVERDRAFT, Record, Refusal, Transfer,
};
use crate::metrics::PaymentMetrics;
use crate::pow::{Puzzles, Verdict};
use crate::{Anonymous, PaymentError, PaymentSection, Priced};

/// Transfer codes: what a transfer paid for.
pub mod codes {
    /// A read, charged (a usage event: one request, `bytes` out).
    pub const GET: u16 = 1;
    /// An upload's price (a usage event once posted: one request, `bytes` in).
    pub const PUT: u16 = 2;
    /// A flat period bought by a read (a usage event, as `GET`).
    pub const FLAT: u16 = 3;
    /// More of an upload's price, reserved as its bytes arrived (no event of its own).
    pub const PUT_MORE: u16 = 4;
    /// A flat period bought by an upload (the upload is metered by itself).
    pub const FLAT_PUT: u16 = 5;
    /// Credits granted by the owner.
    pub const GRANT: u16 = 10;
    /// Ranges served to a peer (debits the peer's account; a usage event of the peer: its
    /// ranges as requests, their bytes out).
    pub const PEER_SERVED: u16 = 20;
    /// Ranges received from a peer (credits the peer's account).
    pub const PEER_RECEIVED: u16 = 21;
    /// A cheque received from a peer (credits the peer's account by its increase).
    pub const CHEQUE_IN: u16 = 22;
    /// A cheque sent to a peer (debits the peer's account by its increase).
    pub const CHEQUE_OUT: u16 = 23;
}
use codes::{
    FLAT as CODE_FLAT, FLAT_PUT as CODE_FLAT_PUT, GRANT as CODE_GRANT, PUT as CODE_PUT,
    PUT_MORE as CODE_PUT_MORE,
};

/// The node's own accounts.
pub mod accounts {
    /// Where granted credits come from (its balance is minus every credit granted).
    pub const ISSUANCE: &str = "node/issuance";
    /// Where charges go.
    pub const REVENUE: &str = "node/revenue";
    /// Where ranges served to peers are credited.
    pub const PEER_REVENUE: &str = "node/peer-revenue";
    /// Where ranges received from peers are debited.
    pub const PEER_SPEND: &str = "node/peer-spend";
    /// What peers' cheques paid this node (its balance is minus their sum: cheques to cash).
    pub const CHEQUES_IN: &str = "node/cheques-in";
    /// What this node's cheques paid peers (its balance is their sum: cheques to honour).
    pub const CHEQUES_OUT: &str = "node/cheques-out";
    /// Every account of the node's own.
    pub const NODE: [&str; 6] = [
        ISSUANCE,
        REVENUE,
        PEER_REVENUE,
        PEER_SPEND,
        CHEQUES_IN,
        CHEQUES_OUT,
    ];
}

/// An account's spending as the committer knows it between commits.
#[derive(Debug, Default, Clone)]
struct Ahead {
    /// What the ledger said it could spend after the last commit that touched it.
    available: i128,
    /// Charges admitted since, not yet committed.
    queued: u64,
    /// Those not yet handed to the committer: code, amount, bytes of each request.
    waiting: Vec<(u16, u64, u64)>,
}

/// Accounts whose spending is remembered between commits at most (idle ones are forgotten).
const AHEAD: usize = 100_000;
/// Charges admitted ahead and waiting for the committer at most (past it: 503, as when the
/// committer's queue is full).
const WAITING: usize = 262_144;

/// Jobs waiting for the committer at most.
const JOBS: usize = 8192;
/// How often overdue reservations are voided.
const EXPIRE: Duration = Duration::from_secs(1);

type Answers = Result<Vec<Result<Done, Refusal>>, String>;

struct Job {
    changes: Vec<Change>,
    reply: oneshot::Sender<Answers>,
}

pub(crate) struct Inner {
    pub(crate) ledger: Arc<Ledger>,
    config: Config,
    jobs: mpsc::Sender<Job>,
    mailbox: supervisor::Mailbox<Job>,
    pub(crate) metrics: PaymentMetrics,
    puzzles: Puzzles,
    /// With `durable_charges = false`, per account: what the ledger last said it could
    /// spend, and the charges admitted since that are still on their way to it.
    ahead: Mutex<HashMap<String, Ahead>>,
    /// Charges in `ahead` waiting for the committer.
    waiting: AtomicUsize,
    /// Peers' balances and the ranges moved since the last tick, by account.
    pub(crate) peers: Mutex<HashMap<String, crate::peers::PeerBook>>,
    /// The node's key, which signs its cheques.
    pub(crate) identity: std::sync::OnceLock<libp2p_identity::ed25519::Keypair>,
    /// Where credits come from.
    settlement: Box<dyn crate::settlement::Settlement>,
}

/// The payment service's handle (cheap to clone).
#[derive(Clone)]
pub struct Payment {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Payment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payment").finish_non_exhaustive()
    }
}

/// What paid for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Nothing was due (the owner, a price of 0, a paid flat period, an open anonymous read).
    Free,
    /// Credits were charged.
    Charged(u64),
    /// A proof of work was accepted.
    Worked,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn id_of(parts: &[&[u8]]) -> u128 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(id)
}

impl Payment {
    /// The service over `ledger`, its prices read live from `config`'s `[payment]`, credits
    /// granted by the owner ([`crate::settlement::Internal`]).
    pub fn new(ledger: Ledger, config: Config) -> Self {
        Self::with_settlement(ledger, config, Box::new(crate::settlement::Internal))
    }

    /// The service with credits deposited through `settlement`.
    pub fn with_settlement(
        ledger: Ledger,
        config: Config,
        settlement: Box<dyn crate::settlement::Settlement>,
    ) -> Self {
        let (jobs, mailbox) = supervisor::mailbox(JOBS);
        Self {
            inner: Arc::new(Inner {
                ledger: Arc::new(ledger),
                config,
                jobs,
                mailbox,
                metrics: PaymentMetrics::default(),
                puzzles: Puzzles::default(),
                ahead: Mutex::default(),
                waiting: AtomicUsize::new(0),
                peers: Mutex::default(),
                identity: std::sync::OnceLock::new(),
                settlement,
            }),
        }
    }

    /// The service's counters (register them with [`PaymentMetrics::register`]).
    pub fn metrics(&self) -> &PaymentMetrics {
        &self.inner.metrics
    }

    /// The ledger (read-only use: balances, history, audits).
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    pub(crate) fn section(&self) -> Arc<PaymentSection> {
        self.inner.config.get::<PaymentSection>()
    }

    /// Whether requests by token holders are charged now (the edges skip the holder's
    /// identification when not).
    pub fn charges(&self) -> bool {
        self.section().charges()
    }

    /// Whether anonymous reads need a proof of work now.
    pub fn pow_on(&self) -> bool {
        self.section().anonymous == Anonymous::Pow
    }

    /// Applies `changes` in the committer's next batch, once durable.
    pub(crate) async fn submit(
        &self,
        changes: Vec<Change>,
    ) -> Result<Vec<Result<Done, Refusal>>, PaymentError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .try_send(Job { changes, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PaymentError::Busy,
                mpsc::error::TrySendError::Closed(_) => PaymentError::Stopped,
            })?;
        match answer.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the ledger commit failed");
                Err(PaymentError::Stopped)
            }
            Err(_) => Err(PaymentError::Stopped),
        }
    }

    async fn one(&self, change: Change) -> Result<Result<Done, Refusal>, PaymentError> {
        self.submit(vec![change])
            .await?
            .pop()
            .ok_or(PaymentError::Stopped)
    }

    /// Admits a request of `holder` (`None`: no token) for `op` on `target`, moving `bytes`:
    /// charges its price (402 without the credits), or checks the proof of work `pow` of an
    /// anonymous read (402 with a challenge without a good one). The owner is never charged.
    pub async fn admit(
        &self,
        holder: Option<Holder>,
        pow: Option<&str>,
        op: Priced,
        target: &str,
        bytes: u64,
    ) -> Result<Settlement, PaymentError> {
        let s = self.section();
        match holder {
            Some(Holder::Owner) => Ok(Settlement::Free),
            Some(Holder::Key(_)) if !s.charges() => Ok(Settlement::Free),
            Some(holder @ Holder::Key(_)) => self.charge(&s, &holder.account(), op, bytes).await,
            None if s.anonymous == Anonymous::Pow
                && op == Priced::Get
                && bytes <= s.pow_max_bytes =>
            {
                self.worked(&s, pow, target)
            }
            None => Ok(Settlement::Free),
        }
    }

    fn worked(
        &self,
        s: &PaymentSection,
        pow: Option<&str>,
        target: &str,
    ) -> Result<Settlement, PaymentError> {
        let now = now_ms();
        let m = &self.inner.metrics;
        let reason = match pow.map(|a| self.inner.puzzles.check(a, target, now)) {
            Some(Verdict::Accepted) => {
                m.pow_accepted.inc();
                return Ok(Settlement::Worked);
            }
            Some(Verdict::Busy) => return Err(PaymentError::Busy),
            None => "this read needs a proof of work",
            Some(Verdict::Forged) => {
                "the proof of work does not answer a challenge of this node for this object"
            }
            Some(Verdict::Expired) => "the proof of work's challenge expired",
            Some(Verdict::Short) => "the proof of work lacks the challenge's zero bits",
            Some(Verdict::Replayed) => "that proof of work was used already",
        };
        if pow.is_some() {
            m.pow_refused.inc();
        }
        let bits = self
            .inner
            .puzzles
            .difficulty(now, s.pow_bits, s.pow_target_per_s);
        m.pow_bits.set(i64::from(bits));
        m.pow_challenges.inc();
        Err(PaymentError::Pow {
            reason,
            challenge: self.inner.puzzles.challenge(target, bits, now),
        })
    }

    async fn charge(
        &self,
        s: &PaymentSection,
        account: &str,
        op: Priced,
        bytes: u64,
    ) -> Result<Settlement, PaymentError> {
        let now = now_ms();
        let (transfer, price) = match s.flat {
            Some(flat) => {
                let paid_until = self
                    .inner
                    .ledger
                    .account(account)?
                    .map_or(0, |a| a.paid_until_ms);
                if paid_until > now {
                    return Ok(Settlement::Free);
                }
                // Requests racing to pay the same period name the same transfer: paid once.
                let id = id_of(&[account.as_bytes(), b"flat", &paid_until.to_le_bytes()]);
                let until = now.saturating_add(flat.period_s.saturating_mul(1000));
                (
                    Change::Transfer(Transfer {
                        id,
                        debit: account.to_owned(),
                        credit: accounts::REVENUE.into(),
                        amount: flat.credits,
                        kind: Kind::Posted,
                        code: if op == Priced::Put {
                            CODE_FLAT_PUT
                        } else {
                            CODE_FLAT
                        },
                        paid_until_ms: Some(until),
                        bytes,
                        count: 1,
                    }),
                    flat.credits,
                )
            }
            None => {
                let price = s.price(op, bytes);
                if price == 0 {
                    return Ok(Settlement::Free);
                }
                if !s.durable_charges {
                    return self.charge_ahead(account, price, op.code(), bytes);
                }
                // One item: the committer merges it with the holder's other charges.
                let charge = Change::Charges(Charges {
                    id: fastrand::u128(..),
                    debit: account.to_owned(),
                    credit: accounts::REVENUE.into(),
                    code: op.code(),
                    items: vec![(price, bytes)],
                });
                (charge, price)
            }
        };
        match self.one(transfer).await? {
            Ok(Done::Applied) => {
                self.inner.metrics.charged.inc_by(price);
                Ok(Settlement::Charged(price))
            }
            Ok(_) => Ok(Settlement::Free),
            Err(refusal) => Err(self.required(price, refusal)),
        }
    }

    /// With `durable_charges = false`: admits a charge against the account's committed
    /// credits less the charges still on their way to the ledger, and answers at once; the
    /// committer commits it with the next batch (the ledger checks the overdraft again).
    fn charge_ahead(
        &self,
        account: &str,
        price: u64,
        code: u16,
        bytes: u64,
    ) -> Result<Settlement, PaymentError> {
        let known = lock(&self.inner.ahead).contains_key(account);
        if !known {
            // First charge since the account was last touched: ask the ledger once.
            let Some(a) = self.inner.ledger.account(account)? else {
                return Err(self.required(price, Refusal::NoAccount(account.to_owned())));
            };
            let mut ahead = lock(&self.inner.ahead);
            if ahead.len() >= AHEAD {
                ahead.retain(|_, a| a.queued > 0);
            }
            ahead.entry(account.to_owned()).or_insert(Ahead {
                available: a.available(),
                ..Ahead::default()
            });
        }
        {
            let mut ahead = lock(&self.inner.ahead);
            if self.inner.waiting.load(Ordering::Relaxed) >= WAITING {
                return Err(PaymentError::Busy);
            }
            let a = ahead.entry(account.to_owned()).or_default();
            let left = a.available - i128::from(a.queued);
            if left < i128::from(price) {
                let available = u64::try_from(left.max(0)).unwrap_or(0);
                drop(ahead);
                return Err(self.required(price, Refusal::ExceedsCredits { available }));
            }
            a.queued += price;
            // Waits here, not in the committer's queue: the committer takes every account's
            // waiting charges at its next tick, one transfer per account and code.
            a.waiting.push((code, price, bytes));
            self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.metrics.charged.inc_by(price);
        Ok(Settlement::Charged(price))
    }

    /// The charges admitted ahead and not yet handed to the committer, as changes (one per
    /// account and code).
    fn take_waiting(&self) -> Vec<Change> {
        let mut ahead = lock(&self.inner.ahead);
        self.inner.waiting.store(0, Ordering::Relaxed);
        let mut changes: Vec<Change> = Vec::new();
        for (account, a) in ahead.iter_mut() {
            if a.waiting.is_empty() {
                continue;
            }
            let mut by_code: Vec<(u16, Vec<(u64, u64)>)> = Vec::new();
            for (code, amount, bytes) in a.waiting.drain(..) {
                match by_code.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, items)) => items.push((amount, bytes)),
                    None => by_code.push((code, vec![(amount, bytes)])),
                }
            }
            for (code, items) in by_code {
                changes.push(Change::Charges(Charges {
                    id: fastrand::u128(..),
                    debit: account.clone(),
                    credit: accounts::REVENUE.into(),
                    code,
                    items,
                }));
            }
        }
        changes
    }

    fn required(&self, price: u64, refusal: Refusal) -> PaymentError {
        let balance = match refusal {
            Refusal::ExceedsCredits { available } => i64::try_from(available).unwrap_or(i64::MAX),
            Refusal::NoAccount(_) => 0,
            other => return PaymentError::Refused(other),
        };
        self.inner.metrics.refused.inc();
        PaymentError::Required { price, balance }
    }

    /// Reserves the price of an upload of `holder` announcing `bytes` (`None`: not announced;
    /// [`Reservation::grow`] reserves as bytes arrive). The credits stay reserved until the
    /// upload is kept ([`Reservation::post`]) or dropped (given back).
    pub async fn reserve(
        &self,
        holder: Option<Holder>,
        bytes: Option<u64>,
    ) -> Result<Reservation, PaymentError> {
        let s = self.section();
        let account = match holder {
            Some(h @ Holder::Key(_)) if s.charges() && s.flat.is_none() => h.account(),
            Some(h @ Holder::Key(_)) if s.charges() => {
                // A flat price: the period is paid (or bought) up front.
                self.charge(&s, &h.account(), Priced::Put, 0).await?;
                return Ok(Reservation::free());
            }
            _ => return Ok(Reservation::free()),
        };
        let mut r = Reservation {
            payment: Some(self.clone()),
            account,
            per_mib: s.per_mib.put,
            timeout_ms: now_ms() + s.reserve_s * 1000,
            mib: 0,
            pending: Vec::new(),
            kept: false,
        };
        let first = s.per_request.put.saturating_add(
            s.per_mib
                .put
                .saturating_mul(bytes.unwrap_or(0).div_ceil(1 << 20)),
        );
        r.mib = bytes.unwrap_or(0).div_ceil(1 << 20);
        r.hold(first).await?;
        Ok(r)
    }

    /// Credits `account` with `credits` through the node's settlement, once `proof` shows
    /// they were paid for (internally: the owner's grant); the transfer's id.
    pub async fn deposit(
        &self,
        account: &str,
        credits: u64,
        proof: crate::settlement::Proof,
    ) -> Result<u128, PaymentError> {
        self.inner
            .settlement
            .deposit(self, account, credits, proof)
            .await
    }

    /// The node's settlement's name (`internal`).
    pub fn settlement(&self) -> &'static str {
        self.inner.settlement.name()
    }

    /// Grants `credits` to `account` (`ed25519/<hex>`, opened if new) from the node's
    /// issuance; the transfer's id.
    pub async fn grant(&self, account: &str, credits: u64) -> Result<u128, PaymentError> {
        let id = fastrand::u128(..);
        let answers = self
            .submit(vec![
                Change::Open {
                    account: account.to_owned(),
                    flags: NO_OVERDRAFT,
                },
                Change::Transfer(Transfer {
                    id,
                    debit: accounts::ISSUANCE.into(),
                    credit: account.to_owned(),
                    amount: credits,
                    kind: Kind::Posted,
                    code: CODE_GRANT,
                    paid_until_ms: None,
                    bytes: 0,
                    count: 0,
                }),
            ])
            .await?;
        for answer in answers {
            answer?;
        }
        Ok(id)
    }

    /// An account's totals (`None`: never granted anything).
    pub fn balance(&self, account: &str) -> Result<Option<Account>, PaymentError> {
        Ok(self.inner.ledger.account(account)?)
    }

    /// The newest `limit` transfers of `account`.
    pub fn history(&self, account: &str, limit: usize) -> Result<Vec<Record>, PaymentError> {
        Ok(self.inner.ledger.history(account, limit)?)
    }

    /// The committer: opens the node's accounts, then applies batches of changes, each in one
    /// fsynced transaction, and voids overdue reservations every second.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let mut jobs = self.inner.mailbox.lock().await;
        let opening = accounts::NODE.map(|a| Change::Open {
            account: a.into(),
            flags: 0,
        });
        self.commit(opening.to_vec()).await?;
        let mut expire = tokio::time::interval(EXPIRE);
        let mut sync = tokio::time::interval(Duration::from_millis(self.section().sync_ms));
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `durable_charges = false`: requests were answered already; what waits is
            // committed every `sync_ms` in one batch (fewer, larger commits).
            let gathering = !self.section().durable_charges;
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.commit_waiting().await?;
                    self.commit_moved().await?;
                    while self.next_batch(&mut jobs).await? {}
                    return Ok(());
                }
                _ = sync.tick(), if gathering => {
                    self.commit_waiting().await?;
                    while self.next_batch(&mut jobs).await? {}
                }
                first = jobs.recv(), if !gathering => {
                    let Some(first) = first else { return Ok(()) };
                    let batch = gather(vec![first], &mut jobs);
                    self.apply(batch).await?;
                }
                _ = expire.tick() => {
                    // Charges admitted ahead before `durable_charges` was turned back on.
                    self.commit_waiting().await?;
                    self.commit_moved().await?;
                    let ledger = self.inner.ledger.clone();
                    let now = now_ms();
                    if ledger.overdue(now).unwrap_or(false) {
                        self.commit(Vec::new()).await?;
                        self.forget_idle();
                    }
                }
            }
        }
    }

    /// Commits the charges admitted ahead and waiting (nobody waits for the answer).
    async fn commit_waiting(&self) -> Result<(), String> {
        let changes = self.take_waiting();
        if changes.is_empty() {
            return Ok(());
        }
        let (reply, _) = oneshot::channel();
        self.apply(vec![Job { changes, reply }]).await
    }

    /// Commits the ranges moved with peers since the last tick (nobody waits for the answer).
    async fn commit_moved(&self) -> Result<(), String> {
        let changes = self.take_moved();
        if changes.is_empty() {
            return Ok(());
        }
        let (reply, _) = oneshot::channel();
        self.apply(vec![Job { changes, reply }]).await
    }

    /// Commits the jobs waiting now, up to a batch; whether there were any.
    async fn next_batch(&self, jobs: &mut mpsc::Receiver<Job>) -> Result<bool, String> {
        let batch = gather(Vec::new(), jobs);
        if batch.is_empty() {
            return Ok(false);
        }
        self.apply(batch).await?;
        Ok(true)
    }

    /// One fsynced commit of `changes`.
    async fn commit(&self, changes: Vec<Change>) -> Result<Vec<Result<Done, Refusal>>, String> {
        let ledger = self.inner.ledger.clone();
        let result = tokio::task::spawn_blocking(move || ledger.apply(&changes, now_ms()))
            .await
            .map_err(|e| format!("the ledger committer failed: {e}"))?;
        self.inner.metrics.commits.inc();
        result.map_err(|e| e.to_string())
    }

    async fn apply(&self, batch: Vec<Job>) -> Result<(), String> {
        let (changes, routes, replies) = coalesce(batch);
        // The accounts the batch touches, and what each merged charge asked: what the
        // charges admitted ahead are settled with.
        let touched: Vec<(String, u64)> = changes
            .iter()
            .flat_map(|c| match c {
                Change::Charges(c) => vec![(c.debit.clone(), c.items.iter().map(|i| i.0).sum())],
                Change::Transfer(t) => vec![(t.debit.clone(), 0), (t.credit.clone(), 0)],
                Change::Open { account, .. } => vec![(account.clone(), 0)],
                Change::Cheque(c) => vec![(c.peer.clone(), 0)],
            })
            .collect();
        match self.commit(changes).await {
            Ok(answers) => {
                let applied: usize = answers
                    .iter()
                    .map(|a| match a {
                        Ok(Done::Applied | Done::Cheque { .. }) => 1,
                        Ok(Done::Charged(items)) => items.iter().filter(|i| i.is_ok()).count(),
                        _ => 0,
                    })
                    .sum();
                self.inner.metrics.transfers.inc_by(applied as u64);
                self.settle_ahead(&touched, &answers);
                for (reply, route) in replies.into_iter().zip(routes) {
                    let answer = match route {
                        Route::Slice(start, n) => answers[start..start + n].to_vec(),
                        Route::Item(change, item) => vec![match &answers[change] {
                            Ok(Done::Charged(items)) => items[item].clone().map(|()| Done::Applied),
                            Ok(_) => Err(Refusal::IdUsed),
                            Err(r) => Err(r.clone()),
                        }],
                    };
                    let _ = reply.send(Ok(answer));
                }
                Ok(())
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                // A store that fails a commit is not trusted further: restart on it.
                Err(e)
            }
        }
    }
}

/// `batch` and the jobs waiting now, up to a batch's worth of changes.
fn gather(mut batch: Vec<Job>, jobs: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut size: usize = batch.iter().map(|j| j.changes.len()).sum();
    while size < ledger::MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => {
                size += job.changes.len();
                batch.push(job);
            }
            Err(_) => break,
        }
    }
    batch
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Payment {
    /// After a commit: the charges it carried are in the ledger now (or refused by it:
    /// served unpaid, counted), and every account it touched is read again.
    fn settle_ahead(&self, touched: &[(String, u64)], answers: &[Result<Done, Refusal>]) {
        for answer in answers {
            if let Ok(Done::Charged(items)) = answer {
                let unpaid = items.iter().filter(|i| i.is_err()).count();
                self.inner.metrics.unpaid.inc_by(unpaid as u64);
            }
        }
        if lock(&self.inner.ahead).is_empty() {
            return;
        }
        for (account, settled) in touched {
            if !lock(&self.inner.ahead).contains_key(account) {
                continue;
            }
            let available = self
                .inner
                .ledger
                .account(account)
                .ok()
                .flatten()
                .map(|a| a.available());
            let mut ahead = lock(&self.inner.ahead);
            if let Some(a) = ahead.get_mut(account) {
                a.queued = a.queued.saturating_sub(*settled);
                match available {
                    Some(v) => a.available = v,
                    None => {
                        ahead.remove(account);
                    }
                }
            }
        }
    }

    /// Forgets what idle accounts could spend (after reservations expired in the ledger).
    fn forget_idle(&self) {
        lock(&self.inner.ahead).retain(|_, a| a.queued > 0);
    }
}

/// Where a job's answers are in a commit's: its own changes, or one item of charges merged.
enum Route {
    Slice(usize, usize),
    Item(usize, usize),
}

/// The changes of a batch of jobs, charges of one request each merged per account and code
/// into one transfer (many requests of one holder cost one transfer, not one each), with
/// where each job's answer will be.
fn coalesce(batch: Vec<Job>) -> (Vec<Change>, Vec<Route>, Vec<oneshot::Sender<Answers>>) {
    let mut changes: Vec<Change> = Vec::new();
    let mut routes = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut merged: HashMap<(String, u16), usize> = HashMap::new();
    for job in batch {
        replies.push(job.reply);
        match <[Change; 1]>::try_from(job.changes) {
            Ok([Change::Charges(c)]) if c.items.len() == 1 => {
                let at = *merged.entry((c.debit.clone(), c.code)).or_insert_with(|| {
                    changes.push(Change::Charges(Charges {
                        items: Vec::new(),
                        ..c.clone()
                    }));
                    changes.len() - 1
                });
                if let Some(Change::Charges(group)) = changes.get_mut(at) {
                    routes.push(Route::Item(at, group.items.len()));
                    group.items.extend(c.items);
                }
            }
            Ok(one) => {
                routes.push(Route::Slice(changes.len(), 1));
                changes.extend(one);
            }
            Err(many) => {
                routes.push(Route::Slice(changes.len(), many.len()));
                changes.extend(many);
            }
        }
    }
    (changes, routes, replies)
}

/// Credits held for an upload: posted when it is kept, given back when it is dropped (or
/// by the ledger when the reservation times out).
#[derive(Debug)]
pub struct Reservation {
    payment: Option<Payment>,
    account: String,
    per_mib: u64,
    timeout_ms: u64,
    /// MiB covered so far.
    mib: u64,
    /// The pending transfers: id, amount, code (the first is the request's, `PUT`).
    pending: Vec<(u128, u64, u16)>,
    kept: bool,
}

impl Reservation {
    /// Nothing to pay.
    pub fn free() -> Self {
        Self {
            payment: None,
            account: String::new(),
            per_mib: 0,
            timeout_ms: 0,
            mib: 0,
            pending: Vec::new(),
            kept: false,
        }
    }

    fn transfer(&self, id: u128, amount: u64, kind: Kind, code: u16, bytes: u64) -> Transfer {
        Transfer {
            id,
            debit: self.account.clone(),
            credit: accounts::REVENUE.into(),
            amount,
            kind,
            code,
            paid_until_ms: None,
            bytes,
            // The upload is one request, carried by its first hold.
            count: u64::from(code == CODE_PUT),
        }
    }

    async fn hold(&mut self, amount: u64) -> Result<(), PaymentError> {
        let Some(payment) = self.payment.clone() else {
            return Ok(());
        };
        if amount == 0 {
            return Ok(());
        }
        let id = fastrand::u128(..);
        // The first hold is the request's; later ones cover more of its bytes.
        let code = if self.pending.is_empty() {
            CODE_PUT
        } else {
            CODE_PUT_MORE
        };
        let timeout_ms = self.timeout_ms;
        let t = self.transfer(id, amount, Kind::Pending { timeout_ms }, code, 0);
        match payment.one(Change::Transfer(t)).await? {
            Ok(_) => {
                self.pending.push((id, amount, code));
                Ok(())
            }
            Err(refusal) => Err(payment.required(amount, refusal)),
        }
    }

    /// `bytes` have arrived: reserves the MiB they start past what is covered.
    pub async fn grow(&mut self, bytes: u64) -> Result<(), PaymentError> {
        let mib = bytes.div_ceil(1 << 20);
        if self.payment.is_none() || mib <= self.mib {
            return Ok(());
        }
        let amount = self.per_mib.saturating_mul(mib - self.mib);
        self.hold(amount).await?;
        self.mib = mib;
        Ok(())
    }

    /// The upload of `bytes` was kept: the reserved credits are charged. What was charged
    /// (0: nothing was due, and the upload is no usage event of the ledger's).
    pub async fn post(mut self, bytes: u64) -> Result<u64, PaymentError> {
        self.kept = true;
        let Some(payment) = self.payment.clone() else {
            return Ok(0);
        };
        let changes: Vec<Change> = self
            .pending
            .iter()
            .map(|&(id, amount, code)| {
                let bytes = if code == CODE_PUT { bytes } else { 0 };
                let post = Kind::Post { pending: id };
                Change::Transfer(self.transfer(fastrand::u128(..), amount, post, code, bytes))
            })
            .collect();
        let total: u64 = self.pending.iter().map(|p| p.1).sum();
        for answer in payment.submit(changes).await? {
            answer?;
        }
        payment.inner.metrics.charged.inc_by(total);
        Ok(total)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kept || self.pending.is_empty() {
            return;
        }
        let Some(payment) = self.payment.take() else {
            return;
        };
        let changes: Vec<Change> = self
            .pending
            .iter()
            .map(|&(id, amount, code)| {
                let void = Kind::Void { pending: id };
                Change::Transfer(self.transfer(fastrand::u128(..), amount, void, code, 0))
            })
            .collect();
        // Given back now; if the queue is full, the reservation's timeout gives them back.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = payment.submit(changes).await;
            });
        }
    }
}

#[cfg(test)]
mod tests;
