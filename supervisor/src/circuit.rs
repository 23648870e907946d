//! Circuit breakers at the node's dependencies: its disk, the DHT, each peer.
//!
//! A breaker is closed while its dependency answers. It opens after `failures` failures in a
//! row (an error the caller blames on the dependency, or an answer slower than `slow`), or at
//! once when a call is still running after `stall`: a stalled disk never answers, so waiting
//! for failures to complete would wait forever. Every call waiting on a stalled dependency is
//! then released with [`Open`], and new calls fail fast with it (and its `retry_after`) for
//! `open_for`. The next call after that is the probe (half-open): its success closes the
//! circuit, its failure opens it again for twice as long (up to `max_open_for`).
//!
//! A [`Board`] holds the node's breakers, and shows them in `/metrics`
//! (`circuit_state{dependency}`, `circuits_open{dependency}`,
//! `circuit_transitions_total{dependency,to}`) and `/status`. Dependency names are the
//! node's own, a closed set; a peer's circuits are counted under `peer`, never labelled by
//! peer.
//!
//! ```
//! use std::time::Duration;
//! use supervisor::circuit::{Board, CircuitPolicy};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let board = Board::default();
//! let disk = board.breaker("storage", CircuitPolicy { failures: 2, ..CircuitPolicy::default() });
//! for _ in 0..2 {
//!     let failed = disk.run(async { Err::<(), &str>("EIO") }, |_| true).await;
//!     assert_eq!(failed.unwrap(), Err("EIO"));
//! }
//! let refused = disk.run(async { Ok::<(), &str>(()) }, |_| true).await;
//! assert!(refused.unwrap_err().retry_after > Duration::ZERO);
//! # });
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;
use tokio::time::Instant;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Failures in a row that open the circuit (5).
    pub failures: u32,
    /// An answer slower than this counts as a failure (2 s).
    pub slow: Duration,
    /// A call still running after this opens the circuit at once, and every call waiting on
    /// the dependency is released (10 s).
    pub stall: Duration,
    /// How long the circuit first stays open before a probe (1 s).
    pub open_for: Duration,
    /// The longest it stays open, doubling after each failed probe (30 s).
    pub max_open_for: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            slow: Duration::from_secs(2),
            stall: Duration::from_secs(10),
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
        }
    }
}

/// A circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// One call (the probe) goes through; the rest fail fast.
    HalfOpen,
    /// Calls fail fast.
    Open,
}

