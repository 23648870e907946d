//! The bounded CPU pool: hashing, chunk I/O and verification run on tokio's blocking threads,
//! at most `permits` at a time, never on the I/O runtime's threads.
//!
//! A pool may carry [`Faults`]: a disk that stalls or fails on demand, for tests of what the
//! node does when its disk misbehaves. Every job of the store (file and database work alike)
//! passes through the pool, so a stalled pool is a stalled disk.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::Semaphore;

use crate::StoreError;

/// A cheap-to-clone handle on the pool.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
    faults: Option<Faults>,
}

/// What the disk does now, as a test sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Healthy,
    /// Every job waits until the disk is healthy again (a hung device, a stuck NFS mount).
    Stalled,
    /// Every job fails with an I/O error (a dead device).
    Failing,
}

/// Faults injected into a pool's jobs: a stalled or failing disk, set and cleared while the
/// store runs. Cheap to clone; clones share.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use svc_storage::{CpuPool, Faults, Store};
///
/// let faults = Faults::default();
/// let store = Store::in_memory_with(CpuPool::new(2).with_faults(faults.clone())).unwrap();
/// faults.fail();
/// assert!(store.stats().await.is_err());
/// faults.heal();
/// assert!(store.stats().await.is_ok());
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct Faults {
    mode: Arc<(Mutex<Mode>, Condvar)>,
}

impl Faults {
    /// From now on every job waits (on its blocking thread) until [`Faults::heal`].
    pub fn stall(&self) {
        self.set(Mode::Stalled);
    }

    /// From now on every job fails with an I/O error, until [`Faults::heal`].
    pub fn fail(&self) {
        self.set(Mode::Failing);
    }

    /// The disk works again; stalled jobs go on.
    pub fn heal(&self) {
        self.set(Mode::Healthy);
    }

    fn set(&self, mode: Mode) {
        let (lock, changed) = &*self.mode;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = mode;
        changed.notify_all();
    }

    /// Waits out a stall; an error while failing.
    fn gate(&self) -> Result<(), StoreError> {
        let (lock, changed) = &*self.mode;
        let mut mode = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while *mode == Mode::Stalled {
            mode = changed.wait(mode).unwrap_or_else(PoisonError::into_inner);
        }
        match *mode {
            Mode::Failing => Err(StoreError::Io {
                what: "injected fault".into(),
                source: std::io::Error::other("the disk is failing (injected)"),
            }),
            _ => Ok(()),
        }
    }
}

impl Default for CpuPool {
    /// `max(2, cores - 1)` permits.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self::new(cores.saturating_sub(1).max(2))
    }
}

impl CpuPool {
    /// A pool running at most `permits` jobs at once.
    pub fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            faults: None,
        }
    }

    /// This pool with `faults` injected into every job.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Passes the injected faults, if any (for disk work run outside the pool: fsyncs).
    pub(crate) fn gate(&self) -> Result<(), StoreError> {
        self.faults.as_ref().map_or(Ok(()), Faults::gate)
    }

    /// Runs `job` on a blocking thread once a permit is free.
    ///
    /// # Cancel safety
    /// Dropping the future before the job starts cancels it; a started job runs to the end
    /// (its result is discarded).
    pub async fn run<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Shutdown)?;
        let faults = self.faults.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            faults.as_ref().map_or(Ok(()), Faults::gate)?;
            Ok(job())
        })
        .await
        .map_err(|e| StoreError::Internal(format!("storage job failed: {e}")))?
    }
}
