//! The mail record: signed by a user's identity key, it names their mail key (X25519) and the
//! node(s) that keep their mailbox. It is kept in the DHT under `/ron/mail/<key>` and checked
//! on every read (signature, sizes); the highest sequence number wins.

use ron_auth::{SigningKey, verify_signature};
use serde::{Deserialize, Serialize};

/// The format version this crate writes.
pub const RECORD_VERSION: u32 = 1;
/// Largest encoded record accepted.
pub const MAX_RECORD_BYTES: usize = 2048;
/// Most mailbox nodes a record names.
pub const MAX_MAILBOXES: usize = 4;
/// Most addresses per mailbox node.
pub const MAX_ADDRS: usize = 8;
/// Longest peer id or address text.
const MAX_TEXT: usize = 256;
/// What the signature covers first.
const DOMAIN: &[u8] = b"ron-mail-record/1\0";
/// What the DHT key of a record starts with (then the identity's 32 bytes).
const DHT_PREFIX: &[u8] = b"/ron/mail/";

/// One node keeping the mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxNode {
    /// Its peer id (libp2p `PeerId` text).
    pub peer: String,
    /// Where it can be dialled (multiaddrs), as it said when the record was made.
    pub addrs: Vec<String>,
}

/// A signed mail record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailRecord {
    /// Format version ([`RECORD_VERSION`]); its key also marks the record as a mail record.
    pub ron_mail: u32,
    /// The identity: `ed25519/<hex>`.
    pub key: String,
    /// The mail key envelopes are sealed to (X25519, hex).
    pub enc: String,
    /// The nodes keeping the mailbox (1 to [`MAX_MAILBOXES`]).
    pub mailboxes: Vec<MailboxNode>,
    /// A record with a higher sequence number replaces this one.
    pub seq: u64,
    /// The identity's Ed25519 signature over the record with this field empty, in hex.
    pub sig: String,
}

/// A record that is malformed, forged or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not DAG-CBOR, not a mail record, too large, or a field out of range.
    #[error("not a mail record: {0}")]
    Malformed(String),
    /// The signature is not the identity's over this record.
    #[error("the mail record's signature does not verify")]
    Signature,
}

/// The 32 bytes of an identity `ed25519/<hex>`.
pub fn identity_bytes(text: &str) -> Option<[u8; 32]> {
    let key = ron_auth::parse_public(text).ok()?;
    key.to_bytes().try_into().ok()
}

/// The text form of an identity's 32 bytes.
pub fn identity_text(bytes: &[u8; 32]) -> String {
    format!("ed25519/{}", hex::encode(bytes))
}

impl MailRecord {
    /// A record of `identity`'s mail key `enc`, kept by `mailboxes`, as of `seq`; signed.
    pub fn sign(
        identity: &SigningKey,
        enc: [u8; 32],
        mailboxes: Vec<MailboxNode>,
        seq: u64,
    ) -> Result<Self, RecordError> {
        let mut record = Self {
            ron_mail: RECORD_VERSION,
            key: identity_text(&identity.public_bytes()),
            enc: hex::encode(enc),
            mailboxes,
            seq,
            sig: String::new(),
        };
        record.check_fields()?;
        record.sig = hex::encode(identity.sign(&record.signed_bytes()?));
        Ok(record)
    }

