//! The gateway's serving threads ("lanes"): one single-threaded runtime per core, each serving
//! whole connections, from the first byte to close. A connection never moves between threads,
//! so its requests pay no work stealing and no cross-core wake-ups; the accept loop hands each
//! new connection to the lane serving the fewest (decision 0016). What a request asks of the
//! rest of the node (the overlay, the store's CPU pool, the peer network) runs where it always
//! did; only the connection's own work is on its lane.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

/// What serves one connection, made on its lane once the socket is registered there.
pub(crate) type Serve = Box<dyn FnOnce(tokio::net::TcpStream) -> BoxFuture<'static, ()> + Send>;

/// Connections waiting to be taken up by one lane. While every lane is this far behind, the
/// accept loop waits and new connections queue in the kernel's backlog.
const WAITING: usize = 64;

/// The lanes of one listener. Dropping it closes them: each lane ends once its connections
/// have (the accept loop's graceful shutdown waits for those first).
pub(crate) struct Lanes {
    lanes: Vec<Lane>,
    next: AtomicUsize,
}

struct Lane {
    tx: mpsc::Sender<(TcpStream, Serve)>,
    live: Arc<AtomicUsize>,
}

/// Counts a connection on its lane until it ends.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lanes {
    /// Starts one lane per core, its threads named `{name}-{i}`.
    pub(crate) fn start(name: &str) -> io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(2, usize::from);
        Self::with(name, count)
    }

    /// Starts `count` lanes (at least one).
    pub(crate) fn with(name: &str, count: usize) -> io::Result<Self> {
        let mut lanes = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::channel(WAITING);
            let live = Arc::new(AtomicUsize::new(0));
            let counted = live.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || runtime.block_on(run(rx, counted)))?;
            lanes.push(Lane { tx, live });
        }
        Ok(Self {
            lanes,
            next: AtomicUsize::new(0),
        })
    }

    /// Hands `tcp` to the lane serving the fewest connections (ties go round the lanes),
    /// waiting while that lane's queue is full. A connection no lane can take (their threads
    /// gone) is closed.
    pub(crate) async fn hand(&self, tcp: tokio::net::TcpStream, serve: Serve) {
        // Moving a socket between runtimes: out of this one's reactor, into the lane's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection to a lane");
                return;
            }
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.lanes.len();
        let lane = (0..n)
            .map(|k| &self.lanes[(start + k) % n])
            .filter(|lane| !lane.tx.is_closed())
            .min_by_key(|lane| lane.live.load(Ordering::Relaxed));
        let Some(lane) = lane else {
            tracing::warn!("no serving thread left; closing a new connection");
            return;
        };
        lane.live.fetch_add(1, Ordering::Relaxed);
        if lane.tx.send((tcp, serve)).await.is_err() {
            lane.live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("a serving thread ended; closing a new connection");
        }
    }
}

/// One lane: takes up connections until its listener closes it, then waits for those it
/// serves to end.
async fn run(mut rx: mpsc::Receiver<(TcpStream, Serve)>, live: Arc<AtomicUsize>) {
    let mut serving = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((tcp, serve)) = next else { break };
                let live = Live(live.clone());
                match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        serving.spawn(async move {
                            serve(tcp).await;
                            drop(live);
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot take up a connection"),
                }
            }
            // Reap ended connections so the set holds only live ones.
            Some(_) = serving.join_next(), if !serving.is_empty() => {}
        }
    }
    while serving.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every connection is served on a lane thread, and the lanes share them out.
    #[tokio::test]
    async fn connections_are_served_on_the_lanes_and_shared_out() {
        let lanes = Lanes::with("test-lane", 2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            lanes
                .hand(
                    tcp,
                    Box::new(|mut tcp| {
                        Box::pin(async move {
                            let name = std::thread::current().name().unwrap_or("").to_owned();
                            let _ = tcp.write_all(name.as_bytes()).await;
                            // Held open until the client goes, so the lane counts it as live.
                            let _ = tcp.read(&mut [0; 1]).await;
                        })
                    }),
                )
                .await;
        }
        let mut names = Vec::new();
        for client in &mut clients {
            let mut name = vec![0; 11];
            client.read_exact(&mut name).await.unwrap();
            names.push(String::from_utf8(name).unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            ["test-lane-0", "test-lane-0", "test-lane-1", "test-lane-1"]
        );
        let live: usize = lanes
            .lanes
            .iter()
            .map(|l| l.live.load(Ordering::Relaxed))
            .sum();
        assert_eq!(live, 4);
        drop(clients);
        // Connections end when their clients go, and the lanes count them out.
        for _ in 0..200 {
            let live: usize = lanes
                .lanes
                .iter()
                .map(|l| l.live.load(Ordering::Relaxed))
                .sum();
            if live == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the lanes still count ended connections as live");
    }
}
