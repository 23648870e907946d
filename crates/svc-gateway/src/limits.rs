//! Hard limits (`[limits]`): how long a client may take to send its headers or finish a TLS
//! handshake, how large headers and bodies may be, and how much one client address, and
//! everyone together, may ask at once. Per-peer excess is 429, global excess 503, both with a
//! randomized `Retry-After` of 1-5 s; under load writes are shed before reads. Every value is
//! live: connection settings apply to new connections, admission at once.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{Method, header};
use axum::response::Response;
use lru::LruCache;
use ron_kernel::config::{FieldError, Section};
use ron_proto::{ErrorBody, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::error_response;
use crate::objects::reject;

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
    /// Requests one client address may have in progress at once (default 64; 429 beyond).
    /// 0 turns the check off.
    pub per_peer_streams: u32,
    /// Requests in progress on the whole node (default 1024): past three quarters of it
    /// writes are refused (and `/readyz?writes=1` answers 503), past all of it reads too
    /// (503).
    pub global_concurrency: usize,
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
            per_peer_streams: 64,
            global_concurrency: 1024,
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
        if self.global_concurrency < 1 {
            return Err(FieldError::new("global_concurrency", "must be at least 1"));
        }
        Ok(())
    }
}

/// The client address of a connection, put on each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Client addresses remembered for rate and concurrency accounting, in all shards.
const PEERS: usize = 65_536;
/// Independent locks over the address table, so clients do not queue behind one another.
const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct PeerState {
    tokens: f64,
    at: Instant,
    in_flight: u32,
}

/// Admission state shared by the gateway's connections.
#[derive(Debug)]
pub struct Limiter {
    in_flight: AtomicUsize,
    peers: Vec<Mutex<LruCache<IpAddr, PeerState>>>,
    // The admission settings in force, kept here so a request reads plain atomics rather
    // than the config snapshot; [`Limiter::apply`] updates them on every config change.
    global: AtomicUsize,
    rps: AtomicU32,
    streams: AtomicU32,
    max_body: AtomicU64,
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
            streams: AtomicU32::new(0),
            max_body: AtomicU64::new(0),
        };
        limiter.apply(&LimitsSection::default());
        limiter
    }
}

/// The admission settings read by one request.
#[derive(Debug, Clone, Copy)]
struct Admission {
    global: usize,
    rps: u32,
    streams: u32,
    max_body: u64,
}

/// Why a request was not admitted.
enum Refused {
    Peer(&'static str),
    Global(&'static str),
}

/// Holds a request's place; gives it back when dropped.
pub(crate) struct Ticket<'a> {
    limiter: &'a Limiter,
    peer: Option<IpAddr>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.peer {
            let mut peers = self
                .limiter
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
        self.streams
            .store(limits.per_peer_streams, Ordering::Relaxed);
        self.max_body
            .store(limits.max_body_bytes, Ordering::Relaxed);
    }

    fn admission(&self) -> Admission {
        Admission {
            global: self.global.load(Ordering::Relaxed),
            rps: self.rps.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            max_body: self.max_body.load(Ordering::Relaxed),
        }
    }

    /// Whether writes are being shed now.
    pub fn shedding(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= shed_at(self.admission().global)
    }

    /// Requests in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn admit(
        &self,
        limits: &Admission,
        peer: Option<IpAddr>,
        write: bool,
    ) -> Result<Ticket<'_>, Refused> {
        let now_in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel);
        // From here on, dropping the ticket undoes the count.
        let mut ticket = Ticket {
            limiter: self,
            peer: None,
        };
        if now_in_flight >= limits.global {
            return Err(Refused::Global("the node is at capacity"));
        }
        if write && now_in_flight >= shed_at(limits.global) {
            return Err(Refused::Global("the node is shedding writes"));
        }
        let per_peer = limits.rps > 0 || limits.streams > 0;
        if let Some(ip) = peer.filter(|_| per_peer) {
            let mut peers = self
                .shard(ip)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let burst = f64::from(limits.rps) * 2.0;
            let p = peers.get_or_insert_mut(ip, || PeerState {
                tokens: burst,
                at: now,
                in_flight: 0,
            });
            if limits.rps > 0 {
                let refill = now.duration_since(p.at).as_secs_f64() * f64::from(limits.rps);
                p.tokens = (p.tokens + refill).min(burst);
                p.at = now;
                if p.tokens < 1.0 {
                    return Err(Refused::Peer("too many requests from this address"));
                }
            }
            if limits.streams > 0 && p.in_flight >= limits.streams {
                return Err(Refused::Peer(
                    "too many requests in progress from this address",
                ));
            }
            if limits.rps > 0 {
                p.tokens -= 1.0;
            }
            p.in_flight += 1;
            ticket.peer = Some(ip);
        }
        Ok(ticket)
    }
}

