//! A connection that gives up on a stalled peer: a write that cannot make progress for
//! `write_ms` (a client that stopped reading), or a read that waits `read_idle_ms` for a
//! byte (an idle or stalled client), fails with `TimedOut`, and the connection closes,
//! releasing everything it held.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep};

/// An I/O stream with progress deadlines on reads and writes.
pub(crate) struct Deadlined<I> {
    io: I,
    read_idle: Duration,
    write_stall: Duration,
    read_timer: Timer,
    write_timer: Timer,
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
}

impl<I> Deadlined<I> {
    pub(crate) fn new(io: I, read_idle: Duration, write_stall: Duration) -> Self {
        Self {
            io,
            read_idle,
            write_stall,
            read_timer: Timer::new(),
            write_timer: Timer::new(),
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
        timer.sleep.as_mut().reset(Instant::now() + limit);
        timer.armed = true;
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
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        guard(poll, &mut this.read_timer, this.read_idle, cx, "read")
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlined<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        guard(poll, &mut this.write_timer, this.write_stall, cx, "write")
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        guard(poll, &mut this.write_timer, this.write_stall, cx, "write")
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
}
