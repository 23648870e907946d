//! Object routes: `POST /put` (streamed), `GET|HEAD /o/{addr}` (verified streaming, ranges,
//! conditional requests), `GET /stat/{addr}`, `POST|DELETE /pin/{addr}`.

use std::ops::RangeInclusive;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use ron_auth::token::Op;
use ron_proto::ranges::{self, RangePlan};
use ron_proto::{Address, ErrorKind, Problem};
use serde_json::json;
use svc_overlay::{Got, Incoming, Object, PutRequest};

use crate::ApiError;
use crate::admin::Shared;
use crate::auth::authorize;

/// Header naming the address an upload must have.
pub const EXPECT_ADDRESS: &str = "x-ron-expect-address";
/// The upload header asking for a durability other than `storage.durability`: `K+M` or
/// `none`.
pub const DURABILITY: &str = "x-ron-durability";
/// Bytes verified and sent per step of a response.
const WINDOW: u64 = 1 << 20;
/// The `Content-Security-Policy` of every stored object served.
const USER_CONTENT_POLICY: &str = "sandbox allow-scripts allow-forms allow-popups allow-downloads";
/// Windows verified ahead of the one being sent.
const READ_AHEAD: usize = 2;

fn bad(message: impl Into<String>) -> ApiError {
    Problem::new(ErrorKind::BadInput, message).into()
}

/// A `b3:` address from the path; anything else is a 400 in the shared error shape.
pub(crate) struct Addr(Address);

impl<S: Send + Sync> FromRequestParts<S> for Addr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Every route with an address ends with it: read it from the path as sent, unless it
        // is percent-encoded, which the router's parameter decodes.
        let path = parts.uri.path();
        if let Some(slash) = path.bytes().rposition(|b| b == b'/')
            && let text = &path[slash + 1..]
            && !text.bytes().any(|b| b == b'%')
        {
            return text
                .parse::<Address>()
                .map(Addr)
                .map_err(|e| bad(format!("malformed address: {e}")));
        }
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(e.body_text()))?;
        text.parse::<Address>()
            .map(Addr)
            .map_err(|e| bad(format!("malformed address: {e}")))
    }
}

/// An address's entity tag, `"b3:<hex>"`, on the stack: served on every object answer.
struct Etag([u8; Address::TEXT_LEN + 2]);

impl Etag {
    fn of(addr: &Address) -> Self {
        let mut tag = [b'"'; Address::TEXT_LEN + 2];
        tag[1..=Address::TEXT_LEN].copy_from_slice(&addr.ascii());
        Self(tag)
    }

    fn as_str(&self) -> &str {
        // Quotes, `b3:` and hex digits: ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The upload's announced length, expected address and media type, from its headers.
fn put_request(headers: &HeaderMap) -> Result<(Option<u64>, PutRequest), ApiError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expect = match headers.get(EXPECT_ADDRESS).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => Some(
            text.parse::<Address>()
                .map_err(|e| bad(format!("malformed x-ron-expect-address: {e}")))?,
        ),
        Some(Err(_)) => return Err(bad("malformed x-ron-expect-address")),
    };
    let media_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(mt)) => Some(mt.to_owned()),
        Some(Err(_)) => return Err(bad("content-type is not visible ASCII")),
    };
    let durability = match headers.get(DURABILITY).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => Some(
            ron_proto::layout::parse_durability(text)
                .map_err(|e| bad(format!("malformed x-ron-durability: {e}")))?,
        ),
        Some(Err(_)) => return Err(bad("malformed x-ron-durability")),
    };
    Ok((
        announced,
        PutRequest {
            media_type,
            expect,
            durability,
        },
    ))
}

