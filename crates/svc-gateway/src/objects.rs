//! Object routes: `POST /put` (streamed), `GET|HEAD /o/{addr}` (verified streaming, ranges,
//! conditional requests), `GET /stat/{addr}`, `POST|DELETE /pin/{addr}`.

use std::ops::RangeInclusive;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use ron_kernel::metrics::ReasonLabel;
use ron_proto::{Address, ErrorBody, ErrorKind};
use serde_json::json;
use svc_overlay::OverlayError;
use svc_storage::{ObjectReader, PutError, PutOptions};

use ron_auth::token::Op;

use crate::admin::Shared;
use crate::auth::{authorize, denied};
use crate::{AppState, GatewaySection, error_response};

/// Header naming the address an upload must have.
pub const EXPECT_ADDRESS: &str = "x-ron-expect-address";
/// Most ranges one request may ask for.
const MAX_RANGES: usize = 64;
/// Bytes verified and sent per step of a response.
const WINDOW: u64 = 1 << 20;
/// Windows verified ahead of the one being sent.
const READ_AHEAD: usize = 2;

fn bad(kind: ErrorKind, message: impl Into<String>) -> Response {
    error_response(kind, &ErrorBody::new(kind, message))
}

/// A `b3:` address from the path; anything else is a 400 in the shared error shape.
pub(crate) struct Addr(Address);

impl<S: Send + Sync> FromRequestParts<S> for Addr {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(ErrorKind::BadInput, e.body_text()))?;
        text.parse::<Address>()
            .map(Addr)
            .map_err(|e| bad(ErrorKind::BadInput, format!("malformed address: {e}")))
    }
}

/// Counts a refused request in `rejected_total{reason}`.
pub(crate) fn reject(state: &AppState, reason: &str) {
    state
        .metrics
        .rejected()
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

/// Logs a failure in full and answers with a message safe for a client (internal details
/// stay in the log).
fn logged(what: &str, e: &dyn std::fmt::Display, kind: ErrorKind) -> Response {
    tracing::error!(error = %e, "{what}");
    let message = if kind == ErrorKind::Internal {
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    bad(kind, message)
}

fn etag(addr: &Address) -> String {
    format!("\"{addr}\"")
}

/// `POST /put`: the raw body, streamed into the store.
pub(crate) async fn put(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let grant = match authorize(&state, &headers, Op::Put, "/put") {
        Ok(grant) => grant,
        Err(d) => return denied(&state, &d),
    };
    let limit = state.config.get::<GatewaySection>().max_put_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        reject(&state, "too_large");
        return bad(
            ErrorKind::TooLarge,
            format!("upload exceeds the limit of {limit} bytes"),
        );
    }
    let expect = match headers.get(EXPECT_ADDRESS).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => match text.parse::<Address>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                return bad(
                    ErrorKind::BadInput,
                    format!("malformed x-ron-expect-address: {e}"),
                );
            }
        },
        Some(Err(_)) => return bad(ErrorKind::BadInput, "malformed x-ron-expect-address"),
    };
    let media_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(mt)) => Some(mt.to_owned()),
        Some(Err(_)) => return bad(ErrorKind::BadInput, "content-type is not visible ASCII"),
    };
    // Bytes count against the token's budget as they arrive (all at once when the length is
    // announced); an upload that does not complete gives them back.
    let mut charge = Charge {
        grant: &grant,
        charged: 0,
        kept: false,
    };
    if let Some(n) = announced
        && let Err(d) = charge.add(n)
    {
        return denied(&state, &d);
    }
    let options = PutOptions {
        media_type,
        expect,
        max_bytes: Some(limit),
        unpinned: false,
        // The store reads the chunks back for the outboard: keep them in the page cache.
        around_cache: false,
    };
    let mut writer = match state.overlay.writer(options) {
        Ok(upload) => upload,
        Err(e) => return overlay_error(&state, &e),
    };
    let mut body = body.into_data_stream();
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            // The client went away or broke the framing: nothing is stored (the writer's drop
            // removes what it wrote).
            Err(e) => {
                tracing::info!(error = %e, "upload aborted by the client");
                return bad(ErrorKind::BadInput, "upload body was cut short");
            }
        };
        state.traffic.received.inc_by(piece.len() as u64);
        if announced.is_none()
            && let Err(d) = charge.add(piece.len() as u64)
        {
            return denied(&state, &d);
        }
        if let Err(e) = writer.writer.write(&piece).await {
            return put_error(&state, e);
        }
    }
    match writer.writer.finish().await {
        Ok(stored) => {
            charge.kept = true;
            if let Some(network) = &state.network {
                network.stored(stored.address);
            }
            let status = if stored.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let location = format!("/o/{}", stored.address);
            let mut response = (
                status,
                Json(json!({"address": stored.address, "size": stored.size})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Err(e) => put_error(&state, e),
    }
}

/// Bytes charged to an upload's grant, refunded on drop unless the upload was kept.
struct Charge<'a> {
    grant: &'a ron_auth::Grant,
    charged: u64,
    kept: bool,
}

impl Charge<'_> {
    fn add(&mut self, bytes: u64) -> Result<(), ron_auth::Denied> {
        self.grant.charge(bytes)?;
        self.charged += bytes;
        Ok(())
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if !self.kept && self.charged > 0 {
            self.grant.refund(self.charged);
        }
    }
}

