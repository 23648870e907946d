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
    /// The stored bytes fail verification and no verified copy could be had from peers
    /// (503, code `damaged`): never answered with wrong bytes.
    Damaged,
    /// A deadline passed (504).
    Timeout,
    /// There is no room to keep what was sent (507): a full mailbox, a full disk. Retry
    /// once room is made.
    InsufficientStorage,
}

impl ErrorKind {
    /// Every kind, in status order.
    pub const ALL: [ErrorKind; 16] = [
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
        Self::Damaged,
        Self::Timeout,
        Self::InsufficientStorage,
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
            Self::Overloaded | Self::Damaged => 503,
            Self::Timeout => 504,
            Self::InsufficientStorage => 507,
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
            Self::Damaged => "damaged",
            Self::Timeout => "timeout",
            Self::InsufficientStorage => "insufficient_storage",
        }
    }

    /// The kind of a received status or OAP/1 `code`. Codes below 400 are not errors (`None`);
    /// an unknown 4xx is treated as [`ErrorKind::BadInput`], an unknown 5xx (or anything above)
    /// as [`ErrorKind::Internal`], as `specs/OAP-1.md` says. A status two kinds share (503)
    /// reads as the first of them; the body's `code` tells them apart.
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
    /// For `payment_required` (402): what the request costs and how to pay for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<Box<PaymentDue>>,
}

/// What a `402 payment_required` asks for: credits (the price and the balance), or a proof of
/// work (the challenge to solve).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDue {
    /// What the request costs, in credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<u64>,
    /// The credits the requester has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// A proof of work that pays instead (anonymous reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pow: Option<PowChallenge>,
}

/// A proof-of-work challenge: find a `nonce` such that BLAKE3(challenge bytes | nonce, 8 bytes
/// little-endian) starts with `bits` zero bits, then send the request again with the header
/// `ron-pow: <challenge>.<nonce as 16 hex digits>` before `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowChallenge {
    /// The challenge, hex (what the node signed: the object, the difficulty, the expiry).
    pub challenge: String,
    /// Leading zero bits the hash must have.
    pub bits: u8,
    /// When the challenge expires (unix ms).
    pub expires_ms: u64,
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
            payment: None,
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

/// An error an edge (HTTP, OAP/1) can meet, described once for every encoding: its kind, a
/// message safe to show a client, and when to retry. The gateway's response and the OAP/1
/// error frame are two short functions over this; nothing else decides what a client sees.
pub trait Failure: std::fmt::Display {
    /// The shared kind (status and default code).
    fn kind(&self) -> ErrorKind;

    /// The snake_case `code` of the body: the kind's, unless the error is more specific.
    fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// A message safe to show a client: an internal fault says only that (its details belong
    /// in the log), anything else says what went wrong.
    fn public_message(&self) -> String {
        if self.kind() == ErrorKind::Internal {
            "internal error".to_owned()
        } else {
            self.to_string()
        }
    }

    /// When a retry makes sense, after how many milliseconds: [`retry_policy`] unless the
    /// error knows better (a rate limit knows when its bucket refills).
    fn retry_after_ms(&self) -> Option<u64> {
        retry_policy(self.kind())
    }

    /// For a 402: the price, the balance, or the proof-of-work challenge.
    fn payment(&self) -> Option<PaymentDue> {
        None
    }

    /// The JSON body every edge sends.
    fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::with_code(self.code(), self.public_message());
        body.payment = self.payment().map(Box::new);
        match self.retry_after_ms() {
            Some(ms) => body.retry_after_ms(ms),
            None => body,
        }
    }
}

/// The one retry policy: retryable kinds ([`ErrorKind::is_retryable`]) come back after 1-5 s,
/// randomized so refused clients do not return in step; others are not retried.
pub fn retry_policy(kind: ErrorKind) -> Option<u64> {
    kind.is_retryable().then(|| fastrand::u64(1000..=5000))
}

/// An error the edge itself finds (a malformed header, an unknown route): a kind, a specific
/// code and a message, with the shared retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    kind: ErrorKind,
    code: &'static str,
    message: String,
}

impl Problem {
    /// A problem of `kind` with its default code.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: kind.code(),
            message: message.into(),
        }
    }

    /// A problem with a more specific code (`protocol_violation` is a `BadInput`).
    pub fn with_code(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure for Problem {
    fn kind(&self) -> ErrorKind {
        self.kind
    }

    fn code(&self) -> &'static str {
        self.code
    }

    fn public_message(&self) -> String {
        // The edge wrote this message for the client.
        self.message.clone()
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
                (503, "damaged"),
                (504, "timeout"),
                (507, "insufficient_storage"),
            ]
        );
    }

    #[test]
    fn unknown_codes_fall_back_to_their_class() {
        for kind in ErrorKind::ALL {
            let expected = match kind {
                ErrorKind::Damaged => ErrorKind::Overloaded,
                other => other,
            };
            assert_eq!(ErrorKind::from_status(kind.status()), Some(expected));
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
    fn failures_hide_internals_and_retry_only_when_it_helps() {
        let internal = Problem::new(ErrorKind::Internal, "disk at /x failed");
        assert_eq!(
            internal.public_message(),
            "disk at /x failed",
            "a problem's message is the edge's own"
        );
        #[derive(Debug)]
        struct Io;
        impl std::fmt::Display for Io {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("open /secret/path: permission denied")
            }
        }
        impl Failure for Io {
            fn kind(&self) -> ErrorKind {
                ErrorKind::Internal
            }
        }
        let body = Io.body();
        assert_eq!(
            (body.code.as_ref(), body.message.as_str()),
            ("internal", "internal error")
        );
        assert_eq!(body.retry_after_ms, None);
        let busy = Problem::with_code(ErrorKind::Overloaded, "busy", "try later").body();
        assert_eq!(busy.code, "busy");
        assert!((1000..=5000).contains(&busy.retry_after_ms.unwrap()));
        for kind in ErrorKind::ALL {
            assert_eq!(
                retry_policy(kind).is_some(),
                kind.is_retryable(),
                "{kind:?}"
            );
        }
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
