//! Atomics, switched to loom's under `--cfg ron_loom` so the model checker can explore the
//! kernel's own concurrent bookkeeping.

#[cfg(ron_loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(ron_loom))]
pub(crate) use std::sync::atomic;
