//! Peers settle: what this node serves a peer and receives from it (ranges, priced per MiB)
//! is kept on the peer's account in the ledger, and the node that owes pays with a signed
//! cumulative cheque (OAP/1 app 0x0401, [`ron_proto::oap::settle`]).
//!
//! - A peer's account (`peer/<PeerId>`) is debited for ranges served to it and credited for
//!   ranges received from it: its balance is what this node owes it (above zero) or what it
//!   owes this node (below). Ranges are counted in memory as they move and committed with the
//!   committer's next tick, one transfer per peer and direction (a crash forgets at most that
//!   second, which the next cheque does not depend on: cheques are cumulative).
//! - Once this node owes a peer `peer_pay_at` credits it writes a cheque for all it owes:
//!   the cheque is in the ledger (fsynced) before it is sent, and its amount is the total ever
//!   paid that peer, so one lost on the way is made good by the next.
//! - A cheque received is checked (for this node, from the peer that sent it, its signature),
//!   then kept if it is above the one held, the increase credited to the issuer, fsynced, and
//!   only then answered. A forged one is 403, a replayed or lower one 409; both are counted.
//! - A peer owing `peer_debt_limit` credits is refused ranges (429, `payment` saying what it
//!   owes) until a cheque brings it under.

use libp2p_identity::PeerId;
use ron_proto::oap::settle::{Cashed, Cheque, signed_bytes};

use crate::ledger::{Change, ChequeEntry, Done, Kind, Refusal, Transfer};
use crate::service::{accounts, codes, lock};
use crate::{Payment, PaymentError};

/// Peers whose unsettled ranges and balance are kept in memory at most (past it, settled
/// peers are forgotten; their balance is read from the ledger again when they return).
const PEERS: usize = 65_536;
const MIB: u64 = 1 << 20;

/// Ranges moved one way and not yet in the ledger.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    /// Bytes short of a whole MiB (priced once they make one).
    rest: u64,
    /// Credits priced and not yet committed.
    credits: u64,
    /// Bytes priced with them.
    bytes: u64,
    /// Ranges.
    count: u64,
}

impl Moved {
    /// Adds `bytes` at `per_mib`: the credits they complete.
    fn add(&mut self, bytes: u64, per_mib: u64) -> u64 {
        self.rest = self.rest.saturating_add(bytes);
        let credits = (self.rest / MIB).saturating_mul(per_mib);
        self.rest %= MIB;
        self.credits = self.credits.saturating_add(credits);
        self.bytes = self.bytes.saturating_add(bytes);
        self.count += 1;
        credits
    }

    fn pending(&self) -> bool {
        self.credits > 0
    }
}

/// One peer's settlement as this node knows it now.
#[derive(Debug, Default)]
pub(crate) struct PeerBook {
    /// The peer's account balance, with the ranges not yet committed: above zero this node
    /// owes the peer, below zero the peer owes this node.
    balance: i128,
    served: Moved,
    received: Moved,
    /// A cheque to the peer is being written or is on its way.
    paying: bool,
}

/// Why a cheque from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChequeError {
    /// Not for this node, not from the peer that sent it, or its signature does not verify
    /// (403).
    #[error("a forged cheque: {0}")]
    Forged(&'static str),
    /// Not above the cheque held from that peer: a replay, or an old one (409).
    #[error("the cheque's cumulative {cumulative} is not above the {held} held")]
    Stale {
        /// The cheque's amount.
        cumulative: u64,
        /// The amount held.
        held: u64,
    },
    /// The ledger could not take it now (503), or failed.
    #[error(transparent)]
    Payment(#[from] PaymentError),
}

/// A peer's account in the ledger.
pub fn peer_account(peer: &PeerId) -> String {
    format!("peer/{peer}")
}

/// The Ed25519 key behind `peer` (every RustyOnions node's PeerId inlines it).
pub fn peer_key(peer: &PeerId) -> Option<[u8; 32]> {
    let bytes = peer.to_bytes();
    // An identity multihash: code 0, the length, the protobuf-encoded public key.
    if bytes.len() < 2 || bytes[0] != 0 || usize::from(bytes[1]) != bytes.len() - 2 {
        return None;
    }
    let key = libp2p_identity::PublicKey::try_decode_protobuf(&bytes[2..]).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

fn peer_of(key: &[u8; 32]) -> Option<PeerId> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p_identity::PublicKey::from(key).to_peer_id())
}