fn put_error(state: &AppState, e: PutError) -> Response {
    let kind = e.kind();
    reject(state, kind.code());
    match e {
        PutError::Store(e) => logged("upload failed", &e, kind),
        other => bad(kind, other.to_string()),
    }
}

/// Busy or down: 503 with a randomized retry hint (1-5 s); anything else is ours.
fn overlay_error(state: &AppState, e: &OverlayError) -> Response {
    let kind = e.kind();
    match e {
        OverlayError::Busy | OverlayError::Unavailable => {
            reject(state, "overloaded");
            let body =
                ErrorBody::new(kind, e.to_string()).retry_after_ms(fastrand::u64(1000..=5000));
            error_response(kind, &body)
        }
        OverlayError::Read(_) => {
            reject(state, "damaged");
            logged("stored object cannot be read", e, kind)
        }
        _ => {
            reject(state, kind.code());
            logged("object operation failed", e, kind)
        }
    }
}

fn not_found(addr: &Address) -> Response {
    bad(ErrorKind::NotFound, format!("no object {addr}"))
}

/// What a GET will send.
enum Plan {
    Full,
    Single(RangeInclusive<u64>),
    Multi(Vec<RangeInclusive<u64>>),
    Unsatisfiable(String),
}

fn plan(headers: &HeaderMap, size: u64, tag: &str) -> Plan {
    let Some(range) = headers.get(header::RANGE) else {
        return Plan::Full;
    };
    // If-Range with another validator: send the whole object.
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != tag.as_bytes()
    {
        return Plan::Full;
    }
    let Ok(text) = range.to_str() else {
        return Plan::Unsatisfiable("range header is not ASCII".into());
    };
    use http_range_header::{RangeInvalid, RangeUnsatisfiableError};
    let max = std::num::NonZeroUsize::new(MAX_RANGES).unwrap_or(std::num::NonZeroUsize::MIN);
    let parsed = http_range_header::parse_range_header_with_max_ranges(text, max)
        .and_then(|p| p.validate(size));
    match parsed {
        Ok(ranges) if ranges.is_empty() => Plan::Full,
        Ok(mut ranges) if ranges.len() == 1 => Plan::Single(ranges.remove(0)),
        Ok(ranges) => Plan::Multi(ranges),
        // Not a bytes range: RFC 9110 says ignore it.
        Err(RangeUnsatisfiableError::Invalid(RangeInvalid::DoesNotStartWithToken)) => Plan::Full,
        Err(e) => Plan::Unsatisfiable(e.to_string()),
    }
}

