//! [`Auth`]: the node's identity, its signing keys, and the check every protected request
//! goes through.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{Check, CheckKind, Fact, Policy, Rule, Term, fact};
use biscuit_auth::error::{FailedCheck, Logic, Token as BiscuitError};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, PublicKey};
use lru::LruCache;
use ron_proto::ErrorKind;

use crate::config::AuthSection;
use crate::keys::{KeyError, NodeIdentity, key_id, parse_public};
use crate::ring::{KeyRing, Maintenance};
use crate::token::{self, Caveats, Op, TokenError};

const DAY: u64 = 86_400;
/// Verified tokens remembered, so a client reusing its token skips the signature checks.
const CACHE: usize = 4096;
/// Budget and rate counters kept at most (each is one caveat of one token lineage).
const MAX_COUNTERS: usize = 100_000;

/// What a request asks to do.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The operation.
    pub op: Op,
    /// The request path (`/put`, `/pin/b3:…`), matched against path caveats.
    pub path: &'a str,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No usable credential: missing, malformed, tampered, expired, revoked, or signed by a
    /// key this node does not trust (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The token's rate caveat is exhausted for now (429).
    #[error("the token's rate limit is reached")]
    RateLimited {
        /// When a request would be allowed again.
        retry_after: Duration,
    },
    /// The node cannot track another budget or rate right now (503).
    #[error("too many token counters; retry later")]
    Busy,
}

impl Denied {
    /// The error kind (and so the HTTP status and OAP/1 code).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Denied::Unauthenticated(_) => ErrorKind::Unauthorized,
            Denied::Forbidden(_) => ErrorKind::Forbidden,
            Denied::RateLimited { .. } => ErrorKind::RateLimited,
            Denied::Busy => ErrorKind::Overloaded,
        }
    }
}

impl ron_proto::Failure for Denied {
    fn kind(&self) -> ErrorKind {
        Denied::kind(self)
    }

    fn public_message(&self) -> String {
        // Every refusal's text is written for the client.
        self.to_string()
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            // The token's bucket says when it refills.
            Denied::RateLimited { retry_after } => Some(
                u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            other => ron_proto::retry_policy(Denied::kind(other)),
        }
    }
}

/// Bytes an upload charged to its grant, given back when dropped unless the upload was
/// kept: an upload that fails or is cut short costs its token nothing.
#[derive(Debug)]
pub struct Charge<'a> {
    grant: &'a Grant,
    charged: u64,
    kept: bool,
}

impl Charge<'_> {
    /// Charges `bytes` more (refused past any byte budget, charging nothing).
    pub fn add(&mut self, bytes: u64) -> Result<(), Denied> {
        self.grant.charge(bytes)?;
        self.charged += bytes;
        Ok(())
    }

    /// The upload was kept: what it charged stays charged.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if !self.kept && self.charged > 0 {
            self.grant.refund(self.charged);
        }
    }
}

/// Whose token a request carried: what it is metered and charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A token signed by one of this node's own keys: the owner, never charged.
    Owner,
    /// A token whose root is a trusted user key (`auth.trusted_roots`): that key.
    Key([u8; 32]),
}

impl Holder {
    /// The holder as an account name: `owner`, or `ed25519/<hex>`.
    pub fn account(&self) -> String {
        match self {
            Holder::Owner => "owner".into(),
            Holder::Key(k) => format!("ed25519/{}", hex::encode(k)),
        }
    }
}

/// What a granted request may still consume. Uploads call [`Grant::charge`] as bytes
/// arrive; a charge past any byte budget of the token is refused (and charges nothing).
#[derive(Debug, Default)]
pub struct Grant {
    budgets: Vec<Arc<Budget>>,
    holder: Option<Holder>,
}

impl Grant {
    /// A grant with no budget and no token (open routes, anonymous writes).
    pub fn open() -> Self {
        Self::default()
    }

    /// Whose token it was (`None`: no token was checked).
    pub fn holder(&self) -> Option<Holder> {
        self.holder
    }

