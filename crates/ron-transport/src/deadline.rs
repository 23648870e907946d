//! A connection that gives up on a stalled peer and keeps a fast one to its byte rate: a
//! write that cannot make progress for `write_ms` (a client that stopped reading), or a read
//! that waits `read_idle_ms` for a byte (an idle or stalled client), fails with `TimedOut`,
//! and the connection closes, releasing everything it held. With a [`Meter`], the bytes moved
//! each way are charged to the client address's byte budget in the shared
//! [`Limiter`](crate::limits::Limiter), and the connection pauses while the address is over
//! its rate.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep};

use crate::limits::Limiter;

/// Bytes a connection moves before it settles them with the shared limiter: one lock per
/// this many bytes, not per read or write.
const SETTLE: u64 = 16 << 10;

/// Charges a connection's bytes to its client address.
#[derive(Debug, Clone)]
pub struct Meter {
    limiter: Arc<Limiter>,
    ip: IpAddr,
    unsettled: u64,
}

impl Meter {
    /// Charges to `ip` in `limiter`.
    pub fn new(limiter: Arc<Limiter>, ip: IpAddr) -> Self {
        Self {
            limiter,
            ip,
            unsettled: 0,
        }
    }

    /// Counts `n` bytes moved. Every [`SETTLE`] bytes they are charged to the address; if
    /// that takes it over its rate, returns how long to pause.
    pub fn add(&mut self, n: usize) -> Option<Duration> {
        self.unsettled += n as u64;
        if self.unsettled < SETTLE {
            return None;
        }
        let pause = self.limiter.charge(self.ip, self.unsettled);
        self.unsettled = 0;
        pause
    }
}

/// An I/O stream with progress deadlines on reads and writes, and optionally metered.
pub struct Deadlined<I> {
    io: I,
    read_idle: Duration,
    write_stall: Duration,
    read_timer: Timer,
    write_timer: Timer,
    meter: Option<Meter>,
    /// While above zero, the connection is answering (a response is on its way, perhaps
    /// waiting for its own bytes): a client that sends nothing meanwhile is not idle.
    answering: Option<Arc<AtomicUsize>>,
    // One pause per direction: a split stream's halves are polled by different tasks, and a
    // timer wakes only the last task that polled it.
    read_pause: Timer,
    write_pause: Timer,
}

/// A deadline armed on the first pending poll after progress; its `Sleep` is allocated once
/// per connection and re-armed in place.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Timer {
    fn new() -> Self {
        Self {
            sleep: Box::pin(sleep(Duration::ZERO)),
            armed: false,
        }
    }

    fn arm(&mut self, after: Duration) {
        self.sleep.as_mut().reset(Instant::now() + after);
        self.armed = true;
    }

    /// While armed and not yet run out, `Pending`; otherwise disarms and lets the caller on.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed {
            ready!(self.sleep.as_mut().poll(cx));
            self.armed = false;
        }
        Poll::Ready(())
    }
}

impl<I> Deadlined<I> {
    /// Wraps `io`: reads fail after `read_idle` without a byte, writes after `write_stall`
    /// without progress.
    pub fn new(io: I, read_idle: Duration, write_stall: Duration) -> Self {
        Self {
            io,
            read_idle,
            write_stall,
            read_timer: Timer::new(),
            write_timer: Timer::new(),
            meter: None,
            answering: None,
            read_pause: Timer::new(),
            write_pause: Timer::new(),
        }
    }

    /// Excuses reads from the idle limit while `answering` is above zero: the count of
    /// responses the connection is sending (or waiting to send), which the caller keeps. A
    /// client waiting for a slow answer sends nothing and is not idle.
    pub fn answering(mut self, answering: Arc<AtomicUsize>) -> Self {
        self.answering = Some(answering);
        self
    }

    /// Charges the bytes moved to `meter`'s address and pauses while it is over its rate.
    pub fn metered(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Counts `n` bytes moved; past [`SETTLE`], settles them and pauses both directions for
    /// as long as the address is over its rate.
    fn count(&mut self, n: usize) {
        let Some(meter) = &mut self.meter else {
            return;
        };
        if let Some(pause) = meter.add(n) {
            self.read_pause.arm(pause);
            self.write_pause.arm(pause);
        }
    }
}

/// Passes `poll` through, resetting `timer` on progress; while pending, arms `timer` on the
/// first pending poll after progress and fails with `TimedOut` once it has run out.
fn guard<T>(
    poll: Poll<io::Result<T>>,
    timer: &mut Timer,
    limit: Duration,
    cx: &mut Context<'_>,
    what: &str,
) -> Poll<io::Result<T>> {
    if poll.is_ready() {
        timer.armed = false;
        return poll;
    }
    if !timer.armed {
        timer.arm(limit);
    }
    ready!(timer.sleep.as_mut().poll(cx));
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} made no progress for {limit:?}"),
    )))
}

impl<I: AsyncRead + Unpin> AsyncRead for Deadlined<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A pause is ours, not the peer's: it does not count against the idle limit.
        ready!(this.read_pause.wait(cx));
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        let answering = this
            .answering
            .as_ref()
            .is_some_and(|n| n.load(Ordering::Relaxed) > 0);
        let poll = if answering && poll.is_pending() {
            // The next read after the answers are done arms the timer afresh.
            this.read_timer.armed = false;
            poll
        } else {
            guard(poll, &mut this.read_timer, this.read_idle, cx, "read")
        };
        if let Poll::Ready(Ok(())) = poll {
            this.count(buf.filled().len() - before);
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> Deadlined<I> {
    fn written(
        &mut self,
        poll: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let poll = guard(poll, &mut self.write_timer, self.write_stall, cx, "write");
        if let Poll::Ready(Ok(n)) = poll {
            self.count(n);
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlined<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.write_pause.wait(cx));
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.written(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.write_pause.wait(cx));
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.written(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        guard(poll, &mut this.write_timer, this.write_stall, cx, "flush")
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_cut_off() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut conn = Deadlined::new(a, Duration::from_secs(15), Duration::from_secs(10));
        let err = conn.write_all(&[0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_peer_is_cut_off_and_a_slow_one_is_not() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut conn = Deadlined::new(a, Duration::from_secs(15), Duration::from_secs(10));
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                b.write_all(b"x").await.unwrap();
            }
            b // idle from here on
        });
        let mut buf = [0u8; 1];
        for _ in 0..5 {
            conn.read_exact(&mut buf).await.unwrap();
        }
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(feeder);
    }

    #[tokio::test(start_paused = true)]
    async fn a_metered_peer_is_slowed_to_its_byte_rate() {
        use crate::limits::{Limiter, LimitsSection};
        let limiter = Arc::new(Limiter::default());
        limiter.apply(&LimitsSection {
            per_peer_bytes_per_sec: 1 << 20,
            ..LimitsSection::default()
        });
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let (a, mut b) = tokio::io::duplex(64 << 10);
        let mut conn = Deadlined::new(a, Duration::from_secs(15), Duration::from_secs(10))
            .metered(Meter::new(limiter.clone(), ip));
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            b.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        let started = Instant::now();
        // 2 MiB of burst, then 4 MiB more at 1 MiB/s.
        conn.write_all(&vec![7u8; 6 << 20]).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(3900) && took < Duration::from_millis(4200),
            "{took:?}"
        );
        drop(conn);
        assert_eq!(drain.await.unwrap(), 6 << 20);
        assert!(
            limiter.admit(Some(ip), false).is_err(),
            "still paying off its debt"
        );
    }
}
