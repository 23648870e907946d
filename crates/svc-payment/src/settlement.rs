//! Settlement: how credits enter the ledger from outside it. [`Settlement`] is the adapter an
//! external system (Lightning invoices, ecash tokens) implements; the node runs [`Internal`]
//! only, where credits are the owner's grants.
//!
//! Peers' cheques are settled in the ledger as they are cashed (the increase moves between
//! the peer's account and `node/cheques-in`), and the highest cheque of each peer is kept with
//! its signature ([`crate::ledger::Ledger::cheques`]): what an external adapter would redeem.
//! Decision 0022 says why nothing external is built here.

use std::future::Future;
use std::pin::Pin;

use crate::{Payment, PaymentError};

/// What shows that credits were paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The node's owner granted them (`ron credits grant`): checked by the caller.
    OwnerGrant,
    /// Evidence from an external system (a paid invoice's preimage, an ecash token), which
    /// only that system's adapter can check.
    External(Vec<u8>),
}

/// A boxed future of a settlement.
pub type Settling<'a, T> = Pin<Box<dyn Future<Output = Result<T, PaymentError>> + Send + 'a>>;

/// Where credits come from.
pub trait Settlement: Send + Sync + 'static {
    /// Its name (`internal`, …), as `[payment] settlement` names it.
    fn name(&self) -> &'static str;

    /// Credits `account` with `credits` once `proof` shows they were paid for: the ledger
    /// transfer's id. Refused (400) when the proof is not one this settlement can check.
    fn deposit<'a>(
        &'a self,
        payment: &'a Payment,
        account: &'a str,
        credits: u64,
        proof: Proof,
    ) -> Settling<'a, u128>;
}

/// Credits granted by the owner, and nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct Internal;

impl Settlement for Internal {
    fn name(&self) -> &'static str {
        "internal"
    }

    fn deposit<'a>(
        &'a self,
        payment: &'a Payment,
        account: &'a str,
        credits: u64,
        proof: Proof,
    ) -> Settling<'a, u128> {
        Box::pin(async move {
            match proof {
                Proof::OwnerGrant => payment.grant(account, credits).await,
                Proof::External(_) => Err(PaymentError::Unsettled(
                    "this node settles internally: credits are granted by its owner",
                )),
            }
        })
    }
}