/// One piece of a response body.
enum Part {
    Static(Bytes),
    Span(u64, u64),
}

/// The body: static parts as they are, spans read and verified a window at a time, a few
/// windows ahead. A window that fails verification ends the stream with an error, so the
/// response is cut short instead of carrying wrong bytes.
fn body(reader: ObjectReader, parts: Vec<Part>, state: Shared) -> Body {
    let steps = parts.into_iter().flat_map(|part| -> Vec<Part> {
        match part {
            Part::Static(b) => vec![Part::Static(b)],
            Part::Span(start, end) => {
                let mut out = Vec::new();
                let mut at = start;
                while at < end {
                    let next = (at / WINDOW + 1) * WINDOW;
                    out.push(Part::Span(at, next.min(end)));
                    at = next.min(end);
                }
                out
            }
        }
    });
    let pieces = stream::iter(steps)
        .map(move |step| {
            let reader = reader.clone();
            async move {
                match step {
                    Part::Static(b) => Ok(b),
                    Part::Span(a, b) => reader.read_verified(a, b).await,
                }
            }
        })
        .buffered(READ_AHEAD)
        .map(move |r| {
            if let Ok(piece) = &r {
                state.traffic.sent.inc_by(piece.len() as u64);
            }
            r.map_err(|e| {
                reject(&state, "damaged");
                tracing::error!(error = %e, "aborting a response: stored bytes fail verification");
                std::io::Error::other(e.to_string())
            })
        });
    Body::from_stream(pieces)
}

/// An object this node lacks, fetched from the peer network (verified and stored unpinned
/// first), or the answer when it cannot be: 404 when no node provides it (or there is no
/// network), 504 when it was not found within the deadline, 503 when providers failed.
async fn fetched(state: &AppState, addr: Address) -> Result<ObjectReader, Box<Response>> {
    let Some(network) = &state.network else {
        return Err(Box::new(not_found(&addr)));
    };
    let incoming = match network.stream(addr).await {
        Ok(incoming) => incoming,
        Err(e) => return Err(Box::new(fetch_error(state, e))),
    };
    // Only the stored copy is wanted here; the transfer stores it without a listener.
    drop(incoming.bytes);
    match incoming.done.await {
        Ok(Ok(())) => match state.overlay.open(addr).await {
            Ok(Some(reader)) => Ok(reader),
            Ok(None) => Err(Box::new(not_found(&addr))),
            Err(e) => Err(Box::new(overlay_error(state, &e))),
        },
        Ok(Err(e)) => Err(Box::new(fetch_error(state, e))),
        Err(_) => Err(Box::new(fetch_error(
            state,
            crate::FetchError::Unavailable("the fetch stopped".into()),
        ))),
    }
}

/// `HEAD` of an object this node lacks: the headers a GET would carry, once a provider has
/// proven the object's size (the copy is fetched and stored meanwhile, as for a GET).
async fn headed(state: &AppState, addr: Address) -> Response {
    let Some(network) = &state.network else {
        return not_found(&addr);
    };
    match network.stream(addr).await {
        Ok(incoming) => (StatusCode::OK, fetched_headers(&addr, incoming.size)).into_response(),
        Err(e) => fetch_error(state, e),
    }
}

/// 404 when no node provides the object, 504 when the deadline passed, 503 when providers
/// failed.
fn fetch_error(state: &AppState, error: crate::FetchError) -> Response {
    match error {
        crate::FetchError::NotFound(addr) => not_found(&addr),
        e @ crate::FetchError::Timeout => {
            reject(state, "timeout");
            let kind = ErrorKind::Timeout;
            error_response(kind, &ErrorBody::new(kind, e.to_string()))
        }
        crate::FetchError::Unavailable(message) => {
            let kind = ErrorKind::Overloaded;
            let body = ErrorBody::new(kind, message).retry_after_ms(fastrand::u64(1000..=5000));
            error_response(kind, &body)
        }
    }
}

