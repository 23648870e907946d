//! Names: `GET|PUT /names/ed25519/{hex}` (the record: resolve, publish) and
//! `GET|HEAD /n/ed25519/{hex}[/{path}]` (what the name points at, served like `/o/`).
//! Answers through a name are cached only for the record's TTL, never as immutable: the
//! name may move.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};
use ron_auth::name::{MAX_RECORD_BYTES, NameRecord};
use ron_auth::token::Op;
use ron_proto::{ErrorKind, Problem};
use serde_json::json;

use crate::ApiError;
use crate::admin::Shared;
use crate::auth::authorize;
use crate::collections::inside;
use crate::objects::serve;

/// Header naming the address a name resolved to.
const TARGET: &str = "x-ron-target";

fn bad(message: impl Into<String>) -> ApiError {
    Problem::new(ErrorKind::BadInput, message).into()
}

/// The record as JSON.
fn shown(record: &NameRecord) -> serde_json::Value {
    json!({
        "name": record.key,
        "target": record.target,
        "seq": record.seq,
        "ttl_s": record.ttl_s,
    })
}

/// `GET /names/ed25519/{hex}`: the name's newest valid record.
pub(crate) async fn show(
    State(state): State<Shared>,
    Path(hex): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = format!("ed25519/{hex}");
    if state.auth.requires_token(Op::Get) {
        authorize(&state, &headers, Op::Get, &format!("/names/{name}"))?;
    }
    let record = state.names.resolve(&name).await?;
    let mut response = Json(shown(&record)).into_response();
    cache_for(response.headers_mut(), &record);
    Ok(response)
}

/// `PUT /names/ed25519/{hex}`: publishes a signed record (DAG-CBOR, as `ron name publish`
/// makes) of that name: 400 when it is forged or for another name, 409 when a record as new
/// is known, 413 past [`MAX_RECORD_BYTES`].
pub(crate) async fn publish(
    State(state): State<Shared>,
    Path(hex): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = format!("ed25519/{hex}");
    authorize(&state, &headers, Op::Put, &format!("/names/{name}"))?;
    let bytes: Bytes = axum::body::to_bytes(body, MAX_RECORD_BYTES)
        .await
        .map_err(|_| {
            ApiError::from(Problem::new(
                ErrorKind::TooLarge,
                format!("a name record is at most {MAX_RECORD_BYTES} bytes"),
            ))
        })?;
    let published = state.names.publish(&name, &bytes).await?;
    let mut body = shown(&published.record);
    body["peers"] = json!(published.peers);
    Ok(Json(body).into_response())
}

/// `GET|HEAD /n/ed25519/{hex}` and `/n/ed25519/{hex}/{path}`: resolves the name, then serves
/// its target as `/o/{target}` (and the path inside it) would.
pub(crate) async fn follow(
    State(state): State<Shared>,
    request: Request,
) -> Result<Response, ApiError> {
    let raw = request.uri().path();
    let after = raw
        .strip_prefix("/n/ed25519/")
        .ok_or_else(|| bad("malformed name"))?;
    let (hex, rest) = match after.split_once('/') {
        Some((hex, rest)) => (hex, Some(rest)),
        None => (after, None),
    };
    if state.auth.requires_token(Op::Get) {
        authorize(&state, request.headers(), Op::Get, raw)?;
    }
    let record = state.names.resolve(&format!("ed25519/{hex}")).await?;
    let mut response = match rest {
        None => {
            serve(
                &state,
                request.method(),
                request.headers(),
                record.target,
                None,
            )
            .await?
        }
        Some(rest) => {
            inside(
                &state,
                request.method(),
                request.headers(),
                request.uri(),
                record.target,
                rest,
            )
            .await?
        }
    };
    cache_for(response.headers_mut(), &record);
    if let Ok(v) = HeaderValue::from_str(&record.target.to_string()) {
        response.headers_mut().insert(TARGET, v);
    }
    Ok(response)
}

/// Caching of an answer through a name: for the record's TTL, not forever.
fn cache_for(headers: &mut HeaderMap, record: &NameRecord) {
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", record.ttl_s)) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}
