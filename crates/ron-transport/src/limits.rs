//! Hard limits (`[limits]`): how long a client may take to finish a TLS handshake or send its
//! headers, how large headers and bodies may be, and how much one client address, and everyone
//! together, may ask at once. Shared by every listener of a node (HTTP, HTTP/3 and OAP/1), so
//! one client address has one budget whichever protocol it speaks.
//!
//! Per-peer excess is refused with [`Refused::Peer`] (429), global excess with
//! [`Refused::Global`] (503); under load writes are shed before reads. Bytes are metered by
//! the connections themselves ([`crate::deadline::Deadlined`]): a client over its byte rate is
//! slowed to it and its new requests are refused until it is back under. Every value is live:
//! connection settings apply to new connections, admission at once.

use std::borrow::Borrow;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lru::LruCache;
use ron_kernel::config::{FieldError, Section};
use ron_proto::{ErrorBody, ErrorKind};
use serde::{Deserialize, Serialize};
// Tokio's clock, so paused-time tests see buckets refill as time is advanced.
use tokio::time::Instant;

/// `[limits]`. All live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// A TLS handshake must finish within this many milliseconds (default 2000).
    pub handshake_ms: u64,
    /// All of a request's headers must arrive within this many milliseconds of its first
    /// byte, or the connection is closed: the slowloris guard (default 10000).
    pub header_read_ms: u64,
    /// A connection waiting this many milliseconds for a byte from its client is closed:
    /// idle keep-alive connections and stalled uploads alike (default 15000).
    pub read_idle_ms: u64,
    /// A response that cannot send a byte for this many milliseconds (the client stopped
    /// reading) closes its connection and frees everything it held (default 10000).
    pub write_ms: u64,
    /// Largest request head, in bytes; beyond it, 431 (default 65536, at least 8192).
    pub max_header_bytes: usize,
    /// Largest request body on routes other than `POST /put` (413 beyond; default 16 MiB).
    pub max_body_bytes: u64,
    /// Requests per second one client address may make, with a burst of twice that
    /// (default 200; 429 beyond). 0 turns the check off.
    pub per_peer_rps: u32,
    /// Bytes per second one client address may move, both directions counted, with a burst
    /// of twice that (default 64 MiB/s). Its connections are slowed to the rate and its new
    /// requests refused (429) while it is over. 0 turns the check off.
    pub per_peer_bytes_per_sec: u64,
    /// Requests one client address may have in progress at once (default 64; 429 beyond).
    /// 0 turns the check off.
    pub per_peer_streams: u32,
    /// Requests in progress on the whole node (default 1024): past three quarters of it
    /// writes are refused (and `/readyz?writes=1` answers 503), past all of it reads too
    /// (503).
    pub global_concurrency: usize,
    /// Client networks the per-client limits (requests/s, bytes/s, streams) do not apply to,
    /// as CIDRs (default `127.0.0.0/8` and `::1/128`: the node's own user on this machine).
    /// Per-client limits protect a node on the open internet from strangers; the global
    /// concurrency cap still applies to everyone.
    pub exempt: Vec<String>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            handshake_ms: 2000,
            header_read_ms: 10_000,
            read_idle_ms: 15_000,
            write_ms: 10_000,
            max_header_bytes: 65_536,
            max_body_bytes: 16 << 20,
            per_peer_rps: 200,
            per_peer_bytes_per_sec: 64 << 20,
            per_peer_streams: 64,
            global_concurrency: 1024,
            exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

impl Section for LimitsSection {
    const NAME: &'static str = "limits";