impl Payment {
    /// The node's key pair, which signs its cheques (set once, at start).
    pub fn set_identity(&self, keypair: &libp2p_identity::Keypair) {
        if let Ok(ed) = keypair.clone().try_into_ed25519() {
            let _ = self.inner.identity.set(ed);
        }
    }

    fn with_peer<T>(&self, peer: &PeerId, f: impl FnOnce(&mut PeerBook) -> T) -> T {
        let account = peer_account(peer);
        let known = lock(&self.inner.peers).contains_key(&account);
        let balance = if known {
            0
        } else {
            self.inner
                .ledger
                .account(&account)
                .ok()
                .flatten()
                .map_or(0, |a| a.balance())
        };
        let mut peers = lock(&self.inner.peers);
        if !known && peers.len() >= PEERS {
            peers.retain(|_, b| b.paying || b.served.pending() || b.received.pending());
        }
        let book = peers.entry(account).or_insert_with(|| PeerBook {
            balance,
            ..PeerBook::default()
        });
        f(book)
    }

    /// Whether `peer` may be sent a range now: `Err(owed)` while it owes this node
    /// `peer_debt_limit` credits or more.
    pub fn peer_may_take(&self, peer: &PeerId) -> Result<(), u64> {
        let s = self.section();
        if s.peer_per_mib == 0 {
            return Ok(());
        }
        let owed = self.with_peer(peer, |b| -b.balance);
        if owed >= i128::from(s.peer_debt_limit) {
            self.inner.metrics.peer_refused.inc();
            return Err(u64::try_from(owed).unwrap_or(u64::MAX));
        }
        Ok(())
    }

    /// `bytes` of a range were sent to `peer`.
    pub fn peer_served(&self, peer: &PeerId, bytes: u64) {
        let per_mib = self.section().peer_per_mib;
        if per_mib == 0 {
            return;
        }
        self.with_peer(peer, |b| {
            let credits = b.served.add(bytes, per_mib);
            b.balance -= i128::from(credits);
        });
    }

    /// `bytes` of a range came from `peer`: whether a cheque to it is due now (this node owes
    /// it `peer_pay_at` credits or more, and none is on its way).
    pub fn peer_received(&self, peer: &PeerId, bytes: u64) -> bool {
        let s = self.section();
        if s.peer_per_mib == 0 {
            return false;
        }
        self.with_peer(peer, |b| {
            let credits = b.received.add(bytes, s.peer_per_mib);
            b.balance += i128::from(credits);
            !b.paying && b.balance >= i128::from(s.peer_pay_at.max(1))
        })
    }

    /// What this node owes `peer` now (below zero: what the peer owes it).
    pub fn peer_balance(&self, peer: &PeerId) -> i128 {
        self.with_peer(peer, |b| b.balance)
    }

