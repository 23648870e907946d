//! The envelope: a message sealed to its recipient with HPKE (RFC 9180, X25519 + HKDF-SHA256 +
//! ChaCha20-Poly1305), signed inside by its sender, padded to a power-of-two size.
//!
//! What a mailbox node sees is the outer head: the recipient's identity key, the lane
//! (message or receipt) and the size bucket. The sender's identity and signature are inside
//! the ciphertext (sealed sender). The message id is the BLAKE3 of the whole envelope, so the
//! same envelope sent twice is kept once.
//!
//! ```text
//! envelope (exactly one bucket: 1 KiB, 2 KiB, ... up to the maximum, 1 MiB by default)
//!   0..8     magic "ronmail1"
//!   8        lane: 0 message, 1 receipt
//!   9..41    recipient's Ed25519 public key
//!   41..73   HPKE encapsulated key (X25519)
//!   73..     AEAD ciphertext of the padded plaintext, with its 16-byte tag
//!            (info "ron-mail/1", aad = bytes 0..41)
//! plaintext
//!   0..32    sender's Ed25519 public key
//!   32..40   sent at, Unix milliseconds (big-endian)
//!   40..104  sender's Ed25519 signature over "ron-mail/1\0" | lane | recipient | sender |
//!            sent at | BLAKE3(content)
//!   104..108 content length (big-endian u32)
//!   108..    content, then zeros to the end of the bucket
//! ```
//!
//! A receipt is an envelope on lane 1 from the recipient back to the sender whose content is
//! the message id and the time it was acknowledged ([`Receipt`]).

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use ron_auth::{SigningKey, verify_signature};
use ron_proto::Address;
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// What every envelope starts with.
pub const MAGIC: &[u8; 8] = b"ronmail1";
/// The smallest bucket (and envelope).
pub const MIN_BUCKET: usize = 1024;
/// The largest envelope the format allows (a node may allow less: `mail.max_message_bytes`).
pub const MAX_BUCKET: usize = 1 << 20;
/// Bytes of the outer head.
pub const HEAD_LEN: usize = 73;
/// Bytes of the AEAD tag.
const TAG_LEN: usize = 16;
/// Bytes of the plaintext before the content.
const INNER_LEN: usize = 108;
/// What a bucket holds besides the content.
pub const OVERHEAD: usize = HEAD_LEN + TAG_LEN + INNER_LEN;
/// HPKE's `info`: binds the key schedule to this protocol.
const INFO: &[u8] = b"ron-mail/1";
/// What the sender's signature covers first.
const DOMAIN: &[u8] = b"ron-mail/1\0";
/// Where the recipient's encryption key comes from (with the identity's secret).
const KEY_CONTEXT: &str = "ron-mail 2026-12 x25519 from ed25519 v1";

/// Which queue of the recipient an envelope goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// A message.
    Message = 0,
    /// A delivery receipt.
    Receipt = 1,
}

impl Lane {
    /// The lane of a head byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Message),
            1 => Some(Self::Receipt),
            _ => None,
        }
    }

    /// Its name, for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Receipt => "receipt",
        }
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not an envelope: wrong magic, lane, or a size that is no bucket.
    #[error("not a mail envelope: {0}")]
    Malformed(&'static str),
    /// The content does not fit the largest bucket.
    #[error("the message is {len} bytes; at most {max} fit")]
    TooLarge {
        /// The content's length.
        len: usize,
        /// The most that fits.
        max: usize,
    },
    /// Addressed to another key than the one opening it.
    #[error("the envelope is for another recipient")]
    NotForMe,
    /// The ciphertext, head or key does not authenticate: tampered, or not for this key.
    #[error("the envelope does not decrypt: tampered with or not for this key")]
    Decrypt,
    /// Decrypted, but the inside is malformed or the sender's signature does not verify.
    #[error("the sender's signature does not verify")]
    Signature,
    /// A receipt whose content is malformed.
    #[error("not a receipt")]
    Receipt,
}

/// The smallest bucket holding `content_len` bytes of content, if any up to `max` does.
pub fn bucket_for(content_len: usize, max: usize) -> Option<usize> {
    let need = content_len.checked_add(OVERHEAD)?;
    let bucket = need.max(MIN_BUCKET).checked_next_power_of_two()?;
    (bucket <= max.min(MAX_BUCKET)).then_some(bucket)
}