/// `POST /put`: the raw body, streamed into the overlay.
pub(crate) async fn put(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let grant = authorize(&state, &headers, Op::Put, "/put")?;
    let (announced, request) = put_request(&headers)?;
    let limit = state.overlay.max_object_bytes();
    if announced.is_some_and(|n| n > limit) {
        return Err(svc_overlay::OverlayError::TooLarge { limit }.into());
    }
    if let Some(n) = announced {
        state.overlay.room_for(n)?;
    }
    // Bytes count against the token's budget as they arrive (all at once when the length is
    // announced); an upload that does not complete gives them back.
    let mut charge = grant.charging();
    if let Some(n) = announced {
        charge.add(n)?;
    }
    crate::payment::check_upload(&state, grant.holder(), announced)?;
    // Its price is reserved before anything is stored (as bytes arrive when not announced).
    let mut reservation = match &state.payment {
        Some(p) => p.reserve(grant.holder(), announced).await?,
        None => svc_payment::Reservation::free(),
    };
    let mut upload = state.overlay.put(request)?;
    let mut body = body.into_data_stream();
    while let Some(piece) = body.next().await {
        // The client went away or broke the framing: nothing is stored (the upload's drop
        // removes what it wrote).
        let piece = piece.map_err(|e| {
            tracing::info!(error = %e, "upload aborted by the client");
            bad("upload body was cut short")
        })?;
        state.traffic.received.inc_by(piece.len() as u64);
        if announced.is_none() {
            charge.add(piece.len() as u64)?;
            reservation
                .grow(upload.received() + piece.len() as u64)
                .await?;
        }
        upload.write(&piece).await?;
    }
    if announced.is_some_and(|n| n != upload.received()) {
        return Err(bad("upload body does not match its announced length"));
    }
    let stored = upload.finish().await?;
    charge.keep();
    let charged = match reservation.post(stored.size).await {
        Ok(credits) => credits > 0,
        Err(e) => {
            // Stored and answered: a reservation past `payment.reserve_s` was given back.
            tracing::warn!(error = %e, "an upload's reserved credits could not be charged");
            false
        }
    };
    crate::payment::record_upload(&state, grant.holder(), stored.address, stored.size, charged);
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (
        status,
        Json(json!({"address": stored.address, "size": stored.size})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/o/{}", stored.address)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// One piece of a response body.
enum Part {
    Static(Bytes),
    Span(u64, u64),
}

/// The body: static parts as they are, spans read and verified a window at a time, a few
/// windows ahead. A window that fails verification (and cannot be repaired from peers) ends
/// the stream with an error, so the response is cut short instead of carrying wrong bytes.
fn body(object: Object, parts: Vec<Part>, state: Shared) -> Body {
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
            let object = object.clone();
            async move {
                match step {
                    Part::Static(b) => Ok(b),
                    Part::Span(a, b) => object.read_verified(a, b).await,
                }
            }
        })
        .buffered(READ_AHEAD)
        .map(move |r| {
            if let Ok(piece) = &r {
                state.traffic.sent.inc_by(piece.len() as u64);
            }
            r.map_err(|e| {
                // The head has gone out: the refusal is the cut, counted here.
                tracing::error!(error = %e, "aborting a response: stored bytes fail verification");
                state
                    .metrics
                    .rejected()
                    .get_or_create(&ron_kernel::metrics::ReasonLabel {
                        reason: ron_proto::Failure::code(&e).to_owned(),
                    })
                    .inc();
                std::io::Error::other(e.to_string())
            })
        });
    Body::from_stream(pieces)
}

/// A whole object arriving from peers: answered once a provider has proven its size, its
/// bytes sent as they arrive verified (and are stored), so the client does not wait for the
/// whole transfer and the store's commit. A transfer that fails part-way cuts the response
/// short (never a wrong byte).
fn streamed(
    state: Shared,
    addr: Address,
    incoming: Incoming,
    head: bool,
    media_type: Option<String>,
) -> Response {
    let base = fetched_headers(&addr, incoming.size, media_type.as_deref());
    if head {
        return respond(StatusCode::OK, base, Body::empty());
    }
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
    respond(StatusCode::OK, base, Body::from_stream(pieces))
}

/// The headers of an answer with the whole of an object fetched from peers (its stored media
/// type is not known here: a collection's entry may name one).
fn fetched_headers(addr: &Address, size: u64, media_type: Option<&str>) -> HeaderMap {
    let mut base = common_headers(&Etag::of(addr));
    let media_type = media_type
        .and_then(|mt| HeaderValue::from_str(mt).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    base.insert(header::CONTENT_TYPE, media_type);
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    base
}

/// The headers every answer with an object's bytes carries: its ETag (the address), cached
/// forever (an address's bytes never change), byte ranges accepted, no sniffing.
fn common_headers(tag: &Etag) -> HeaderMap {
    // Room for these and what an answer adds (type, length, range, request id): no regrowth.
    let mut base = HeaderMap::with_capacity(12);
    if let Ok(tag) = HeaderValue::from_bytes(&tag.0) {
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
    // Stored bytes get none of the node's authority: an HTML or SVG object opened in a browser
    // runs in a sandbox with an opaque origin (no `allow-same-origin`), so its scripts cannot
    // read this origin's routes, storage or console with the owner's credentials.
    base.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(USER_CONTENT_POLICY),
    );
    base
}

/// `GET|HEAD /o/{addr}`: this node's copy, or one fetched from peers (404 when no node
/// provides it, 504 when none was found within the fetch deadline, 503 when providers
/// failed or the stored copy is damaged beyond repair).
pub(crate) async fn get(
    State(state): State<Shared>,
    Addr(addr): Addr,
    request: Request,
) -> Result<Response, ApiError> {
    // The request itself, not copies of its method and headers.
    let (method, headers) = (request.method(), request.headers());
    // Reads are open unless config says otherwise: skip building the path then.
    if state.auth.requires_token(Op::Get) {
        authorize(&state, headers, Op::Get, &format!("/o/{addr}"))?;
    }
    serve(&state, method, headers, addr, None).await
}

/// The answer with an object's bytes, served as `media_type` when given (a collection's
/// entry), else as stored. Ranges and conditional requests need the stored copy; a whole
/// object may stream from peers as it arrives.
pub(crate) async fn serve(
    state: &Shared,
    method: &Method,
    headers: &HeaderMap,
    addr: Address,
    media_type: Option<String>,
) -> Result<Response, ApiError> {
    let whole =
        !headers.contains_key(header::RANGE) && !headers.contains_key(header::IF_NONE_MATCH);
    let object = if whole {
        match state.overlay.get(addr).await? {
            Got::Stored(object) => {
                let mut response = answer(state, method, headers, addr, object, media_type).await?;
                // What the object-latency SLO measures: whole reads of objects held here.
                response
                    .extensions_mut()
                    .insert(crate::middleware::LocalRead);
                return Ok(response);
            }
            Got::Arriving(incoming) => {
                if method != Method::HEAD {
                    crate::payment::pay_read(state, headers, &addr, incoming.size).await?;
                }
                return Ok(streamed(
                    state.clone(),
                    addr,
                    incoming,
                    method == Method::HEAD,
                    media_type,
                ));
            }
        }
    } else {
        state.overlay.get_stored(addr).await?
    };
    answer(state, method, headers, addr, object, media_type).await
}

/// A response of `status` with `headers` and `body`, built in place (a tuple's
/// `into_response` would merge the header map into a fresh one).
fn respond(status: StatusCode, headers: HeaderMap, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The answer with a stored object's bytes: conditional, ranges, multipart.
async fn answer(
    state: &Shared,
    method: &Method,
    headers: &HeaderMap,
    addr: Address,
    object: Object,
    media_type: Option<String>,
) -> Result<Response, ApiError> {
    let size = object.size();
    let etag = Etag::of(&addr);
    let tag = etag.as_str();
    let media_type = media_type
        .or_else(|| object.media_type())
        .unwrap_or_else(|| "application/octet-stream".into());

    let mut base = common_headers(&etag);
    let put = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };

    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|inm| ranges::none_match(inm.as_bytes(), tag))
    {
        return Ok(respond(StatusCode::NOT_MODIFIED, base, Body::empty()));
    }

    let range = headers.get(header::RANGE).map(HeaderValue::as_bytes);
    let if_range = headers.get(header::IF_RANGE).map(HeaderValue::as_bytes);
    let (status, parts, length) = match ranges::plan(range, if_range, size, tag) {
        RangePlan::Full => {
            put(&mut base, header::CONTENT_TYPE, &media_type);
            (StatusCode::OK, vec![Part::Span(0, size)], size)
        }
        RangePlan::Single(r) => {
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
        RangePlan::Multi(ranges) => multipart(&mut base, &media_type, size, &ranges),
        RangePlan::Unsatisfiable(why) => {
            let mut response =
                ApiError::from(Problem::new(ErrorKind::RangeNotSatisfiable, why)).into_response();
            put(
                response.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return Ok(response);
        }
    };
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if method == Method::HEAD {
        return Ok(respond(status, base, Body::empty()));
    }
    // Paid for (credits, or a proof of work) before a byte is sent.
    crate::payment::pay_read(state, headers, &addr, length).await?;
    // A small single-span answer is read and verified before anything is sent: one write,
    // and damage (after a repair attempt) becomes a clean error instead of a cut-off body.
    if let [Part::Span(a, b)] = parts[..]
        && b - a <= WINDOW
    {
        let bytes = object.read_verified(a, b).await?;
        state.traffic.sent.inc_by(bytes.len() as u64);
        return Ok(respond(status, base, bytes));
    }
    Ok(respond(status, base, body(object, parts, state.clone())))
}

/// The parts and length of a `multipart/byteranges` answer, its content type set in `base`.
fn multipart(
    base: &mut HeaderMap,
    media_type: &str,
    size: u64,
    ranges: &[RangeInclusive<u64>],
) -> (StatusCode, Vec<Part>, u64) {
    let boundary = format!("ron-{:016x}", fastrand::u64(..));
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
        base.insert(header::CONTENT_TYPE, v);
    }
    let mut parts = Vec::with_capacity(ranges.len() * 3 + 1);
    let mut length = 0u64;
    for r in ranges {
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

/// `GET /stat/{addr}`.
pub(crate) async fn stat(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.auth.requires_token(Op::Stat) {
        authorize(&state, &headers, Op::Stat, &format!("/stat/{addr}"))?;
    }
    let stat = state.overlay.stat(addr).await?;
    // A protected object's durability, counted now, on any node (none for an object
    // without a layout).
    let durability = state.overlay.durability(addr).await?;
    match (stat, durability) {
        (Some(stat), durability) => {
            let mut body = serde_json::to_value(stat).unwrap_or_default();
            if let Some(d) = durability {
                body["durability"] = serde_json::to_value(d).unwrap_or_default();
            }
            Ok(Json(body).into_response())
        }
        // Not here, but protected: what its layout says.
        (None, Some(d)) => Ok(Json(json!({
            "address": addr,
            "size": d.size,
            "stored": false,
            "durability": d,
        }))
        .into_response()),
        (None, None) => Err(svc_overlay::OverlayError::NotFound(addr).into()),
    }
}

/// `POST /pin/{addr}`: an object this node lacks is fetched from the peer network first (404
/// when no node provides it, 504 when none was found within the fetch deadline).
pub(crate) async fn pin(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::Pin, &format!("/pin/{addr}"))?;
    state.overlay.pin(addr).await?;
    Ok(Json(json!({"address": addr, "pinned": true})).into_response())
}

/// `DELETE /pin/{addr}`.
pub(crate) async fn unpin(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::Unpin, &format!("/pin/{addr}"))?;
    state.overlay.unpin(addr).await?;
    Ok(Json(json!({"address": addr, "pinned": false})).into_response())
}

/// `DELETE /o/{addr}` (a token that allows `delete`): the object leaves this node, pinned or
/// not; chunks nothing else references are freed and it is no longer announced.
pub(crate) async fn delete(
    State(state): State<Shared>,
    Addr(addr): Addr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::Delete, &format!("/o/{addr}"))?;
    state.overlay.delete(addr).await?;
    Ok(Json(json!({"address": addr, "deleted": true})).into_response())
}

/// `POST /gc` (a token that allows `delete`): the periodic collection, now.
pub(crate) async fn gc(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::Delete, "/gc")?;
    let report = state.overlay.collect().await?;
    Ok(Json(json!({
        "objects": report.objects,
        "chunks": report.chunks,
        "bytes": report.bytes,
    }))
    .into_response())
}

/// Most objects one page of `GET /objects` holds.
const MAX_PAGE: usize = 1000;

/// The query of `GET /objects`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /objects[?after=b3:…&limit=N]` (a token that allows `list`): a page of what this node
/// stores, in address order (`limit` 1 to 1000, default 100); `next` is the `after` of the
/// following page, `null` on the last.
pub(crate) async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::List, "/objects")?;
    let axum::extract::Query(query) = query.map_err(|e| bad(e.body_text()))?;
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<Address>()
                .map_err(|e| bad(format!("malformed after: {e}")))?,
        ),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let page = state.overlay.list(after, limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|o| o.address))
        .flatten();
    Ok(Json(json!({"objects": page, "next": next})).into_response())
}
