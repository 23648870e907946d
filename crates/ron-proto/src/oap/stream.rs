//! The per-connection stream state machine, as plain code: feed it every frame seen on a
//! connection (both directions, in order) and it says whether the frame is allowed.

use std::collections::HashMap;

use super::{DEFAULT_MAX_INFLIGHT, Flags, Frame};
use crate::{ErrorBody, ErrorKind};

/// A frame that breaks the stream rules of `specs/OAP-1.md`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A frame must carry exactly one of REQ, RESP and EVENT.
    #[error("stream {corr_id}: a frame must be exactly one of REQ, RESP, EVENT")]
    Direction {
        /// The stream.
        corr_id: u64,
    },
    /// Capability bytes on a frame without START.
    #[error("stream {corr_id}: capability on a frame without START")]
    CapWithoutStart {
        /// The stream.
        corr_id: u64,
    },
    /// START on a stream that is already open in that direction.
    #[error("stream {corr_id}: duplicate START")]
    DuplicateStart {
        /// The stream.
        corr_id: u64,
    },
    /// A continuation or END on a stream that was never opened in that direction.
    #[error("stream {corr_id}: frame without START")]
    WithoutStart {
        /// The stream.
        corr_id: u64,
    },
    /// A response, or an event, on a stream whose request never started.
    #[error("stream {corr_id}: RESP or EVENT before REQ")]
    RespBeforeReq {
        /// The stream.
        corr_id: u64,
    },
    /// A new stream beyond `max_inflight`.
    #[error("too many open streams (max_inflight {max_inflight})")]
    TooManyStreams {
        /// The limit in force.
        max_inflight: usize,
    },
}

impl StreamError {
    /// The shared error kind: a violation is bad input, too many streams is rate limiting.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooManyStreams { .. } => ErrorKind::RateLimited,
            _ => ErrorKind::BadInput,
        }
    }

    /// The snake_case reason for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooManyStreams { .. } => "too_many_streams",
            _ => "protocol_violation",
        }
    }

    /// The error body to send back.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::with_code(self.code(), self.to_string())
    }
}

/// Where one direction of a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Half {
    Idle,
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    req: Half,
    resp: Half,
}

/// Tracks the streams of one connection. Memory is bounded by `max_inflight` entries: a
/// stream is forgotten once both its request and its response have ended.
///
/// ```
/// use ron_proto::oap::{Flags, Frame, StreamTracker, APP_OBJECTS};
///
/// let mut t = StreamTracker::default();
/// t.observe(&Frame::new(Flags::REQ | Flags::START | Flags::END, APP_OBJECTS, 7)).unwrap();
/// assert_eq!(t.open_streams(), 1);
/// t.observe(&Frame::new(Flags::RESP | Flags::START | Flags::END, APP_OBJECTS, 7)).unwrap();
/// assert_eq!(t.open_streams(), 0);
/// // A response to a request that never started is a protocol violation.
/// let err = t.observe(&Frame::new(Flags::RESP | Flags::START, APP_OBJECTS, 8)).unwrap_err();
/// assert_eq!(err.code(), "protocol_violation");
/// ```
#[derive(Debug)]
pub struct StreamTracker {
    max_inflight: usize,
    streams: HashMap<u64, Stream>,
}

impl Default for StreamTracker {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_INFLIGHT)
    }
}

/// Moves one half of a stream according to `flags`.
fn step(half: &mut Half, flags: Flags, corr_id: u64) -> Result<(), StreamError> {
    let start = flags.contains(Flags::START);
    let end = flags.contains(Flags::END);
    match (*half, start) {
        (Half::Idle, true) => {}
        (_, true) => return Err(StreamError::DuplicateStart { corr_id }),
        (Half::Open, false) => {}
        (_, false) => return Err(StreamError::WithoutStart { corr_id }),
    }
    *half = if end { Half::Closed } else { Half::Open };
    Ok(())
}

impl StreamTracker {
    /// A tracker allowing at most `max_inflight` open streams.
    pub fn new(max_inflight: usize) -> Self {
        Self {
            max_inflight,
            streams: HashMap::new(),
        }
    }