impl State {
    /// Its name in `/status` and in `circuit_transitions_total{to}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A call refused, or cut short, because its dependency's circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{dependency} is failing: its circuit is open, retry after {}ms", retry_after.as_millis())]
pub struct Open {
    /// The dependency (`storage`, `dht`, `peer`).
    pub dependency: &'static str,
    /// When the next probe may go through.
    pub retry_after: Duration,
}

/// Transitions of one dependency's circuits, by the state entered.
#[derive(Debug, Default)]
struct Counts {
    transitions: [AtomicU64; 3],
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Phase {
    fn state(self) -> State {
        match self {
            Self::Closed => State::Closed,
            Self::Open { .. } => State::Open,
            Self::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Circuit {
    phase: Phase,
    failures: u32,
    open_for: Duration,
    /// Start of each call running, by call number.
    running: HashMap<u64, Instant>,
    next_call: u64,
}

impl Circuit {
    fn new(policy: &CircuitPolicy) -> Self {
        Self {
            phase: Phase::Closed,
            failures: 0,
            open_for: policy.open_for,
            running: HashMap::new(),
            next_call: 0,
        }
    }
}

/// How a call went, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// Not the dependency's doing (the caller left, a bad request): counts for nothing.
    Neutral,
}

#[derive(Debug)]
struct Shared {
    name: &'static str,
    policy: CircuitPolicy,
    counts: Counts,
}

impl Shared {
    /// Moves `circuit` to `phase`, counting the transition and logging it.
    fn enter(&self, circuit: &mut Circuit, phase: Phase, key: &dyn std::fmt::Display) {
        let (from, to) = (circuit.phase.state(), phase.state());
        circuit.phase = phase;
        if from == to {
            return;
        }
        self.counts.transitions[to.index()].fetch_add(1, Ordering::Relaxed);
        match to {
            State::Open => tracing::warn!(
                dependency = self.name,
                circuit = %key,
                open_for_ms = circuit.open_for.as_millis() as u64,
                "circuit opened: calls fail fast until a probe succeeds"
            ),
            State::HalfOpen => {
                tracing::info!(dependency = self.name, circuit = %key, "circuit half-open: probing")
            }
            State::Closed => {
                tracing::info!(dependency = self.name, circuit = %key, "circuit closed")
            }
        }
    }

    fn trip(&self, circuit: &mut Circuit, now: Instant, key: &dyn std::fmt::Display) {
        let until = now + circuit.open_for;
        self.enter(circuit, Phase::Open { until }, key);
    }

    /// Opens the circuit if a call has been running past `stall`: true if it did now.
    fn stalled(&self, circuit: &mut Circuit, now: Instant, key: &dyn std::fmt::Display) -> bool {
        let stalled = circuit
            .running
            .values()
            .any(|start| now.duration_since(*start) >= self.policy.stall);
        if stalled && !matches!(circuit.phase, Phase::Open { .. }) {
            // Every call running now is released; none of them is waited for again.
            circuit.running.clear();
            self.trip(circuit, now, key);
            return true;
        }
        false
    }

    /// Lets a call through (its number, and whether it is the probe), or refuses it. A timed
    /// call is watched for a stall and its answer for slowness; an untimed one (work whose
    /// length grows with its input) only for its outcome.
    fn admit(
        &self,
        circuit: &mut Circuit,
        now: Instant,
        key: &dyn std::fmt::Display,
        timed: bool,
    ) -> Result<(u64, bool), Open> {
        self.stalled(circuit, now, key);
        let probe = match circuit.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => {
                return Err(Open {
                    dependency: self.name,
                    retry_after: until - now,
                });
            }
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.enter(circuit, Phase::HalfOpen { probing: true }, key);
                true
            }
            Phase::HalfOpen { probing: true } => {
                return Err(Open {
                    dependency: self.name,
                    retry_after: circuit.open_for,
                });
            }
        };
        let call = circuit.next_call;
        circuit.next_call += 1;
        if timed {
            circuit.running.insert(call, now);
        }
        Ok((call, probe))
    }

    /// Counts how call `call` went.
    fn settle(
        &self,
        circuit: &mut Circuit,
        (call, probe, timed): (u64, bool, bool),
        outcome: Outcome,
        now: Instant,
        key: &dyn std::fmt::Display,
    ) {
        let slow = if timed {
            let Some(start) = circuit.running.remove(&call) else {
                // Released by a stall: already counted.
                return;
            };
            now.duration_since(start) > self.policy.slow
        } else {
            false
        };
        let outcome = match outcome {
            Outcome::Success if slow => Outcome::Failure,
            other => other,
        };
        match (outcome, probe) {
            (Outcome::Neutral, true) => {
                // The probe told nothing: the next call probes.
                if matches!(circuit.phase, Phase::HalfOpen { .. }) {
                    circuit.phase = Phase::HalfOpen { probing: false };
                }
            }
            (Outcome::Neutral, false) => {}
            (Outcome::Success, _) => {
                circuit.failures = 0;
                if probe || !matches!(circuit.phase, Phase::Closed) {
                    circuit.open_for = self.policy.open_for;
                    self.enter(circuit, Phase::Closed, key);
                }
            }
            (Outcome::Failure, true) => {
                circuit.open_for = (circuit.open_for * 2).min(self.policy.max_open_for);
                self.trip(circuit, now, key);
            }
            (Outcome::Failure, false) => {
                circuit.failures = circuit.failures.saturating_add(1);
                if circuit.failures >= self.policy.failures
                    && matches!(circuit.phase, Phase::Closed)
                {
                    circuit.failures = 0;
                    self.trip(circuit, now, key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One dependency's circuit breaker: cheap to clone, clones share the circuit.
#[derive(Debug, Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
    circuit: Arc<Mutex<Circuit>>,
    /// Bumped when a stall opens the circuit: releases every call waiting.
    stalls: watch::Sender<u64>,
}

impl Breaker {
    /// A breaker named `dependency`, on no board (see [`Board::breaker`]).
    pub fn new(dependency: &'static str, policy: CircuitPolicy) -> Self {
        let circuit = Circuit::new(&policy);
        Self {
            shared: Arc::new(Shared {
                name: dependency,
                policy,
                counts: Counts::default(),
            }),
            circuit: Arc::new(Mutex::new(circuit)),
            stalls: watch::Sender::new(0),
        }
    }

    /// The circuit's state now (a stalled call opens it here too).
    pub fn state(&self) -> State {
        let mut circuit = lock(&self.circuit);
        if self
            .shared
            .stalled(&mut circuit, Instant::now(), &self.shared.name)
        {
            self.stalls.send_modify(|n| *n += 1);
        }
        circuit.phase.state()
    }

    /// Whether a call would be refused now, without making one: when open, for how long.
    pub fn refuses(&self) -> Option<Open> {
        let now = Instant::now();
        let _ = self.state();
        match lock(&self.circuit).phase {
            Phase::Open { until } if now < until => Some(Open {
                dependency: self.shared.name,
                retry_after: until - now,
            }),
            _ => None,
        }
    }

    /// Runs `call` through the breaker: refused at once with [`Open`] while the circuit is
    /// open; released with [`Open`] if the dependency stalls meanwhile (the call is dropped,
    /// so it must be cancel safe). Otherwise its own result, counted as a failure when
    /// `fault` blames the dependency for the error, or when it came after `slow`.
    pub async fn run<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        fault: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, Open> {
        let mut ticket = self.ticket(true)?;
        let mut stalls = self.stalls.subscribe();
        let stall = tokio::time::sleep(self.shared.policy.stall);
        tokio::select! {
            result = call => {
                let outcome = match &result {
                    Ok(_) => Outcome::Success,
                    Err(e) if fault(e) => Outcome::Failure,
                    Err(_) => Outcome::Neutral,
                };
                ticket.finish(outcome);
                Ok(result)
            }
            () = stall => {
                // Opens the circuit, releasing the others.
                let _ = self.state();
                Err(self.open_now())
            }
            _ = stalls.changed() => Err(self.open_now()),
        }
    }

    /// Lets one call through, or refuses it: the [`Ticket`] says how it went (dropped
    /// unsettled, it counts for nothing). For work [`Breaker::run`] should not time, whose
    /// length grows with its input (a commit of a large upload): it is neither watched for a
    /// stall nor counted slow, only its outcome counts.
    pub fn admit(&self) -> Result<Ticket, Open> {
        self.ticket(false)
    }

    fn ticket(&self, timed: bool) -> Result<Ticket, Open> {
        let mut circuit = lock(&self.circuit);
        let before = matches!(circuit.phase, Phase::Open { .. });
        let admitted = self
            .shared
            .admit(&mut circuit, Instant::now(), &self.shared.name, timed);
        if !before && matches!(circuit.phase, Phase::Open { .. }) {
            self.stalls.send_modify(|n| *n += 1);
        }
        let (call, probe) = admitted?;
        let breaker = self.clone();
        Ok(Ticket::new(move |outcome| {
            breaker.settle((call, probe, timed), outcome);
        }))
    }

    fn open_now(&self) -> Open {
        self.refuses().unwrap_or(Open {
            dependency: self.shared.name,
            retry_after: self.shared.policy.open_for,
        })
    }

    fn settle(&self, call: (u64, bool, bool), outcome: Outcome) {
        let mut circuit = lock(&self.circuit);
        self.shared.settle(
            &mut circuit,
            call,
            outcome,
            Instant::now(),
            &self.shared.name,
        );
    }
}

/// One call let through a breaker: say how it went (dropped unsettled, it counts for
/// nothing).
#[must_use = "a ticket dropped unsettled counts for nothing"]
pub struct Ticket {
    /// Counts the outcome in its circuit; `None` once settled, or for an untracked call.
    settle: Option<Box<dyn FnOnce(Outcome) + Send + Sync>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("settled", &self.settle.is_none())
            .finish()
    }
}

impl Ticket {
    fn new(settle: impl FnOnce(Outcome) + Send + Sync + 'static) -> Self {
        Self {
            settle: Some(Box::new(settle)),
        }
    }

    /// The dependency answered (a failure if a timed call answered only after `slow`).
    pub fn succeeded(mut self) {
        self.finish(Outcome::Success);
    }

    /// The dependency failed.
    pub fn failed(mut self) {
        self.finish(Outcome::Failure);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(settle) = self.settle.take() {
            settle(outcome);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.finish(Outcome::Neutral);
    }
}

/// A circuit per key (per peer): each opens and closes on its own. At most `capacity`
/// circuits are kept; when full, closed ones are forgotten first, and a key with no room
/// is let through untracked.
#[derive(Debug, Clone)]
pub struct Circuits<K> {
    shared: Arc<Shared>,
    circuits: Arc<Mutex<HashMap<K, Circuit>>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone + std::fmt::Display + Send + Sync + 'static> Circuits<K> {
    /// Circuits named `dependency`, at most `capacity` of them, on no board (see
    /// [`Board::keyed`]).
    pub fn new(dependency: &'static str, policy: CircuitPolicy, capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: dependency,
                policy,
                counts: Counts::default(),
            }),
            circuits: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Lets a call to `key` through, or refuses it (its circuit is open). A stall is seen
    /// here, when the next call to `key` is asked for.
    pub fn admit(&self, key: &K) -> Result<Ticket, Open> {
        let now = Instant::now();
        let mut circuits = lock(&self.circuits);
        if !circuits.contains_key(key) && circuits.len() >= self.capacity {
            circuits.retain(|_, c| !matches!(c.phase, Phase::Closed) || !c.running.is_empty());
        }
        if !circuits.contains_key(key) && circuits.len() >= self.capacity {
            return Ok(Ticket { settle: None });
        }
        let circuit = circuits
            .entry(key.clone())
            .or_insert_with(|| Circuit::new(&self.shared.policy));
        let (call, probe) = self.shared.admit(circuit, now, key, true)?;
        let (circuits, key) = (self.clone(), key.clone());
        Ok(Ticket::new(move |outcome| {
            circuits.settle(&key, call, probe, outcome);
        }))
    }

    /// Whether `key`'s circuit lets calls through now (without making one).
    pub fn allows(&self, key: &K) -> bool {
        let now = Instant::now();
        let circuits = lock(&self.circuits);
        match circuits.get(key).map(|c| c.phase) {
            Some(Phase::Open { until }) => now >= until,
            Some(Phase::HalfOpen { probing }) => !probing,
            Some(Phase::Closed) | None => true,
        }
    }

    /// Circuits not closed now.
    pub fn open(&self) -> usize {
        lock(&self.circuits)
            .values()
            .filter(|c| !matches!(c.phase, Phase::Closed))
            .count()
    }

    fn settle(&self, key: &K, call: u64, probe: bool, outcome: Outcome) {
        let mut circuits = lock(&self.circuits);
        if let Some(circuit) = circuits.get_mut(key) {
            self.shared
                .settle(circuit, (call, probe, true), outcome, Instant::now(), key);
        }
    }
}

/// What `/status` shows of one dependency's circuits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitStatus {
    /// The dependency.
    pub dependency: &'static str,
    /// Its state (for keyed circuits: `open` if any is not closed).
    pub state: State,
    /// Circuits not closed (0 or 1 for a single breaker).
    pub open: usize,
    /// Times it opened since start.
    pub opened: u64,
}

/// Keyed circuits as a board sees them, whatever their key.
trait Counted: Send + Sync + std::fmt::Debug {
    fn shared(&self) -> &Shared;
    fn open(&self) -> usize;
}

impl<K> Counted for Circuits<K>
where
    K: Hash + Eq + Clone + std::fmt::Display + Send + Sync + std::fmt::Debug + 'static,
{
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn open(&self) -> usize {
        Circuits::open(self)
    }
}

/// What a board lists.
#[derive(Debug, Clone)]
enum Listed {
    One(Breaker),
    Keyed(Arc<dyn Counted>),
}

/// The node's breakers, shown in `/metrics` and `/status`. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct Board {
    listed: Arc<Mutex<Vec<Listed>>>,
}

impl Board {
    /// A breaker for `dependency`, listed on this board.
    pub fn breaker(&self, dependency: &'static str, policy: CircuitPolicy) -> Breaker {
        let breaker = Breaker::new(dependency, policy);
        lock(&self.listed).push(Listed::One(breaker.clone()));
        breaker
    }

    /// Circuits per key for `dependency`, listed on this board.
    pub fn keyed<K>(
        &self,
        dependency: &'static str,
        policy: CircuitPolicy,
        capacity: usize,
    ) -> Circuits<K>
    where
        K: Hash + Eq + Clone + std::fmt::Display + Send + Sync + std::fmt::Debug + 'static,
    {
        let circuits = Circuits::new(dependency, policy, capacity);
        lock(&self.listed).push(Listed::Keyed(Arc::new(circuits.clone())));
        circuits
    }

    /// Every dependency's circuits now.
    pub fn status(&self) -> Vec<CircuitStatus> {
        let listed = lock(&self.listed).clone();
        listed
            .iter()
            .map(|l| match l {
                Listed::One(b) => {
                    let state = b.state();
                    CircuitStatus {
                        dependency: b.shared.name,
                        state,
                        open: usize::from(state != State::Closed),
                        opened: b.shared.counts.transitions[State::Open.index()]
                            .load(Ordering::Relaxed),
                    }
                }
                Listed::Keyed(keyed) => {
                    let (open, shared) = (keyed.open(), keyed.shared());
                    CircuitStatus {
                        dependency: shared.name,
                        state: if open == 0 {
                            State::Closed
                        } else {
                            State::Open
                        },
                        open,
                        opened: shared.counts.transitions[State::Open.index()]
                            .load(Ordering::Relaxed),
                    }
                }
            })
            .collect()
    }

    /// Shows the board in `metrics`.
    pub fn register_metrics(&self, metrics: &ron_kernel::Metrics) {
        metrics.register_collector(Box::new(BoardCollector {
            board: self.clone(),
        }));
    }

    fn transitions(&self) -> Vec<(&'static str, [u64; 3])> {
        let listed = lock(&self.listed).clone();
        listed
            .iter()
            .map(|l| {
                let shared: &Shared = match l {
                    Listed::One(b) => &b.shared,
                    Listed::Keyed(keyed) => keyed.shared(),
                };
                let name = shared.name;
                let t = &shared.counts.transitions;
                let load = |i: usize| t[i].load(Ordering::Relaxed);
                (name, [load(0), load(1), load(2)])
            })
            .collect()
    }
}

/// One gauge family labelled by dependency.
fn gauges<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (dependency, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&[("dependency", dependency)])?)?;
    }
    Ok(())
}

#[derive(Debug)]
struct BoardCollector {
    board: Board,
}

impl Collector for BoardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.board.status();
        let states = status
            .iter()
            .map(|s| (s.dependency, s.state.index() as i64));
        gauges(
            &mut encoder,
            "circuit_state",
            "A dependency's circuit: 0 closed, 1 half-open, 2 open (keyed: 2 if any is not closed)",
            states,
        )?;
        let open = status
            .iter()
            .map(|s| (s.dependency, i64::try_from(s.open).unwrap_or(i64::MAX)));
        gauges(
            &mut encoder,
            "circuits_open",
            "A dependency's circuits not closed (per peer for peer)",
            open,
        )?;
        let mut family = encoder.encode_descriptor(
            "circuit_transitions",
            "A dependency's circuit transitions, by the state entered",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, counts) in self.board.transitions() {
            for to in [State::Closed, State::HalfOpen, State::Open] {
                let c = ConstCounter::new(counts[to.index()]);
                c.encode(family.encode_family(&[("dependency", name), ("to", to.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            failures: 3,
            slow: Duration::from_millis(100),
            stall: Duration::from_secs(1),
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(8),
        }
    }

    async fn fail(b: &Breaker) -> Result<Result<(), &'static str>, Open> {
        b.run(async { Err("EIO") }, |_| true).await
    }

    async fn ok(b: &Breaker) -> Result<Result<(), &'static str>, Open> {
        b.run(async { Ok(()) }, |_| true).await
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_open_it_and_a_probe_closes_it() {
        let b = Breaker::new("storage", policy());
        for _ in 0..2 {
            assert_eq!(fail(&b).await, Ok(Err("EIO")));
        }
        // A success in between starts the count over.
        assert_eq!(ok(&b).await, Ok(Ok(())));
        for _ in 0..3 {
            assert_eq!(fail(&b).await, Ok(Err("EIO")));
        }
        assert_eq!(b.state(), State::Open);
        let open = ok(&b).await.unwrap_err();
        assert_eq!(open.dependency, "storage");
        assert_eq!(open.retry_after, Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(
            ok(&b).await.unwrap_err().retry_after,
            Duration::from_millis(500)
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(ok(&b).await, Ok(Ok(())), "the probe goes through");
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_wait_up_to_the_ceiling() {
        let b = Breaker::new("dht", policy());
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        let mut waits = Vec::new();
        for _ in 0..4 {
            let wait = ok(&b).await.unwrap_err().retry_after;
            waits.push(wait.as_secs());
            tokio::time::advance(wait).await;
            assert_eq!(fail(&b).await, Ok(Err("EIO")), "the probe");
        }
        assert_eq!(waits, [2, 4, 8, 8]);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(ok(&b).await, Ok(Ok(())));
        // Closed again, the next opening starts from the first wait.
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        assert_eq!(ok(&b).await.unwrap_err().retry_after.as_secs(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn while_probing_the_others_fail_fast() {
        let b = Breaker::new("storage", policy());
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.admit().is_err(), "one probe at a time");
        // A probe that tells nothing (dropped) lets the next call probe.
        drop(probe);
        let probe = b.admit().unwrap();
        probe.succeeded();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_count_as_failures_and_neutral_errors_do_not() {
        let b = Breaker::new("storage", policy());
        for _ in 0..5 {
            let r = b.run(async { Err::<(), _>("not found") }, |_| false).await;
            assert_eq!(r, Ok(Err("not found")));
        }
        assert_eq!(b.state(), State::Closed);
        for _ in 0..3 {
            let slow = b.run(
                async {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Ok::<_, ()>(())
                },
                |_| true,
            );
            assert_eq!(slow.await, Ok(Ok(())), "a slow answer is still the answer");
        }
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_opens_it_at_once_and_releases_every_waiting_call() {
        let b = Breaker::new("storage", policy());
        let never = || b.run(std::future::pending::<Result<(), ()>>(), |_| true);
        let waiting = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(never(), async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                never().await
            })
        });
        let (first, second) = waiting.await.expect("released, not left waiting");
        assert_eq!(first.unwrap_err().dependency, "storage");
        assert!(second.is_err(), "the later call is released with the first");
        assert_eq!(b.state(), State::Open);
        assert!(ok(&b).await.is_err(), "and new calls fail fast");
    }

    #[tokio::test(start_paused = true)]
    async fn untimed_work_is_never_a_stall_but_its_failures_count() {
        let b = Breaker::new("storage", policy());
        // A commit longer than the stall threshold: the circuit stays closed.
        let long = b.admit().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), State::Closed);
        assert_eq!(ok(&b).await, Ok(Ok(())));
        long.succeeded();
        assert_eq!(b.state(), State::Closed);
        for _ in 0..3 {
            b.admit().unwrap().failed();
        }
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_circuits_open_alone_and_stay_within_their_capacity() {
        let peers: Circuits<u32> = Circuits::new("peer", policy(), 2);
        for _ in 0..3 {
            peers.admit(&1).unwrap().failed();
        }
        assert!(!peers.allows(&1));
        assert!(peers.admit(&1).is_err());
        assert!(peers.allows(&2));
        peers.admit(&2).unwrap().succeeded();
        assert_eq!(peers.open(), 1);
        // Full: the closed circuit of 2 is forgotten for 3; the open one of 1 stays.
        peers.admit(&3).unwrap().succeeded();
        assert!(peers.admit(&1).is_err());
        // Still full of circuits not closed: 4 goes through untracked.
        for _ in 0..3 {
            peers.admit(&3).unwrap().failed();
        }
        for _ in 0..10 {
            peers.admit(&4).unwrap().failed();
        }
        assert!(peers.allows(&4));
        assert_eq!(peers.open(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        peers.admit(&1).unwrap().succeeded();
        assert_eq!(peers.open(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_board_shows_every_dependency() {
        let board = Board::default();
        let disk = board.breaker("storage", policy());
        let peers: Circuits<u32> = board.keyed("peer", policy(), 16);
        for _ in 0..3 {
            let _ = fail(&disk).await;
            peers.admit(&7).unwrap().failed();
        }
        let status = board.status();
        assert_eq!(status.len(), 2);
        assert_eq!(
            (status[0].dependency, status[0].state, status[0].opened),
            ("storage", State::Open, 1)
        );
        assert_eq!((status[1].dependency, status[1].open), ("peer", 1));
        let metrics = ron_kernel::Metrics::new();
        board.register_metrics(&metrics);
        let text = metrics.encode();
        for line in [
            r#"circuit_state{dependency="storage"} 2"#,
            r#"circuits_open{dependency="peer"} 1"#,
            r#"circuit_transitions_total{dependency="storage",to="open"} 1"#,
            r#"circuit_transitions_total{dependency="peer",to="closed"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
