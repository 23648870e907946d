//! The credit ledger: double-entry accounts and immutable transfers in one redb file, with
//! TigerBeetle's invariants.
//!
//! - Every transfer moves `amount` from one account's debits to another's credits, so the
//!   sum of all balances is zero, always.
//! - A transfer id is used at most once: the same transfer again is [`Done::Exists`], a
//!   different one under a used id is refused.
//! - Two-phase: a `pending` transfer reserves the amount on both sides until a `post` or a
//!   `void` resolves it, once, or its timeout voids it ([`Ledger::apply`] expires overdue
//!   ones first, so none stays pending past its timeout).
//! - An account opened with [`NO_OVERDRAFT`] never has debits (posted and pending) above its
//!   posted credits.
//!
//! Plain code over a clock passed in (`now_ms`). [`Ledger::apply`] applies many changes in one
//! fsynced transaction: the group commit behind the service's writer. A change that is refused
//! leaves nothing behind and the others go on.

use std::path::Path;

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

/// Accounts with this flag are never overdrawn: debits (posted and pending) stay within the
/// posted credits.
pub const NO_OVERDRAFT: u8 = 1;

/// Account id -> debits posted, credits posted, debits pending, credits pending, flags,
/// paid until (ms: the end of a flat period bought).
type AccountRow = (u64, u64, u64, u64, u8, u64);
const ACCOUNTS: TableDefinition<&str, AccountRow> = TableDefinition::new("accounts");
/// Transfer id -> debit, credit, amount, kind, pending id, timeout (ms), code, at (ms), state,
/// sequence, bytes, requests.
type TransferRow<'a> = (
    &'a str,
    &'a str,
    u64,
    u8,
    u128,
    u64,
    u16,
    u64,
    u8,
    u64,
    u64,
    u64,
);
const TRANSFERS: TableDefinition<u128, TransferRow> = TableDefinition::new("transfers");
/// Account id -> (sequence, transfer id) of every transfer it took part in.
const HISTORY: MultimapTableDefinition<&str, (u64, u128)> = MultimapTableDefinition::new("history");
/// Sequence -> transfer id: the ledger's order (what usage rollups follow).
const BY_SEQ: TableDefinition<u64, u128> = TableDefinition::new("by_seq");
/// (timeout ms, transfer id) of every transfer still pending.
const TIMEOUTS: TableDefinition<(u64, u128), ()> = TableDefinition::new("timeouts");
/// (peer account, 1 inbound | 0 outbound) -> the highest cheque: its cumulative amount and
/// signature (what an external settlement would cash).
const CHEQUES: TableDefinition<(&str, u8), (u64, &[u8])> = TableDefinition::new("cheques");
/// Counters: the next sequence number.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const KIND_POSTED: u8 = 0;
const KIND_PENDING: u8 = 1;
const KIND_POST: u8 = 2;
const KIND_VOID: u8 = 3;

/// Most changes applied in one transaction (the service batches up to this).
pub const MAX_BATCH: usize = 4096;

/// redb's page cache for this file at most.
const CACHE_BYTES: usize = 32 << 20;

/// Why the ledger's store failed.
#[derive(Debug, thiserror::Error)]
#[error("ledger store: {0}")]
pub struct StoreError(String);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self(e.into().to_string())
    }
}

/// An account's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    /// Debits posted.
    pub debits_posted: u64,
    /// Credits posted.
    pub credits_posted: u64,
    /// Debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Credits reserved by pending transfers.
    pub credits_pending: u64,
    /// Flags ([`NO_OVERDRAFT`]).
    pub flags: u8,
    /// The end of the flat period this account paid for (unix ms; 0: none).
    pub paid_until_ms: u64,
}

impl Account {
    fn from_row(r: AccountRow) -> Self {
        Self {
            debits_posted: r.0,
            credits_posted: r.1,
            debits_pending: r.2,
            credits_pending: r.3,
            flags: r.4,
            paid_until_ms: r.5,
        }
    }

