//! Atomics and locks, switched to loom's under `--cfg ron_loom` so the model checker can
//! explore the kernel's own concurrent bookkeeping: the bus's counters and the config
//! snapshot's hand-over.

#[cfg(ron_loom)]
pub(crate) use loom::sync::{Mutex, RwLock, atomic};
#[cfg(not(ron_loom))]
pub(crate) use std::sync::{Mutex, RwLock, atomic};