fn shed_at(global: usize) -> usize {
    (global * 3 / 4).max(1)
}

/// Routes that must answer whatever the load: health and metrics.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Admission for one request, called by the gateway's one middleware before the handler:
/// `Ok(None)` for exempt routes, `Ok(Some(ticket))` while admitted (hold it until the handler
/// returns), or the refusal to send.
pub(crate) fn admit_request<'a>(
    state: &'a AppState,
    req: &Request,
) -> Result<Option<Ticket<'a>>, Box<Response>> {
    if exempt(req.uri().path()) {
        return Ok(None);
    }
    let limits = state.limiter.admission();
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if req.uri().path() != "/put" {
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limits.max_body) {
            reject(state, "too_large");
            let kind = ErrorKind::TooLarge;
            let message = format!("request body exceeds {} bytes", limits.max_body);
            return Err(Box::new(error_response(
                kind,
                &ErrorBody::new(kind, message),
            )));
        }
    }
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    match state.limiter.admit(&limits, peer, write) {
        // The place is held while the handler runs: an upload's whole body, a download's
        // opening and first verified window (the rest streams under the connection's own
        // bounds).
        Ok(ticket) => Ok(Some(ticket)),
        Err(refused) => {
            let (kind, reason, message) = match refused {
                Refused::Peer(m) => (ErrorKind::RateLimited, "rate_limited", m),
                Refused::Global(m) => (ErrorKind::Overloaded, "overloaded", m),
            };
            reject(state, reason);
            let body = ErrorBody::new(kind, message).retry_after_ms(fastrand::u64(1000..=5000));
            Err(Box::new(error_response(kind, &body)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(global: usize, rps: u32, streams: u32) -> Admission {
        Admission {
            global,
            rps,
            streams,
            max_body: 1 << 20,
        }
    }

    #[test]
    fn writes_are_shed_before_reads() {
        let limiter = Limiter::default();
        limiter.apply(&LimitsSection {
            global_concurrency: 4,
            ..LimitsSection::default()
        });
        let l = limits(4, 0, 0);
        let held: Vec<_> = (0..3)
            .map(|_| limiter.admit(&l, None, false).ok().unwrap())
            .collect();
        assert!(limiter.shedding());
        assert!(matches!(
            limiter.admit(&l, None, true),
            Err(Refused::Global(_))
        ));
        let last_read = limiter.admit(&l, None, false).ok().unwrap();
        assert!(matches!(
            limiter.admit(&l, None, false),
            Err(Refused::Global(_))
        ));
        drop(last_read);
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
        assert!(!limiter.shedding());
        assert!(limiter.admit(&l, None, true).is_ok());
    }

    #[test]
    fn one_peer_is_held_to_its_rate_and_streams_and_others_are_not() {
        let limiter = Limiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limits(1000, 5, 0);
        let admitted = (0..100)
            .filter(|_| limiter.admit(&l, Some(a), false).is_ok())
            .count();
        assert_eq!(admitted, 10, "a burst of twice the rate");
        assert!(limiter.admit(&l, Some(b), false).is_ok());
        let l = limits(1000, 0, 2);
        let one = limiter.admit(&l, Some(b), false).ok().unwrap();
        let two = limiter.admit(&l, Some(b), false).ok().unwrap();
        assert!(matches!(
            limiter.admit(&l, Some(b), false),
            Err(Refused::Peer(_))
        ));
        drop((one, two));
        assert!(limiter.admit(&l, Some(b), false).is_ok());
    }
}
