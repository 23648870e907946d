//! What a response holds until its body is sent (issue 22, finding 3): a large body keeps its
//! request's admission ticket, so `per_peer_streams` and `global_concurrency` count responses
//! still sending, and on HTTP/2 a body that the client stops taking closes its connection after
//! `limits.write_ms`, so a client that opens streams and never lets their bytes go (a zero
//! flow-control window kept alive with PINGs) cannot hold the memory behind them. A body
//! waiting for its own bytes (an object arriving from slow peers) is not stalled, and while any
//! body of a connection is on its way the connection's reads are excused from the idle limit:
//! a client waiting for a slow answer sends nothing and is not idle.
//!
//! HTTP/1.1 needs no stall watch here: a response that cannot be written blocks the
//! connection's socket, and its write deadline ([`ron_transport::deadline::Deadlined`]) cuts it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use ron_transport::limits::{Limiter, Ticket};
use tokio::sync::Notify;
// Tokio's clock, so paused-time tests see stalls as time is advanced.
use tokio::time::Instant;

/// Bodies of at most this many bytes are sent as they are, releasing their ticket when the
/// handler returns: per connection, HTTP/2's stream limit bounds what they hold.
pub(crate) const SMALL_BODY: u64 = 64 << 10;
/// Most bytes a watched body hands HTTP/2 at a time: the body is polled again once they are
/// on their way, so a client reading at least this much per `write_ms` is never cut.
const PIECE: usize = 64 << 10;
/// Streams one HTTP/2 connection may have open: with [`SMALL_BODY`] and the read-ahead of a
/// large body, what one connection can make the node hold at once.
pub(crate) const MAX_STREAMS: u32 = 64;

/// One connection's large responses still sending: when each last moved, and whether it is
/// waiting for its own bytes.
#[derive(Debug, Default)]
pub(crate) struct Sends {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    opened: Notify,
    /// Requests being answered and large bodies on their way: the connection's reads are
    /// excused from the idle limit meanwhile ([`ron_transport::deadline::Deadlined::answering`]).
    answering: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the client last took a piece (or the body started).
    moved: Instant,
    /// Watched for stalls (HTTP/2).
    watched: bool,
    /// Waiting for its own bytes: not the client's doing.
    waiting: bool,
}

impl Sends {
    fn open(self: &Arc<Self>, watched: bool) -> Watch {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            moved: Instant::now(),
            watched,
            waiting: false,
        };
        self.lock().insert(id, entry);
        self.answering.fetch_add(1, Ordering::Relaxed);
        self.opened.notify_one();
        Watch {
            sends: self.clone(),
            id,
            waiting: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request being answered (its client has sent everything) until dropped.
    pub(crate) fn answer(&self) -> Answer {
        self.answering.fetch_add(1, Ordering::Relaxed);
        Answer(self.answering.clone())
    }

    /// The count of answers on their way, for the connection's read deadline.
    pub(crate) fn answering(&self) -> Arc<AtomicUsize> {
        self.answering.clone()
    }

    /// Resolves once a watched response of this connection has waited `limit` for its
    /// client to take a piece; sleeps while none could (an idle connection costs no timer).
    pub(crate) async fn stalled(&self, limit: Duration) {
        loop {
            let oldest = self
                .lock()
                .values()
                .filter(|e| e.watched && !e.waiting)
                .map(|e| e.moved)
                .min();
            match oldest {
                None => self.opened.notified().await,
                Some(at) if at.elapsed() >= limit => return,
                Some(at) => {
                    // Woken early when a body starts waiting or moves: look again.
                    let _ = tokio::time::timeout_at(at + limit, self.opened.notified()).await;
                }
            }
        }
    }
}

/// One request being answered, counted in its connection's [`Sends::answering`].
pub(crate) struct Answer(Arc<AtomicUsize>);

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A body's entry in its connection's [`Sends`], removed when the body is done or dropped.
struct Watch {
    sends: Arc<Sends>,
    id: u64,
    waiting: bool,
}

impl Watch {
    /// The client took a piece.
    fn moved(&mut self) {
        self.waiting = false;
        if let Some(entry) = self.sends.lock().get_mut(&self.id) {
            entry.moved = Instant::now();
            entry.waiting = false;
        }
    }