    fn row(&self) -> AccountRow {
        (
            self.debits_posted,
            self.credits_posted,
            self.debits_pending,
            self.credits_pending,
            self.flags,
            self.paid_until_ms,
        )
    }

    /// Credits posted minus debits posted (negative for an issuing account).
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// What the account can still spend: posted credits minus posted and pending debits.
    pub fn available(&self) -> i128 {
        self.balance() - i128::from(self.debits_pending)
    }
}

/// What a transfer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Moves the amount now.
    Posted,
    /// Reserves the amount until posted, voided, or `timeout_ms` (unix ms) passes.
    Pending {
        /// When it is voided unless resolved.
        timeout_ms: u64,
    },
    /// Posts the pending transfer `pending` (its whole amount; the debit, credit and amount
    /// given must match it).
    Post {
        /// The pending transfer's id.
        pending: u128,
    },
    /// Voids the pending transfer `pending`.
    Void {
        /// The pending transfer's id.
        pending: u128,
    },
}

/// A transfer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Its id, used once.
    pub id: u128,
    /// The account debited.
    pub debit: String,
    /// The account credited.
    pub credit: String,
    /// How much (at least 1).
    pub amount: u64,
    /// Posted, pending, or resolving a pending one.
    pub kind: Kind,
    /// What it pays for (the service's codes: an operation, a grant, a flat period).
    pub code: u16,
    /// For a posted transfer: the debited account has paid its flat period until then (ms).
    pub paid_until_ms: Option<u64>,
    /// The bytes the request it paid for moved (for usage; 0 when none).
    pub bytes: u64,
    /// The requests it paid for (for usage; 0 for a grant).
    pub count: u64,
}

/// Many charges of one account in one transfer: each item (amount, bytes) is one request,
/// accepted in order while the account can pay, refused (`ExceedsCredits`) once it cannot.
/// The transfer records the accepted items' sums and how many they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charges {
    /// The transfer's id, used once.
    pub id: u128,
    /// The account debited.
    pub debit: String,
    /// The account credited.
    pub credit: String,
    /// What it pays for.
    pub code: u16,
    /// Each request's amount (at least 1) and bytes.
    pub items: Vec<(u64, u64)>,
}

/// A cheque between this node and a peer: kept if its cumulative amount is above the one
/// held for the peer in that direction, and the increase posted as a transfer (inbound: from
/// `counter` to the peer's account, which the peer's debt is then less; outbound: from the
/// peer's account to `counter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChequeEntry {
    /// The transfer's id, used once.
    pub id: u128,
    /// The peer's account.
    pub peer: String,
    /// The node's account on the other side.
    pub counter: String,
    /// Received from the peer (true) or sent to it.
    pub inbound: bool,
    /// The cheque's cumulative amount.
    pub cumulative: u64,
    /// The issuer's signature.
    pub signature: [u8; 64],
    /// The transfer's code.
    pub code: u16,
}

/// One change, applied with others in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Opens an account (again: nothing happens when the flags match).
    Open {
        /// Its id.
        account: String,
        /// Its flags.
        flags: u8,
    },
    /// A transfer.
    Transfer(Transfer),
    /// Many charges of one account, one posted transfer (answered [`Done::Charged`]).
    Charges(Charges),
    /// A cheque (answered [`Done::Cheque`]).
    Cheque(ChequeEntry),
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Applied now.
    Applied,
    /// The same change was applied before (an account, a transfer id): nothing changed.
    Exists,
    /// [`Change::Charges`]: each item accepted or refused.
    Charged(Vec<Result<(), Refusal>>),
    /// [`Change::Cheque`]: kept; what it added to the one held before.
    Cheque {
        /// The increase posted.
        credited: u64,
    },
}

