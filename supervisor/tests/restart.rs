//! The supervisor's restart behaviour, deterministic on paused tokio time.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ron_kernel::bus::Subscriber;
use ron_kernel::health::{Duty, ServiceState};
use ron_kernel::{Bus, HealthState, KernelEvent, Metrics};
use supervisor::{Mailbox, Policy, Supervisor, mailbox};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

struct Rig {
    sup: Supervisor,
    bus: Bus,
    events: Subscriber,
    metrics: Metrics,
    health: HealthState,
}

fn rig() -> Rig {
    let (bus, metrics, health) = (Bus::new(256), Metrics::new(), HealthState::new());
    let events = bus.subscribe();
    let policy = Policy {
        jitter_seed: Some(1),
        ..Policy::default()
    };
    let sup = Supervisor::new(bus.clone(), metrics.clone(), health.clone(), policy);
    Rig {
        sup,
        bus,
        events,
        metrics,
        health,
    }
}

/// Waits for the next `ServiceCrashed` of `service`; returns its reason.
async fn next_crash(events: &mut Subscriber, service: &str) -> String {
    loop {
        match events.recv().await {
            Some(KernelEvent::ServiceCrashed { service: s, reason }) if s == service => {
                return reason;
            }
            Some(_) => {}
            None => panic!("bus closed"),
        }
    }
}

fn bounds(base_ms: u64) -> (Duration, Duration) {
    let base = Duration::from_millis(base_ms);
    (
        (base * 3 / 4).max(Duration::from_millis(100).min(base)),
        base,
    )
}

#[tokio::test(start_paused = true)]
async fn panics_back_off_exponentially_then_quarantine() {
    let mut r = rig();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = starts.clone();
    r.sup.spawn("flappy", Duty::ReadsAndWrites, move |_ctx| {
        seen.lock().unwrap().push(Instant::now());
        async move {
            if true {
                panic!("disk on fire");
            }
            Ok::<(), String>(())
        }
    });

    for _ in 0..5 {
        let reason = next_crash(&mut r.events, "flappy").await;
        assert_eq!(reason, "panicked: disk on fire");
    }
    let last = next_crash(&mut r.events, "flappy").await;
    assert!(last.starts_with("quarantined"), "{last}");

    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 6, "first run and five restarts");
    for (i, base) in [100, 200, 400, 800, 1600].into_iter().enumerate() {
        let gap = starts[i + 1] - starts[i];
        let (lo, hi) = bounds(base);
        assert!(
            gap >= lo && gap <= hi + Duration::from_millis(1),
            "restart {i}: {gap:?} not in [{lo:?}, {hi:?}]"
        );
    }

    // Quarantined: stays down, reported unhealthy, never started again.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(starts.len(), 6);
    let rec = r.health.service("flappy").unwrap();
    assert_eq!(rec.state, ServiceState::Quarantined);
    assert_eq!(rec.restarts, 5);
    r.health.mark_started();
    assert!(!r.health.readiness().reads);
    let text = r.metrics.encode();
    assert!(
        text.contains("service_restarts_total{service=\"flappy\"} 5"),
        "{text}"
    );
    drop(r.bus);
}

#[tokio::test(start_paused = true)]
async fn error_exit_restarts_and_ok_exit_ends() {
    let mut r = rig();
    let runs = Arc::new(Mutex::new(0u32));
    let counter = runs.clone();
    r.sup.spawn("once-broken", Duty::Background, move |ctx| {
        let n = {
            let mut g = counter.lock().unwrap();
            *g += 1;
            *g
        };
        async move {
            assert_eq!(u64::from(n - 1), ctx.restarts);
            if n == 1 {
                Err("config missing")
            } else {
                Ok(())
            }
        }
    });
    assert_eq!(
        next_crash(&mut r.events, "once-broken").await,
        "error exit: config missing"
    );
    // Wait until it has run again and ended.
    loop {
        if r.health.service("once-broken").unwrap().state == ServiceState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*runs.lock().unwrap(), 2);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(*runs.lock().unwrap(), 2, "an Ok exit is not restarted");
}

#[tokio::test(start_paused = true)]
async fn crashes_spread_over_time_are_never_quarantined() {
    let mut r = rig();
    let starts = Arc::new(Mutex::new(0u32));
    let seen = starts.clone();
    r.sup.spawn("slow-leak", Duty::Background, move |_ctx| {
        *seen.lock().unwrap() += 1;
        async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Err::<(), _>("ran out of something")
        }
    });
    for _ in 0..12 {
        let reason = next_crash(&mut r.events, "slow-leak").await;
        assert!(!reason.starts_with("quarantined"), "{reason}");
    }
    assert_eq!(
        r.health.service("slow-leak").unwrap().state,
        ServiceState::Restarting
    );
}

// --- an actor behind a mailbox -------------------------------------------------------------

enum Cmd {
    Echo(u32, oneshot::Sender<u32>),
    Crash,
}

#[derive(Clone)]
struct EchoHandle(mpsc::Sender<Cmd>);

#[derive(Debug, PartialEq)]
struct Unavailable;

impl EchoHandle {
    async fn echo(&self, v: u32) -> Result<u32, Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(Cmd::Echo(v, reply))
            .await
            .map_err(|_| Unavailable)?;
        rx.await.map_err(|_| Unavailable)
    }

    async fn crash_it(&self) -> Result<(), Unavailable> {
        self.0.send(Cmd::Crash).await.map_err(|_| Unavailable)
    }
}

