//! What peers read objects through: this node's stored copies, verified as for any reader. A
//! transfer asks for an object range after range: the reader stays open between them, since
//! opening it (a trip through the overlay's actor and a blocking thread to open the outboard)
//! costs as much as reading half a MiB.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use lru::LruCache;
use ron_proto::Address;
use svc_storage::ObjectReader;

use crate::{OverlayError, OverlayHandle};

/// Objects whose readers stay open for the ranges peers ask next.
const OPEN_READERS: NonZeroUsize = NonZeroUsize::new(16).unwrap();
/// How long an open reader is reused before the object is looked up again (so one removed
/// since is not served from an old reader for longer than this).
const READER_REUSE: Duration = Duration::from_secs(5);

/// Open readers by object, with when each was opened.
type OpenReaders = Mutex<LruCache<Address, (Instant, ObjectReader)>>;

pub(crate) struct PeerSource {
    overlay: OverlayHandle,
    open: Arc<OpenReaders>,
}

impl PeerSource {
    pub(crate) fn new(overlay: OverlayHandle) -> Self {
        Self {
            overlay,
            open: Arc::new(Mutex::new(LruCache::new(OPEN_READERS))),
        }
    }
}

/// The open readers, locked (a panic elsewhere cannot leave them inconsistent).
fn locked(open: &OpenReaders) -> MutexGuard<'_, LruCache<Address, (Instant, ObjectReader)>> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PeerSource {
    /// Whether peers may read this node's objects now: when not, every object is answered as
    /// not held (a peer learns nothing of what a protected node stores).
    fn open_to_peers(&self) -> bool {
        self.overlay
            .net
            .as_ref()
            .is_some_and(|net| net.peers_may_read())
    }
}

impl svc_dht::Source for PeerSource {
    fn keep(
        &self,
        peer: svc_dht::PeerId,
        keep: svc_dht::Keep,
    ) -> BoxFuture<'static, Result<u32, (ron_proto::ErrorKind, String)>> {
        let overlay = self.overlay.clone();
        async move { overlay.keep_for(peer, keep).await }.boxed()
    }

    fn hold(&self, addrs: Vec<Address>, lease_s: u32) -> BoxFuture<'static, (Vec<bool>, u32)> {
        let overlay = self.overlay.clone();
        async move { overlay.hold_for(addrs, lease_s).await }.boxed()
    }

    fn size(&self, addr: Address) -> BoxFuture<'static, Option<u64>> {
        if !self.open_to_peers() {
            return async { None }.boxed();
        }
        let overlay = self.overlay.clone();
        async move { overlay.reader(addr).await.ok().flatten().map(|r| r.size()) }.boxed()
    }

    fn encoded(
        &self,
        addr: Address,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>, String>> {
        if !self.open_to_peers() {
            return async { Ok(None) }.boxed();
        }
        let (overlay, open) = (self.overlay.clone(), self.open.clone());
        let cached = locked(&open)
            .get(&addr)
            .filter(|(at, _)| at.elapsed() < READER_REUSE)
            .map(|(_, reader)| reader.clone());
        async move {
            let reader = match cached {
                Some(reader) => reader,
                None => {
                    let Some(reader) = overlay.reader(addr).await.map_err(|e| e.to_string())?
                    else {
                        locked(&open).pop(&addr);
                        return Ok(None);
                    };
                    locked(&open).put(addr, (Instant::now(), reader.clone()));
                    reader
                }
            };
            let encoded = if reader.inline_len() > 0 {
                reader
                    .encode_range(start, end)
                    .await
                    .map_err(OverlayError::from)
            } else {
                let read = async { Ok(reader.encode_range(start, end).await?) };
                overlay.on_disk(read).await
            };
            match encoded {
                Ok(encoded) => Ok(Some((reader.size(), encoded))),
                Err(e) => {
                    // Looked up afresh next time (the object may have been removed or
                    // repaired).
                    locked(&open).pop(&addr);
                    Err(e.to_string())
                }
            }
        }
        .boxed()
    }
}
