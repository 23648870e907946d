//! HTTP byte ranges and conditional requests on an object (RFC 9110 13-14), as the gateway
//! answers them: which bytes a GET sends, and whether `If-None-Match` matches. Plain functions
//! of header bytes, so they can be tested and fuzzed without a server.

use std::num::NonZeroUsize;
use std::ops::RangeInclusive;

use http_range_header::{RangeInvalid, RangeUnsatisfiableError};

/// Most ranges one request may ask for (a `multipart/byteranges` answer of more is refused).
pub const MAX_RANGES: usize = 64;

/// What a GET will send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangePlan {
    /// The whole object (no `Range`, a `Range` that is not of bytes, or an `If-Range` with
    /// another validator).
    Full,
    /// One range (206 with `Content-Range`).
    Single(RangeInclusive<u64>),
    /// Several (206 `multipart/byteranges`), in the order asked.
    Multi(Vec<RangeInclusive<u64>>),
    /// None of it can be sent (416), and why.
    Unsatisfiable(String),
}

/// The plan for an object of `size` bytes whose ETag is `tag`, from the request's `Range` and
/// `If-Range` header values. Every range of a plan lies within `0..size`.
pub fn plan(range: Option<&[u8]>, if_range: Option<&[u8]>, size: u64, tag: &str) -> RangePlan {
    let Some(range) = range else {
        return RangePlan::Full;
    };
    // If-Range with another validator: send the whole object.
    if if_range.is_some_and(|v| v != tag.as_bytes()) {
        return RangePlan::Full;
    }
    let Ok(text) = std::str::from_utf8(range) else {
        return RangePlan::Unsatisfiable("range header is not ASCII".into());
    };
    let max = NonZeroUsize::new(MAX_RANGES).unwrap_or(NonZeroUsize::MIN);
    let parsed = http_range_header::parse_range_header_with_max_ranges(text, max)
        .and_then(|p| p.validate(size));
    match parsed {
        Ok(ranges) if ranges.is_empty() => RangePlan::Full,
        Ok(mut ranges) if ranges.len() == 1 => RangePlan::Single(ranges.remove(0)),
        Ok(ranges) => RangePlan::Multi(ranges),
        // Not a bytes range: RFC 9110 says ignore it.
        Err(RangeUnsatisfiableError::Invalid(RangeInvalid::DoesNotStartWithToken)) => {
            RangePlan::Full
        }
        Err(e) => RangePlan::Unsatisfiable(e.to_string()),
    }
}

/// Whether an `If-None-Match` value names `tag` (weak or strong) or is `*`.
pub fn none_match(if_none_match: &[u8], tag: &str) -> bool {
    let Ok(text) = std::str::from_utf8(if_none_match) else {
        return false;
    };
    text.split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == tag || t == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"b3:00\"";

    #[test]
    fn ranges_plan_as_rfc_9110_says() {
        let p = |r: &str| plan(Some(r.as_bytes()), None, 100, TAG);
        assert_eq!(plan(None, None, 100, TAG), RangePlan::Full);
        assert_eq!(p("bytes=0-9"), RangePlan::Single(0..=9));
        assert_eq!(p("bytes=-10"), RangePlan::Single(90..=99));
        assert_eq!(p("bytes=90-"), RangePlan::Single(90..=99));
        assert_eq!(p("bytes=0-0,5-6"), RangePlan::Multi(vec![0..=0, 5..=6]));
        assert_eq!(p("items=0-9"), RangePlan::Full);
        assert!(matches!(p("bytes=100-"), RangePlan::Unsatisfiable(_)));
        assert!(matches!(p("bytes=9-0"), RangePlan::Unsatisfiable(_)));
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert!(matches!(p(&many), RangePlan::Unsatisfiable(_)));
        // If-Range: the same validator honours the range, another sends everything.
        let r = Some(&b"bytes=0-9"[..]);
        assert_eq!(
            plan(r, Some(TAG.as_bytes()), 100, TAG),
            RangePlan::Single(0..=9)
        );
        assert_eq!(plan(r, Some(b"\"other\""), 100, TAG), RangePlan::Full);
        assert!(matches!(
            plan(Some(b"bytes=\xff"), None, 100, TAG),
            RangePlan::Unsatisfiable(_)
        ));
    }

    #[test]
    fn if_none_match_names_the_tag_weakly_or_strongly_or_star() {
        assert!(none_match(TAG.as_bytes(), TAG));
        assert!(none_match(b"\"x\", W/\"b3:00\"", TAG));
        assert!(none_match(b"*", TAG));
        assert!(!none_match(b"\"x\"", TAG));
        assert!(!none_match(b"\xff", TAG));
    }
}