async fn echo_actor(mailbox: Mailbox<Cmd>, crash_on_echo: bool) -> Result<(), String> {
    let mut rx = mailbox.lock().await;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Echo(v, reply) => {
                if crash_on_echo {
                    // The reply sender is dropped by the unwind: the caller gets an error.
                    panic!("cannot echo {v}");
                }
                let _ = reply.send(v);
            }
            Cmd::Crash => panic!("asked to crash"),
        }
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn handles_stay_valid_across_restarts_and_inflight_requests_fail_fast() {
    let mut r = rig();
    let (tx, mb) = mailbox::<Cmd>(8);
    let handle = EchoHandle(tx);
    r.sup
        .spawn_actor("echo", Duty::Reads, mb, |_ctx, mb| echo_actor(mb, false));

    assert_eq!(handle.echo(1).await, Ok(1));
    handle.crash_it().await.unwrap();
    // Queued behind the crash: survives in the mailbox and is answered by the next incarnation.
    let before = Instant::now();
    assert_eq!(handle.echo(2).await, Ok(2));
    assert!(
        before.elapsed() >= Duration::from_millis(100),
        "answered after the backoff"
    );
    assert_eq!(
        next_crash(&mut r.events, "echo").await,
        "panicked: asked to crash"
    );
    assert_eq!(r.health.service("echo").unwrap().restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn request_in_flight_during_a_crash_gets_an_error_and_quarantine_closes_the_mailbox() {
    let mut r = rig();
    let (tx, mb) = mailbox::<Cmd>(8);
    let handle = EchoHandle(tx);
    r.sup
        .spawn_actor("fragile", Duty::Reads, mb, |_ctx, mb| echo_actor(mb, true));

    for i in 0..6 {
        // Each call crashes the incarnation handling it: an error, never a hang.
        assert_eq!(handle.echo(i).await, Err(Unavailable), "call {i}");
    }
    let mut reasons = Vec::new();
    for _ in 0..6 {
        reasons.push(next_crash(&mut r.events, "fragile").await);
    }
    assert!(reasons[5].starts_with("quarantined"), "{reasons:?}");
    // After quarantine the mailbox is closed: calls fail at once.
    let t = Instant::now();
    assert_eq!(handle.echo(99).await, Err(Unavailable));
    assert_eq!(t.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_cooperative_services_and_aborts_stubborn_ones() {
    let mut r = rig();
    r.sup.spawn("polite", Duty::Background, |ctx| async move {
        ctx.shutdown.cancelled().await;
        Ok::<(), String>(())
    });
    let health = r.health.clone();
    assert!(r.sup.shutdown(Duration::from_secs(5)).await);
    assert_eq!(
        health.service("polite").unwrap().state,
        ServiceState::Stopped
    );

    let mut r = rig();
    r.sup
        .spawn("stubborn", Duty::Background, |_ctx| async move {
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
    let t = Instant::now();
    assert!(!r.sup.shutdown(Duration::from_secs(5)).await);
    assert_eq!(t.elapsed(), Duration::from_secs(5));
}

/// At shutdown the edges stop first and drain while the services they call still run; then
/// those stop.
#[tokio::test(start_paused = true)]
async fn edges_drain_before_the_services_they_call() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Rig { mut sup, .. } = rig();
    let backend_running = Arc::new(AtomicBool::new(false));
    let seen_while_draining = Arc::new(Mutex::new(None));
    {
        let running = backend_running.clone();
        sup.spawn("backend", Duty::Background, move |ctx| {
            let running = running.clone();
            async move {
                running.store(true, Ordering::SeqCst);
                ctx.shutdown.cancelled().await;
                running.store(false, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        });
    }
    {
        let (running, seen) = (backend_running.clone(), seen_while_draining.clone());
        sup.spawn_edge("edge", Duty::ReadsAndWrites, move |ctx| {
            let (running, seen) = (running.clone(), seen.clone());
            async move {
                ctx.shutdown.cancelled().await;
                // Draining: a request in flight still calls the backend.
                tokio::time::sleep(Duration::from_millis(200)).await;
                *seen.lock().unwrap() = Some(running.load(Ordering::SeqCst));
                Ok::<(), String>(())
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(sup.shutdown(Duration::from_secs(5)).await);
    assert_eq!(*seen_while_draining.lock().unwrap(), Some(true));
    assert!(!backend_running.load(std::sync::atomic::Ordering::SeqCst));
}

/// An edge that does not drain by the deadline is aborted, and the rest still stop.
#[tokio::test(start_paused = true)]
async fn an_edge_stuck_past_the_deadline_is_aborted() {
    let Rig { mut sup, .. } = rig();
    sup.spawn_edge("stuck", Duty::ReadsAndWrites, |_ctx| async {
        std::future::pending::<()>().await;
        Ok::<(), String>(())
    });
    sup.spawn("backend", Duty::Background, |ctx| async move {
        ctx.shutdown.cancelled().await;
        Ok::<(), String>(())
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = Instant::now();
    assert!(!sup.shutdown(Duration::from_secs(2)).await);
    assert!(started.elapsed() <= Duration::from_secs(3));
}
