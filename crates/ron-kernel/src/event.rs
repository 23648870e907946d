//! The kernel's events: exactly four, frozen.

/// What the kernel announces on the [`Bus`](crate::Bus). Frozen: changing a variant is a major
/// version bump. Service-specific events travel on each service's own broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A service became healthy (`ok`) or unhealthy.
    Health {
        /// The service's name.
        service: String,
        /// Whether it is healthy now.
        ok: bool,
    },
    /// A new configuration snapshot is in force.
    ConfigUpdated {
        /// The new snapshot's version.
        version: u64,
    },
    /// A service crashed (panic or error exit), or the bus dropped events (`bus-overflow`).
    ServiceCrashed {
        /// The service's name.
        service: String,
        /// Why, safe to log.
        reason: String,
    },
    /// The node is shutting down.
    Shutdown,
}