    /// Starts charging an upload's bytes to this grant ([`Charge`]).
    pub fn charging(&self) -> Charge<'_> {
        Charge {
            grant: self,
            charged: 0,
            kept: false,
        }
    }

    /// Counts `bytes` against every byte budget of the token.
    pub fn charge(&self, bytes: u64) -> Result<(), Denied> {
        for (i, budget) in self.budgets.iter().enumerate() {
            if !budget.take(bytes) {
                for earlier in &self.budgets[..i] {
                    earlier.give_back(bytes);
                }
                return Err(Denied::Forbidden(format!(
                    "the token's byte budget ({} bytes) is spent",
                    budget.limit.load(Ordering::Relaxed)
                )));
            }
        }
        Ok(())
    }

    /// Gives back bytes charged for an upload that did not complete.
    pub fn refund(&self, bytes: u64) {
        for budget in &self.budgets {
            budget.give_back(bytes);
        }
    }

    /// Bytes left under the tightest budget (`None`: unlimited).
    pub fn remaining(&self) -> Option<u64> {
        self.budgets.iter().map(|b| b.remaining()).min()
    }
}

#[derive(Debug)]
struct Budget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl Budget {
    fn take(&self, bytes: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&u| u <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    fn remaining(&self) -> u64 {
        self.limit
            .load(Ordering::Relaxed)
            .saturating_sub(self.used.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    at_ms: u64,
}

/// A verified token, remembered by the hash of its text.
struct Checked {
    epoch: u64,
    token: Biscuit,
    root: PublicKey,
    /// The owner for the node's own keys, else the trusted root's key.
    holder: Holder,
    revocation: Vec<Vec<u8>>,
    /// The hash of the first block's revocation id: every token attenuated from the same
    /// mint shares it, so its counters are shared too.
    lineage: [u8; 32],
    budgets: Vec<(i64, u64)>,
    rates: Vec<(i64, u32, u64)>,
    /// The token's checks as plain constraints, when every one has a form this crate mints
    /// (see [`native_checks`]); `None` means the general Datalog evaluation runs.
    native: Option<Vec<Constraint>>,
}

/// One check of a token, in a form evaluated without Datalog.
#[derive(Debug, Clone)]
enum Constraint {
    /// `check if time($t), $t < DATE`
    Before(u64),
    /// `check if operation($op), {…}.contains($op)`
    OpIn(Vec<String>),
    /// `check if path($p), $p.starts_with("…")`
    PathPrefix(String),
    /// `check if audience("…")`
    Audience(String),
}

/// Which keys and tokens are trusted right now.
#[derive(Default)]
struct Trust {
    epoch: u64,
    /// Verifying keys by id, each with the moment it stops being accepted (unix seconds).
    keys: HashMap<u32, Vec<(PublicKey, Option<u64>)>>,
    /// Configured roots, tried in turn for tokens without a key id.
    roots: Vec<PublicKey>,
    revoked: HashSet<Vec<u8>>,
}

#[derive(Default)]
struct Counters {
    budgets: HashMap<([u8; 32], i64), Arc<Budget>>,
    rates: HashMap<([u8; 32], i64), Bucket>,
}

/// The node's identity and capability keys, and the authorization of requests.
pub struct Auth {
    identity: NodeIdentity,
    ring: KeyRing,
    settings: RwLock<AuthSection>,
    trust: RwLock<Arc<Trust>>,
    cache: Mutex<LruCache<[u8; 32], Arc<Checked>>>,
    counters: Mutex<Counters>,
    /// `allow if true`, parsed once: the token's checks decide.
    allow: Policy,
    datalog_only: std::sync::atomic::AtomicBool,
    anonymous_put: std::sync::atomic::AtomicBool,
    protect_reads: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("node_id", &self.node_id())
            .field("keys", &self.ring.keys().len())
            .finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Auth {
    /// Starts authorization for a node: brings the ring up to date (creating its first
    /// signing key if needed) and applies `section`.
    pub fn new(
        identity: NodeIdentity,
        ring: KeyRing,
        section: &AuthSection,
        now: u64,
    ) -> Result<Self, KeyError> {
        let auth = Self {
            identity,
            ring,
            settings: RwLock::new(section.clone()),
            trust: RwLock::new(Arc::new(Trust::default())),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            counters: Mutex::new(Counters::default()),
            allow: Policy::try_from("allow if true")
                .map_err(|e| KeyError::Malformed(format!("policy: {e}")))?,
            datalog_only: std::sync::atomic::AtomicBool::new(false),
            anonymous_put: std::sync::atomic::AtomicBool::new(section.anonymous_put),
            protect_reads: std::sync::atomic::AtomicBool::new(section.protect_reads),
        };
        auth.maintain(now)?;
        Ok(auth)
    }

    /// The node id (libp2p `PeerId` text), the audience its tokens name.
    pub fn node_id(&self) -> &str {
        self.identity.node_id()
    }

    /// The node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The signing keys.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Applies a new `[auth]` section (trusted roots, revocations, key ages, open routes).
    /// Tokens verified before are checked again against it.
    pub fn apply(&self, section: &AuthSection) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = section.clone();
        self.rebuild_trust();
    }

    /// Picks up keys rotated by another process, rotates the signing key when it reaches
    /// `auth.key_max_age_days`, and forgets keys past `auth.key_grace_days`.
    pub fn maintain(&self, now: u64) -> Result<Maintenance, KeyError> {
        let (max_age, grace) = {
            let s = self.settings.read().unwrap_or_else(PoisonError::into_inner);
            (s.key_max_age_days, s.key_grace_days)
        };
        let done = self.ring.maintain(now, max_age, grace)?;
        if done.changed || self.trust().epoch == 0 {
            self.rebuild_trust();
        }
        Ok(done)
    }

    fn rebuild_trust(&self) {
        let settings = self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut keys: HashMap<u32, Vec<(PublicKey, Option<u64>)>> = HashMap::new();
        let grace = u64::from(settings.key_grace_days) * DAY;
        for k in self.ring.keys().iter() {
            keys.entry(k.id)
                .or_default()
                .push((k.key.public(), k.retired.map(|r| r + grace)));
        }
        let roots: Vec<PublicKey> = settings
            .trusted_roots
            .iter()
            .filter_map(|text| parse_public(text).ok())
            .collect();
        for root in &roots {
            keys.entry(key_id(root)).or_default().push((*root, None));
        }
        let revoked = settings
            .revoked
            .iter()
            .filter_map(|id| hex::decode(id.trim()).ok())
            .collect();
        let mut guard = self.trust.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Arc::new(Trust {
            epoch: guard.epoch + 1,
            keys,
            roots,
            revoked,
        });
        // Read on every request: plain atomics, not the trust lock.
        self.anonymous_put
            .store(settings.anonymous_put, Ordering::Relaxed);
        self.protect_reads
            .store(settings.protect_reads, Ordering::Relaxed);
    }

    fn trust(&self) -> Arc<Trust> {
        self.trust
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `op` needs a token under the current config.
    pub fn requires_token(&self, op: Op) -> bool {
        if op.owner_only() {
            true
        } else if op.is_write() {
            !self.anonymous_put.load(Ordering::Relaxed)
        } else {
            self.protect_reads.load(Ordering::Relaxed)
        }
    }

    /// Mints a token with the active signing key.
    pub fn mint(&self, caveats: &Caveats) -> Result<String, TokenError> {
        let active = self
            .ring
            .active()
            .ok_or_else(|| TokenError::Sign("no signing key".into()))?;
        token::mint(&active.key, caveats)
    }

    /// The owner's token: every operation, on this node only, valid until the active key
    /// leaves its grace window (the node writes a fresh one whenever it rotates).
    pub fn owner_token(&self) -> Result<String, TokenError> {
        let active = self
            .ring
            .active()
            .ok_or_else(|| TokenError::Sign("no signing key".into()))?;
        let s = self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let lifetime = u64::from(s.key_max_age_days) + u64::from(s.key_grace_days);
        token::mint(
            &active.key,
            &Caveats {
                expires_at: Some(active.created + lifetime * DAY),
                audience: Some(self.node_id().to_owned()),
                ..Caveats::default()
            },
        )
    }

    /// Authorizes `request` carrying `token` (the bearer text, if any) now.
    pub fn authorize(&self, token: Option<&str>, request: &Request<'_>) -> Result<Grant, Denied> {
        self.authorize_at(unix_now_ms(), token, request)
    }

    /// Like [`Auth::authorize`] at a given moment (unix milliseconds).
    pub fn authorize_at(
        &self,
        now_ms: u64,
        token: Option<&str>,
        request: &Request<'_>,
    ) -> Result<Grant, Denied> {
        if !self.requires_token(request.op) {
            // An open route: a token that passes its checks names whose request it is (for
            // metering and charging); its budgets and rates are not spent, and a token that
            // fails is ignored, as if none were sent.
            let holder = token
                .and_then(|text| self.verify(now_ms, text, request).ok())
                .map(|checked| checked.holder);
            return Ok(Grant {
                budgets: Vec::new(),
                holder,
            });
        }
        let Some(text) = token else {
            return Err(Denied::Unauthenticated(
                "this needs a capability token (Authorization: Bearer <token>)".into(),
            ));
        };
        let checked = self.verify(now_ms, text, request)?;
        self.count(&checked, now_ms)
    }

    /// Whose token `text` is, when it passes its checks for `request` (nothing is counted
    /// against its budgets or rates: the request was authorized already).
    pub fn identify(&self, text: &str, request: &Request<'_>) -> Option<Holder> {
        self.verify(unix_now_ms(), text, request)
            .ok()
            .map(|c| c.holder)
    }

    /// Checks `text` for `request`: signature, key, revocation, caveats.
    fn verify(
        &self,
        now_ms: u64,
        text: &str,
        request: &Request<'_>,
    ) -> Result<Arc<Checked>, Denied> {
        let trust = self.trust();
        let checked = self.checked(&trust, text)?;
        let now = now_ms / 1000;
        let key_live = trust.keys.get(&key_id(&checked.root)).is_some_and(|keys| {
            keys.iter()
                .any(|(pk, until)| *pk == checked.root && until.is_none_or(|u| now < u))
        });
        if !key_live {
            return Err(Denied::Unauthenticated(
                "the token's signing key has expired".into(),
            ));
        }
        if checked
            .revocation
            .iter()
            .any(|id| trust.revoked.contains(id))
        {
            return Err(Denied::Unauthenticated("the token is revoked".into()));
        }
        match &checked.native {
            Some(constraints) if !self.datalog_only.load(Ordering::Relaxed) => {
                self.check_native(constraints, now, request)?;
            }
            _ => self.run_checks(&checked.token, now, request)?,
        }
        Ok(checked)
    }

    /// The verified form of `text`, from the cache when its trust is current.
    fn checked(&self, trust: &Trust, text: &str) -> Result<Arc<Checked>, Denied> {
        let text = text.trim();
        let hash = *blake3::hash(text.as_bytes()).as_bytes();
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
            .filter(|c| c.epoch == trust.epoch)
        {
            return Ok(hit.clone());
        }
        let unverified = token::parse_unverified(text)
            .map_err(|e| Denied::Unauthenticated(format!("malformed token: {e}")))?;
        let candidates: Vec<PublicKey> = match unverified.root_key_id() {
            Some(id) => trust
                .keys
                .get(&id)
                .map(|keys| keys.iter().map(|k| k.0).collect())
                .unwrap_or_default(),
            None => trust.roots.clone(),
        };
        let untrusted = || {
            Denied::Unauthenticated(
                "the token is not signed by a key this node trusts (or was altered)".into(),
            )
        };
        let token = candidates
            .iter()
            .find_map(|pk| unverified.clone().verify(*pk).ok().map(|t| (t, *pk)))
            .ok_or_else(untrusted)?;
        let (token, root) = token;
        let revocation = token.revocation_identifiers();
        let lineage = *blake3::hash(revocation.first().map_or(&[][..], |v| v)).as_bytes();
        let (budgets, rates, native) = read_caveats(&token).map_err(|e| {
            Denied::Unauthenticated(format!("the token's caveats cannot be read: {e}"))
        })?;
        let holder = match <[u8; 32]>::try_from(root.to_bytes().as_slice()) {
            Ok(key) if trust.roots.contains(&root) => Holder::Key(key),
            _ => Holder::Owner,
        };
        let checked = Arc::new(Checked {
            epoch: trust.epoch,
            token,
            root,
            holder,
            revocation,
            lineage,
            budgets,
            rates,
            native,
        });
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(hash, checked.clone());
        Ok(checked)
    }

    /// Evaluates constraints read from the token: the same decisions as Datalog (a property
    /// test holds the two to it), without building a Datalog world per request.
    fn check_native(
        &self,
        constraints: &[Constraint],
        now: u64,
        request: &Request<'_>,
    ) -> Result<(), Denied> {
        let mut failed = Vec::new();
        for c in constraints {
            let ok = match c {
                Constraint::Before(at) => now < *at,
                Constraint::OpIn(ops) => ops.iter().any(|op| op == request.op.as_str()),
                Constraint::PathPrefix(prefix) => request.path.starts_with(prefix.as_str()),
                Constraint::Audience(audience) => audience == self.node_id(),
            };
            if !ok {
                if let Constraint::Before(_) = c {
                    return Err(Denied::Unauthenticated("the token has expired".into()));
                }
                failed.push(c);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let what: Vec<String> = failed
            .iter()
            .map(|c| match c {
                Constraint::OpIn(ops) => format!("operations {}", ops.join(", ")),
                Constraint::PathPrefix(p) => format!("paths under {p}"),
                Constraint::Audience(a) => format!("node {a}"),
                Constraint::Before(_) => String::new(),
            })
            .collect();
        Err(Denied::Forbidden(format!(
            "the token does not allow {} {}: it is limited to {}",
            request.op,
            request.path,
            what.join("; ")
        )))
    }

    /// Evaluate every token through Datalog, never the constraint fast path (for tests that
    /// hold the two to the same decisions).
    #[doc(hidden)]
    pub fn set_datalog_only(&self, on: bool) {
        self.datalog_only.store(on, Ordering::Relaxed);
    }

    fn run_checks(&self, token: &Biscuit, now: u64, request: &Request<'_>) -> Result<(), Denied> {
        let limits = datalog_limits();
        // Facts built directly (no Datalog parsing on the request path).
        let facts = [
            fact("time", &[Term::Date(now)]),
            fact("operation", &[Term::Str(request.op.as_str().to_owned())]),
            fact("path", &[Term::Str(request.path.to_owned())]),
            fact("audience", &[Term::Str(self.node_id().to_owned())]),
        ];
        let result = facts
            .into_iter()
            .try_fold(AuthorizerBuilder::new(), AuthorizerBuilder::fact)
            .and_then(|b| b.policy(self.allow.clone()))
            .map(|b| b.set_limits(limits))
            .and_then(|b| b.build(token))
            .and_then(|mut a| a.authorize());
        match result {
            Ok(_) => Ok(()),
            Err(BiscuitError::FailedLogic(
                Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
            )) => {
                let rules: Vec<String> = checks
                    .iter()
                    .map(|c| match c {
                        FailedCheck::Block(b) => b.rule.clone(),
                        FailedCheck::Authorizer(a) => a.rule.clone(),
                    })
                    .collect();
                if rules.iter().any(|r| r.contains("time(")) {
                    Err(Denied::Unauthenticated("the token has expired".into()))
                } else {
                    Err(Denied::Forbidden(format!(
                        "the token does not allow {} {}: {}",
                        request.op,
                        request.path,
                        rules.join("; ")
                    )))
                }
            }
            Err(e) => Err(Denied::Unauthenticated(format!(
                "the token cannot be evaluated: {e}"
            ))),
        }
    }

    /// Applies rate caveats and hands out the budgets.
    fn count(&self, checked: &Checked, now_ms: u64) -> Result<Grant, Denied> {
        let holder = Some(checked.holder);
        if checked.budgets.is_empty() && checked.rates.is_empty() {
            return Ok(Grant {
                budgets: Vec::new(),
                holder,
            });
        }
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let needed = checked.budgets.len() + checked.rates.len();
        if counters.budgets.len() + counters.rates.len() + needed > MAX_COUNTERS {
            // Full buckets hold no information: dropping one changes nothing.
            counters
                .rates
                .retain(|_, b| b.tokens + refill(b, now_ms) < b.capacity);
            if counters.budgets.len() + counters.rates.len() + needed > MAX_COUNTERS {
                return Err(Denied::Busy);
            }
        }
        // Rates first, all or nothing: a refused request consumes from none.
        let mut wait: Option<Duration> = None;
        let mut updated = Vec::with_capacity(checked.rates.len());
        for &(id, requests, per_ms) in &checked.rates {
            let capacity = f64::from(requests);
            let per_ms = per_ms as f64;
            let mut bucket = counters
                .rates
                .get(&(checked.lineage, id))
                .copied()
                .unwrap_or(Bucket {
                    capacity,
                    per_ms,
                    tokens: capacity,
                    at_ms: now_ms,
                });
            // A reused id declares its own rate: the tighter one holds.
            bucket.capacity = bucket.capacity.min(capacity);
            bucket.per_ms = bucket.per_ms.max(per_ms);
            bucket.tokens = (bucket.tokens + refill(&bucket, now_ms)).min(bucket.capacity);
            bucket.at_ms = now_ms.max(bucket.at_ms);
            if bucket.tokens < 1.0 {
                let ms = ((1.0 - bucket.tokens) * bucket.per_ms / bucket.capacity).ceil();
                let ms = Duration::from_millis(ms as u64);
                wait = Some(wait.map_or(ms, |w| w.max(ms)));
            }
            updated.push((id, bucket));
        }
        if let Some(retry_after) = wait {
            return Err(Denied::RateLimited { retry_after });
        }
        for (id, mut bucket) in updated {
            bucket.tokens -= 1.0;
            counters.rates.insert((checked.lineage, id), bucket);
        }
        let budgets = checked
            .budgets
            .iter()
            .map(|&(id, limit)| {
                let budget = counters
                    .budgets
                    .entry((checked.lineage, id))
                    .or_insert_with(|| {
                        Arc::new(Budget {
                            limit: AtomicU64::new(limit),
                            used: AtomicU64::new(0),
                        })
                    });
                budget.limit.fetch_min(limit, Ordering::AcqRel);
                budget.clone()
            })
            .collect();
        Ok(Grant { budgets, holder })
    }
}

/// Tokens refilled into `bucket` since it was last used.
fn refill(bucket: &Bucket, now_ms: u64) -> f64 {
    let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64;
    elapsed * bucket.capacity / bucket.per_ms
}

type Caveated = (
    Vec<(i64, u64)>,
    Vec<(i64, u32, u64)>,
    Option<Vec<Constraint>>,
);

/// Bounds on one token's Datalog. The work is bounded by biscuit's fact and iteration limits
/// (1,000 and 100), which do not depend on the machine; the wall-clock limit is only a
/// backstop. Biscuit's default of 1 ms failed valid tokens on a busy machine (a preempted
/// thread alone takes longer), and so could any tight figure, so it is 250 ms.
fn datalog_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_time: Duration::from_millis(250),
        ..AuthorizerLimits::default()
    }
}

/// Every `ron_budget` and `ron_rate` fact of every block, and the checks as constraints
/// when they allow it.
fn read_caveats(token: &Biscuit) -> Result<Caveated, BiscuitError> {
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(datalog_limits())
        .build(token)?;
    let native = native_checks(&authorizer.dump());
    let budgets: Vec<(i64, i64)> =
        authorizer.query_all("budget($b, $id) <- ron_budget($b, $id)")?;
    let rates: Vec<(i64, i64, i64)> =
        authorizer.query_all("rate($n, $ms, $id) <- ron_rate($n, $ms, $id)")?;
    let bad = || BiscuitError::ConversionError("negative or oversized caveat".into());
    let budgets = budgets
        .into_iter()
        .map(|(b, id)| Ok((id, u64::try_from(b).map_err(|_| bad())?)))
        .collect::<Result<_, BiscuitError>>()?;
    let rates = rates
        .into_iter()
        .map(|(n, ms, id)| {
            let n = u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(bad)?;
            let ms = u64::try_from(ms).ok().filter(|&m| m > 0).ok_or_else(bad)?;
            Ok((id, n, ms))
        })
        .collect::<Result<_, BiscuitError>>()?;
    Ok((budgets, rates, native))
}

/// The token's checks as constraints, if the token has no rules, no facts besides budgets
/// and rates, and only checks of the four forms [`crate::token`] writes. Then every check
/// sees exactly the request's facts, one of each, and reduces to a comparison.
fn native_checks(
    (facts, rules, checks, _): &(Vec<Fact>, Vec<Rule>, Vec<Check>, Vec<Policy>),
) -> Option<Vec<Constraint>> {
    let only_counters = facts
        .iter()
        .all(|f| matches!(f.predicate.name.as_str(), "ron_budget" | "ron_rate"));
    if !rules.is_empty() || !only_counters {
        return None;
    }
    checks.iter().map(native_check).collect()
}

fn native_check(check: &Check) -> Option<Constraint> {
    use biscuit_auth::builder::{Binary, Op as X};
    let [query] = check.queries.as_slice() else {
        return None;
    };
    if check.kind != CheckKind::One || !query.scopes.is_empty() {
        return None;
    }
    let [pred] = query.body.as_slice() else {
        return None;
    };
    let var = match pred.terms.as_slice() {
        [Term::Variable(v)] => Some(v),
        _ => None,
    };
    let ops: Option<&[X]> = match query.expressions.as_slice() {
        [] => None,
        [e] => Some(&e.ops),
        _ => return None,
    };
    match (pred.name.as_str(), var, ops) {
        (
            "time",
            Some(v),
            Some(
                [
                    X::Value(Term::Variable(a)),
                    X::Value(Term::Date(at)),
                    X::Binary(Binary::LessThan),
                ],
            ),
        ) if a == v => Some(Constraint::Before(*at)),
        (
            "operation",
            Some(v),
            Some(
                [
                    X::Value(Term::Set(set)),
                    X::Value(Term::Variable(a)),
                    X::Binary(Binary::Contains),
                ],
            ),
        ) if a == v => set
            .iter()
            .map(|t| match t {
                Term::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Constraint::OpIn),
        (
            "path",
            Some(v),
            Some(
                [
                    X::Value(Term::Variable(a)),
                    X::Value(Term::Str(p)),
                    X::Binary(Binary::Prefix),
                ],
            ),
        ) if a == v => Some(Constraint::PathPrefix(p.clone())),
        ("audience", None, None) => match pred.terms.as_slice() {
            [Term::Str(a)] => Some(Constraint::Audience(a.clone())),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};

    use super::*;
    use crate::keys::SigningKey;

    fn verified(key: &SigningKey, text: &str) -> Biscuit {
        UnverifiedBiscuit::from_base64(text)
            .unwrap()
            .verify(key.public())
            .unwrap()
    }

    #[test]
    fn minted_checks_take_the_fast_path_and_foreign_ones_do_not() {
        let key = SigningKey::generate();
        let caveats = Caveats {
            expires_at: Some(1_800_000_000),
            ops: [Op::Put, Op::Pin].into(),
            path_prefix: Some("/p".into()),
            audience: Some("12D3KooWx".into()),
            max_bytes: Some(5),
            rate: None,
        };
        let text = token::mint(&key, &caveats).unwrap();
        let (budgets, _, native) = read_caveats(&verified(&key, &text)).unwrap();
        assert_eq!(budgets.len(), 1);
        let native = native.expect("every check has a known form");
        assert_eq!(native.len(), 4, "{native:?}");

        // A hand-written block with a fact or a rule: back to Datalog.
        for code in [
            "operation(\"get\");",
            "operation($x) <- path($x);",
            "check if time($t), $t > 2020-01-01T00:00:00Z;",
            "check all operation($op), $op == \"put\";",
        ] {
            let child = UnverifiedBiscuit::from_base64(&text)
                .unwrap()
                .append(BlockBuilder::new().code(code).unwrap())
                .unwrap()
                .to_base64()
                .unwrap();
            let (_, _, native) = read_caveats(&verified(&key, &child)).unwrap();
            assert!(native.is_none(), "{code}");
        }
    }
}