/// Why a change was refused (the transaction goes on with the others).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The account exists with other flags.
    #[error("the account exists with other flags")]
    AccountExistsWithOtherFlags,
    /// The transfer id was used for a different transfer.
    #[error("the transfer id was used for a different transfer")]
    IdUsed,
    /// An account named is not open.
    #[error("account {0} is not open")]
    NoAccount(String),
    /// Debit and credit are the same account.
    #[error("a transfer needs two different accounts")]
    SameAccount,
    /// The amount is zero.
    #[error("a transfer moves at least 1 credit")]
    ZeroAmount,
    /// The debited account would be overdrawn (what it could spend).
    #[error("the account has {available} credits available")]
    ExceedsCredits {
        /// What it could spend.
        available: u64,
    },
    /// An account's totals would overflow.
    #[error("an account's totals would overflow")]
    Overflow,
    /// A pending transfer whose timeout has passed already.
    #[error("the pending transfer's timeout has passed")]
    TimeoutPassed,
    /// The pending transfer named does not exist.
    #[error("no pending transfer with that id")]
    PendingNotFound,
    /// The pending transfer was posted, voided or expired already.
    #[error("the pending transfer is resolved already ({0})")]
    PendingResolved(&'static str),
    /// The post or void names different accounts or amount than its pending transfer.
    #[error("the accounts or amount differ from the pending transfer's")]
    PendingMismatch,
    /// A cheque whose cumulative amount is not above the one held (a replay, or an old one).
    #[error("the cheque's cumulative amount is not above the {held} held")]
    StaleCheque {
        /// The cumulative amount held.
        held: u64,
    },
}

/// A transfer as kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// Its id (hex in JSON).
    #[serde(serialize_with = "hex_id")]
    pub id: u128,
    /// The account debited.
    pub debit: String,
    /// The account credited.
    pub credit: String,
    /// How much.
    pub amount: u64,
    /// `posted`, `pending`, `post` or `void`.
    pub kind: &'static str,
    /// For `post` and `void`: the pending transfer's id (hex in JSON; 0 otherwise).
    #[serde(serialize_with = "hex_id")]
    pub pending: u128,
    /// What it paid for (the service's code).
    pub code: u16,
    /// When it was applied (unix ms).
    pub at_ms: u64,
    /// For a pending transfer: `pending`, `posted`, `voided` or `expired`.
    pub state: &'static str,
    /// Its place in the ledger's order.
    pub seq: u64,
    /// The bytes the request it paid for moved.
    pub bytes: u64,
    /// The requests it paid for.
    pub count: u64,
}

fn hex_id<S: serde::Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:032x}"))
}

const STATE_PENDING: u8 = 0;
const STATE_POSTED: u8 = 1;
const STATE_VOIDED: u8 = 2;
const STATE_EXPIRED: u8 = 3;

fn state_name(state: u8) -> &'static str {
    match state {
        STATE_PENDING => "pending",
        STATE_POSTED => "posted",
        STATE_VOIDED => "voided",
        _ => "expired",
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_POSTED => "posted",
        KIND_PENDING => "pending",
        KIND_POST => "post",
        _ => "void",
    }
}

impl Record {
    fn from_row(id: u128, r: TransferRow<'_>) -> Self {
        Self {
            id,
            debit: r.0.to_owned(),
            credit: r.1.to_owned(),
            amount: r.2,
            kind: kind_name(r.3),
            pending: r.4,
            code: r.6,
            at_ms: r.7,
            state: if r.3 == KIND_PENDING {
                state_name(r.8)
            } else {
                ""
            },
            seq: r.9,
            bytes: r.10,
            count: r.11,
        }
    }
}