    fn signed_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let unsigned = Self {
            sig: String::new(),
            ..self.clone()
        };
        let body = serde_ipld_dagcbor::to_vec(&unsigned)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        Ok([DOMAIN, &body].concat())
    }

    fn check_fields(&self) -> Result<(), RecordError> {
        let bad = |m: &str| Err(RecordError::Malformed(m.to_owned()));
        if self.ron_mail != RECORD_VERSION {
            return bad("unsupported version");
        }
        if identity_bytes(&self.key).is_none() {
            return bad("the key is not ed25519/<64 hex>");
        }
        if self.enc_bytes().is_none() {
            return bad("enc is not 64 hex digits");
        }
        if self.mailboxes.is_empty() || self.mailboxes.len() > MAX_MAILBOXES {
            return bad("names 1 to 4 mailbox nodes");
        }
        for node in &self.mailboxes {
            if node.peer.is_empty()
                || node.peer.len() > MAX_TEXT
                || node.addrs.len() > MAX_ADDRS
                || node.addrs.iter().any(|a| a.len() > MAX_TEXT)
            {
                return bad("a mailbox node is out of range");
            }
        }
        Ok(())
    }

    /// The identity's 32 bytes.
    pub fn identity(&self) -> Option<[u8; 32]> {
        identity_bytes(&self.key)
    }

    /// The mail key's 32 bytes.
    pub fn enc_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.enc, &mut out).ok()?;
        Some(out)
    }

    /// Checks every field and the signature.
    pub fn verify(&self) -> Result<(), RecordError> {
        self.check_fields()?;
        let public = self.identity().ok_or(RecordError::Signature)?;
        let sig = hex::decode(&self.sig).map_err(|_| RecordError::Signature)?;
        if !verify_signature(&public, &self.signed_bytes()?, &sig) {
            return Err(RecordError::Signature);
        }
        Ok(())
    }

    /// The record as DAG-CBOR, after checking it.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.verify()?;
        let bytes =
            serde_ipld_dagcbor::to_vec(self).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Malformed(format!("{} bytes", bytes.len())));
        }
        Ok(bytes)
    }

    /// Reads a record and checks it, signature included.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Malformed(format!("{} bytes", bytes.len())));
        }
        let record: Self = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        record.verify()?;
        Ok(record)
    }

    /// The DHT key the record of `identity` is kept under.
    pub fn dht_key(identity: &[u8; 32]) -> Vec<u8> {
        [DHT_PREFIX, identity].concat()
    }

    /// The identity a DHT key is for, if it is a mail record's key.
    pub fn identity_of_dht_key(key: &[u8]) -> Option<[u8; 32]> {
        key.strip_prefix(DHT_PREFIX)?.try_into().ok()
    }

    /// The newest valid record of `identity` among `values` (unchecked bytes from the
    /// network): forged, malformed and other identities' records are skipped.
    pub fn newest<'a>(
        identity: &[u8; 32],
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<Self> {
        values
            .into_iter()
            .filter_map(|v| Self::decode(v).ok())
            .filter(|r| r.identity().as_ref() == Some(identity))
            .max_by_key(|r| r.seq)
    }

    /// Whether a peer's record may be kept under `dht_key` in place of `current`: valid, for
    /// the identity the key is for, and not older than what is held.
    pub fn acceptable(dht_key: &[u8], value: &[u8], current: Option<&[u8]>) -> bool {
        let Some(identity) = Self::identity_of_dht_key(dht_key) else {
            return false;
        };
        let Ok(record) = Self::decode(value) else {
            return false;
        };
        if record.identity() != Some(identity) {
            return false;
        }
        match current.and_then(|c| Self::decode(c).ok()) {
            Some(held) => record.seq > held.seq || (record.seq == held.seq && record == held),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(peer: &str) -> MailboxNode {
        MailboxNode {
            peer: peer.into(),
            addrs: vec!["/ip4/127.0.0.1/udp/7701/quic-v1".into()],
        }
    }

    #[test]
    fn signed_records_round_trip_and_forgeries_fail() {
        let id = SigningKey::generate();
        let r = MailRecord::sign(&id, [7; 32], vec![node("12D3KooA")], 3).unwrap();
        let bytes = r.encode().unwrap();
        assert_eq!(MailRecord::decode(&bytes).unwrap(), r);
        let key = MailRecord::dht_key(&id.public_bytes());
        assert!(MailRecord::acceptable(&key, &bytes, None));
        // Another identity's key, an older record, a changed field: refused.
        assert!(!MailRecord::acceptable(
            &MailRecord::dht_key(&[1; 32]),
            &bytes,
            None
        ));
        let newer = MailRecord::sign(&id, [7; 32], vec![node("12D3KooB")], 4)
            .unwrap()
            .encode()
            .unwrap();
        assert!(MailRecord::acceptable(&key, &newer, Some(&bytes)));
        assert!(!MailRecord::acceptable(&key, &bytes, Some(&newer)));
        let mut moved = r.clone();
        moved.mailboxes = vec![node("12D3KooEvil")];
        assert_eq!(moved.verify(), Err(RecordError::Signature));
        let mut rekeyed = r.clone();
        rekeyed.enc = hex::encode([8; 32]);
        assert_eq!(rekeyed.verify(), Err(RecordError::Signature));
        assert_eq!(
            MailRecord::newest(
                &id.public_bytes(),
                [bytes.as_slice(), newer.as_slice(), b"junk"]
            )
            .unwrap()
            .seq,
            4
        );
        assert!(MailRecord::sign(&id, [7; 32], vec![], 1).is_err());
        assert!(MailRecord::sign(&id, [7; 32], vec![node("a"); 5], 1).is_err());
    }
}
