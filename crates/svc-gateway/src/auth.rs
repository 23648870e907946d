//! Capabilities at the HTTP edge: `Authorization: Bearer <token>` checked by [`ron_auth::Auth`],
//! refusals in the shared error shape (401 with `WWW-Authenticate`, 403, 429 with
//! `Retry-After`).

use axum::http::{HeaderMap, header};
use ron_auth::token::Op;
use ron_auth::{Denied, Grant, Request};

use crate::AppState;

/// Checks the request's bearer token for `op` on `path` (a refusal answers through
/// [`crate::ApiError`]: 401 with `WWW-Authenticate`, 403, 429 with `Retry-After`).
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    op: Op,
    path: &str,
) -> Result<Grant, Denied> {
    let required = state.auth.requires_token(op);
    let token = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None if !required => return Ok(Grant::open()),
        None => None,
        Some(Ok(value)) => match bearer(value) {
            Some(token) => Some(token),
            // An open route ignores a credential it cannot read.
            None if !required => return Ok(Grant::open()),
            None => {
                return Err(Denied::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`".into(),
                ));
            }
        },
        Some(Err(_)) if !required => return Ok(Grant::open()),
        Some(Err(_)) => {
            return Err(Denied::Unauthenticated(
                "the Authorization header is not ASCII".into(),
            ));
        }
    };
    // On an open route a token only names its holder (metering, charging).
    state.auth.authorize(token, &Request { op, path })
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_tokens_are_found() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