/// What [`Ledger::audit`] found: the invariants, checked over every account and transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Accounts open.
    pub accounts: u64,
    /// Transfers kept.
    pub transfers: u64,
    /// The sum of every balance (zero when balanced).
    pub sum_balances: i128,
    /// The sum of pending debits minus pending credits (zero when balanced).
    pub sum_pending: i128,
    /// Accounts with [`NO_OVERDRAFT`] whose debits pass their credits.
    pub overdrawn: u64,
    /// Pending transfers whose timeout passed (as of the audit's clock).
    pub overdue: u64,
    /// Pending transfers whose reservation is not in the accounts' pending totals.
    pub pending_mismatch: bool,
}

impl Audit {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.sum_balances == 0
            && self.sum_pending == 0
            && self.overdrawn == 0
            && self.overdue == 0
            && !self.pending_mismatch
    }
}

/// The ledger.
pub struct Ledger {
    db: Database,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

/// The open tables of one write transaction.
struct Tables<'t> {
    accounts: redb::Table<'t, &'static str, AccountRow>,
    transfers: redb::Table<'t, u128, TransferRow<'static>>,
    history: redb::MultimapTable<'t, &'static str, (u64, u128)>,
    timeouts: redb::Table<'t, (u64, u128), ()>,
    by_seq: redb::Table<'t, u64, u128>,
    cheques: redb::Table<'t, (&'static str, u8), (u64, &'static [u8])>,
    seq: u64,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        let meta = txn.open_table(META)?;
        let seq = meta.get("seq")?.map_or(0, |v| v.value());
        drop(meta);
        Ok(Self {
            accounts: txn.open_table(ACCOUNTS)?,
            transfers: txn.open_table(TRANSFERS)?,
            history: txn.open_multimap_table(HISTORY)?,
            timeouts: txn.open_table(TIMEOUTS)?,
            by_seq: txn.open_table(BY_SEQ)?,
            cheques: txn.open_table(CHEQUES)?,
            seq,
        })
    }

    fn cheque(
        &mut self,
        c: &ChequeEntry,
        now_ms: u64,
    ) -> Result<Result<Done, Refusal>, StoreError> {
        let key = (c.peer.as_str(), u8::from(c.inbound));
        let held = self.cheques.get(key)?.map_or(0, |v| v.value().0);
        if c.cumulative <= held {
            return Ok(Err(Refusal::StaleCheque { held }));
        }
        let credited = c.cumulative - held;
        let (debit, credit) = if c.inbound {
            (c.counter.clone(), c.peer.clone())
        } else {
            (c.peer.clone(), c.counter.clone())
        };
        let transfer = Transfer {
            id: c.id,
            debit,
            credit,
            amount: credited,
            kind: Kind::Posted,
            code: c.code,
            paid_until_ms: None,
            bytes: 0,
            count: 1,
        };
        match self.transfer(&transfer, now_ms)? {
            Ok(Done::Applied) => {
                self.cheques.insert(key, (c.cumulative, &c.signature[..]))?;
                Ok(Ok(Done::Cheque { credited }))
            }
            Ok(_) => Ok(Err(Refusal::IdUsed)),
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.accounts.get(id)?.map(|v| Account::from_row(v.value())))
    }

    fn open_account(&mut self, id: &str, flags: u8) -> Result<Result<Done, Refusal>, StoreError> {
        match self.account(id)? {
            Some(a) if a.flags == flags => Ok(Ok(Done::Exists)),
            Some(_) => Ok(Err(Refusal::AccountExistsWithOtherFlags)),
            None => {
                let fresh = Account {
                    flags,
                    ..Account::default()
                };
                self.accounts.insert(id, fresh.row())?;
                Ok(Ok(Done::Applied))
            }
        }
    }

    fn transfer(&mut self, t: &Transfer, now_ms: u64) -> Result<Result<Done, Refusal>, StoreError> {
        let kind = match t.kind {
            Kind::Posted => KIND_POSTED,
            Kind::Pending { .. } => KIND_PENDING,
            Kind::Post { .. } => KIND_POST,
            Kind::Void { .. } => KIND_VOID,
        };
        let (pending_id, timeout_ms) = match t.kind {
            Kind::Posted => (0, 0),
            Kind::Pending { timeout_ms } => (0, timeout_ms),
            Kind::Post { pending } | Kind::Void { pending } => (pending, 0),
        };
        if let Some(old) = self.transfers.get(t.id)? {
            let o = old.value();
            let same = o.0 == t.debit
                && o.1 == t.credit
                && o.2 == t.amount
                && o.3 == kind
                && o.4 == pending_id
                && o.6 == t.code;
            return Ok(if same {
                Ok(Done::Exists)
            } else {
                Err(Refusal::IdUsed)
            });
        }
        if t.amount == 0 {
            return Ok(Err(Refusal::ZeroAmount));
        }
        if t.debit == t.credit {
            return Ok(Err(Refusal::SameAccount));
        }
        if matches!(t.kind, Kind::Pending { timeout_ms } if timeout_ms <= now_ms) {
            return Ok(Err(Refusal::TimeoutPassed));
        }
        let Some(mut debit) = self.account(&t.debit)? else {
            return Ok(Err(Refusal::NoAccount(t.debit.clone())));
        };
        let Some(mut credit) = self.account(&t.credit)? else {
            return Ok(Err(Refusal::NoAccount(t.credit.clone())));
        };
        let mut state = STATE_PENDING;
        match t.kind {
            Kind::Posted | Kind::Pending { .. } => {
                if debit.flags & NO_OVERDRAFT != 0 {
                    let available = debit.available();
                    if i128::from(t.amount) > available {
                        return Ok(Err(Refusal::ExceedsCredits {
                            available: u64::try_from(available.max(0)).unwrap_or(0),
                        }));
                    }
                }
                let pending = matches!(t.kind, Kind::Pending { .. });
                let (d, c) = if pending {
                    (&mut debit.debits_pending, &mut credit.credits_pending)
                } else {
                    (&mut debit.debits_posted, &mut credit.credits_posted)
                };
                let (Some(nd), Some(nc)) = (d.checked_add(t.amount), c.checked_add(t.amount))
                else {
                    return Ok(Err(Refusal::Overflow));
                };
                *d = nd;
                *c = nc;
                if pending {
                    self.timeouts.insert((timeout_ms, t.id), ())?;
                }
                if let Some(until) = t.paid_until_ms {
                    debit.paid_until_ms = debit.paid_until_ms.max(until);
                }
            }
            Kind::Post { pending } | Kind::Void { pending } => {
                let Some(p) = self.transfers.get(pending)?.map(|v| {
                    let r = v.value();
                    (r.0.to_owned(), r.1.to_owned(), r.2, r.3, r.5, r.8)
                }) else {
                    return Ok(Err(Refusal::PendingNotFound));
                };
                let (p_debit, p_credit, p_amount, p_kind, p_timeout, p_state) = p;
                if p_kind != KIND_PENDING {
                    return Ok(Err(Refusal::PendingNotFound));
                }
                if p_state != STATE_PENDING {
                    return Ok(Err(Refusal::PendingResolved(state_name(p_state))));
                }
                if p_debit != t.debit || p_credit != t.credit || p_amount != t.amount {
                    return Ok(Err(Refusal::PendingMismatch));
                }
                if p_timeout <= now_ms {
                    // Overdue: `apply` expired it before this change; never posted late.
                    return Ok(Err(Refusal::PendingResolved("expired")));
                }
                debit.debits_pending -= p_amount;
                credit.credits_pending -= p_amount;
                let posting = matches!(t.kind, Kind::Post { .. });
                if posting {
                    let (Some(nd), Some(nc)) = (
                        debit.debits_posted.checked_add(p_amount),
                        credit.credits_posted.checked_add(p_amount),
                    ) else {
                        return Ok(Err(Refusal::Overflow));
                    };
                    debit.debits_posted = nd;
                    credit.credits_posted = nc;
                }
                self.set_state(pending, if posting { STATE_POSTED } else { STATE_VOIDED })?;
                self.timeouts.remove((p_timeout, pending))?;
                state = 0;
            }
        }
        self.accounts.insert(t.debit.as_str(), debit.row())?;
        self.accounts.insert(t.credit.as_str(), credit.row())?;
        self.seq += 1;
        self.transfers.insert(
            t.id,
            (
                t.debit.as_str(),
                t.credit.as_str(),
                t.amount,
                kind,
                pending_id,
                timeout_ms,
                t.code,
                now_ms,
                state,
                self.seq,
                t.bytes,
                t.count,
            ),
        )?;
        self.by_seq.insert(self.seq, t.id)?;
        self.history.insert(t.debit.as_str(), (self.seq, t.id))?;
        self.history.insert(t.credit.as_str(), (self.seq, t.id))?;
        Ok(Ok(Done::Applied))
    }

    fn charges(&mut self, c: &Charges, now_ms: u64) -> Result<Result<Done, Refusal>, StoreError> {
        let refuse_all = |r: Refusal| Ok(Ok(Done::Charged(vec![Err(r); c.items.len()])));
        if self.transfers.get(c.id)?.is_some() {
            return refuse_all(Refusal::IdUsed);
        }
        if c.debit == c.credit {
            return refuse_all(Refusal::SameAccount);
        }
        let Some(mut debit) = self.account(&c.debit)? else {
            return refuse_all(Refusal::NoAccount(c.debit.clone()));
        };
        let Some(mut credit) = self.account(&c.credit)? else {
            return refuse_all(Refusal::NoAccount(c.credit.clone()));
        };
        let (mut amount, mut bytes, mut count) = (0u64, 0u64, 0u64);
        let mut results = Vec::with_capacity(c.items.len());
        for &(a, b) in &c.items {
            let available = debit.available() - i128::from(amount);
            let fits = a > 0
                && amount.checked_add(a).is_some()
                && (debit.flags & NO_OVERDRAFT == 0 || i128::from(a) <= available);
            if fits {
                amount += a;
                bytes = bytes.saturating_add(b);
                count += 1;
                results.push(Ok(()));
            } else if a == 0 {
                results.push(Err(Refusal::ZeroAmount));
            } else {
                results.push(Err(Refusal::ExceedsCredits {
                    available: u64::try_from(available.max(0)).unwrap_or(0),
                }));
            }
        }
        if count == 0 {
            return Ok(Ok(Done::Charged(results)));
        }
        let (Some(nd), Some(nc)) = (
            debit.debits_posted.checked_add(amount),
            credit.credits_posted.checked_add(amount),
        ) else {
            return refuse_all(Refusal::Overflow);
        };
        debit.debits_posted = nd;
        credit.credits_posted = nc;
        self.accounts.insert(c.debit.as_str(), debit.row())?;
        self.accounts.insert(c.credit.as_str(), credit.row())?;
        self.seq += 1;
        let row = (
            c.debit.as_str(),
            c.credit.as_str(),
            amount,
            KIND_POSTED,
            0,
            0,
            c.code,
            now_ms,
            0,
            self.seq,
            bytes,
            count,
        );
        self.transfers.insert(c.id, row)?;
        self.by_seq.insert(self.seq, c.id)?;
        self.history.insert(c.debit.as_str(), (self.seq, c.id))?;
        self.history.insert(c.credit.as_str(), (self.seq, c.id))?;
        Ok(Ok(Done::Charged(results)))
    }

    fn set_state(&mut self, id: u128, state: u8) -> Result<(), StoreError> {
        let row = self.transfers.get(id)?.map(|v| {
            let r = v.value();
            (
                r.0.to_owned(),
                r.1.to_owned(),
                r.2,
                r.3,
                r.4,
                r.5,
                r.6,
                r.7,
                r.9,
                (r.10, r.11),
            )
        });
        if let Some((d, c, amount, kind, pending, timeout, code, at, seq, (bytes, count))) = row {
            self.transfers.insert(
                id,
                (
                    d.as_str(),
                    c.as_str(),
                    amount,
                    kind,
                    pending,
                    timeout,
                    code,
                    at,
                    state,
                    seq,
                    bytes,
                    count,
                ),
            )?;
        }
        Ok(())
    }

    /// Voids every pending transfer whose timeout is at or before `now_ms`.
    fn expire(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let overdue: Vec<(u64, u128)> = self
            .timeouts
            .range(..=(now_ms, u128::MAX))?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for &(timeout, id) in &overdue {
            let row = self.transfers.get(id)?.map(|v| {
                let r = v.value();
                (r.0.to_owned(), r.1.to_owned(), r.2)
            });
            if let Some((d, c, amount)) = row {
                for (account, debit_side) in [(d, true), (c, false)] {
                    if let Some(mut a) = self.account(&account)? {
                        if debit_side {
                            a.debits_pending = a.debits_pending.saturating_sub(amount);
                        } else {
                            a.credits_pending = a.credits_pending.saturating_sub(amount);
                        }
                        self.accounts.insert(account.as_str(), a.row())?;
                    }
                }
                self.set_state(id, STATE_EXPIRED)?;
            }
            self.timeouts.remove((timeout, id))?;
        }
        Ok(overdue.len() as u64)
    }

    fn finish(self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META)?;
        meta.insert("seq", self.seq)?;
        Ok(())
    }
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`, a file only this user may read.
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

    /// A ledger in memory (amnesia mode, tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?)
    }

    fn with(db: Database) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(ACCOUNTS)?;
        txn.open_table(TRANSFERS)?;
        txn.open_multimap_table(HISTORY)?;
        txn.open_table(TIMEOUTS)?;
        txn.open_table(BY_SEQ)?;
        txn.open_table(CHEQUES)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Applies `changes` in order in one transaction, committed with fsync before it returns;
    /// first voids the pending transfers overdue at `now_ms`. One result per change.
    pub fn apply(
        &self,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Vec<Result<Done, Refusal>>, StoreError> {
        let txn = self.db.begin_write()?;
        let results = Self::stage(&txn, changes, now_ms)?;
        txn.commit()?;
        Ok(results)
    }

    /// Stages `changes` in `txn` without committing it (what a crash before the commit
    /// leaves: nothing; the crash tests use it).
    #[doc(hidden)]
    pub fn apply_uncommitted(&self, changes: &[Change], now_ms: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        Self::stage(&txn, changes, now_ms)?;
        txn.abort()?;
        Ok(())
    }

    fn stage(
        txn: &WriteTransaction,
        changes: &[Change],
        now_ms: u64,
    ) -> Result<Vec<Result<Done, Refusal>>, StoreError> {
        let mut t = Tables::open(txn)?;
        t.expire(now_ms)?;
        let mut results = Vec::with_capacity(changes.len());
        for change in changes {
            results.push(match change {
                Change::Open { account, flags } => t.open_account(account, *flags)?,
                Change::Transfer(transfer) => t.transfer(transfer, now_ms)?,
                Change::Charges(charges) => t.charges(charges, now_ms)?,
                Change::Cheque(cheque) => t.cheque(cheque, now_ms)?,
            });
        }
        t.finish(txn)?;
        Ok(results)
    }

    /// Whether a pending transfer's timeout is at or before `now_ms` (the next
    /// [`Ledger::apply`] voids it).
    pub fn overdue(&self, now_ms: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TIMEOUTS)?;
        Ok(table.first()?.is_some_and(|(k, _)| k.value().0 <= now_ms))
    }

    /// An account's totals (`None`: not open).
    pub fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        Ok(table.get(id)?.map(|v| Account::from_row(v.value())))
    }

    /// The highest cheque held for `peer` (its account) in one direction: its cumulative
    /// amount and signature.
    pub fn cheque(&self, peer: &str, inbound: bool) -> Result<Option<(u64, [u8; 64])>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHEQUES)?;
        Ok(table.get((peer, u8::from(inbound)))?.map(|v| {
            let (cumulative, sig) = v.value();
            let mut signature = [0u8; 64];
            if sig.len() == 64 {
                signature.copy_from_slice(sig);
            }
            (cumulative, signature)
        }))
    }

    /// Every highest cheque held in one direction, by peer account: what an external
    /// settlement cashes (inbound) or honours (outbound).
    pub fn cheques(&self, inbound: bool) -> Result<Vec<(String, u64, [u8; 64])>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHEQUES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (peer, dir) = k.value();
            if dir != u8::from(inbound) {
                continue;
            }
            let (cumulative, sig) = v.value();
            let mut signature = [0u8; 64];
            if sig.len() == 64 {
                signature.copy_from_slice(sig);
            }
            out.push((peer.to_owned(), cumulative, signature));
        }
        Ok(out)
    }

    /// Up to `limit` accounts whose id starts with `prefix`, in id order, with their totals.
    pub fn accounts_under(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Account)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..)?.take(limit) {
            let (k, v) = entry?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), Account::from_row(v.value())));
        }
        Ok(out)
    }

    /// A transfer by id.
    pub fn transfer(&self, id: u128) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TRANSFERS)?;
        Ok(table.get(id)?.map(|v| Record::from_row(id, v.value())))
    }

    /// The newest `limit` transfers of `account`, newest first.
    pub fn history(&self, account: &str, limit: usize) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let history = txn.open_multimap_table(HISTORY)?;
        let transfers = txn.open_table(TRANSFERS)?;
        let mut out = Vec::new();
        for entry in history.get(account)?.rev().take(limit) {
            let (_, id) = entry?.value();
            if let Some(v) = transfers.get(id)? {
                out.push(Record::from_row(id, v.value()));
            }
        }
        Ok(out)
    }

    /// Up to `limit` transfers after sequence `after`, in the ledger's order.
    pub fn since(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let transfers = txn.open_table(TRANSFERS)?;
        let mut out = Vec::new();
        for entry in by_seq.range(after.saturating_add(1)..)?.take(limit) {
            let (_, id) = entry?;
            let id = id.value();
            if let Some(v) = transfers.get(id)? {
                out.push(Record::from_row(id, v.value()));
            }
        }
        Ok(out)
    }

    /// Checks every invariant over the whole ledger as of `now_ms`.
    pub fn audit(&self, now_ms: u64) -> Result<Audit, StoreError> {
        let txn = self.db.begin_read()?;
        let accounts = txn.open_table(ACCOUNTS)?;
        let transfers = txn.open_table(TRANSFERS)?;
        let mut audit = Audit::default();
        let mut debits_pending: i128 = 0;
        for entry in accounts.iter()? {
            let a = Account::from_row(entry?.1.value());
            audit.accounts += 1;
            audit.sum_balances += a.balance();
            audit.sum_pending += i128::from(a.debits_pending) - i128::from(a.credits_pending);
            debits_pending += i128::from(a.debits_pending);
            if a.flags & NO_OVERDRAFT != 0 && a.available() < 0 {
                audit.overdrawn += 1;
            }
        }
        let mut reserved: i128 = 0;
        for entry in transfers.iter()? {
            let (_, v) = entry?;
            let r = v.value();
            audit.transfers += 1;
            if r.3 == KIND_PENDING && r.8 == STATE_PENDING {
                reserved += i128::from(r.2);
                if r.5 <= now_ms {
                    audit.overdue += 1;
                }
            }
        }
        audit.pending_mismatch = reserved != debits_pending;
        Ok(audit)
    }
}

#[cfg(test)]
mod tests;
