//! Mutable names: a record, signed by a user's Ed25519 key, that points the name
//! `ed25519/<hex>` (the key itself) at an address. The highest sequence number wins; a record
//! is kept in the DHT under [`NameRecord::dht_key`] and checked by every node that stores,
//! serves or reads it: the signature over every field, the key it claims, a TTL in range.
//!
//! ```
//! use ron_auth::SigningKey;
//! use ron_auth::name::NameRecord;
//! use ron_proto::Address;
//!
//! let key = SigningKey::generate();
//! let record = NameRecord::sign(&key, Address::of(b"site v1"), 1, 300).unwrap();
//! let bytes = record.encode().unwrap();
//! let read = NameRecord::decode(&bytes).unwrap();
//! assert_eq!(read.target, Address::of(b"site v1"));
//! assert!(read.supersedes(None));
//! ```

use ron_proto::Address;
use serde::{Deserialize, Serialize};

use crate::keys::{SigningKey, parse_public, public_text, verify_signature};

/// The record format version this crate writes.
pub const NAME_VERSION: u32 = 1;
/// Largest encoded record accepted.
pub const MAX_RECORD_BYTES: usize = 1024;
/// Longest TTL a record may ask readers to cache it for (a day).
pub const MAX_TTL_S: u64 = 86_400;
/// What every signature covers first: no signature over other data can pass as a name's.
const DOMAIN: &[u8] = b"ron-name/1\0";
/// What the DHT key of a name starts with (then the key's 32 bytes).
const DHT_PREFIX: &[u8] = b"/ron/name/";

/// A name record: `key` (the name) points at `target`, as of `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// Format version ([`NAME_VERSION`]); its key also marks the record as a name.
    pub ron_name: u32,
    /// The name: the signing key's public half, `ed25519/<hex>`.
    pub key: String,
    /// The address the name points at.
    pub target: Address,
    /// The sequence number: a record with a higher one replaces this one.
    pub seq: u64,
    /// How long readers may cache it, in seconds (1 to [`MAX_TTL_S`]).
    pub ttl_s: u64,
    /// The Ed25519 signature over [`DOMAIN`] and every field above, in hex.
    pub sig: String,
}

/// A record that is malformed, forged or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Not DAG-CBOR, not a name record, or too large.
    #[error("not a name record: {0}")]
    Decode(String),
    /// A version this crate does not understand.
    #[error("name record version {0} is not supported")]
    Version(u32),
    /// The name is not an Ed25519 public key.
    #[error("the name is not ed25519/<64 hex>")]
    Key,
    /// The TTL is 0 or past [`MAX_TTL_S`].
    #[error("ttl_s must be 1 to {MAX_TTL_S}")]
    Ttl,
    /// The signature is not the name's key's over this record.
    #[error("the signature does not verify with the name's key")]
    Signature,
}

/// The bytes a record's signature covers.
fn signed_bytes(key: &[u8; 32], target: &Address, seq: u64, ttl_s: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 32 + 32 + 16);
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(key);
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ttl_s.to_be_bytes());
    out
}

/// The 32 bytes of a name (`ed25519/<hex>`).
pub fn name_bytes(name: &str) -> Result<[u8; 32], NameError> {
    let key = parse_public(name).map_err(|_| NameError::Key)?;
    key.to_bytes().try_into().map_err(|_| NameError::Key)
}

impl NameRecord {
    /// A record pointing `key`'s name at `target`, signed.
    pub fn sign(
        key: &SigningKey,
        target: Address,
        seq: u64,
        ttl_s: u64,
    ) -> Result<Self, NameError> {
        if !(1..=MAX_TTL_S).contains(&ttl_s) {
            return Err(NameError::Ttl);
        }
        let name = public_text(&key.public());
        let public = name_bytes(&name)?;
        let sig = key.sign(&signed_bytes(&public, &target, seq, ttl_s));
        Ok(Self {
            ron_name: NAME_VERSION,
            key: name,
            target,
            seq,
            ttl_s,
            sig: hex::encode(sig),
        })
    }

    /// Checks the version, the name, the TTL and the signature.
    pub fn verify(&self) -> Result<(), NameError> {
        if self.ron_name != NAME_VERSION {
            return Err(NameError::Version(self.ron_name));
        }
        let public = name_bytes(&self.key)?;
        if !(1..=MAX_TTL_S).contains(&self.ttl_s) {
            return Err(NameError::Ttl);
        }
        let sig = hex::decode(&self.sig).map_err(|_| NameError::Signature)?;
        if !verify_signature(
            &public,
            &signed_bytes(&public, &self.target, self.seq, self.ttl_s),
            &sig,
        ) {
            return Err(NameError::Signature);
        }
        Ok(())
    }

