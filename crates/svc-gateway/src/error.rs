//! The one place an error becomes an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ron_proto::{ErrorBody, ErrorKind};

/// The response for an error of `kind`: its status, the shared JSON body, and `Retry-After`
/// (whole seconds, rounded up) when the body carries `retry_after_ms`.
pub fn error_response(kind: ErrorKind, body: &ErrorBody) -> Response {
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_error(status, body)
}

/// Like [`error_response`] for statuses outside [`ErrorKind`] (405).
pub(crate) fn json_error(status: StatusCode, body: &ErrorBody) -> Response {
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_json(),
    )
        .into_response();
    if let Some(ms) = body.retry_after_ms {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    }
    response
}
