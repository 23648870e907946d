//! A user-space fault proxy for multi-node tests (`tc netem` is not available here): put it in
//! front of a node's port and dial the node through it.
//!
//! - [`FaultProxy::udp`] (QUIC): every datagram, each way, may be delayed (latency plus uniform
//!   jitter; in order unless reordering is asked for), lost, or held back entirely (a stall or
//!   a partition). One upstream socket per client address, so each dialler is its own flow.
//! - [`FaultProxy::tcp`]: each connection is piped to a fresh upstream connection; bytes are
//!   delayed per chunk (in order), held back while stalled, and [`Faults::reset`] ends every
//!   connection with a TCP reset. New connections are refused while stalled (a partition).
//!
//! All settable while traffic flows.
#![allow(dead_code, unreachable_pub)] // each test crate uses its own subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Datagrams held back for delivery at once, per proxy: past it, new ones are dropped (a
/// router's queue).
const QUEUE: usize = 16_384;

/// What the proxy does to traffic; change it at any time.
#[derive(Debug, Default)]
pub struct Faults {
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    loss_permille: AtomicU32,
    stalled: AtomicBool,
    reorder: AtomicBool,
    queued: AtomicUsize,
    /// When the last datagram each way leaves: jitter without reordering never sends one
    /// before the one ahead of it.
    last: [std::sync::Mutex<Option<tokio::time::Instant>>; 2],
    /// Bumped by every [`Faults::reset`]; TCP pipes watch it.
    resets: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
    /// Datagrams (or TCP chunks) delivered, each way together.
    pub delivered: AtomicU64,
    /// Bytes delivered, each way together.
    pub delivered_bytes: AtomicU64,
    /// Datagrams lost (on purpose, stalled, or over the queue).
    pub lost: AtomicU64,
}

impl Faults {
    /// Every datagram waits `latency` plus a uniform share of `jitter`.
    pub fn delay(&self, latency: Duration, jitter: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
        self.jitter_ms
            .store(jitter.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether jitter may reorder datagrams (each leaves at its own time), or keeps their
    /// order (a datagram waits for the one ahead of it: delay varies, order does not).
    pub fn reorder(&self, reorder: bool) {
        self.reorder.store(reorder, Ordering::Relaxed);
    }

    /// Each datagram is lost with probability `permille` / 1000.
    pub fn loss(&self, permille: u32) {
        self.loss_permille
            .store(permille.min(1000), Ordering::Relaxed);
    }

    /// While stalled nothing gets through, either way (the flow's state is kept: lifting the
    /// stall lets it go on, as when a partition heals).
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Ends every TCP connection through the proxy with a reset (RST), as a middlebox that
    /// lost its state would.
    pub fn reset(&self) {
        self.resets().send_modify(|generation| *generation += 1);
    }

    fn resets(&self) -> &tokio::sync::watch::Sender<u64> {
        self.resets.get_or_init(|| tokio::sync::watch::channel(0).0)
    }

    fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn lose(&self) -> bool {
        let loss = self.loss_permille.load(Ordering::Relaxed);
        let lost = self.stalled.load(Ordering::Relaxed)
            || (loss > 0 && fastrand::u32(0..1000) < loss)
            || self.queued.load(Ordering::Relaxed) >= QUEUE;
        if lost {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    fn wait(&self) -> Duration {
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        let extra = if jitter > 0 {
            fastrand::u64(0..=jitter)
        } else {
            0
        };
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed) + extra)
    }

    /// Sends `datagram` on `socket` (to `to`, or its connected peer) after the faults;
    /// `way` is 0 towards the upstream, 1 back.
    fn deliver(
        self: &Arc<Self>,
        way: usize,
        socket: &Arc<UdpSocket>,
        to: Option<SocketAddr>,
        datagram: Vec<u8>,
    ) {
        if self.lose() {
            return;
        }
        let mut at = tokio::time::Instant::now() + self.wait();
        if !self.reorder.load(Ordering::Relaxed) {
            let mut last = self.last[way].lock().unwrap_or_else(|p| p.into_inner());
            at = at.max(last.unwrap_or(at));
            *last = Some(at);
        }
        let (faults, socket) = (self.clone(), socket.clone());
        faults.queued.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            // A stall that began while the datagram waited holds it back too.
            if !faults.stalled.load(Ordering::Relaxed) {
                let sent = match to {
                    Some(to) => socket.send_to(&datagram, to).await,
                    None => socket.send(&datagram).await,
                };
                if sent.is_ok() {
                    faults.delivered.fetch_add(1, Ordering::Relaxed);
                    faults
                        .delivered_bytes
                        .fetch_add(datagram.len() as u64, Ordering::Relaxed);
                }
            }
            faults.queued.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A UDP fault proxy in front of one upstream address; stops when dropped.
pub struct FaultProxy {
    /// Where to send instead of the upstream.
    pub addr: SocketAddr,
    /// What it does to traffic.
    pub faults: Arc<Faults>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding datagrams to `upstream` and its answers back.
    pub async fn udp(upstream: SocketAddr) -> FaultProxy {
        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind the proxy"),
        );
        let addr = front.local_addr().expect("the proxy's address");
        let faults = Arc::new(Faults::default());
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let forward = {
            let (faults, tasks) = (faults.clone(), tasks.clone());
            tokio::spawn(async move {
                let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    let back = match flows.get(&from) {
                        Some(back) => back.clone(),
                        None => {
                            let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                                continue;
                            };
                            if back.connect(upstream).await.is_err() {
                                continue;
                            }
                            let back = Arc::new(back);
                            let answers = tokio::spawn(answers(
                                back.clone(),
                                front.clone(),
                                from,
                                faults.clone(),
                            ));
                            tasks
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(answers);
                            flows.insert(from, back.clone());
                            back
                        }
                    };
                    faults.deliver(0, &back, None, buf[..n].to_vec());
                }
            })
        };
        tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(forward);
        FaultProxy {
            addr,
            faults,
            tasks,
        }
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 piping TCP connections to `upstream`.
    pub async fn tcp(upstream: SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let faults = Arc::new(Faults::default());
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (faults, tasks) = (faults.clone(), tasks.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if faults.is_stalled() {
                        continue; // partitioned: the connection is dropped unanswered
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (up_read, up_write) = up.into_split();
                    let there = tokio::spawn(pipe(client_read, up_write, faults.clone()));
                    let back = tokio::spawn(pipe(up_read, client_write, faults.clone()));
                    tasks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend([there, back]);
                }
            })
        };
        tasks.lock().unwrap_or_else(|p| p.into_inner()).push(accept);
        FaultProxy {
            addr,
            faults,
            tasks,
        }
    }
}

