//! The supervisor runs each service as a task and restarts it after a panic or an error
//! exit: exponential backoff with jitter (100 ms up to 30 s), at most 5 restarts in 60 s, then
//! quarantine (the service stays down and is reported unhealthy). Every crash is published as
//! `ServiceCrashed { service, reason }` and every restart counted in
//! `service_restarts_total{service}`.
//!
//! Circuit breakers ([`circuit`]) guard the node's dependencies (its disk, the DHT, each
//! peer): a failing or stalled dependency is failed fast instead of waited on.
//!
//! The node's SLOs are tracked inside it ([`slo`]): while one burns, the node degrades.
//!
//! A service that takes commands gets a [`Mailbox`]: its queue outlives restarts, so the
//! handles callers hold stay valid. A command being handled when the service crashes is
//! dropped with it, so its caller's reply channel fails at once instead of hanging; after a
//! quarantine the mailbox is closed and drained, so later calls fail at once too.
//!
//! ```
//! use std::time::Duration;
//! use ron_kernel::{Bus, HealthState, Metrics};
//! use ron_kernel::health::Duty;
//! use supervisor::{Policy, Supervisor};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut sup = Supervisor::new(Bus::new(64), Metrics::new(), HealthState::new(), Policy::default());
//! sup.spawn("ticker", Duty::Background, |ctx| async move {
//!     ctx.shutdown.cancelled().await;
//!     Ok::<(), std::convert::Infallible>(())
//! });
//! assert!(sup.shutdown(Duration::from_secs(1)).await);
//! # });
//! ```
#![forbid(unsafe_code)]

pub mod circuit;
mod mailbox;
mod policy;
mod run;
pub mod slo;
pub mod trace;

pub use circuit::{Board, Breaker, CircuitPolicy, Open};
pub use mailbox::{Mailbox, MailboxGuard, mailbox};
pub use policy::{Backoff, Policy};
pub use run::{ServiceCtx, Supervisor};