    /// How many streams are open (request or response not yet ended).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Checks `frame` against the stream rules and records its effect. On error nothing is
    /// recorded.
    pub fn observe(&mut self, frame: &Frame) -> Result<(), StreamError> {
        let corr_id = frame.corr_id;
        let flags = frame.flags;
        let kinds = (flags & (Flags::REQ | Flags::RESP | Flags::EVENT))
            .bits()
            .count_ones();
        if kinds != 1 {
            return Err(StreamError::Direction { corr_id });
        }
        if !frame.cap.is_empty() && !flags.contains(Flags::START) {
            return Err(StreamError::CapWithoutStart { corr_id });
        }
        let existing = self.streams.get(&corr_id).copied();
        let mut stream = existing.unwrap_or(Stream {
            req: Half::Idle,
            resp: Half::Idle,
        });
        if flags.contains(Flags::REQ) {
            step(&mut stream.req, flags, corr_id)?;
            if existing.is_none() && self.streams.len() >= self.max_inflight {
                return Err(StreamError::TooManyStreams {
                    max_inflight: self.max_inflight,
                });
            }
        } else if existing.is_none() {
            return Err(StreamError::RespBeforeReq { corr_id });
        } else if flags.contains(Flags::RESP) {
            step(&mut stream.resp, flags, corr_id)?;
        }
        // EVENT frames ride on an existing stream and change nothing.
        if stream.req == Half::Closed && stream.resp == Half::Closed {
            self.streams.remove(&corr_id);
        } else {
            self.streams.insert(corr_id, stream);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oap::APP_OBJECTS;
    use bytes::Bytes;
    use proptest::prelude::*;

    const REQ: Flags = Flags::REQ;
    const RESP: Flags = Flags::RESP;
    const S: Flags = Flags::START;
    const E: Flags = Flags::END;

    fn f(flags: Flags, corr: u64) -> Frame {
        Frame::new(flags, APP_OBJECTS, corr)
    }

    #[test]
    fn multi_frame_request_and_response() {
        let mut t = StreamTracker::default();
        t.observe(&f(REQ | S, 1)).unwrap();
        t.observe(&f(REQ, 1)).unwrap();
        t.observe(&f(REQ | E, 1)).unwrap();
        t.observe(&f(RESP | S, 1)).unwrap();
        t.observe(&f(RESP, 1)).unwrap();
        assert_eq!(t.open_streams(), 1);
        t.observe(&f(RESP | E, 1)).unwrap();
        assert_eq!(t.open_streams(), 0);
        // The id may be reused once the stream is over.
        t.observe(&f(REQ | S | E, 1)).unwrap();
    }

    #[test]
    fn early_error_reply_while_request_streams() {
        let mut t = StreamTracker::default();
        t.observe(&f(REQ | S, 3)).unwrap();
        t.observe(&f(RESP | S | E, 3)).unwrap();
        t.observe(&f(REQ, 3)).unwrap();
        t.observe(&f(REQ | E, 3)).unwrap();
        assert_eq!(t.open_streams(), 0);
    }

    #[test]
    fn each_violation_is_named() {
        let mut t = StreamTracker::default();
        assert_eq!(
            t.observe(&f(REQ | E, 1)),
            Err(StreamError::WithoutStart { corr_id: 1 })
        );
        assert_eq!(
            t.observe(&f(REQ, 1)),
            Err(StreamError::WithoutStart { corr_id: 1 })
        );
        assert_eq!(
            t.observe(&f(RESP | S, 1)),
            Err(StreamError::RespBeforeReq { corr_id: 1 })
        );
        assert_eq!(
            t.observe(&f(Flags::EVENT, 1)),
            Err(StreamError::RespBeforeReq { corr_id: 1 })
        );
        assert_eq!(
            t.observe(&f(REQ | RESP | S, 1)),
            Err(StreamError::Direction { corr_id: 1 })
        );
        assert_eq!(
            t.observe(&f(S, 1)),
            Err(StreamError::Direction { corr_id: 1 })
        );
        let with_cap = Frame {
            cap: Bytes::from_static(b"tok"),
            ..f(REQ, 1)
        };
        assert_eq!(
            t.observe(&with_cap),
            Err(StreamError::CapWithoutStart { corr_id: 1 })
        );

        t.observe(&f(REQ | S, 2)).unwrap();
        assert_eq!(
            t.observe(&f(REQ | S, 2)),
            Err(StreamError::DuplicateStart { corr_id: 2 })
        );
        t.observe(&f(RESP | S, 2)).unwrap();
        assert_eq!(
            t.observe(&f(RESP | S, 2)),
            Err(StreamError::DuplicateStart { corr_id: 2 })
        );
        t.observe(&f(REQ | E, 2)).unwrap();
        // Request ended, response still open: a new START on the id is a duplicate.
        assert_eq!(
            t.observe(&f(REQ | S, 2)),
            Err(StreamError::DuplicateStart { corr_id: 2 })
        );
        assert_eq!(
            t.observe(&f(REQ, 2)),
            Err(StreamError::WithoutStart { corr_id: 2 })
        );
        // Capability on a START frame is fine.
        let start_cap = Frame {
            cap: Bytes::from_static(b"tok"),
            ..f(REQ | S | E, 9)
        };
        t.observe(&start_cap).unwrap();
        assert_eq!(
            StreamError::WithoutStart { corr_id: 0 }.kind(),
            ErrorKind::BadInput
        );
    }

    #[test]
    fn max_inflight_is_enforced() {
        let mut t = StreamTracker::new(2);
        t.observe(&f(REQ | S, 1)).unwrap();
        t.observe(&f(REQ | S | E, 2)).unwrap();
        let err = t.observe(&f(REQ | S, 3)).unwrap_err();
        assert_eq!(err, StreamError::TooManyStreams { max_inflight: 2 });
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        t.observe(&f(RESP | S | E, 2)).unwrap();
        t.observe(&f(REQ | S, 3)).unwrap();
    }

    proptest! {
        /// Whatever arrives, the tracker never holds more than max_inflight streams, never
        /// panics, and a refused frame changes nothing.
        #[test]
        fn bounded_and_atomic(frames in proptest::collection::vec((0u16..32, 0u64..6, any::<bool>()), 0..200)) {
            let mut t = StreamTracker::new(4);
            for (flags, corr, cap) in frames {
                let frame = Frame {
                    cap: if cap { Bytes::from_static(b"c") } else { Bytes::new() },
                    ..f(Flags::from_bits_truncate(flags), corr)
                };
                let before = t.streams.clone().into_iter().map(|(k, v)| (k, v.req, v.resp)).collect::<std::collections::BTreeSet<_>>();
                if t.observe(&frame).is_err() {
                    let after = t.streams.clone().into_iter().map(|(k, v)| (k, v.req, v.resp)).collect::<std::collections::BTreeSet<_>>();
                    prop_assert_eq!(before, after);
                }
                prop_assert!(t.open_streams() <= 4);
            }
        }
    }
}
