//! Proof of a key on a request: the `ron-mail-auth` header,
//! `<identity> <unix seconds> <nonce> <sig>`, where the signature (Ed25519, hex) covers the
//! method, the path with its query, the time, the nonce (16 random hex digits) and the BLAKE3
//! of the body. A mailbox is read and acknowledged only with its owner's proof:
//! knowing the recipient's key (or a queue's name) is never enough. Each proof is accepted
//! once, within [`WINDOW_S`] of the node's clock.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use ron_auth::{SigningKey, verify_signature};

use crate::record::{identity_bytes, identity_text};

/// The header carrying the proof.
pub const HEADER: &str = "ron-mail-auth";
/// How far a proof's time may be from the node's clock, in seconds.
pub const WINDOW_S: u64 = 300;
/// Proofs remembered (a replay within the window is refused).
const REMEMBERED: usize = 65_536;
/// What the signature covers first.
const DOMAIN: &[u8] = b"ron-mail-req/1\0";

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// No proof, or not in the header's form.
    #[error("a ron-mail-auth header (identity, time, signature) is required")]
    Missing,
    /// The time is outside the window.
    #[error("the proof's time is more than {WINDOW_S} s from the node's clock")]
    Stale,
    /// The signature does not verify.
    #[error("the proof's signature does not verify")]
    Signature,
    /// This exact proof was seen before.
    #[error("the proof was used before")]
    Replayed,
}

fn signed_bytes(method: &str, path: &str, at_s: u64, nonce: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + method.len() + path.len() + 50);
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(method.as_bytes());
    out.push(0);
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    out.extend_from_slice(&at_s.to_be_bytes());
    out.extend_from_slice(&nonce.to_be_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out
}

/// The header value proving `key` on a request.
pub fn sign(key: &SigningKey, method: &str, path: &str, at_s: u64, body: &[u8]) -> String {
    let nonce = fastrand::u64(..);
    let sig = key.sign(&signed_bytes(method, path, at_s, nonce, body));
    format!(
        "{} {at_s} {nonce:016x} {}",
        identity_text(&key.public_bytes()),
        hex::encode(sig)
    )
}

/// Checks proofs and remembers those accepted.
#[derive(Debug)]
pub struct Verifier {
    seen: Mutex<LruCache<[u8; 64], ()>>,
}

impl Default for Verifier {
    fn default() -> Self {
        let cap = NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN);
        Self {
            seen: Mutex::new(LruCache::new(cap)),
        }
    }
}

impl Verifier {
    /// The identity a header proves on this request, at `now_s`.
    pub fn check(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_s: u64,
    ) -> Result<[u8; 32], ProofError> {
        let mut parts = header.ok_or(ProofError::Missing)?.split_ascii_whitespace();
        let (Some(who), Some(at), Some(nonce), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ProofError::Missing);
        };
        let identity = identity_bytes(who).ok_or(ProofError::Missing)?;
        let at_s: u64 = at.parse().map_err(|_| ProofError::Missing)?;
        let nonce = u64::from_str_radix(nonce, 16).map_err(|_| ProofError::Missing)?;
        if at_s.abs_diff(now_s) > WINDOW_S {
            return Err(ProofError::Stale);
        }
        let mut raw = [0u8; 64];
        hex::decode_to_slice(sig, &mut raw).map_err(|_| ProofError::Signature)?;
        if !verify_signature(
            &identity,
            &signed_bytes(method, path, at_s, nonce, body),
            &raw,
        ) {
            return Err(ProofError::Signature);
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.put(raw, ()).is_some() {
            return Err(ProofError::Replayed);
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_proof_holds_once_for_its_request_and_key_only() {
        let v = Verifier::default();
        let key = SigningKey::generate();
        let h = sign(&key, "POST", "/mail/ack", 1000, b"[1]");
        assert_eq!(
            v.check(Some(&h), "POST", "/mail/ack", b"[1]", 1100),
            Ok(key.public_bytes())
        );
        assert_eq!(
            v.check(Some(&h), "POST", "/mail/ack", b"[1]", 1100),
            Err(ProofError::Replayed)
        );
        let twin = sign(&key, "POST", "/mail/ack", 1000, b"[1]");
        assert_ne!(twin, h, "two proofs of one request differ (nonce)");
        assert!(
            v.check(Some(&twin), "POST", "/mail/ack", b"[1]", 1000)
                .is_ok()
        );
        let h = sign(&key, "POST", "/mail/ack", 1000, b"[1]");
        for (method, path, body, now) in [
            ("GET", "/mail/ack", &b"[1]"[..], 1000),
            ("POST", "/mail/fetch", b"[1]", 1000),
            ("POST", "/mail/ack", b"[2]", 1000),
        ] {
            assert_eq!(
                v.check(Some(&h), method, path, body, now),
                Err(ProofError::Signature)
            );
        }
        assert_eq!(
            v.check(Some(&h), "POST", "/mail/ack", b"[1]", 1000 + WINDOW_S + 1),
            Err(ProofError::Stale)
        );
        // Another key claiming bob's identity.
        let bob = identity_text(&SigningKey::generate().public_bytes());
        let forged = h.replacen(&identity_text(&key.public_bytes()), &bob, 1);
        assert_eq!(
            v.check(Some(&forged), "POST", "/mail/ack", b"[1]", 1000),
            Err(ProofError::Signature)
        );
        assert_eq!(v.check(None, "POST", "/", b"", 0), Err(ProofError::Missing));
        assert_eq!(
            v.check(Some("x y"), "POST", "/", b"", 0),
            Err(ProofError::Missing)
        );
    }
}
