//! Restart policy as plain arithmetic: backoff with jitter and the restart-intensity window.
//! No clocks or tasks here; the caller passes the time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How a supervisor restarts services.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Backoff before the first restart (100 ms).
    pub initial_backoff: Duration,
    /// Backoff ceiling (30 s).
    pub max_backoff: Duration,
    /// Restarts allowed within `window` before quarantine (5).
    pub max_restarts: usize,
    /// The restart-intensity window (60 s).
    pub window: Duration,
    /// A service that ran this long before crashing starts its backoff over (60 s).
    pub reset_after: Duration,
    /// Seed of the jitter generator; `None` seeds from the OS. Tests fix it.
    pub jitter_seed: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
            jitter_seed: None,
        }
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// Too many crashes in the window: stay down.
    Quarantine,
}

/// One service's restart bookkeeping.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    attempt: u32,
    crashes: VecDeque<Instant>,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Fresh bookkeeping under `policy`.
    pub fn new(policy: Policy) -> Self {
        let rng = policy
            .jitter_seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            policy,
            attempt: 0,
            crashes: VecDeque::new(),
            rng,
        }
    }

    /// The un-jittered delay before restart number `attempt` (0-based).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial_backoff
            .saturating_mul(factor)
            .min(self.policy.max_backoff)
    }

    /// Records a crash at `now` of a service that had been running for `ran_for`, and says
    /// what to do. The delay is drawn uniformly from [max(initial, 3/4 base), base], so a herd
    /// of services crashing together does not restart together.
    pub fn on_crash(&mut self, now: Instant, ran_for: Duration) -> Verdict {
        if ran_for >= self.policy.reset_after {
            self.attempt = 0;
        }
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.policy.window)
        {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        if self.crashes.len() > self.policy.max_restarts {
            return Verdict::Quarantine;
        }
        let base = self.base_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let low = (base * 3 / 4).max(self.policy.initial_backoff.min(base));
        let span = u64::try_from((base - low).as_micros()).unwrap_or(u64::MAX);
        let jitter = Duration::from_micros(self.rng.u64(0..=span));
        Verdict::RestartAfter(low + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> Backoff {
        Backoff::new(Policy {
            jitter_seed: Some(7),
            ..Policy::default()
        })
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap_at_30s() {
        let b = seeded();
        let bases: Vec<u64> = (0..12)
            .map(|a| b.base_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(
            bases,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_in_bounds() {
        let mut b = Backoff::new(Policy {
            max_restarts: usize::MAX,
            jitter_seed: Some(42),
            ..Policy::default()
        });
        let mut t = Instant::now();
        for attempt in 0..40 {
            let base = b.base_delay(attempt);
            let Verdict::RestartAfter(d) = b.on_crash(t, Duration::ZERO) else {
                panic!("unbounded policy never quarantines");
            };
            let low = (base * 3 / 4).max(Duration::from_millis(100).min(base));
            assert!(
                d >= low && d <= base,
                "attempt {attempt}: {d:?} not in [{low:?}, {base:?}]"
            );
            t += Duration::from_secs(61);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sixth_crash_within_a_minute_quarantines() {
        let mut b = seeded();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(matches!(
                b.on_crash(t0 + Duration::from_secs(i), Duration::ZERO),
                Verdict::RestartAfter(_)
            ));
        }
        assert_eq!(
            b.on_crash(t0 + Duration::from_secs(59), Duration::ZERO),
            Verdict::Quarantine
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_spread_beyond_the_window_never_quarantine() {
        let mut b = seeded();
        let t0 = Instant::now();
        for i in 0..50u64 {
            let v = b.on_crash(t0 + Duration::from_secs(13 * i), Duration::from_secs(1));
            assert!(matches!(v, Verdict::RestartAfter(_)), "crash {i}: {v:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_resets_the_backoff() {
        let mut b = seeded();
        let t0 = Instant::now();
        for i in 0..4 {
            b.on_crash(t0 + Duration::from_secs(i), Duration::ZERO);
        }
        let Verdict::RestartAfter(d) =
            b.on_crash(t0 + Duration::from_secs(200), Duration::from_secs(120))
        else {
            panic!("no quarantine outside the window");
        };
        assert_eq!(d, Duration::from_millis(100));
    }
}
