//! The accounting service: meters requests, rolls them up every second, enforces hourly
//! quotas, and announces each minute's usage.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use ron_auth::Holder;
use ron_kernel::Config;
use svc_payment::{Payment, codes};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::rollup::{Event, HOUR, MINUTE, Rollups, Row, Stored, Usage, Window};
use crate::{AccountingError, AccountingSection, Who};

/// How often the meter is rolled up.
const FLUSH: Duration = Duration::from_secs(1);
/// Distinct identities a second's meter holds; more are counted as `anon/other`.
const BUFFER: usize = 50_000;
/// Identities whose current hour is remembered for quotas.
const QUOTAS: usize = 100_000;
/// Active identities at most; new anonymous ones past it are counted as `anon/other`.
const ACTIVE: u64 = 200_000;
/// Ledger transfers read per roll-up at most (the rest the next second).
const LEDGER_BATCH: usize = 16_384;
/// Events on the broadcast a slow subscriber may lag behind.
const EVENTS: usize = 256;
/// Uploads a second's roll-up takes as holdings at most (more are not tallied).
const HOLDS: usize = 65_536;

/// What the service announces on its broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageEvent {
    /// A minute ended: how many identities used the node in it, and what they used.
    Tick {
        /// The minute's start (unix ms).
        minute_ms: u64,
        /// Identities with any usage.
        identities: u64,
        /// Their total.
        usage: Usage,
    },
    /// An identity hit its hourly quota.
    QuotaExceeded {
        /// Whose.
        identity: String,
        /// `requests` or `bytes`.
        what: &'static str,
    },
}

struct Inner {
    rollups: Arc<Rollups>,
    payment: Option<Payment>,
    config: Config,
    buffer: Mutex<HashMap<(String, u64), Usage>>,
    hours: Mutex<LruCache<String, (u64, Usage)>>,
    events: broadcast::Sender<UsageEvent>,
    active: AtomicU64,
    minute: Mutex<(u64, HashMap<String, ()>, Usage)>,
    /// Uploads since the last roll-up: who, which object, its size.
    holds: Mutex<Vec<(String, ron_proto::Address, u64)>>,
    /// What the node stores, for the storage tally.
    stored: std::sync::OnceLock<Arc<dyn Stored>>,
}

