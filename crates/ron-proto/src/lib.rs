//! Shared types of RustyOnions: content addresses, the OAP/1 wire codec and the error kinds
//! every service maps its failures to. This crate does no I/O.
//!
//! ```
//! use ron_proto::Address;
//!
//! let addr = Address::of(b"hello world");
//! assert_eq!(
//!     addr.to_string(),
//!     "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24"
//! );
//! assert_eq!(addr.to_string().parse::<Address>().unwrap(), addr);
//! assert!("B3:D749".parse::<Address>().is_err());
//! ```
#![forbid(unsafe_code)]

mod address;
pub mod collection;
mod error;
pub mod layout;
mod manifest;
pub mod oap;
pub mod pow;
pub mod ranges;
pub mod trace;

pub use address::{Address, AddressError, AddressPrefix};
pub use error::{ErrorBody, ErrorKind, Failure, PaymentDue, PowChallenge, Problem, retry_policy};
pub use manifest::{
    CHUNK_AVG_BYTES, CHUNK_MAX_BYTES, CHUNK_MIN_BYTES, ChunkRef, MANIFEST_VERSION, Manifest,
    ManifestError,
};
