//! Admission of HTTP requests under the node's `[limits]` ([`ron_transport::limits`]): the
//! body-size cap on routes other than `/put`, per-peer and global admission, and the refusal
//! in the shared JSON shape with a randomized `Retry-After`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, header};
use ron_proto::{ErrorKind, Problem};
use ron_transport::limits::{Limiter, Peer, Ticket};

use crate::{ApiError, AppState};

/// Routes that must answer whatever the load: health and metrics.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Admission for one request, called by the gateway's one middleware before the handler:
/// `Ok(None)` for exempt routes, `Ok(Some(ticket))` while admitted (hold it until the handler
/// returns, and a large response body until it is sent), or the refusal to send.
pub(crate) fn admit_request(
    state: &AppState,
    req: &Request,
) -> Result<Option<Ticket<Arc<Limiter>>>, ApiError> {
    if exempt(req.uri().path()) {
        return Ok(None);
    }
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if req.uri().path() != "/put" {
        let max_body = state.limiter.max_body();
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_body) {
            let message = format!("request body exceeds {max_body} bytes");
            return Err(Problem::new(ErrorKind::TooLarge, message).into());
        }
    }
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    match state.limiter.admit_owned(peer, write) {
        // The place is held while the handler runs (an upload's whole body), and while a
        // large response body is sent (`held`).
        Ok(ticket) => Ok(Some(ticket)),
        Err(refused) => Err(refused.into()),
    }
}
