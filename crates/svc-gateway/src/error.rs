//! The one place an error becomes an HTTP response: [`ApiError`], made from any
//! [`ron_proto::Failure`] (the overlay's, a refused capability, a refused admission, or a
//! problem the edge finds itself), answered as its status, the shared JSON body and
//! `Retry-After`. Handlers return `Result<Response, ApiError>` and use `?`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ron_proto::{ErrorBody, ErrorKind, Failure};

/// A failure on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    /// The body's code, for `rejected_total{reason}`: a code compiled into the node, never
    /// one a client chose.
    code: &'static str,
    body: ErrorBody,
}

impl<E: Failure> From<E> for ApiError {
    fn from(e: E) -> Self {
        let kind = e.kind();
        if matches!(kind, ErrorKind::Internal | ErrorKind::Damaged) {
            // The details stay here; the client gets the safe message.
            tracing::error!(error = %e, code = e.code(), "request failed");
        }
        Self {
            kind,
            code: e.code(),
            body: e.body(),
        }
    }
}

impl ApiError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Marks a response as a refusal, so the gateway's middleware counts it once in
/// `rejected_total{reason}` (the body's code: a closed set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejected(pub(crate) &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_error(status, &self.body);
        if self.kind == ErrorKind::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ron\""),
            );
        }
        if self.kind != ErrorKind::NotFound {
            response.extensions_mut().insert(Rejected(self.code));
        }
        response
    }
}

/// The response for an error of `kind` with `body` (for callers outside the gateway's
/// handlers, such as the HTTP/3 and TLS listeners' own refusals).
pub fn error_response(kind: ErrorKind, body: &ErrorBody) -> Response {
    let code = match body.code {
        std::borrow::Cow::Borrowed(code) => code,
        // A code made at run time is not a label: count it under its kind's.
        std::borrow::Cow::Owned(_) => kind.code(),
    };
    ApiError {
        kind,
        code,
        body: body.clone(),
    }
    .into_response()
}

/// The shared JSON body with any status (405 is outside [`ErrorKind`]), and `Retry-After`
/// (whole seconds, rounded up) when the body carries `retry_after_ms`.
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
