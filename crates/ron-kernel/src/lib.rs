//! The RustyOnions kernel: the small, frozen core every service sits on.
//!
//! Its root exports exactly six names — [`Bus`], [`KernelEvent`], [`Metrics`], [`HealthState`],
//! [`Config`] and [`wait_for_ctrl_c`] — and a test fails if that changes. Supporting types
//! (subscribers, config sections, health records) live in the public modules [`bus`],
//! [`config`], [`health`] and [`metrics`].
//!
//! ```
//! use ron_kernel::{Bus, KernelEvent, Metrics};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let metrics = Metrics::new();
//! let bus = Bus::new(4096);
//! bus.register_metrics(&metrics);
//! let mut events = bus.subscribe();
//! bus.publish(KernelEvent::ConfigUpdated { version: 2 });
//! assert_eq!(events.recv().await, Some(KernelEvent::ConfigUpdated { version: 2 }));
//! assert!(metrics.encode().contains("bus_overflow_dropped_total 0"));
//! # });
//! ```
#![forbid(unsafe_code)]

pub mod bus;
pub mod config;
mod event;
pub mod health;
pub mod metrics;
mod shutdown;
mod sync;

pub use bus::Bus;
pub use config::Config;
pub use event::KernelEvent;
pub use health::HealthState;
pub use metrics::Metrics;
pub use shutdown::wait_for_ctrl_c;