/// One direction of a TCP connection through the faults; a reset ends it with RST.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut resets = faults.resets().subscribe();
    resets.mark_unchanged();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = resets.changed() => {
                let _ = to.as_ref().set_zero_linger();
                return;
            }
        };
        // Held back while stalled, then delayed; one chunk at a time keeps the order.
        while faults.is_stalled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(faults.wait()).await;
        if resets.has_changed().unwrap_or(true) {
            let _ = to.as_ref().set_zero_linger();
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        faults.delivered.fetch_add(1, Ordering::Relaxed);
        faults
            .delivered_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// The upstream's answers to one client, back through the faults.
async fn answers(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = back.recv(&mut buf).await {
        faults.deliver(1, &front, Some(client), buf[..n].to_vec());
    }
}

/// The port's index in a `/ip4/A/udp|tcp/PORT/...` multiaddr split on `/`.
fn port_at(parts: &[&str]) -> usize {
    parts
        .iter()
        .position(|p| *p == "udp" || *p == "tcp")
        .expect("a UDP or TCP multiaddr")
        + 1
}

/// The socket address a `/ip4/A/udp|tcp/P/...` multiaddr names (the proxy's upstream).
pub fn socket(multiaddr: &str) -> SocketAddr {
    let parts: Vec<&str> = multiaddr.split('/').collect();
    format!("{}:{}", parts[2], parts[port_at(&parts)])
        .parse()
        .expect("an address")
}

/// `multiaddr` with its port replaced by `proxy`'s: the same node, dialled through the proxy.
pub fn through(multiaddr: &str, proxy: &FaultProxy) -> String {
    let mut parts: Vec<&str> = multiaddr.split('/').collect();
    let port = proxy.addr.port().to_string();
    let at = port_at(&parts);
    parts[at] = &port;
    parts.join("/")
}