    /// The body has nothing to hand on until its own bytes arrive.
    fn waiting(&mut self) {
        if self.waiting {
            return;
        }
        self.waiting = true;
        if let Some(entry) = self.sends.lock().get_mut(&self.id) {
            entry.waiting = true;
        }
        self.sends.opened.notify_one();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.sends.lock().remove(&self.id);
        self.sends.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a response body is large enough to be [`hold`]: more than [`SMALL_BODY`] bytes, or
/// of unknown length.
pub(crate) fn is_large(body: &Body) -> bool {
    body.size_hint()
        .upper()
        .is_none_or(|upper| upper > SMALL_BODY)
}

/// `body`, keeping `ticket` until it is sent and registered with its connection's `sends`;
/// on HTTP/2 (`watched`) watched for stalls and handed on in pieces of at most [`PIECE`]
/// bytes.
pub(crate) fn hold(
    body: Body,
    ticket: Ticket<Arc<Limiter>>,
    sends: Option<&Arc<Sends>>,
    watched: bool,
) -> Body {
    Body::new(Held {
        inner: body,
        rest: Bytes::new(),
        ticket: Some(ticket),
        watch: sends.map(|s| s.open(watched)),
        split: watched,
    })
}

struct Held {
    inner: Body,
    /// What is left of a data frame larger than [`PIECE`].
    rest: Bytes,
    ticket: Option<Ticket<Arc<Limiter>>>,
    watch: Option<Watch>,
    /// Hand on at most [`PIECE`] bytes at a time.
    split: bool,
}

impl Held {
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if self.split && data.len() > PIECE {
            self.rest = data.split_off(PIECE);
        }
        if let Some(watch) = &mut self.watch {
            watch.moved();
        }
        data
    }

    fn done(&mut self) {
        self.ticket = None;
        self.watch = None;
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            return Poll::Ready(Some(Ok(Frame::data(this.piece(rest)))));
        }
        let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) else {
            if let Some(watch) = &mut this.watch {
                watch.waiting();
            }
            return Poll::Pending;
        };
        Poll::Ready(match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Some(Ok(Frame::data(this.piece(data)))),
                Err(other) => Some(Ok(other)),
            },
            end => {
                this.done();
                end
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn ticket(limiter: &Arc<Limiter>) -> Ticket<Arc<Limiter>> {
        limiter.admit_owned(None, false).unwrap()
    }

    #[tokio::test]
    async fn a_held_body_keeps_its_place_until_sent_and_comes_out_whole() {
        let limiter = Arc::new(Limiter::default());
        let sends = Arc::new(Sends::default());
        let bytes: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let body = hold(
            Body::from(bytes.clone()),
            ticket(&limiter),
            Some(&sends),
            true,
        );
        assert_eq!(limiter.in_flight(), 1);
        assert_eq!(sends.lock().len(), 1);
        let mut body = body;
        let mut got = Vec::new();
        let mut pieces = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= PIECE);
            got.extend_from_slice(&data);
            pieces += 1;
        }
        assert_eq!(got, bytes);
        assert_eq!(pieces, 300_000usize.div_ceil(PIECE));
        assert_eq!(limiter.in_flight(), 0, "sent: the place is given back");
        assert!(sends.lock().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_body_gives_everything_back() {
        let limiter = Arc::new(Limiter::default());
        let sends = Arc::new(Sends::default());
        let body = hold(
            Body::from(vec![0u8; 100_000]),
            ticket(&limiter),
            Some(&sends),
            true,
        );
        assert_eq!(limiter.in_flight(), 1);
        drop(body);
        assert_eq!(limiter.in_flight(), 0);
        assert!(sends.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_moving_is_a_stall_once_the_limit_passes() {
        let limiter = Arc::new(Limiter::default());
        let sends = Arc::new(Sends::default());
        let limit = Duration::from_millis(200);
        // Nothing sending: no stall, however long.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), sends.stalled(limit))
                .await
                .is_err()
        );
        let mut body = hold(
            Body::from(vec![1u8; 200_000]),
            ticket(&limiter),
            Some(&sends),
            true,
        );
        // Moving: the first piece resets the clock.
        body.frame().await.unwrap().unwrap();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), sends.stalled(limit))
            .await
            .expect("a body that stopped moving is a stall");
        assert!(started.elapsed() >= limit);
        drop(body);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_its_own_bytes_is_not_a_stall_and_keeps_reads_excused() {
        let limiter = Arc::new(Limiter::default());
        let sends = Arc::new(Sends::default());
        let limit = Duration::from_millis(200);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let arriving = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        let mut body = hold(
            Body::from_stream(arriving),
            ticket(&limiter),
            Some(&sends),
            true,
        );
        assert_eq!(sends.answering().load(Ordering::Relaxed), 1);
        // Polled with nothing to hand on: waiting for its bytes, however long.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), body.frame())
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(5), sends.stalled(limit))
                .await
                .is_err(),
            "waiting for its own bytes is not the client's stall"
        );
        tx.send(Ok(Bytes::from_static(b"late"))).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "late"
        );
        // Its bytes handed on, a client that takes no more is a stall again.
        tokio::time::timeout(Duration::from_secs(5), sends.stalled(limit))
            .await
            .expect("a stall once the client stops taking");
        drop(body);
        assert_eq!(sends.answering().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_bodies_past_the_small_size_or_of_unknown_length_are_held() {
        assert!(!is_large(&Body::from(vec![0u8; SMALL_BODY as usize])));
        assert!(is_large(&Body::from(vec![0u8; SMALL_BODY as usize + 1])));
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::new())]);
        assert!(is_large(&Body::from_stream(stream)));
    }
}
