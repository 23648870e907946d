//! The overlay owns a node's object operations. Callers hold an [`OverlayHandle`]; commands
//! (open a verified reader, stat, pin, collect garbage) travel over a bounded queue to the
//! overlay actor, which the supervisor restarts if it crashes (the queue survives, so handles
//! stay valid). The actor resolves addresses through the index's cache and runs each command
//! as its own task, at most `max_in_flight` at once, so one slow `stat` (which hashes the whole
//! object) does not hold up the others.
//!
//! Uploads do not hop through the queue piece by piece: [`OverlayHandle::writer`] hands out the
//! store's streaming writer, admitted by a semaphore so at most `max_uploads` run at once.
//! Hashing and disk work run on the store's bounded CPU pool either way.
//!
//! Later, the overlay is where a GET for an object this node lacks turns into a fetch from
//! peers.
#![forbid(unsafe_code)]

mod actor;
mod handle;
mod metrics;

pub use actor::run;
pub use handle::{Command, OverlayError, OverlayHandle, Upload};