    /// A cheque to `peer` for all this node owes it, in the ledger (fsynced) before it is
    /// returned; `None` when nothing is owed or a cheque is on its way already. Call
    /// [`Payment::peer_answered`] once the peer has answered (or not).
    pub async fn peer_cheque(&self, peer: &PeerId) -> Result<Option<Cheque>, PaymentError> {
        let (Some(me), Some(beneficiary)) = (self.inner.identity.get(), peer_key(peer)) else {
            return Ok(None);
        };
        let owed = self.with_peer(peer, |b| {
            if b.paying || b.balance < 1 {
                return None;
            }
            b.paying = true;
            Some(b.balance)
        });
        if owed.is_none() {
            return Ok(None);
        }
        let account = peer_account(peer);
        let written = async {
            let held = self
                .inner
                .ledger
                .cheque(&account, false)?
                .map_or(0, |c| c.0);
            let owed = owed.and_then(|o| u64::try_from(o).ok()).unwrap_or(0);
            let cumulative = held.saturating_add(owed);
            let issuer = me.public().to_bytes();
            let message = signed_bytes(&issuer, &beneficiary, cumulative);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&me.sign(&message));
            let entry = ChequeEntry {
                id: fastrand::u128(..),
                peer: account.clone(),
                counter: accounts::CHEQUES_OUT.into(),
                inbound: false,
                cumulative,
                signature,
                code: codes::CHEQUE_OUT,
            };
            let done = self.cheque_change(&account, entry).await?;
            Ok::<_, PaymentError>((
                Cheque {
                    issuer,
                    beneficiary,
                    cumulative,
                    signature,
                },
                done,
            ))
        }
        .await;
        match written {
            Ok((cheque, Ok(credited))) => {
                self.with_peer(peer, |b| b.balance -= i128::from(credited));
                self.inner.metrics.cheques_sent.inc();
                Ok(Some(cheque))
            }
            Ok((_, Err(refusal))) => {
                self.peer_answered(peer);
                tracing::error!(%peer, %refusal, "the ledger refused a cheque this node wrote");
                Err(PaymentError::Refused(refusal))
            }
            Err(e) => {
                self.peer_answered(peer);
                Err(e)
            }
        }
    }

    /// The cheque to `peer` was answered (or lost): the next one may be written.
    pub fn peer_answered(&self, peer: &PeerId) {
        self.with_peer(peer, |b| b.paying = false);
    }

    /// A cheque `peer` sent this node: checked, kept and credited to the peer, fsynced, before
    /// the answer.
    pub async fn cash(&self, peer: &PeerId, cheque: &Cheque) -> Result<Cashed, ChequeError> {
        let forged = |why| {
            self.inner.metrics.cheques_forged.inc();
            Err(ChequeError::Forged(why))
        };
        let Some(me) = self.inner.identity.get() else {
            return Err(PaymentError::Stopped.into());
        };
        if cheque.beneficiary != me.public().to_bytes() {
            return forged("it is not made out to this node");
        }
        if peer_of(&cheque.issuer) != Some(*peer) {
            return forged("it is not the sending peer's");
        }
        let verifies = libp2p_identity::ed25519::PublicKey::try_from_bytes(&cheque.issuer)
            .is_ok_and(|key| key.verify(&cheque.signed(), &cheque.signature));
        if !verifies {
            return forged("its signature does not verify");
        }
        let account = peer_account(peer);
        let entry = ChequeEntry {
            id: fastrand::u128(..),
            peer: account.clone(),
            counter: accounts::CHEQUES_IN.into(),
            inbound: true,
            cumulative: cheque.cumulative,
            signature: cheque.signature,
            code: codes::CHEQUE_IN,
        };
        match self.cheque_change(&account, entry).await? {
            Ok(credited) => {
                self.with_peer(peer, |b| b.balance += i128::from(credited));
                self.inner.metrics.cheques_cashed.inc();
                Ok(Cashed {
                    cumulative: cheque.cumulative,
                    credited,
                })
            }
            Err(Refusal::StaleCheque { held }) => {
                self.inner.metrics.cheques_stale.inc();
                Err(ChequeError::Stale {
                    cumulative: cheque.cumulative,
                    held,
                })
            }
            Err(other) => Err(PaymentError::Refused(other).into()),
        }
    }

    /// Opens the peer's account if new and applies the cheque, in one commit: what it
    /// credited, or the ledger's refusal.
    async fn cheque_change(
        &self,
        account: &str,
        entry: ChequeEntry,
    ) -> Result<Result<u64, Refusal>, PaymentError> {
        let answers = self
            .submit(vec![
                Change::Open {
                    account: account.to_owned(),
                    flags: 0,
                },
                Change::Cheque(entry),
            ])
            .await?;
        Ok(match answers.into_iter().nth(1) {
            Some(Ok(Done::Cheque { credited })) => Ok(credited),
            Some(Err(refusal)) => Err(refusal),
            _ => Err(Refusal::IdUsed),
        })
    }

    /// The ranges moved since the last tick, as changes: for each peer with whole credits
    /// moved, its account opened (if new) and one transfer per direction. Bytes short of a
    /// credit wait for the next tick.
    pub(crate) fn take_moved(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut peers = lock(&self.inner.peers);
        for (account, book) in peers.iter_mut() {
            let mut opened = false;
            for (moved, code) in [
                (&mut book.served, codes::PEER_SERVED),
                (&mut book.received, codes::PEER_RECEIVED),
            ] {
                if !moved.pending() {
                    continue;
                }
                if !opened {
                    changes.push(Change::Open {
                        account: account.clone(),
                        flags: 0,
                    });
                    opened = true;
                }
                let (debit, credit) = if code == codes::PEER_SERVED {
                    (account.clone(), accounts::PEER_REVENUE.to_owned())
                } else {
                    (accounts::PEER_SPEND.to_owned(), account.clone())
                };
                changes.push(Change::Transfer(Transfer {
                    id: fastrand::u128(..),
                    debit,
                    credit,
                    amount: moved.credits,
                    kind: Kind::Posted,
                    code,
                    paid_until_ms: None,
                    bytes: moved.bytes,
                    count: moved.count,
                }));
                *moved = Moved {
                    rest: moved.rest,
                    ..Moved::default()
                };
            }
        }
        changes
    }
}

