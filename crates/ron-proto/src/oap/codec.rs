//! `tokio_util::codec` adapter: OAP/1 frames over any byte stream.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::{DEFAULT_MAX_FRAME, Frame, FrameError};

/// Decodes and encodes [`Frame`]s, enforcing `max_frame` in both directions.
///
/// ```
/// use bytes::BytesMut;
/// use ron_proto::oap::{Flags, Frame, FrameCodec, APP_HELLO};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::default();
/// let mut wire = BytesMut::new();
/// let hello = Frame::new(Flags::REQ | Flags::START | Flags::END, APP_HELLO, 1);
/// codec.encode(hello.clone(), &mut wire).unwrap();
/// assert_eq!(codec.decode(&mut wire).unwrap(), Some(hello));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

/// A codec failure: bad bytes from the peer, or the transport's own I/O error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent something that is not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Reading or writing the stream failed.
    #[error("oap/1 stream i/o: {0}")]
    Io(#[source] std::io::Error),
}

// tokio-util's Decoder requires `From<io::Error>` on its error type.
impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl FrameCodec {
    /// A codec with the given `max_frame` (whole frame, length field included).
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The `max_frame` in force.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(Frame::decode(src, self.max_frame)?)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst, self.max_frame)?)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(item.encode(dst, self.max_frame)?)
    }
}
