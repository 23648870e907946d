//! Checking a range a peer sent against the address: [`ron_proto::oap::verify`].

pub use ron_proto::oap::verify::GROUP_BYTES;
pub(crate) use ron_proto::oap::verify::{BLOCK, Pair, Verified, decode};
