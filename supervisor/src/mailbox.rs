//! A service's command queue that outlives the service's restarts.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};

/// The receiving side of a service's bounded command queue, shared by every incarnation of
/// the service. Only one incarnation holds it at a time ([`Mailbox::lock`]).
#[derive(Debug)]
pub struct Mailbox<C> {
    rx: Arc<Mutex<mpsc::Receiver<C>>>,
}

impl<C> Clone for Mailbox<C> {
    fn clone(&self) -> Self {
        Self {
            rx: self.rx.clone(),
        }
    }
}

/// The mailbox, held by the running incarnation; released when it ends, however it ends.
pub type MailboxGuard<C> = OwnedMutexGuard<mpsc::Receiver<C>>;

/// A bounded command queue of `capacity` (at least 1): the sender for handles, the mailbox
/// for the supervised service.
pub fn mailbox<C>(capacity: usize) -> (mpsc::Sender<C>, Mailbox<C>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        tx,
        Mailbox {
            rx: Arc::new(Mutex::new(rx)),
        },
    )
}

impl<C> Mailbox<C> {
    /// Takes the queue for this incarnation.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lock(&self) -> MailboxGuard<C> {
        self.rx.clone().lock_owned().await
    }

    /// Refuses further commands and drops the queued ones, so their callers' reply channels
    /// fail at once.
    pub async fn close(&self) {
        let mut rx = self.lock().await;
        rx.close();
        while rx.try_recv().is_ok() {}
    }
}
