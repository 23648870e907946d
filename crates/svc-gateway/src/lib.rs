//! The HTTP face of a RustyOnions node: objects (`POST /put`, `GET|HEAD /o/{addr}` with
//! ranges, paths inside collections `GET|HEAD /o/{root}/{path}`, `GET /stat/{addr}`,
//! `POST|DELETE /pin/{addr}`, `DELETE /o/{addr}`, `GET /objects`, `POST /gc`), names
//! (`GET|PUT /names/ed25519/{hex}`, `GET|HEAD /n/ed25519/{hex}[/{path}]`), the admin
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/status`) and the web console (`/`), with
//! request ids and latency metrics on every route.
//! Handlers are thin: decode, authorise, call one overlay method, encode. Every error leaves
//! through one type, [`ApiError`], in the shared JSON shape `{"code","message","retry_after_ms"?}`.
//!
//! ```no_run
//! # async fn run(state: svc_gateway::AppState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7700").await?;
//! svc_gateway::serve(listener, state, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```
#![forbid(unsafe_code)]

mod admin;
mod auth;
mod collections;
mod config;
mod console;
mod error;
mod held;
mod lanes;
mod limits;
mod mail;
mod middleware;
mod names;
mod objects;
mod payment;
mod profile;
mod tls;

pub use admin::{AppState, PeerStatus, StatusExtra, Traffic, router};
pub use config::GatewaySection;
pub use error::{ApiError, error_response};
pub use objects::{DURABILITY, EXPECT_ADDRESS};
#[cfg(feature = "http3")]
pub use tls::serve_h3;
pub use tls::{ALPN, serve, serve_tls};
