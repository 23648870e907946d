//! The supervisor task set. Owns one monitor task per service (in a `JoinSet`); each monitor
//! owns the service's current incarnation (in a `JoinSet` of one, so it is aborted with it)
//! and talks to the kernel's bus, metrics and health registry.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ron_kernel::health::{Duty, ServiceState};
use ron_kernel::metrics::ServiceLabel;
use ron_kernel::{Bus, HealthState, KernelEvent, Metrics};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::policy::Verdict;
use crate::{Backoff, Mailbox, Policy};

type Closer = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What a service incarnation is given.
#[derive(Debug, Clone)]
pub struct ServiceCtx {
    /// The service's name.
    pub name: Arc<str>,
    /// Cancelled when the node shuts down: stop accepting, finish what is in hand, return.
    pub shutdown: CancellationToken,
    /// How many times this service has been restarted.
    pub restarts: u64,
}

/// Runs and restarts services. Dropping it aborts every service; [`Supervisor::shutdown`]
/// stops them gracefully first.
#[derive(Debug)]
pub struct Supervisor {
    bus: Bus,
    metrics: Metrics,
    health: HealthState,
    policy: Policy,
    shutdown: CancellationToken,
    monitors: JoinSet<()>,
    /// The edges' stop: cancelled first, so they drain while the services they call run.
    edges: CancellationToken,
    edge_monitors: JoinSet<()>,
}

/// What one incarnation's end means.
enum Exit {
    Finished,
    Crashed(String),
}

fn describe(joined: Result<Result<(), String>, JoinError>) -> Exit {
    match joined {
        Ok(Ok(())) => Exit::Finished,
        Ok(Err(e)) => Exit::Crashed(format!("error exit: {e}")),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_owned());
            Exit::Crashed(format!("panicked: {msg}"))
        }
        Err(_) => Exit::Crashed("task aborted".to_owned()),
    }
}

impl Supervisor {
    /// A supervisor reporting to `bus`, `metrics` and `health`.
    pub fn new(bus: Bus, metrics: Metrics, health: HealthState, policy: Policy) -> Self {
        Self {
            bus,
            metrics,
            health,
            policy,
            shutdown: CancellationToken::new(),
            monitors: JoinSet::new(),
            edges: CancellationToken::new(),
            edge_monitors: JoinSet::new(),
        }
    }

    /// The token every service's [`ServiceCtx::shutdown`] derives from.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a service: `factory` makes each incarnation. An `Ok` return ends the service for
    /// good (it is not restarted); an `Err` or a panic is a crash.
    pub fn spawn<F, Fut, E>(&mut self, name: &str, duty: Duty, factory: F)
    where
        F: FnMut(ServiceCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.spawn_inner(name, duty, factory, None, false);
    }

    /// Runs an edge: a service that takes requests from outside (a listener). At shutdown
    /// the edges are stopped first and drain what they are answering while every other
    /// service still runs; only then are the others stopped.
    pub fn spawn_edge<F, Fut, E>(&mut self, name: &str, duty: Duty, factory: F)
    where
        F: FnMut(ServiceCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.spawn_inner(name, duty, factory, None, true);
    }

    /// Runs a service that takes commands from `mailbox` (see [`crate::mailbox`]). After a
    /// quarantine or a final stop the mailbox is closed and drained, so callers fail fast.
    pub fn spawn_actor<C, F, Fut, E>(
        &mut self,
        name: &str,
        duty: Duty,
        mailbox: Mailbox<C>,
        mut factory: F,
    ) where
        C: Send + 'static,
        F: FnMut(ServiceCtx, Mailbox<C>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let for_factory = mailbox.clone();
        let closer: Closer = Box::new(move || Box::pin(async move { mailbox.close().await }));
        self.spawn_inner(
            name,
            duty,
            move |ctx| factory(ctx, for_factory.clone()),
            Some(closer),
            false,
        );
    }