/// A whole-object GET of an object this node lacks: answered once a provider has proven its
/// size, its bytes sent as they arrive verified (and are stored), so the client does not wait
/// for the whole transfer and the store's commit. A transfer that fails part-way cuts the
/// response short (never a wrong byte); the errors before the first byte are as for
/// [`fetched`].
async fn streamed(state: Shared, addr: Address) -> Response {
    let Some(network) = &state.network else {
        return not_found(&addr);
    };
    let incoming = match network.stream(addr).await {
        Ok(incoming) => incoming,
        Err(e) => return fetch_error(&state, e),
    };
    let base = fetched_headers(&addr, incoming.size);
    let pieces = stream::unfold(incoming.bytes, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    })
    .map(move |piece| match piece {
        Ok(bytes) => {
            state.traffic.sent.inc_by(bytes.len() as u64);
            Ok(bytes)
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "aborting a response: the transfer from peers failed");
            Err(std::io::Error::other(e))
        }
    });
    (StatusCode::OK, base, Body::from_stream(pieces)).into_response()
}

/// The headers of an answer with the whole of an object fetched from peers (its media type is
/// not known here).
fn fetched_headers(addr: &Address, size: u64) -> HeaderMap {
    let mut base = common_headers(addr);
    base.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    base
}

/// The headers every answer with an object's bytes carries: its ETag (the address), cached
/// forever (an address's bytes never change), byte ranges accepted, no sniffing.
fn common_headers(addr: &Address) -> HeaderMap {
    let mut base = HeaderMap::new();
    if let Ok(tag) = HeaderValue::from_str(&etag(addr)) {
        base.insert(header::ETAG, tag);
    }
    base.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    base.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    base
}

/// `GET|HEAD /o/{addr}`.
pub(crate) async fn get(
    State(state): State<Shared>,
    method: Method,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Response {
    // Reads are open unless config says otherwise: skip building the path then.
    if state.auth.requires_token(Op::Get)
        && let Err(d) = authorize(&state, &headers, Op::Get, &format!("/o/{addr}"))
    {
        return denied(&state, &d);
    }
    let reader = match state.overlay.open(addr).await {
        Ok(Some(r)) => r,
        Ok(None) if method == Method::HEAD => return headed(&state, addr).await,
        // Held elsewhere, the whole object asked for: sent as it arrives.
        Ok(None)
            if method == Method::GET
                && !headers.contains_key(header::RANGE)
                && !headers.contains_key(header::IF_NONE_MATCH) =>
        {
            return streamed(state.clone(), addr).await;
        }
        Ok(None) => match fetched(&state, addr).await {
            Ok(r) => r,
            Err(response) => return *response,
        },
        Err(e) => return overlay_error(&state, &e),
    };
    let size = reader.size();
    let tag = etag(&addr);
    let media_type = reader
        .manifest()
        .media_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());

    let mut base = common_headers(&addr);
    let put = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };

    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == tag || t == "*")
    {
        return (StatusCode::NOT_MODIFIED, base).into_response();
    }

    let (status, parts, length) = match plan(&headers, size, &tag) {
        Plan::Full => {
            put(&mut base, header::CONTENT_TYPE, &media_type);
            (StatusCode::OK, vec![Part::Span(0, size)], size)
        }
        Plan::Single(r) => {
            put(&mut base, header::CONTENT_TYPE, &media_type);
            put(
                &mut base,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", r.start(), r.end()),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                vec![Part::Span(*r.start(), r.end() + 1)],
                r.end() + 1 - r.start(),
            )
        }
        Plan::Multi(ranges) => {
            let boundary = format!("ron-{:016x}", fastrand::u64(..));
            put(
                &mut base,
                header::CONTENT_TYPE,
                &format!("multipart/byteranges; boundary={boundary}"),
            );
            let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
            let mut length = 0u64;
            for r in &ranges {
                let head = format!(
                    "--{boundary}\r\nContent-Type: {media_type}\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                    r.start(),
                    r.end()
                );
                length += head.len() as u64 + (r.end() + 1 - r.start()) + 2;
                parts.push(Part::Static(Bytes::from(head)));
                parts.push(Part::Span(*r.start(), r.end() + 1));
                parts.push(Part::Static(Bytes::from_static(b"\r\n")));
            }
            let tail = format!("--{boundary}--\r\n");
            length += tail.len() as u64;
            parts.push(Part::Static(Bytes::from(tail)));
            (StatusCode::PARTIAL_CONTENT, parts, length)
        }
        Plan::Unsatisfiable(why) => {
            let mut response = bad(ErrorKind::RangeNotSatisfiable, why);
            put(
                response.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return response;
        }
    };
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if method == Method::HEAD {
        return (status, base).into_response();
    }
    // A small single-span answer is read and verified before anything is sent: one write,
    // and damage becomes a clean error response instead of a cut-off body.
    if let [Part::Span(a, b)] = parts[..]
        && b - a <= WINDOW
    {
        return match reader.read_verified(a, b).await {
            Ok(bytes) => {
                state.traffic.sent.inc_by(bytes.len() as u64);
                (status, base, bytes).into_response()
            }
            Err(e) => overlay_error(&state, &OverlayError::Read(e)),
        };
    }
    (status, base, body(reader, parts, state)).into_response()
}

