//! The HTTP face of a RustyOnions node: objects (`POST /put`, `GET|HEAD /o/{addr}` with
//! ranges, `GET /stat/{addr}`, `POST|DELETE /pin/{addr}`) and the admin endpoints (`/healthz`,
//! `/readyz`, `/metrics`, `/status`), with request ids and latency metrics on every route.
//! Every error leaves through one function,
//! [`error_response`], in the shared JSON shape `{"code","message","retry_after_ms"?}`.
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
mod config;
mod error;
mod middleware;
mod objects;
mod tls;

pub use admin::{AppState, StatusExtra, Traffic, router};
pub use config::GatewaySection;
pub use error::error_response;
pub use objects::EXPECT_ADDRESS;
pub use tls::{ALPN, serve_tls};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the gateway on `listener` until `shutdown` is cancelled, then stops accepting and
/// lets requests in flight finish (the caller bounds that with its own deadline).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // No Nagle: a response's head and body often go out as separate writes, and waiting for
    // the peer's delayed ACK between them costs tens of milliseconds.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