    fn spawn_inner<F, Fut, E>(
        &mut self,
        name: &str,
        duty: Duty,
        mut factory: F,
        closer: Option<Closer>,
        edge: bool,
    ) where
        F: FnMut(ServiceCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let name: Arc<str> = Arc::from(name);
        self.health.register(&name, duty);
        let (bus, metrics, health) = (self.bus.clone(), self.metrics.clone(), self.health.clone());
        let shutdown = if edge {
            self.edges.clone()
        } else {
            self.shutdown.clone()
        };
        let mut backoff = Backoff::new(self.policy.clone());
        let restarts_metric = metrics
            .service_restarts()
            .get_or_create(&ServiceLabel {
                service: name.to_string(),
            })
            .clone();
        let monitors = if edge {
            &mut self.edge_monitors
        } else {
            &mut self.monitors
        };
        monitors.spawn(async move {
            let mut restarts = 0u64;
            let set_state = |state: ServiceState| {
                if health.set_state(&name, state) {
                    bus.publish(KernelEvent::Health {
                        service: name.to_string(),
                        ok: state == ServiceState::Running,
                    });
                }
            };
            loop {
                let ctx = ServiceCtx {
                    name: name.clone(),
                    shutdown: shutdown.clone(),
                    restarts,
                };
                let started = Instant::now();
                let mut incarnation = JoinSet::new();
                let fut = factory(ctx);
                incarnation.spawn(async move { fut.await.map_err(|e| e.to_string()) });
                set_state(ServiceState::Running);
                let joined = match incarnation.join_next().await {
                    Some(joined) => joined,
                    None => Ok(Ok(())),
                };
                let reason = match describe(joined) {
                    Exit::Finished => {
                        tracing::info!(service = %name, "service stopped");
                        break;
                    }
                    Exit::Crashed(_) if shutdown.is_cancelled() => break,
                    Exit::Crashed(reason) => reason,
                };
                let verdict = backoff.on_crash(Instant::now(), started.elapsed());
                let restarting = matches!(verdict, Verdict::RestartAfter(_));
                health.record_crash(&name, &reason, restarting);
                bus.publish(KernelEvent::Health {
                    service: name.to_string(),
                    ok: false,
                });
                let Verdict::RestartAfter(delay) = verdict else {
                    tracing::error!(service = %name, %reason, "service quarantined: too many crashes");
                    bus.publish(KernelEvent::ServiceCrashed {
                        service: name.to_string(),
                        reason: format!("quarantined after repeated crashes; last: {reason}"),
                    });
                    if let Some(close) = closer {
                        close().await;
                    }
                    return;
                };
                tracing::warn!(service = %name, %reason, ?delay, "service crashed; restarting");
                bus.publish(KernelEvent::ServiceCrashed {
                    service: name.to_string(),
                    reason,
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
                restarts += 1;
                restarts_metric.inc();
            }
            set_state(ServiceState::Stopped);
            if let Some(close) = closer {
                close().await;
            }
        });
    }

    /// Stops the node's services within `deadline`, in two stages: the edges first (they stop
    /// accepting and finish what they are answering, while the services they call still run),
    /// then every other service. What has not stopped by the deadline is aborted. Returns
    /// whether all stopped in time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        let edges = stop(&self.edges, &mut self.edge_monitors, end, "edges").await;
        let services = stop(&self.shutdown, &mut self.monitors, end, "services").await;
        edges && services
    }
}

/// Cancels `token` and waits for `monitors` until `end`, aborting what is still running
/// then; whether all stopped in time.
async fn stop(
    token: &CancellationToken,
    monitors: &mut JoinSet<()>,
    end: tokio::time::Instant,
    what: &str,
) -> bool {
    token.cancel();
    let stopped =
        tokio::time::timeout_at(end, async { while monitors.join_next().await.is_some() {} })
            .await
            .is_ok();
    if !stopped {
        tracing::warn!(
            what,
            "still running at the shutdown deadline; aborting them"
        );
        monitors.abort_all();
        while monitors.join_next().await.is_some() {}
    }
    stopped
}