    fn validate(&self) -> Result<(), FieldError> {
        let ms = |name: &str, v: u64| {
            if (1..=600_000).contains(&v) {
                Ok(())
            } else {
                Err(FieldError::new(name, "must be between 1 and 600000"))
            }
        };
        ms("handshake_ms", self.handshake_ms)?;
        ms("header_read_ms", self.header_read_ms)?;
        ms("read_idle_ms", self.read_idle_ms)?;
        ms("write_ms", self.write_ms)?;
        if !(8192..=16 << 20).contains(&self.max_header_bytes) {
            return Err(FieldError::new(
                "max_header_bytes",
                "must be between 8192 and 16777216",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(FieldError::new("max_body_bytes", "must be positive"));
        }
        if self.per_peer_bytes_per_sec != 0 && self.per_peer_bytes_per_sec < 4096 {
            return Err(FieldError::new(
                "per_peer_bytes_per_sec",
                "must be 0 (off) or at least 4096",
            ));
        }
        if self.global_concurrency < 1 {
            return Err(FieldError::new("global_concurrency", "must be at least 1"));
        }
        if self.exempt.len() > MAX_EXEMPT {
            return Err(FieldError::new(
                "exempt",
                format!("at most {MAX_EXEMPT} networks"),
            ));
        }
        for net in &self.exempt {
            parse_net(net).map_err(|why| FieldError::new("exempt", why))?;
        }
        Ok(())
    }
}

/// Most networks `limits.exempt` may list.
const MAX_EXEMPT: usize = 256;

/// A CIDR (`10.0.0.0/8`, `::1/128`) or a bare address (one host).
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a network (CIDR like 127.0.0.0/8) or an address"))
}

/// The client address of a connection, put on each of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// Client addresses remembered for rate, byte and concurrency accounting, in all shards.
const PEERS: usize = 65_536;
/// Independent locks over the address table, so clients do not queue behind one another.
const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct PeerState {
    requests: f64,
    bytes: f64,
    at: Instant,
    in_flight: u32,
}

impl PeerState {
    /// Refills both buckets for the time since the last visit.
    fn refill(&mut self, now: Instant, rps: u32, bytes_rate: u64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        if rps > 0 {
            let burst = f64::from(rps) * 2.0;
            self.requests = (self.requests + elapsed * f64::from(rps)).min(burst);
        }
        if bytes_rate > 0 {
            let rate = bytes_rate as f64;
            self.bytes = (self.bytes + elapsed * rate).min(rate * 2.0);
        }
    }
}

/// Admission state shared by a node's listeners.
#[derive(Debug)]
pub struct Limiter {
    in_flight: AtomicUsize,
    peers: Vec<Mutex<LruCache<IpAddr, PeerState>>>,
    // The settings in force, kept here so a request reads plain atomics rather than the
    // config snapshot; [`Limiter::apply`] updates them on every config change.
    global: AtomicUsize,
    rps: AtomicU32,
    bytes_rate: AtomicU64,
    streams: AtomicU32,
    max_body: AtomicU64,
    exempt: std::sync::RwLock<Arc<[ipnet::IpNet]>>,
    /// The node is degraded (an SLO burning): writes are shed whatever the load.
    degraded: AtomicBool,
}

impl Default for Limiter {
    fn default() -> Self {
        let per_shard = NonZeroUsize::new(PEERS / SHARDS).unwrap_or(NonZeroUsize::MIN);
        let limiter = Self {
            in_flight: AtomicUsize::new(0),
            peers: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            global: AtomicUsize::new(0),
            rps: AtomicU32::new(0),
            bytes_rate: AtomicU64::new(0),
            streams: AtomicU32::new(0),
            max_body: AtomicU64::new(0),
            exempt: std::sync::RwLock::new(Arc::from(Vec::new())),
            degraded: AtomicBool::new(false),
        };
        limiter.apply(&LimitsSection::default());
        limiter
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This client address is over one of its own limits (429).
    Peer(&'static str),
    /// The node is at capacity (503).
    Global(&'static str),
}

impl Refused {
    /// The shared error kind: `RateLimited` (429) or `Overloaded` (503).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Peer(_) => ErrorKind::RateLimited,
            Self::Global(_) => ErrorKind::Overloaded,
        }
    }

    /// The `rejected_total{reason}` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Peer(_) => "rate_limited",
            Self::Global(_) => "overloaded",
        }
    }

    /// The error body, with a randomized retry of 1-5 s so refused clients do not come
    /// back in step.
    pub fn to_body(&self) -> ErrorBody {
        ron_proto::Failure::body(self)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Self::Peer(message) | Self::Global(message)) = *self;
        f.write_str(message)
    }
}

