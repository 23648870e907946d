//! The bounded CPU pool: hashing, chunk I/O and verification run on tokio's blocking threads,
//! at most `permits` at a time, never on the I/O runtime's threads.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::StoreError;

/// A cheap-to-clone handle on the pool.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
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
        }
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
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| StoreError::Internal(format!("storage job failed: {e}")))
    }
}