/// A peer's settlement, as `GET /credits/peers` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerAccount {
    /// The peer's account (`peer/<PeerId>`).
    pub account: String,
    /// The ledger's balance: above zero this node owes the peer, below zero the peer owes it.
    pub balance: i64,
    /// Ranges moved and not yet in the ledger, counted in: the balance as it stands now.
    pub balance_now: i64,
    /// The highest cheque received from the peer (its cumulative amount).
    pub cheque_in: u64,
    /// The highest cheque sent to the peer.
    pub cheque_out: u64,
}

impl Payment {
    /// The peers this node has settled with (their accounts), largest balances first, at
    /// most `limit` (read from the first 65,536 peer accounts).
    pub fn peers(&self, limit: usize) -> Result<Vec<PeerAccount>, PaymentError> {
        let ledger = &self.inner.ledger;
        let mut out = Vec::new();
        for (account, a) in ledger.accounts_under("peer/", PEERS)? {
            let now = lock(&self.inner.peers)
                .get(&account)
                .map_or(a.balance(), |b| b.balance);
            out.push(PeerAccount {
                balance: i64::try_from(a.balance()).unwrap_or(i64::MAX),
                balance_now: i64::try_from(now).unwrap_or(i64::MAX),
                cheque_in: ledger.cheque(&account, true)?.map_or(0, |c| c.0),
                cheque_out: ledger.cheque(&account, false)?.map_or(0, |c| c.0),
                account,
            });
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.balance_now.unsigned_abs()));
        out.truncate(limit);
        Ok(out)
    }
}

impl From<&ChequeError> for (ron_proto::ErrorKind, String) {
    fn from(e: &ChequeError) -> Self {
        use ron_proto::{ErrorKind, Failure};
        let kind = match e {
            ChequeError::Forged(_) => ErrorKind::Forbidden,
            ChequeError::Stale { .. } => ErrorKind::Conflict,
            ChequeError::Payment(p) => p.kind(),
        };
        (kind, e.to_string())
    }
}