/// The most content an envelope of at most `max` bytes carries.
pub fn max_content(max: usize) -> usize {
    let mut top = MIN_BUCKET;
    while top * 2 <= max.min(MAX_BUCKET) {
        top *= 2;
    }
    top - OVERHEAD
}

/// A user's mail key: the X25519 key envelopes to them are sealed to, derived from their
/// identity's secret (so one `ron key gen` file holds both). Zeroized when dropped.
pub struct MailKey {
    identity: [u8; 32],
    secret: PrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for MailKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MailKey(ed25519/{})", hex::encode(self.identity))
    }
}

impl MailKey {
    /// The mail key of `identity`.
    pub fn derive(identity: &SigningKey) -> Self {
        let ikm = Zeroizing::new(blake3::derive_key(KEY_CONTEXT, &identity.secret_bytes()));
        let (secret, public) = Kem::derive_keypair(ikm.as_slice());
        Self {
            identity: identity.public_bytes(),
            secret,
            public,
        }
    }

    /// The X25519 public key senders seal to.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.public.to_bytes());
        out
    }

    /// The identity (Ed25519 public key) this key belongs to.
    pub fn identity(&self) -> [u8; 32] {
        self.identity
    }
}

/// An envelope's outer head, as a mailbox node reads it (nothing else is visible to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The recipient's identity (Ed25519 public key).
    pub recipient: [u8; 32],
    /// Which of the recipient's queues.
    pub lane: Lane,
    /// The envelope's size: its bucket.
    pub size: usize,
    /// The message id: BLAKE3 of the whole envelope.
    pub id: Address,
}

impl Head {
    /// Reads the head of `bytes` and checks the framing (magic, lane, a bucket size within
    /// `max`). Says nothing about the ciphertext: only the recipient can check that.
    pub fn read(bytes: &[u8], max: usize) -> Result<Self, EnvelopeError> {
        let size = bytes.len();
        if size < MIN_BUCKET || !size.is_power_of_two() || size > max.min(MAX_BUCKET) {
            return Err(EnvelopeError::Malformed("its size is not a bucket"));
        }
        if &bytes[..8] != MAGIC {
            return Err(EnvelopeError::Malformed("bad magic"));
        }
        let lane = Lane::from_byte(bytes[8]).ok_or(EnvelopeError::Malformed("unknown lane"))?;
        let mut recipient = [0u8; 32];
        recipient.copy_from_slice(&bytes[9..41]);
        Ok(Self {
            recipient,
            lane,
            size,
            id: Address::of(bytes),
        })
    }
}

/// A message as its recipient reads it: the sender verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The sender's identity (its signature verified).
    pub sender: [u8; 32],
    /// When the sender says it sent it (Unix milliseconds).
    pub sent_at_ms: u64,
    /// The lane it came on.
    pub lane: Lane,
    /// The content.
    pub content: Vec<u8>,
}

fn signed_bytes(
    lane: Lane,
    recipient: &[u8; 32],
    sender: &[u8; 32],
    sent_at_ms: u64,
    content: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 1 + 64 + 8 + 32);
    out.extend_from_slice(DOMAIN);
    out.push(lane as u8);
    out.extend_from_slice(recipient);
    out.extend_from_slice(sender);
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.extend_from_slice(blake3::hash(content).as_bytes());
    out
}

/// Seals `content` from `sender` to `recipient` (identity) whose mail key is `recipient_key`,
/// in the smallest bucket that fits, at most `max` bytes.
pub fn seal(
    sender: &SigningKey,
    recipient: &[u8; 32],
    recipient_key: &[u8; 32],
    lane: Lane,
    sent_at_ms: u64,
    content: &[u8],
    max: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    let bucket = bucket_for(content.len(), max).ok_or(EnvelopeError::TooLarge {
        len: content.len(),
        max: max_content(max),
    })?;
    let public =
        PublicKey::from_bytes(recipient_key).map_err(|_| EnvelopeError::Malformed("bad key"))?;
    let from = sender.public_bytes();
    let sig = sender.sign(&signed_bytes(lane, recipient, &from, sent_at_ms, content));
    let len = u32::try_from(content.len()).map_err(|_| EnvelopeError::TooLarge {
        len: content.len(),
        max: max_content(max),
    })?;
    let mut plain = Zeroizing::new(Vec::with_capacity(bucket - HEAD_LEN - TAG_LEN));
    plain.extend_from_slice(&from);
    plain.extend_from_slice(&sent_at_ms.to_be_bytes());
    plain.extend_from_slice(&sig);
    plain.extend_from_slice(&len.to_be_bytes());
    plain.extend_from_slice(content);
    plain.resize(bucket - HEAD_LEN - TAG_LEN, 0);
    let mut head = Vec::with_capacity(bucket);
    head.extend_from_slice(MAGIC);
    head.push(lane as u8);
    head.extend_from_slice(recipient);
    let (encapped, sealed) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &public,
        INFO,
        &plain,
        &head,
    )
    .map_err(|_| EnvelopeError::Malformed("bad key"))?;
    let mut out = head;
    out.extend_from_slice(&encapped.to_bytes());
    out.extend_from_slice(&sealed);
    debug_assert_eq!(out.len(), bucket);
    Ok(out)
}

