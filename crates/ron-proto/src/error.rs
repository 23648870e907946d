//! The error kinds every RustyOnions failure maps to, and the one JSON error body that HTTP
//! responses and OAP/1 error frames carry.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// What kind of failure an error is. The gateway maps a kind to an HTTP status in one place,
/// the OAP/1 layer to a frame `code` (the same number), the supervisor uses it to decide on
/// retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed (400).
    BadInput,
    /// No valid credential was presented (401).
    Unauthorized,
    /// The operation must be paid for first (402).
    PaymentRequired,
    /// The credential does not allow this operation (403).
    Forbidden,
    /// No such object or route (404).
    NotFound,
    /// The request conflicts with current state (409).
    Conflict,
    /// The request or a frame is larger than allowed (413).
    TooLarge,
    /// The requested byte range lies outside the object (416).
    RangeNotSatisfiable,
    /// The content does not match the address it was announced under (422).
    ContentMismatch,
    /// This peer sends too much; retry later (429).
    RateLimited,
    /// The request headers are larger than allowed (431).
    HeadersTooLarge,
    /// A fault of ours (500).
    Internal,
    /// The node as a whole is overloaded; retry later (503).
    Overloaded,
    /// A deadline passed (504).
    Timeout,
}

impl ErrorKind {
    /// Every kind, in status order.
    pub const ALL: [ErrorKind; 14] = [
        Self::BadInput,
        Self::Unauthorized,
        Self::PaymentRequired,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::TooLarge,
        Self::RangeNotSatisfiable,
        Self::ContentMismatch,
        Self::RateLimited,
        Self::HeadersTooLarge,
        Self::Internal,
        Self::Overloaded,
        Self::Timeout,
    ];

    /// The HTTP status for this kind, which is also its OAP/1 frame `code`.
    pub const fn status(self) -> u16 {
        match self {
            Self::BadInput => 400,
            Self::Unauthorized => 401,
            Self::PaymentRequired => 402,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::RangeNotSatisfiable => 416,
            Self::ContentMismatch => 422,
            Self::RateLimited => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Overloaded => 503,
            Self::Timeout => 504,
        }
    }

    /// The default snake_case `code` of the JSON error body for this kind. Errors may use a
    /// more specific code (`frame_too_large` is a `TooLarge`).
    pub const fn code(self) -> &'static str {
        match self {
            Self::BadInput => "bad_input",
            Self::Unauthorized => "unauthorized",
            Self::PaymentRequired => "payment_required",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::ContentMismatch => "content_mismatch",
            Self::RateLimited => "rate_limited",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Internal => "internal",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
        }
    }

    /// The kind of a received status or OAP/1 `code`. Codes below 400 are not errors (`None`);
    /// an unknown 4xx is treated as [`ErrorKind::BadInput`], an unknown 5xx (or anything above)
    /// as [`ErrorKind::Internal`], as `specs/OAP-1.md` says.
    pub fn from_status(status: u16) -> Option<Self> {
        if status < 400 {
            return None;
        }
        Some(
            Self::ALL
                .into_iter()
                .find(|k| k.status() == status)
                .unwrap_or(if status < 500 {
                    Self::BadInput
                } else {
                    Self::Internal
                }),
        )
    }

    /// Whether trying the same request again later may succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Overloaded | Self::Timeout)
    }
}

/// The shared JSON error body: `{"code":"<snake_case>","message":"…","retry_after_ms":N}`,
/// the last only when a retry makes sense.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable snake_case reason a program can switch on.
    pub code: Cow<'static, str>,
    /// A short human-readable message, safe to show a client (no internals).
    pub message: String,
    /// When to retry, for retryable errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// A body with the default code of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::with_code(kind.code(), message)
    }

    /// A body with a specific code.
    pub fn with_code(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Cow::Borrowed(code),
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Adds the retry hint.
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// The body as compact JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"code\":\"internal\"}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_architecture_table() {
        let table: Vec<(u16, &str)> = ErrorKind::ALL
            .iter()
            .map(|k| (k.status(), k.code()))
            .collect();
        assert_eq!(
            table,
            [
                (400, "bad_input"),
                (401, "unauthorized"),
                (402, "payment_required"),
                (403, "forbidden"),
                (404, "not_found"),
                (409, "conflict"),
                (413, "too_large"),
                (416, "range_not_satisfiable"),
                (422, "content_mismatch"),
                (429, "rate_limited"),
                (431, "headers_too_large"),
                (500, "internal"),
                (503, "overloaded"),
                (504, "timeout"),
            ]
        );
    }

    #[test]
    fn unknown_codes_fall_back_to_their_class() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_status(kind.status()), Some(kind));
        }
        assert_eq!(ErrorKind::from_status(0), None);
        assert_eq!(ErrorKind::from_status(206), None);
        assert_eq!(ErrorKind::from_status(304), None);
        assert_eq!(ErrorKind::from_status(408), Some(ErrorKind::BadInput));
        assert_eq!(ErrorKind::from_status(499), Some(ErrorKind::BadInput));
        assert_eq!(ErrorKind::from_status(502), Some(ErrorKind::Internal));
        assert_eq!(ErrorKind::from_status(u16::MAX), Some(ErrorKind::Internal));
    }

    #[test]
    fn error_body_matches_spec_shape() {
        let body = ErrorBody::new(ErrorKind::RateLimited, "too many requests").retry_after_ms(2000);
        assert_eq!(
            String::from_utf8(body.to_json()).unwrap(),
            r#"{"code":"rate_limited","message":"too many requests","retry_after_ms":2000}"#
        );
        let plain = ErrorBody::new(ErrorKind::NotFound, "no such object");
        assert_eq!(
            String::from_utf8(plain.to_json()).unwrap(),
            r#"{"code":"not_found","message":"no such object"}"#
        );
        let parsed: ErrorBody = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(parsed, body);
    }
}