impl ron_proto::Failure for Refused {
    fn kind(&self) -> ErrorKind {
        Refused::kind(self)
    }
}

/// Holds a request's place; gives it back when dropped. Borrowed from the limiter
/// ([`Limiter::admit`]) or owning a share of it ([`Limiter::admit_owned`]) for tasks.
pub struct Ticket<L: Borrow<Limiter>> {
    limiter: L,
    peer: Option<IpAddr>,
}

impl<L: Borrow<Limiter>> Drop for Ticket<L> {
    fn drop(&mut self) {
        let limiter = self.limiter.borrow();
        limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.peer {
            let mut peers = limiter
                .shard(ip)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(p) = peers.peek_mut(&ip) {
                p.in_flight = p.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Limiter {
    fn shard(&self, ip: IpAddr) -> &Mutex<LruCache<IpAddr, PeerState>> {
        let h = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let b = u128::from(v6);
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        // Mix the bits so neighbouring addresses spread over the shards.
        let mixed = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
        &self.peers[(mixed as usize) % self.peers.len()]
    }

    /// Applies a `[limits]` section to admission (the node calls this on every config
    /// change; connection settings are read per connection).
    pub fn apply(&self, limits: &LimitsSection) {
        self.global
            .store(limits.global_concurrency, Ordering::Relaxed);
        self.rps.store(limits.per_peer_rps, Ordering::Relaxed);
        self.bytes_rate
            .store(limits.per_peer_bytes_per_sec, Ordering::Relaxed);
        self.streams
            .store(limits.per_peer_streams, Ordering::Relaxed);
        self.max_body
            .store(limits.max_body_bytes, Ordering::Relaxed);
        // Validated with the section; an entry that does not parse was refused there.
        let nets: Vec<ipnet::IpNet> = limits
            .exempt
            .iter()
            .filter_map(|n| parse_net(n).ok())
            .collect();
        *self.exempt.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(nets);
    }

    /// Whether `ip` is in `limits.exempt`: no per-client limit applies to it.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.exempt
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// The largest request body in force on routes other than uploads.
    pub fn max_body(&self) -> u64 {
        self.max_body.load(Ordering::Relaxed)
    }

    fn shed_at(&self) -> usize {
        shed_at(self.global.load(Ordering::Relaxed))
    }

    /// Whether writes are being shed now: past three quarters of `global_concurrency`, or
    /// while the node is degraded.
    pub fn shedding(&self) -> bool {
        self.degraded() || self.in_flight.load(Ordering::Acquire) >= self.shed_at()
    }

    /// Degrades the node (an SLO burning: writes are refused on every plane, reads go on),
    /// or ends it.
    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Relaxed);
    }

    /// Whether the node is degraded now.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Requests in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits a request from `peer` (none for in-process callers), a write unless it only
    /// reads, or says why not. Hold the ticket while the request runs.
    pub fn admit(&self, peer: Option<IpAddr>, write: bool) -> Result<Ticket<&Self>, Refused> {
        admit(self, peer, write)
    }

    /// Like [`Limiter::admit`], with a ticket a spawned task can own.
    pub fn admit_owned(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        write: bool,
    ) -> Result<Ticket<Arc<Self>>, Refused> {
        admit(self.clone(), peer, write)
    }

    /// Counts `bytes` moved for `ip`. If that takes it over its byte rate, returns how long
    /// its connections should pause to be back under it.
    pub fn charge(&self, ip: IpAddr, bytes: u64) -> Option<Duration> {
        let rate = self.bytes_rate.load(Ordering::Relaxed);
        if rate == 0 || self.is_exempt(ip) {
            return None;
        }
        let rps = self.rps.load(Ordering::Relaxed);
        let mut peers = self
            .shard(ip)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let p = peers.get_or_insert_mut(ip, || PeerState::new(now, rps, rate));
        p.refill(now, rps, rate);
        p.bytes -= bytes as f64;
        (p.bytes < 0.0).then(|| Duration::from_secs_f64(-p.bytes / rate as f64))
    }
}

impl PeerState {
    fn new(now: Instant, rps: u32, bytes_rate: u64) -> Self {
        Self {
            requests: f64::from(rps) * 2.0,
            bytes: bytes_rate as f64 * 2.0,
            at: now,
            in_flight: 0,
        }
    }
}

/// In-flight requests past which writes are refused: three quarters of `global`.
fn shed_at(global: usize) -> usize {
    (global * 3 / 4).max(1)
}

fn admit<L: Borrow<Limiter>>(
    limiter: L,
    peer: Option<IpAddr>,
    write: bool,
) -> Result<Ticket<L>, Refused> {
    let this = limiter.borrow();
    let degraded = this.degraded();
    let global = this.global.load(Ordering::Relaxed);
    let now_in_flight = this.in_flight.fetch_add(1, Ordering::AcqRel);
    let rps = this.rps.load(Ordering::Relaxed);
    let bytes_rate = this.bytes_rate.load(Ordering::Relaxed);
    let streams = this.streams.load(Ordering::Relaxed);
    let per_peer = rps > 0 || streams > 0 || bytes_rate > 0;
    let peer = peer.filter(|ip| per_peer && !this.is_exempt(*ip));
    // From here on, dropping the ticket undoes the count.
    let mut ticket = Ticket {
        limiter,
        peer: None,
    };
    if now_in_flight >= global {
        return Err(Refused::Global("the node is at capacity"));
    }
    if write && now_in_flight >= shed_at(global) {
        return Err(Refused::Global("the node is shedding writes"));
    }
    if write && degraded {
        return Err(Refused::Global(
            "the node is shedding writes while its SLOs burn",
        ));
    }
    if let Some(ip) = peer {
        let this = ticket.limiter.borrow();
        let mut peers = this
            .shard(ip)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let p = peers.get_or_insert_mut(ip, || PeerState::new(now, rps, bytes_rate));
        p.refill(now, rps, bytes_rate);
        if rps > 0 && p.requests < 1.0 {
            return Err(Refused::Peer("too many requests from this address"));
        }
        if bytes_rate > 0 && p.bytes < 0.0 {
            return Err(Refused::Peer("this address is over its byte rate"));
        }
        if streams > 0 && p.in_flight >= streams {
            return Err(Refused::Peer(
                "too many requests in progress from this address",
            ));
        }
        if rps > 0 {
            p.requests -= 1.0;
        }
        p.in_flight += 1;
        drop(peers);
        ticket.peer = Some(ip);
    }
    Ok(ticket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(global: usize, rps: u32, streams: u32, bytes: u64) -> Limiter {
        let limiter = Limiter::default();
        limiter.apply(&LimitsSection {
            global_concurrency: global,
            per_peer_rps: rps,
            per_peer_streams: streams,
            per_peer_bytes_per_sec: bytes,
            ..LimitsSection::default()
        });
        limiter
    }

    #[test]
    fn writes_are_shed_before_reads() {
        let limiter = limiter(4, 0, 0, 0);
        let held: Vec<_> = (0..3)
            .map(|_| limiter.admit(None, false).ok().unwrap())
            .collect();
        assert!(limiter.shedding());
        assert!(matches!(limiter.admit(None, true), Err(Refused::Global(_))));
        let last_read = limiter.admit(None, false).ok().unwrap();
        assert!(matches!(
            limiter.admit(None, false),
            Err(Refused::Global(_))
        ));
        drop(last_read);
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
        assert!(!limiter.shedding());
        assert!(limiter.admit(None, true).is_ok());
    }

    #[test]
    fn a_degraded_node_sheds_writes_at_any_load_and_serves_reads() {
        let limiter = limiter(4, 0, 0, 0);
        limiter.set_degraded(true);
        assert!(limiter.shedding());
        let Err(refused) = limiter.admit(None, true) else {
            panic!("a write admitted while degraded");
        };
        assert_eq!(refused.kind(), ErrorKind::Overloaded);
        assert!(limiter.admit(None, false).is_ok());
        limiter.set_degraded(false);
        assert!(limiter.admit(None, true).is_ok());
    }

    #[test]
    fn one_peer_is_held_to_its_rate_and_streams_and_others_are_not() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limiter(1000, 5, 0, 0);
        let admitted = (0..100).filter(|_| l.admit(Some(a), false).is_ok()).count();
        assert_eq!(admitted, 10, "a burst of twice the rate");
        assert!(l.admit(Some(b), false).is_ok());
        let l = Arc::new(limiter(1000, 0, 2, 0));
        let one = l.admit_owned(Some(b), false).ok().unwrap();
        let two = l.admit(Some(b), false).ok().unwrap();
        assert!(matches!(l.admit(Some(b), false), Err(Refused::Peer(_))));
        drop((one, two));
        assert!(l.admit(Some(b), false).is_ok());
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn a_peer_over_its_byte_rate_is_told_to_pause_and_refused_until_it_has() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limiter(1000, 0, 0, 1 << 20);
        // A burst of two seconds' worth goes through without a pause.
        assert_eq!(l.charge(a, 2 << 20), None);
        assert!(l.admit(Some(a), false).is_ok());
        let pause = l.charge(a, 512 << 10).unwrap();
        assert!(
            pause > Duration::from_millis(400) && pause <= Duration::from_millis(500),
            "{pause:?}"
        );
        assert_eq!(
            l.admit(Some(a), false).err(),
            Some(Refused::Peer("this address is over its byte rate"))
        );
        assert!(
            l.admit(Some(b), false).is_ok(),
            "another address is not held"
        );
        l.apply(&LimitsSection {
            per_peer_bytes_per_sec: 0,
            ..LimitsSection::default()
        });
        assert_eq!(l.charge(a, 1 << 30), None, "0 turns the check off");
    }

    #[test]
    fn exempt_networks_skip_the_per_client_limits_but_not_the_global_cap() {
        let (local, mapped, stranger): (IpAddr, IpAddr, IpAddr) = (
            "127.0.0.1".parse().unwrap(),
            "::ffff:127.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        );
        let l = limiter(100, 5, 2, 1 << 20);
        for ip in [local, mapped, "::1".parse().unwrap()] {
            assert!(l.is_exempt(ip), "{ip} is loopback, exempt by default");
        }
        assert!(!l.is_exempt(stranger));
        assert_eq!(
            (0..50)
                .filter(|_| l.admit(Some(stranger), false).is_ok())
                .count(),
            10,
            "a stranger: a burst of twice the rate"
        );
        let held: Vec<_> = (0..100)
            .map(|_| l.admit(Some(local), false).ok().unwrap())
            .collect();
        assert_eq!(l.charge(local, 1 << 30), None, "never slowed");
        assert!(
            matches!(l.admit(Some(local), false), Err(Refused::Global(_))),
            "the global cap applies to everyone"
        );
        drop(held);
        l.apply(&LimitsSection {
            per_peer_rps: 5,
            exempt: vec![],
            ..LimitsSection::default()
        });
        assert!(!l.is_exempt(local), "an empty list exempts nobody");
    }

    #[test]
    fn exempt_entries_must_be_networks() {
        let bad = LimitsSection {
            exempt: vec!["127.0.0.0/33".into()],
            ..LimitsSection::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "exempt");
        let good = LimitsSection {
            exempt: vec!["10.1.2.3".into(), "fd00::/8".into()],
            ..LimitsSection::default()
        };
        assert!(good.validate().is_ok());
    }

    #[test]
    fn refusals_carry_a_randomized_retry_and_their_reason() {
        let r = Refused::Peer("x");
        assert_eq!(
            (r.kind(), r.reason()),
            (ErrorKind::RateLimited, "rate_limited")
        );
        let g = Refused::Global("y");
        assert_eq!(
            (g.kind(), g.reason()),
            (ErrorKind::Overloaded, "overloaded")
        );
        let json = serde_json::to_value(r.to_body()).unwrap();
        let ms = json["retry_after_ms"].as_u64().unwrap();
        assert!((1000..=5000).contains(&ms), "{json}");
    }
}