/// Opens an envelope with the recipient's mail key: decrypts it, checks the padding and the
/// sender's signature (bound to this recipient and lane).
pub fn open(key: &MailKey, bytes: &[u8]) -> Result<Opened, EnvelopeError> {
    let head = Head::read(bytes, MAX_BUCKET)?;
    if head.recipient != key.identity {
        return Err(EnvelopeError::NotForMe);
    }
    let encapped =
        EncappedKey::from_bytes(&bytes[41..HEAD_LEN]).map_err(|_| EnvelopeError::Decrypt)?;
    let plain = Zeroizing::new(
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &key.secret,
            &encapped,
            INFO,
            &bytes[HEAD_LEN..],
            &bytes[..41],
        )
        .map_err(|_| EnvelopeError::Decrypt)?,
    );
    if plain.len() < INNER_LEN {
        return Err(EnvelopeError::Signature);
    }
    let mut sender = [0u8; 32];
    sender.copy_from_slice(&plain[..32]);
    let sent_at_ms = u64::from_be_bytes(plain[32..40].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(plain[104..108].try_into().unwrap_or_default()) as usize;
    let rest = &plain[INNER_LEN..];
    if len > rest.len() || rest[len..].iter().any(|b| *b != 0) {
        return Err(EnvelopeError::Signature);
    }
    let content = &rest[..len];
    let signed = signed_bytes(head.lane, &head.recipient, &sender, sent_at_ms, content);
    if !verify_signature(&sender, &signed, &plain[40..104]) {
        return Err(EnvelopeError::Signature);
    }
    Ok(Opened {
        sender,
        sent_at_ms,
        lane: head.lane,
        content: content.to_vec(),
    })
}

/// A delivery receipt: the content of a lane-1 envelope from a message's recipient to its
/// sender, signed (as every envelope) by the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message acknowledged.
    pub id: Address,
    /// When it was acknowledged (Unix milliseconds).
    pub acked_at_ms: u64,
}