    /// The record as DAG-CBOR, after checking it.
    pub fn encode(&self) -> Result<Vec<u8>, NameError> {
        self.verify()?;
        let bytes =
            serde_ipld_dagcbor::to_vec(self).map_err(|e| NameError::Decode(e.to_string()))?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(NameError::Decode(format!("{} bytes", bytes.len())));
        }
        Ok(bytes)
    }

    /// Reads a record and checks it (signature included). Unknown fields are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, NameError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(NameError::Decode(format!("{} bytes", bytes.len())));
        }
        let record: Self =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| NameError::Decode(e.to_string()))?;
        record.verify()?;
        Ok(record)
    }

    /// The DHT key the record of `name` is kept under.
    pub fn dht_key(name: &[u8; 32]) -> Vec<u8> {
        [DHT_PREFIX, name].concat()
    }

    /// The 32 bytes of the name a DHT key is for, if it is a name's key.
    pub fn name_of_dht_key(key: &[u8]) -> Option<[u8; 32]> {
        key.strip_prefix(DHT_PREFIX)?.try_into().ok()
    }

    /// Whether this record replaces `current`: the same name with a higher sequence number
    /// (or the same record again). An equal sequence number with another target does not.
    pub fn supersedes(&self, current: Option<&NameRecord>) -> bool {
        current.is_none_or(|c| {
            c.key == self.key && (self.seq > c.seq || (self.seq == c.seq && self == c))
        })
    }

    /// The newest valid record of `name` among `values` (unchecked bytes from the network):
    /// forged, malformed and other names' records are skipped; the highest sequence wins.
    pub fn newest<'a>(
        name: &[u8; 32],
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<NameRecord> {
        values
            .into_iter()
            .filter_map(|v| NameRecord::decode(v).ok())
            .filter(|r| name_bytes(&r.key).is_ok_and(|k| k == *name))
            .max_by_key(|r| r.seq)
    }

    /// Whether a peer's record may be kept under `dht_key` in place of `current`: valid,
    /// for the name the key is for, and not older than what is held.
    pub fn acceptable(dht_key: &[u8], value: &[u8], current: Option<&[u8]>) -> bool {
        let Some(name) = Self::name_of_dht_key(dht_key) else {
            return false;
        };
        let Ok(record) = Self::decode(value) else {
            return false;
        };
        if name_bytes(&record.key).ok() != Some(name) {
            return false;
        }
        let held = current.and_then(|c| Self::decode(c).ok());
        record.supersedes(held.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signed_records_verify_and_tampering_is_refused() {
        let key = SigningKey::generate();
        let record = NameRecord::sign(&key, Address::of(b"v1"), 7, 60).unwrap();
        let bytes = record.encode().unwrap();
        assert_eq!(NameRecord::decode(&bytes).unwrap(), record);

        let mut moved = record.clone();
        moved.target = Address::of(b"evil");
        assert_eq!(moved.verify(), Err(NameError::Signature));
        let mut bumped = record.clone();
        bumped.seq = 8;
        assert_eq!(bumped.verify(), Err(NameError::Signature));
        let mut longer = record.clone();
        longer.ttl_s = 61;
        assert_eq!(longer.verify(), Err(NameError::Signature));
        // Someone else's key signing for this name.
        let other = SigningKey::generate();
        let mut forged = NameRecord::sign(&other, Address::of(b"evil"), 99, 60).unwrap();
        forged.key = record.key.clone();
        assert_eq!(forged.verify(), Err(NameError::Signature));
        let mut garbage = record.clone();
        garbage.sig = "zz".into();
        assert_eq!(garbage.verify(), Err(NameError::Signature));
        let mut newer = record.clone();
        newer.ron_name = 2;
        assert_eq!(newer.verify(), Err(NameError::Version(2)));
        assert_eq!(
            NameRecord::sign(&key, Address::of(b"v1"), 1, 0),
            Err(NameError::Ttl)
        );
        assert_eq!(
            NameRecord::sign(&key, Address::of(b"v1"), 1, MAX_TTL_S + 1),
            Err(NameError::Ttl)
        );
        assert!(NameRecord::decode(b"\xa0").is_err());
        assert!(NameRecord::decode(&vec![0u8; MAX_RECORD_BYTES + 1]).is_err());
    }

    #[test]
    fn the_highest_valid_sequence_wins_and_peers_keep_only_that() {
        let key = SigningKey::generate();
        let name = name_bytes(&public_text(&key.public())).unwrap();
        let dht_key = NameRecord::dht_key(&name);
        assert_eq!(NameRecord::name_of_dht_key(&dht_key), Some(name));
        let v1 = NameRecord::sign(&key, Address::of(b"v1"), 1, 60).unwrap();
        let v2 = NameRecord::sign(&key, Address::of(b"v2"), 2, 60).unwrap();
        let other = SigningKey::generate();
        let mut forged = NameRecord::sign(&other, Address::of(b"evil"), 9, 60).unwrap();
        forged.key = v1.key.clone();
        let forged_bytes = serde_ipld_dagcbor::to_vec(&forged).unwrap();
        let theirs = NameRecord::sign(&other, Address::of(b"theirs"), 50, 60).unwrap();
        let (b1, b2, b3) = (
            v1.encode().unwrap(),
            v2.encode().unwrap(),
            theirs.encode().unwrap(),
        );
        let values: [&[u8]; 5] = [&b1, &forged_bytes, &b2, &b3, b"junk"];
        assert_eq!(NameRecord::newest(&name, values), Some(v2.clone()));

        assert!(NameRecord::acceptable(&dht_key, &b1, None));
        assert!(NameRecord::acceptable(&dht_key, &b2, Some(&b1)));
        assert!(
            NameRecord::acceptable(&dht_key, &b2, Some(&b2)),
            "the same again"
        );
        assert!(!NameRecord::acceptable(&dht_key, &b1, Some(&b2)), "stale");
        assert!(
            !NameRecord::acceptable(&dht_key, &forged_bytes, None),
            "forged"
        );
        assert!(
            !NameRecord::acceptable(&dht_key, &b3, None),
            "another name's"
        );
        assert!(!NameRecord::acceptable(b"/ron/name/short", &b1, None));
        assert!(
            !NameRecord::acceptable(&[0u8; 32], &b1, None),
            "a provider key"
        );
        let same_seq = NameRecord::sign(&key, Address::of(b"other"), 2, 60).unwrap();
        assert!(
            !NameRecord::acceptable(&dht_key, &same_seq.encode().unwrap(), Some(&b2)),
            "an equal sequence does not replace a different record"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert!(NameRecord::decode(&bytes).is_err());
        }
    }
}
