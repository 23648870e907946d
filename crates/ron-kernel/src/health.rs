//! Per-service health and the node's readiness, with reads and writes told apart:
//! `/readyz` is 200 while reads can be served (fail-open reads) and `/readyz?writes=1` is 503
//! while writes are shed (fail-closed writes).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

/// What a service is needed for, deciding which half of readiness it holds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Duty {
    /// Needed to serve reads.
    Reads,
    /// Needed to accept writes.
    Writes,
    /// Needed for both.
    ReadsAndWrites,
    /// Background work; readiness does not wait on it.
    Background,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Registered, not running yet.
    Starting,
    /// Running and healthy.
    Running,
    /// Crashed; waiting out its backoff before a restart.
    Restarting,
    /// Crashed too often; stays down until an operator acts.
    Quarantined,
    /// Stopped on purpose (shutdown or finished).
    Stopped,
}

/// One service's health record.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    /// What the service is needed for.
    pub duty: Duty,
    /// Its state.
    pub state: ServiceState,
    /// Restarts so far.
    pub restarts: u64,
    /// The last crash reason, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ServiceHealth {
    /// Whether the service is up and healthy.
    pub fn ok(&self) -> bool {
        self.state == ServiceState::Running
    }
}

/// The node's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Reads can be served.
    pub reads: bool,
    /// Writes are accepted.
    pub writes: bool,
}

#[derive(Debug, Default)]
struct Inner {
    services: BTreeMap<String, ServiceHealth>,
    started: bool,
    shedding_writes: bool,
}

/// A cheap-to-clone handle on the health registry.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    inner: Arc<RwLock<Inner>>,
}

impl HealthState {
    /// An empty registry: not ready until [`HealthState::mark_started`].
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or resets) a service, in state `Starting`.
    pub fn register(&self, service: &str, duty: Duty) {
        self.write().services.insert(
            service.to_owned(),
            ServiceHealth {
                duty,
                state: ServiceState::Starting,
                restarts: 0,
                last_error: None,
            },
        );
    }

    /// Sets a service's state; returns whether its health (`ok`) changed. Unknown services are
    /// registered as `Background`.
    pub fn set_state(&self, service: &str, state: ServiceState) -> bool {
        let mut inner = self.write();
        let entry = inner
            .services
            .entry(service.to_owned())
            .or_insert_with(|| ServiceHealth {
                duty: Duty::Background,
                state: ServiceState::Starting,
                restarts: 0,
                last_error: None,
            });
        let was = entry.ok();
        entry.state = state;
        was != entry.ok()
    }

    /// Records a crash of `service` and whether it will be restarted.
    pub fn record_crash(&self, service: &str, reason: &str, restarting: bool) {
        let mut inner = self.write();
        if let Some(entry) = inner.services.get_mut(service) {
            entry.last_error = Some(reason.to_owned());
            entry.state = if restarting {
                entry.restarts += 1;
                ServiceState::Restarting
            } else {
                ServiceState::Quarantined
            };
        }
    }

    /// Marks start-up complete: readiness now follows the services.
    pub fn mark_started(&self) {
        self.write().started = true;
    }

    /// Marks the node as stopping: it is no longer ready for anything.
    pub fn mark_stopping(&self) {
        self.write().started = false;
    }

    /// Sheds (or stops shedding) writes, as overload control decides.
    pub fn shed_writes(&self, shed: bool) {
        self.write().shedding_writes = shed;
    }

    /// The node's readiness: reads need start-up done and every reads service healthy;
    /// writes need that, every writes service healthy, and no shedding.
    pub fn readiness(&self) -> Readiness {
        let inner = self.read();
        let all_ok = |pred: fn(Duty) -> bool| {
            inner
                .services
                .values()
                .filter(|s| pred(s.duty))
                .all(ServiceHealth::ok)
        };
        let reads = inner.started && all_ok(|d| matches!(d, Duty::Reads | Duty::ReadsAndWrites));
        let writes = reads
            && !inner.shedding_writes
            && all_ok(|d| matches!(d, Duty::Writes | Duty::ReadsAndWrites));
        Readiness { reads, writes }
    }

    /// One service's record.
    pub fn service(&self, service: &str) -> Option<ServiceHealth> {
        self.read().services.get(service).cloned()
    }

    /// Every service's record, by name.
    pub fn services(&self) -> BTreeMap<String, ServiceHealth> {
        self.read().services.clone()
    }
}

#[cfg(all(test, not(ron_loom)))]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_told_apart() {
        let h = HealthState::new();
        h.register("index", Duty::Reads);
        h.register("storage", Duty::ReadsAndWrites);
        h.register("payments", Duty::Writes);
        h.register("repair", Duty::Background);
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: false,
                writes: false
            }
        );

        for s in ["index", "storage", "payments"] {
            assert!(h.set_state(s, ServiceState::Running));
        }
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: false,
                writes: false
            },
            "not started"
        );
        h.mark_started();
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: true,
                writes: true
            }
        );

        h.record_crash("payments", "boom", true);
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: true,
                writes: false
            }
        );
        h.set_state("payments", ServiceState::Running);
        h.shed_writes(true);
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: true,
                writes: false
            }
        );
        h.shed_writes(false);
        h.record_crash("repair", "boom", false);
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: true,
                writes: true
            },
            "background"
        );
        h.record_crash("index", "boom", false);
        assert_eq!(
            h.readiness(),
            Readiness {
                reads: false,
                writes: false
            }
        );
        let rec = h.service("index").unwrap();
        assert_eq!(rec.state, ServiceState::Quarantined);
        assert_eq!(rec.last_error.as_deref(), Some("boom"));
    }
}