impl Receipt {
    /// Its content bytes: the id's 32 bytes and the time.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.acked_at_ms.to_be_bytes());
        out
    }

    /// Reads a receipt's content.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() != 40 {
            return Err(EnvelopeError::Receipt);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[..32]);
        Ok(Self {
            id: Address::from_bytes(id),
            acked_at_ms: u64::from_be_bytes(bytes[32..].try_into().unwrap_or_default()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (SigningKey, MailKey) {
        let id = SigningKey::generate();
        let key = MailKey::derive(&id);
        (id, key)
    }

    #[test]
    fn the_mail_key_is_the_identitys_and_stable() {
        let id = SigningKey::generate();
        assert_eq!(MailKey::derive(&id).public(), MailKey::derive(&id).public());
        assert_ne!(
            MailKey::derive(&id).public(),
            MailKey::derive(&SigningKey::generate()).public()
        );
    }

    #[test]
    fn buckets_are_powers_of_two_from_1_kib_to_the_maximum() {
        assert_eq!(bucket_for(0, MAX_BUCKET), Some(1024));
        assert_eq!(bucket_for(1024 - OVERHEAD, MAX_BUCKET), Some(1024));
        assert_eq!(bucket_for(1025 - OVERHEAD, MAX_BUCKET), Some(2048));
        assert_eq!(
            bucket_for(MAX_BUCKET - OVERHEAD, MAX_BUCKET),
            Some(MAX_BUCKET)
        );
        assert_eq!(bucket_for(MAX_BUCKET - OVERHEAD + 1, MAX_BUCKET), None);
        assert_eq!(bucket_for(5000, 4096), None);
        assert_eq!(max_content(4096), 4096 - OVERHEAD);
        assert_eq!(max_content(6000), 4096 - OVERHEAD);
    }

    #[test]
    fn another_key_cannot_open_and_a_forged_sender_is_refused() {
        let (alice, _) = pair();
        let (bob, bob_key) = pair();
        let (_, eve_key) = pair();
        let env = seal(
            &alice,
            &bob.public_bytes(),
            &bob_key.public(),
            Lane::Message,
            7,
            b"hi",
            MAX_BUCKET,
        )
        .unwrap();
        assert_eq!(open(&eve_key, &env), Err(EnvelopeError::NotForMe));
        // Eve re-addresses it to herself: the head is authenticated data.
        let mut moved = env.clone();
        moved[9..41].copy_from_slice(&eve_key.identity());
        assert_eq!(open(&eve_key, &moved), Err(EnvelopeError::Decrypt));
        // Sealed to bob's key but claiming a sender whose signature it does not carry.
        let (mallory, _) = pair();
        let mut plain = vec![0u8; 1024 - HEAD_LEN - TAG_LEN];
        plain[..32].copy_from_slice(&alice.public_bytes());
        plain[40..104].copy_from_slice(&mallory.sign(b"whatever"));
        let mut head = MAGIC.to_vec();
        head.push(0);
        head.extend_from_slice(&bob.public_bytes());
        let pk = PublicKey::from_bytes(&bob_key.public()).unwrap();
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk,
            INFO,
            &plain,
            &head,
        )
        .unwrap();
        let mut forged = head;
        forged.extend_from_slice(&enc.to_bytes());
        forged.extend_from_slice(&ct);
        assert_eq!(open(&bob_key, &forged), Err(EnvelopeError::Signature));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip_in_the_smallest_bucket(content in proptest::collection::vec(any::<u8>(), 0..9000),
                                             at in any::<u64>(), receipt in any::<bool>()) {
            let (alice, _) = pair();
            let (bob, bob_key) = pair();
            let lane = if receipt { Lane::Receipt } else { Lane::Message };
            let env = seal(&alice, &bob.public_bytes(), &bob_key.public(), lane, at, &content,
                MAX_BUCKET).unwrap();
            prop_assert_eq!(Some(env.len()), bucket_for(content.len(), MAX_BUCKET));
            prop_assert!(env.len().is_power_of_two() && env.len() >= MIN_BUCKET);
            let head = Head::read(&env, MAX_BUCKET).unwrap();
            prop_assert_eq!(head.recipient, bob.public_bytes());
            prop_assert_eq!(head.lane, lane);
            prop_assert_eq!(head.id, Address::of(&env));
            let opened = open(&bob_key, &env).unwrap();
            prop_assert_eq!(opened.sender, alice.public_bytes());
            prop_assert_eq!(opened.sent_at_ms, at);
            prop_assert_eq!(opened.lane, lane);
            prop_assert_eq!(opened.content, content);
        }

        #[test]
        fn every_flipped_bit_is_refused(content in proptest::collection::vec(any::<u8>(), 0..3000),
                                        pick in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (alice, _) = pair();
            let (bob, bob_key) = pair();
            let env = seal(&alice, &bob.public_bytes(), &bob_key.public(), Lane::Message, 1,
                &content, MAX_BUCKET).unwrap();
            let mut bad = env.clone();
            let i = pick.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(open(&bob_key, &bad).is_err());
        }

        #[test]
        fn truncated_or_extended_is_refused(content in proptest::collection::vec(any::<u8>(), 0..2000),
                                            cut in 1usize..2048) {
            let (alice, _) = pair();
            let (bob, bob_key) = pair();
            let env = seal(&alice, &bob.public_bytes(), &bob_key.public(), Lane::Message, 1,
                &content, MAX_BUCKET).unwrap();
            let short = &env[..env.len().saturating_sub(cut)];
            prop_assert!(open(&bob_key, short).is_err());
            let mut long = env.clone();
            long.extend(std::iter::repeat_n(0u8, cut));
            prop_assert!(open(&bob_key, &long).is_err());
        }
    }

    #[test]
    fn receipts_round_trip() {
        let r = Receipt {
            id: Address::of(b"m"),
            acked_at_ms: 42,
        };
        assert_eq!(Receipt::from_bytes(&r.to_bytes()), Ok(r));
        assert!(Receipt::from_bytes(&[0u8; 39]).is_err());
    }
}
