//! W3C trace context: the `traceparent` of a request, as HTTP carries it (the header,
//! `00-<trace-id>-<parent-id>-<flags>`) and as OAP/1 peer frames carry it (`tenant_id` and
//! `corr_id` of a START frame, the sampled bit as flag bit 8: see `specs/OAP-1.md`).
//!
//! Only version `00` is written. A header of a later version is read for its first four
//! fields, as the W3C recommendation asks; anything malformed is ignored (a fresh trace is
//! started), never an error: tracing must not refuse a request.
//!
//! ```
//! use ron_proto::trace::TraceParent;
//!
//! let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
//! assert!(tp.sampled);
//! assert_eq!(tp.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! ```

use std::fmt;
use std::str::FromStr;

/// A request's place in a trace: its trace, the span that sent it, and whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace (never 0).
    pub trace_id: u128,
    /// The span of the sender this request is a child of (never 0).
    pub parent_id: u64,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

/// Why a `traceparent` was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed traceparent")]
pub struct Malformed;

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

impl TraceParent {
    /// A new trace, its root span id random.
    pub fn new_root(sampled: bool) -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            parent_id: nonzero_u64(),
            sampled,
        }
    }

    /// The same trace, from the span `span_id` (a new random id when `None`).
    pub fn child(self, span_id: Option<u64>) -> Self {
        Self {
            parent_id: span_id.filter(|id| *id != 0).unwrap_or_else(nonzero_u64),
            ..self
        }
    }

    /// The trace id as 32 lowercase hex digits (what logs and exporters show).
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// As the fields of an OAP/1 peer frame: `tenant_id` (the trace id), `corr_id` (the
    /// parent id), and the sampled bit.
    pub fn to_frame(self) -> (u128, u64, bool) {
        (self.trace_id, self.parent_id, self.sampled)
    }

    /// From an OAP/1 peer frame's fields; `None` when they carry no trace (a zero id).
    pub fn from_frame(tenant_id: u128, corr_id: u64, sampled: bool) -> Option<Self> {
        (tenant_id != 0 && corr_id != 0).then_some(Self {
            trace_id: tenant_id,
            parent_id: corr_id,
            sampled,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.parent_id,
            u8::from(self.sampled)
        )
    }
}

fn hex_field(s: &str, len: usize) -> Result<&str, Malformed> {
    let lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if s.len() == len && s.bytes().all(lower) {
        Ok(s)
    } else {
        Err(Malformed)
    }
}

impl FromStr for TraceParent {
    type Err = Malformed;

    fn from_str(s: &str) -> Result<Self, Malformed> {
        let s = s.trim();
        let mut parts = s.split('-');
        let version = hex_field(parts.next().ok_or(Malformed)?, 2)?;
        let trace = hex_field(parts.next().ok_or(Malformed)?, 32)?;
        let parent = hex_field(parts.next().ok_or(Malformed)?, 16)?;
        let flags = hex_field(parts.next().ok_or(Malformed)?, 2)?;
        // Version 00 has exactly four fields; a later one may add more; ff is invalid.
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return Err(Malformed);
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| Malformed)?;
        let parent_id = u64::from_str_radix(parent, 16).map_err(|_| Malformed)?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| Malformed)?;
        if trace_id == 0 || parent_id == 0 {
            return Err(Malformed);
        }
        Ok(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_w3c_examples_read_and_write_back() {
        for text in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ] {
            let tp: TraceParent = text.parse().unwrap();
            assert_eq!(tp.to_string(), text);
            assert_eq!(tp.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
            assert_eq!(tp.parent_id, 0x00f0_67aa_0ba9_02b7);
        }
        // A later version: its first four fields; more flags than sampled are not kept.
        let later: TraceParent = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-xyz"
            .parse()
            .unwrap();
        assert!(later.sampled);
    }

    #[test]
    fn malformed_ones_are_refused() {
        for text in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(text.parse::<TraceParent>(), Err(Malformed), "{text:?}");
        }
    }

    #[test]
    fn frames_carry_the_same_context_and_zero_means_none() {
        let tp = TraceParent::new_root(true).child(Some(42));
        let (tenant, corr, sampled) = tp.to_frame();
        assert_eq!(TraceParent::from_frame(tenant, corr, sampled), Some(tp));
        assert_eq!(TraceParent::from_frame(0, 0, false), None);
        assert_eq!(tp.parent_id, 42);
        assert_ne!(tp.child(None).parent_id, 0);
    }
}
