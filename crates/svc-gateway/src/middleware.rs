//! Per-request plumbing: a request id (taken from `x-request-id` when sane, else made up),
//! a tracing span carrying it, the live request deadline, and latency by route pattern.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use std::borrow::Cow;

use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use ron_kernel::metrics::{ReasonLabel, RequestLabels};
use ron_proto::{ErrorBody, ErrorKind};
use tracing::Instrument;

use crate::admin::Shared;
use crate::{AppState, GatewaySection, error_response};

const REQUEST_ID: &str = "x-request-id";
/// Every route pattern the router has, so labels can borrow them.
const ROUTES: [&str; 9] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/status",
    "/put",
    "/o/{addr}",
    "/stat/{addr}",
    "/pin/{addr}",
    "<unmatched>",
];
const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn label_route(matched: Option<&str>) -> Cow<'static, str> {
    let matched = matched.unwrap_or("<unmatched>");
    ROUTES
        .iter()
        .find(|r| **r == matched)
        .map_or_else(|| Cow::Owned(matched.to_owned()), |r| Cow::Borrowed(*r))
}

fn label_method(method: &Method) -> Cow<'static, str> {
    const KNOWN: [&str; 5] = ["GET", "HEAD", "POST", "PUT", "DELETE"];
    KNOWN.iter().find(|m| **m == method.as_str()).map_or_else(
        || Cow::Owned(method.as_str().to_owned()),
        |m| Cow::Borrowed(*m),
    )
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_owned)
}

pub(crate) async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    // Label by route pattern, never by raw path: bounded cardinality.
    let route = label_route(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let method = label_method(req.method());
    // Object transfers stream for as long as they move (idle and write limits bound them), and
    // a pin may fetch its object from peers first (bounded by the fetch's own deadlines);
    // every other route has a whole-request deadline.
    let streaming = matches!(route.as_ref(), "/put" | "/o/{addr}" | "/pin/{addr}");
    // One field: the JSON log layer formats span fields when the span is created, on every
    // request (three fields cost ~10% of a small GET's instructions; decision 0008).
    let span = tracing::info_span!("request", request_id = %id);
    let ticket = match crate::limits::admit_request(&state, &req) {
        Ok(ticket) => ticket,
        Err(refused) => return finish(&state, *refused, route, method, started, &id),
    };
    let run = next.run(req).instrument(span.clone());
    let response = if streaming {
        // No whole-request deadline (and no timer) for transfers that go on as long as they
        // move.
        run.await
    } else {
        let deadline =
            Duration::from_millis(state.config.get::<GatewaySection>().request_timeout_ms);
        match tokio::time::timeout(deadline, run).await {
            Ok(response) => response,
            Err(_) => {
                state
                    .metrics
                    .rejected()
                    .get_or_create(&ReasonLabel {
                        reason: "timeout".to_owned(),
                    })
                    .inc();
                span.in_scope(|| tracing::warn!(?deadline, "request deadline passed"));
                error_response(
                    ErrorKind::Timeout,
                    &ErrorBody::new(ErrorKind::Timeout, "request deadline passed"),
                )
            }
        }
    };
    drop(ticket);
    finish(&state, response, route, method, started, &id)
}

/// Records the latency by route and echoes the request id.
fn finish(
    state: &AppState,
    mut response: Response,
    route: Cow<'static, str>,
    method: Cow<'static, str>,
    started: Instant,
    id: &str,
) -> Response {
    let status = response.status().as_u16();
    state
        .metrics
        .request_latency()
        .get_or_create(&RequestLabels {
            route,
            method,
            status: Cow::Borrowed(
                STATUS_CLASSES
                    .get(usize::from(status / 100))
                    .copied()
                    .unwrap_or("other"),
            ),
        })
        .observe(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