/// The accounting service's handle (cheap to clone).
#[derive(Clone)]
pub struct Accounting {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounting").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The usage a ledger transfer stands for: charged reads and uploads (posted), by their
/// payer, and ranges served to peers, by the peer.
fn from_ledger(r: &svc_payment::ledger::Record) -> Option<Event> {
    if r.kind != "posted" && r.kind != "post" {
        return None;
    }
    let usage = match r.code {
        codes::GET | codes::FLAT => Usage {
            requests: r.count,
            bytes_in: 0,
            bytes_out: r.bytes,
            messages: 0,
            byte_minutes: 0,
        },
        codes::PUT => Usage {
            requests: r.count,
            bytes_in: r.bytes,
            bytes_out: 0,
            messages: 0,
            byte_minutes: 0,
        },
        // A peer's ranges, by the peer (`peer/<PeerId>`).
        codes::PEER_SERVED => Usage {
            requests: r.count,
            bytes_in: 0,
            bytes_out: r.bytes,
            messages: 0,
            byte_minutes: 0,
        },
        _ => return None,
    };
    Some(Event {
        identity: r.debit.clone(),
        at_ms: r.at_ms,
        usage,
    })
}

impl Accounting {
    /// The service over `rollups`, reading charged requests from `payment`'s ledger.
    pub fn new(rollups: Rollups, payment: Option<Payment>, config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                rollups: Arc::new(rollups),
                payment,
                config,
                buffer: Mutex::default(),
                hours: Mutex::new(LruCache::new(
                    NonZeroUsize::new(QUOTAS).unwrap_or(NonZeroUsize::MIN),
                )),
                events: broadcast::channel(EVENTS).0,
                active: AtomicU64::new(0),
                minute: Mutex::default(),
                holds: Mutex::default(),
                stored: std::sync::OnceLock::new(),
            }),
        }
    }

    fn section(&self) -> Arc<AccountingSection> {
        self.inner.config.get::<AccountingSection>()
    }

    /// `UsageTick` (each minute) and `QuotaExceeded` events.
    pub fn subscribe(&self) -> broadcast::Receiver<UsageEvent> {
        self.inner.events.subscribe()
    }

    /// The name `who` is metered under (anonymous identities past the bound share one).
    fn identity(&self, who: &Who) -> String {
        if matches!(who, Who::Anonymous(_)) && self.inner.active.load(Ordering::Relaxed) >= ACTIVE {
            return "anon/other".into();
        }
        who.identity()
    }

    /// What `identity` has used in the current hour (from the rollups when not remembered).
    fn this_hour<R>(&self, identity: &str, f: impl FnOnce(&mut Usage) -> R) -> R {
        let now = now_ms();
        let hour = now - now % HOUR;
        let mut hours = lock(&self.inner.hours);
        if hours.get(identity).is_none_or(|(h, _)| *h != hour) {
            let used = self.inner.rollups.hour(identity, hour).unwrap_or_default();
            hours.put(identity.to_owned(), (hour, used));
        }
        match hours.get_mut(identity) {
            Some((_, used)) => f(used),
            None => f(&mut Usage::default()),
        }
    }

    /// Checks `who`'s hourly quotas before a request moving `bytes` is served (the owner has
    /// none): 429 `quota_exceeded` once spent.
    pub fn check(&self, who: &Who, bytes: u64) -> Result<(), AccountingError> {
        let s = self.section();
        if !s.enabled
            || (s.quota_requests_per_hour == 0 && s.quota_bytes_per_hour == 0)
            || *who == Who::Holder(Holder::Owner)
        {
            return Ok(());
        }
        let identity = self.identity(who);
        let used = self.this_hour(&identity, |u| *u);
        let over = if s.quota_requests_per_hour > 0 && used.requests >= s.quota_requests_per_hour {
            Some(("requests", s.quota_requests_per_hour))
        } else if s.quota_bytes_per_hour > 0
            && used
                .bytes_in
                .saturating_add(used.bytes_out)
                .saturating_add(bytes)
                > s.quota_bytes_per_hour
        {
            Some(("bytes", s.quota_bytes_per_hour))
        } else {
            None
        };
        let Some((what, limit)) = over else {
            return Ok(());
        };
        let _ = self.inner.events.send(UsageEvent::QuotaExceeded {
            identity: identity.clone(),
            what,
        });
        let now = now_ms();
        Err(AccountingError::QuotaExceeded {
            identity,
            what,
            limit,
            retry_ms: HOUR - now % HOUR,
        })
    }

    /// Meters a request served to `who`. `charged`: the ledger holds it already (a charged
    /// read or upload), and the roll-up reads it from there.
    pub fn record(&self, who: &Who, usage: Usage, charged: bool) {
        if !self.section().enabled {
            return;
        }
        let identity = self.identity(who);
        self.this_hour(&identity, |u| *u = u.plus(usage));
        if charged && self.inner.payment.is_some() {
            return;
        }
        let now = now_ms();
        let key = (identity, now - now % MINUTE);
        let mut buffer = lock(&self.inner.buffer);
        if buffer.len() >= BUFFER && !buffer.contains_key(&key) {
            let other = buffer.entry(("anon/other".into(), key.1)).or_default();
            *other = other.plus(usage);
            return;
        }
        let entry = buffer.entry(key).or_default();
        *entry = entry.plus(usage);
    }

    /// Meters a mail message of `bytes` accepted from `who` (mail has its own rate limits: no
    /// quota applies).
    pub fn record_mail(&self, who: &Who, bytes: u64) {
        let usage = Usage {
            messages: 1,
            bytes_in: bytes,
            ..Usage::default()
        };
        self.record(who, usage, false);
    }

    /// An upload of `who` stored as `addr`, `bytes` long: metered as a request with its
    /// bytes in, and held by `who` (its storage tallied each minute the node stores it).
    pub fn upload(&self, who: &Who, addr: ron_proto::Address, bytes: u64, charged: bool) {
        let usage = Usage {
            requests: 1,
            bytes_in: bytes,
            ..Usage::default()
        };
        self.record(who, usage, charged);
        if !self.section().enabled {
            return;
        }
        let mut holds = lock(&self.inner.holds);
        if holds.len() < HOLDS {
            holds.push((self.identity(who), addr, bytes));
        }
    }

    /// What the node stores, asked by the storage tally each minute (set once, at start;
    /// without it storage is not tallied).
    pub fn set_stored(&self, stored: Arc<dyn Stored>) {
        let _ = self.inner.stored.set(stored);
    }

    /// Rows of `window` from `from_ms` on, for `identity` (`None`: everyone), at most `limit`.
    pub fn rows(
        &self,
        window: Window,
        identity: Option<&str>,
        from_ms: u64,
        limit: usize,
    ) -> Result<Vec<Row>, AccountingError> {
        Ok(self.inner.rollups.rows(window, identity, from_ms, limit)?)
    }

    /// Rolls the meter (and the ledger's new transfers) up every second; on shutdown, once
    /// more.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        let mut tick = tokio::time::interval(FLUSH);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return self.flush().await,
                _ = tick.tick() => self.flush().await?,
            }
        }
    }

    /// One roll-up: the meter's events and the ledger's since the cursor, in one fsynced
    /// transaction with the new cursor.
    pub async fn flush(&self) -> Result<(), String> {
        let mut events: Vec<Event> = std::mem::take(&mut *lock(&self.inner.buffer))
            .into_iter()
            .map(|((identity, at_ms), usage)| Event {
                identity,
                at_ms,
                usage,
            })
            .collect();
        let rollups = self.inner.rollups.clone();
        let payment = self.inner.payment.clone();
        let holds = std::mem::take(&mut *lock(&self.inner.holds));
        let stored = self.inner.stored.get().cloned();
        let now = now_ms();
        let (events, active) = tokio::task::spawn_blocking(move || {
            let mut cursor = None;
            if let Some(p) = payment {
                let from = rollups.cursor().map_err(|e| e.to_string())?;
                let read = p
                    .ledger()
                    .since(from, LEDGER_BATCH)
                    .map_err(|e| e.to_string())?;
                cursor = read.last().map(|r| r.seq);
                events.extend(read.iter().filter_map(from_ledger));
            }
            rollups
                .apply(&events, cursor, now, &holds, stored.as_deref())
                .map_err(|e| e.to_string())?;
            let active = rollups.active().map_err(|e| e.to_string())?;
            Ok::<_, String>((events, active))
        })
        .await
        .map_err(|e| format!("the usage roll-up failed: {e}"))??;
        self.inner.active.store(active, Ordering::Relaxed);
        self.announce(&events, now);
        Ok(())
    }

    /// Adds rolled-up events to the current minute's totals; when a minute has ended, sends
    /// its `Tick`.
    fn announce(&self, events: &[Event], now: u64) {
        let mut m = lock(&self.inner.minute);
        let current = now - now % MINUTE;
        if m.0 != current {
            if m.0 != 0 {
                let _ = self.inner.events.send(UsageEvent::Tick {
                    minute_ms: m.0,
                    identities: m.1.len() as u64,
                    usage: m.2,
                });
            }
            *m = (current, HashMap::new(), Usage::default());
        }
        for e in events {
            if m.1.len() < BUFFER {
                m.1.insert(e.identity.clone(), ());
            }
            m.2 = m.2.plus(e.usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use svc_payment::{PaymentSection, Priced, Settlement};

    use super::*;

    #[tokio::test]
    async fn charged_requests_come_from_the_ledger_others_from_the_meter() {
        let config = Config::builder()
            .register::<PaymentSection>()
            .register::<AccountingSection>()
            .set("payment.per_request.get", 1)
            .set("accounting.quota_requests_per_hour", 4)
            .build()
            .unwrap();
        let payment = Payment::new(
            svc_payment::ledger::Ledger::in_memory().unwrap(),
            config.clone(),
        );
        let acc = Accounting::new(Rollups::in_memory().unwrap(), Some(payment.clone()), config);
        let stop = CancellationToken::new();
        let service = tokio::spawn(payment.clone().run(stop.clone()));
        let alice = Holder::Key([1; 32]);
        payment.grant(&alice.account(), 10).await.unwrap();
        let who = Who::Holder(alice);
        for _ in 0..4 {
            acc.check(&who, 100).unwrap();
            let s = payment
                .admit(Some(alice), None, Priced::Get, "/o/x", 100)
                .await
                .unwrap();
            assert_eq!(s, Settlement::Charged(1));
            acc.record(
                &who,
                Usage {
                    requests: 1,
                    bytes_in: 0,
                    bytes_out: 100,
                    messages: 0,
                    byte_minutes: 0,
                },
                true,
            );
        }
        // The quota is spent: refused before serving, and announced.
        let mut events = acc.subscribe();
        let e = acc.check(&who, 100).unwrap_err();
        assert!(
            matches!(
                e,
                AccountingError::QuotaExceeded {
                    what: "requests",
                    limit: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            events.recv().await.unwrap(),
            UsageEvent::QuotaExceeded {
                what: "requests",
                ..
            }
        ));
        // The owner has no quota; an anonymous reader is metered by address.
        acc.check(&Who::Holder(Holder::Owner), 1).unwrap();
        let anon = Who::Anonymous("10.0.0.7".parse().unwrap());
        acc.record_mail(&Who::sender(Some([9; 32]), None, None), 2048);
        acc.record(
            &anon,
            Usage {
                requests: 1,
                bytes_in: 0,
                bytes_out: 5,
                messages: 0,
                byte_minutes: 0,
            },
            false,
        );
        acc.flush().await.unwrap();
        acc.flush().await.unwrap();
        let rows = acc
            .rows(Window::Hour, Some(&alice.account()), 0, 10)
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].usage,
            Usage {
                requests: 4,
                bytes_in: 0,
                bytes_out: 400,
                ..Usage::default()
            }
        );
        let rows = acc
            .rows(Window::Minute, Some("anon/10.0.0.7"), 0, 10)
            .unwrap();
        assert_eq!(rows[0].usage.bytes_out, 5);
        let mail = acc
            .rows(Window::Hour, Some(&Holder::Key([9; 32]).account()), 0, 10)
            .unwrap();
        assert_eq!((mail[0].usage.messages, mail[0].usage.bytes_in), (1, 2048));
        // Rolling up again counts nothing twice.
        acc.flush().await.unwrap();
        let rows = acc.rows(Window::Hour, None, 0, 10).unwrap();
        let total = rows.iter().fold(Usage::default(), |a, r| a.plus(r.usage));
        assert_eq!(
            total,
            Usage {
                requests: 5,
                bytes_in: 2048,
                bytes_out: 405,
                messages: 1,
                byte_minutes: 0,
            }
        );
        stop.cancel();
        service.await.unwrap().unwrap();
    }
}
