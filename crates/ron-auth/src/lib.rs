//! Identities and capabilities for RustyOnions: "keys, not accounts".
//!
//! - [`NodeIdentity`]: the node's Ed25519 key; its libp2p `PeerId` text is the node id.
//! - [`KeyRing`]: the keys that sign capabilities, rotated at a maximum age, with a grace
//!   window in which a retired key still verifies.
//! - [`token`]: capability tokens (biscuits) with caveats for expiry, operations, path
//!   prefix, audience, a byte budget and a rate; minted, attenuated offline, inspected.
//! - [`name`]: mutable names, records signed by a user's key pointing it at an address.
//! - [`Auth`]: authorizes a request's token: 401 for no usable credential, 403 for a valid
//!   token that does not allow it, 429 for an exhausted rate.
//!
//! ```
//! use ron_auth::{Auth, AuthSection, KeyRing, NodeIdentity, Request, token::{Caveats, Op}};
//!
//! let auth = Auth::new(NodeIdentity::ephemeral(), KeyRing::in_memory(), &AuthSection::default(),
//!     ron_auth::unix_now()).unwrap();
//! let put_only = auth.mint(&Caveats { ops: [Op::Put].into(), ..Caveats::default() }).unwrap();
//! assert!(auth.authorize(Some(&put_only), &Request { op: Op::Put, path: "/put" }).is_ok());
//! assert!(auth.authorize(Some(&put_only), &Request { op: Op::Pin, path: "/pin/x" }).is_err());
//! assert!(auth.authorize(None, &Request { op: Op::Put, path: "/put" }).is_err());
//! ```
#![forbid(unsafe_code)]

mod config;
mod keys;
pub mod name;
mod ring;
pub mod token;
mod verify;

pub use config::AuthSection;
pub use keys::{
    KeyError, NodeIdentity, SigningKey, key_id, parse_public, public_text, verify_signature,
    write_secret,
};
pub use ring::{KeyRing, Maintenance, RingKey};
pub use verify::{Auth, Charge, Denied, Grant, Holder, Request, unix_now};

/// The public key type tokens are verified with.
pub use biscuit_auth::PublicKey;