/// `GET /stat/{addr}`.
pub(crate) async fn stat(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Response {
    if state.auth.requires_token(Op::Stat)
        && let Err(d) = authorize(&state, &headers, Op::Stat, &format!("/stat/{addr}"))
    {
        return denied(&state, &d);
    }
    match state.overlay.stat(addr).await {
        Ok(Some(stat)) => Json(stat).into_response(),
        Ok(None) => not_found(&addr),
        Err(e) => overlay_error(&state, &e),
    }
}

async fn set_pin(state: Shared, headers: HeaderMap, addr: Address, pinned: bool) -> Response {
    let op = if pinned { Op::Pin } else { Op::Unpin };
    if let Err(d) = authorize(&state, &headers, op, &format!("/pin/{addr}")) {
        return denied(&state, &d);
    }
    let mut outcome = state.overlay.set_pinned(addr, pinned).await;
    // Pinning an object this node lacks fetches it first (verified and stored, as for a GET):
    // `ron pin` on any node keeps any object of the network there.
    if pinned && matches!(outcome, Ok(false)) && state.network.is_some() {
        if let Err(answer) = fetched(&state, addr).await {
            return *answer;
        }
        outcome = state.overlay.set_pinned(addr, true).await;
        if matches!(outcome, Ok(false)) {
            // Evicted from the fetch cache between its commit and the pin.
            let kind = ErrorKind::Overloaded;
            let body = ErrorBody::new(kind, "the fetched copy was evicted before it was pinned")
                .retry_after_ms(fastrand::u64(1000..=5000));
            return error_response(kind, &body);
        }
    }
    match outcome {
        Ok(true) => {
            if let Some(network) = &state.network {
                if pinned {
                    network.stored(addr);
                } else {
                    network.withdrawn(addr);
                }
            }
            Json(json!({"address": addr, "pinned": pinned})).into_response()
        }
        Ok(false) => not_found(&addr),
        Err(e) => overlay_error(&state, &e),
    }
}

/// `POST /pin/{addr}`: an object this node lacks is fetched from the peer network first (404
/// when no node provides it, 504 when none was found within the fetch deadline).
pub(crate) async fn pin(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Response {
    set_pin(state, headers, addr, true).await
}

/// `DELETE /pin/{addr}`.
pub(crate) async fn unpin(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Response {
    set_pin(state, headers, addr, false).await
}
