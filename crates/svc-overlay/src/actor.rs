//! The overlay actor. Owns nothing that must survive a crash (the store does); takes commands
//! from its mailbox and runs each as a task in a bounded `JoinSet`; drains on shutdown.

use std::sync::Arc;
use std::time::Duration;

use supervisor::Mailbox;
use svc_index::Index;
use svc_storage::{ReadError, Store};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Command, OverlayError};

/// How long shutdown waits for commands in progress.
const DRAIN: Duration = Duration::from_secs(5);

/// One incarnation of the overlay actor: runs until `shutdown`, taking commands from
/// `mailbox`, at most `max_in_flight` at once.
pub async fn run(
    shutdown: CancellationToken,
    mailbox: Mailbox<Command>,
    store: Store,
    index: Index,
    max_in_flight: usize,
) -> Result<(), OverlayError> {
    let mut inbox = mailbox.lock().await;
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        // Wait for a free slot first, so a saturated actor leaves commands in the bounded
        // queue (callers then see backpressure) instead of piling up tasks.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.map_err(|_| OverlayError::Unavailable)?,
        };
        let command = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                // A command task panicked: that is a crash of the overlay.
                if let Err(e) = done
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                drop(permit);
                continue;
            }
            command = inbox.recv() => match command {
                Some(c) => c,
                None => break,
            },
        };
        let (store, index) = (store.clone(), index.clone());
        tasks.spawn(async move {
            let _permit = permit;
            handle(command, &store, &index).await;
        });
    }
    if tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("overlay commands still running at the drain deadline; dropping them");
    }
    Ok(())
}

async fn handle(command: Command, store: &Store, index: &Index) {
    match command {
        Command::Open { address, reply } => {
            let result = async {
                let Some(manifest) = index.resolve(&address).await? else {
                    return Ok(None);
                };
                match store.reader_for(&manifest).await {
                    // A cached manifest of an object collected since: look again, uncached.
                    Err(ReadError::MissingChunk { chunk, .. }) if chunk == address => {
                        index.forget(&address);
                        match index.resolve(&address).await? {
                            Some(manifest) => Ok(Some(store.reader_for(&manifest).await?)),
                            None => Ok(None),
                        }
                    }
                    other => Ok(Some(other?)),
                }
            }
            .await;
            let _ = reply.send(result);
        }
        Command::Stat { address, reply } => {
            let _ = reply.send(store.stat(&address).await.map_err(OverlayError::from));
        }
        Command::SetPinned {
            address,
            pinned,
            reply,
        } => {
            let _ = reply.send(
                store
                    .set_pinned(&address, pinned)
                    .await
                    .map_err(OverlayError::from),
            );
        }
        Command::Gc { budget, reply } => {
            let result = store.evict(budget).await.map_err(OverlayError::from);
            if result
                .as_ref()
                .map_or(true, |(_, removed)| !removed.is_empty())
            {
                // Collected objects must not be served from the cache.
                index.clear();
            }
            let _ = reply.send(result);
        }
    }
}
