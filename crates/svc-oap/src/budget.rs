//! Body bytes waiting for their uploads, bounded per connection and per client address
//! (issue 22, finding 5). A `COMP` frame of a few kilobytes can inflate to 8 x `max_frame`;
//! each piece of an upload's body takes room for its inflated size before it is queued, and
//! gives it back once the upload has written it. A connection (or address) out of room stops
//! reading until there is some again, as it would for a full queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ron_proto::oap::MAX_INFLATE_RATIO;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection's room: twice the largest inflated payload (16 MiB with the default
/// `max_frame`), so one piece always fits while another is being written.
pub(crate) fn per_connection(max_frame: usize) -> usize {
    max_frame
        .saturating_mul(MAX_INFLATE_RATIO)
        .saturating_mul(2)
}

/// An address's room, shared by its connections: four connections' worth.
pub(crate) fn per_address(max_frame: usize) -> usize {
    per_connection(max_frame).saturating_mul(4)
}

/// The room of every client address with a connection open.
#[derive(Debug, Default)]
pub(crate) struct Addresses {
    open: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl Addresses {
    /// The room of one connection from `ip`: its own and its address's.
    pub(crate) fn connect(self: &Arc<Self>, ip: IpAddr, max_frame: usize) -> Budget {
        let address = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(per_address(max_frame))))
            .clone();
        Budget {
            connection: Arc::new(Semaphore::new(per_connection(max_frame))),
            address: Some(address),
            addresses: self.clone(),
            ip,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection's room. Dropped with the connection; the address's entry goes with its
/// last connection and last piece.
#[derive(Debug)]
pub(crate) struct Budget {
    connection: Arc<Semaphore>,
    /// Taken when the connection ends.
    address: Option<Arc<Semaphore>>,
    addresses: Arc<Addresses>,
    ip: IpAddr,
}

/// Room held by one queued piece of a body; given back when dropped.
#[derive(Debug)]
pub(crate) struct Room {
    _connection: OwnedSemaphorePermit,
    _address: OwnedSemaphorePermit,
}

impl Budget {
    /// Waits for room for `bytes` (at most one inflated payload) in the connection's and the
    /// address's budgets. `None` only if they were closed, which they never are.
    pub(crate) async fn room(&self, bytes: usize) -> Option<Room> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        let connection = self.connection.clone().acquire_many_owned(n).await.ok()?;
        let address = self.address.clone()?.acquire_many_owned(n).await.ok()?;
        Some(Room {
            _connection: connection,
            _address: address,
        })
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        let mut open = self
            .addresses
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Let go of this connection's share under the lock; what is left is the map's, other
        // connections' and any piece still queued.
        drop(self.address.take());
        if open
            .get(&self.ip)
            .is_some_and(|address| Arc::strong_count(address) == 1)
        {
            open.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const FRAME: usize = 4096;

    #[tokio::test]
    async fn a_connection_out_of_room_waits_until_a_piece_is_written() {
        let addresses = Arc::new(Addresses::default());
        let budget = addresses.connect(IpAddr::from([10, 0, 0, 1]), FRAME);
        let whole = per_connection(FRAME);
        let first = budget.room(whole - 1).await.expect("room");
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.room(2)).await;
        assert!(waiting.is_err(), "past the connection's room");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), budget.room(2))
            .await
            .expect("room once the first piece is written");
    }

    #[tokio::test]
    async fn connections_of_one_address_share_its_room_and_others_do_not() {
        let addresses = Arc::new(Addresses::default());
        let ip = IpAddr::from([10, 0, 0, 2]);
        let connections: Vec<Budget> = (0..5).map(|_| addresses.connect(ip, FRAME)).collect();
        let each = per_connection(FRAME);
        let mut held = Vec::new();
        for budget in &connections[..4] {
            held.push(budget.room(each).await.expect("room"));
        }
        let fifth = tokio::time::timeout(Duration::from_millis(50), connections[4].room(1)).await;
        assert!(fifth.is_err(), "past the address's room");
        let other = addresses.connect(IpAddr::from([10, 0, 0, 3]), FRAME);
        tokio::time::timeout(Duration::from_secs(1), other.room(each))
            .await
            .expect("another address has its own room");
        drop(held);
        assert_eq!(addresses.len(), 2);
        drop(connections);
        drop(other);
        assert_eq!(addresses.len(), 0, "entries go with their last connection");
    }

    #[test]
    fn the_default_frame_gives_16_mib_per_connection_and_64_per_address() {
        let max_frame = ron_proto::oap::DEFAULT_MAX_FRAME;
        assert_eq!(per_connection(max_frame), 16 << 20);
        assert_eq!(per_address(max_frame), 64 << 20);
    }
}
