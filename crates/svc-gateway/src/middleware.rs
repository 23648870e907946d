//! Per-request plumbing: a request id (taken from `x-request-id` when sane, else made up),
//! a tracing span carrying it, the live request deadline, and latency by route pattern.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use std::borrow::Cow;

use axum::body::HttpBody;
use axum::http::{HeaderValue, Method, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ron_kernel::metrics::{ReasonLabel, RequestLabels};
use ron_proto::{ErrorKind, Problem};
use tracing::Instrument;

use crate::admin::Shared;
use crate::error::Rejected;
use crate::held::{self, Sends};
use crate::{ApiError, AppState, GatewaySection};
use supervisor::slo::Answered;

const REQUEST_ID: &str = "x-request-id";
/// Every route pattern the router has, so labels can borrow them.
const ROUTES: [&str; 13] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/status",
    "/put",
    "/o/{addr}",
    "/stat/{addr}",
    "/pin/{addr}",
    "/mail/send",
    "/mail/fetch",
    "/mail/ack",
    "/mail/ws",
    "<unmatched>",
];
const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn label_route(matched: Option<&str>) -> Cow<'static, str> {
    let matched = matched.unwrap_or("<unmatched>");
    // Every pattern is one of the router's; a new route missing here counts as unmatched.
    Cow::Borrowed(
        ROUTES
            .iter()
            .find(|r| **r == matched)
            .copied()
            .unwrap_or("<unmatched>"),
    )
}

/// A method label from a closed set: any other method a client makes up is `other`, so no
/// client can grow the metric series.
fn label_method(method: &Method) -> Cow<'static, str> {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
    Cow::Borrowed(
        KNOWN
            .iter()
            .find(|m| **m == method.as_str())
            .copied()
            .unwrap_or("other"),
    )
}

/// The trace the request is part of: the client's `traceparent` continued, or a new one
/// (sampled at the node's ratio).
fn trace_of(req: &Request) -> supervisor::trace::Context {
    let incoming = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    supervisor::trace::start(incoming)
}

/// The client's `x-request-id` when sane (1-64 visible ASCII characters), else the trace id
/// (32 hex digits: logs and traces tell the same id), as the header value it is echoed as.
fn request_id(req: &Request, trace: &supervisor::trace::Context) -> HeaderValue {
    let sane = |v: &&HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 64 && b.iter().all(u8::is_ascii_graphic)
    };
    match req.headers().get(REQUEST_ID).filter(sane) {
        Some(id) => id.clone(),
        None => {
            let mut hex = [0u8; 32];
            // Cannot fail: 32 digits for 16 bytes.
            let _ = hex::encode_to_slice(trace.parent.trace_id.to_be_bytes(), &mut hex);
            // Hex digits are always a valid header value; the fallback is never taken.
            HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
        }
    }
}

/// The W3C trace context header.
const TRACEPARENT: &str = "traceparent";

pub(crate) async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let trace = trace_of(&req);
    let id = request_id(&req, &trace);
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
    // A child of the client's span when it sent one and traces are recorded.
    let span = supervisor::trace::edge_span(trace, || {
        tracing::info_span!("request", request_id = id.to_str().unwrap_or_default())
    });
    // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host header is answered 400.
    if req.version() == Version::HTTP_11 && req.headers().get_all(header::HOST).iter().count() != 1
    {
        let refused = Problem::new(
            ErrorKind::BadInput,
            "an HTTP/1.1 request needs exactly one Host header",
        );
        let response = ApiError::from(refused).into_response();
        return finish(&state, response, route, method, started, id);
    }
    let ticket = match crate::limits::admit_request(&state, &req) {
        Ok(ticket) => ticket,
        Err(refused) => {
            return finish(&state, refused.into_response(), route, method, started, id);
        }
    };
    // The connection's large responses on their way (`held`); on HTTP/2, which multiplexes,
    // one the client stops taking is watched for a stall.
    let sends = req.extensions().get::<Arc<Sends>>().cloned();
    let watched = req.version() == Version::HTTP_2;
    // A request whose client has sent everything (no body, or none left) is being answered:
    // a slow answer (a lookup among slow peers) is not the client idling.
    let answering = sends
        .as_ref()
        .filter(|_| req.body().is_end_stream())
        .map(|s| s.answer());
    let client = req
        .extensions()
        .get::<ron_transport::limits::Peer>()
        .map(|p| p.0);
    let run = supervisor::trace::scope(
        trace,
        crate::payment::CLIENT
            .scope(client, next.run(req))
            .instrument(span.clone()),
    );
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
                span.in_scope(|| tracing::warn!(?deadline, "request deadline passed"));
                ApiError::from(Problem::new(ErrorKind::Timeout, "request deadline passed"))
                    .into_response()
            }
        }
    };
    // A large body keeps the request's place until it is sent (`held`); a small one is
    // already whole and gives it back now.
    let response = match ticket {
        Some(ticket) if held::is_large(response.body()) => {
            response.map(|body| held::hold(body, ticket, sends.as_ref(), watched))
        }
        _ => response,
    };
    drop(answering);
    finish(&state, response, route, method, started, id)
}

/// Marks the answer to a whole read of an object held here: what the object-latency SLO
/// measures (a read fetched from peers waits on them, not on this node).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalRead;

/// Failures the SLOs do not count: the node's own refusals (shedding them must not feed the
/// burn that made it shed), and failures that shedding load cannot help: peers failing,
/// damaged data, a full disk (its own alert pages).
const SHEDDING_CANNOT_HELP: [&str; 6] = [
    "rate_limited",
    "overloaded",
    "providers_unavailable",
    "damaged",
    "lost",
    "insufficient_storage",
];

/// Records the latency by route and echoes the request id.
fn finish(
    state: &AppState,
    mut response: Response,
    route: Cow<'static, str>,
    method: Cow<'static, str>,
    started: Instant,
    id: HeaderValue,
) -> Response {
    let rejected = response.extensions().get::<Rejected>().copied();
    if let Some(Rejected(reason)) = rejected {
        state
            .metrics
            .rejected()
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    // The SLOs see every request but the node's own refusals (shedding them must not feed
    // the burn that made the node shed).
    let answered = match rejected {
        // A 503 from /readyz is the answer asked for, not a failure.
        _ if route == "/readyz" => Answered::Excluded,
        Some(Rejected(code)) if SHEDDING_CANNOT_HELP.contains(&code) => Answered::Excluded,
        _ if response.extensions().get::<LocalRead>().is_some()
            && matches!(status, 200..=299 | 304) =>
        {
            Answered::Object
        }
        _ => Answered::Other,
    };
    state.slo.observe(answered, status, elapsed);
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
        .observe(elapsed.as_secs_f64());
    response.headers_mut().insert(REQUEST_ID, id);
    response
}
