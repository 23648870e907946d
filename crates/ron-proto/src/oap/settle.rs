//! App 0x0401, settlement between nodes: signed cumulative cheques, as OAP/1 frames (no I/O;
//! `svc-dht` carries them on `/ron/oap/1` beside app 0x0102, `svc-payment` signs, checks and
//! records them).
//!
//! A node that has received ranges from a peer owes it; it pays with a [`Cheque`]: the total
//! it has ever paid that peer (`cumulative`), signed with its node key. The peer keeps the
//! highest cheque of each issuer and credits the issuer with the increase, so a lost cheque
//! is made good by the next one, and a replayed or older one adds nothing (refused: 409).
//!
//! A request is one `REQ|START|END` frame of app 0x0401 with the JSON
//! `{"op":"cheque","issuer":"ed25519/<hex>","beneficiary":"ed25519/<hex>","cumulative":N,"signature":"<hex>"}`;
//! the answer one `RESP|START|END` frame `{"cumulative":N,"credited":D}` (the issuer's
//! cumulative now held, and what this cheque added), or an error frame with the shared body.
//! The signature is Ed25519 over [`signed_bytes`]. `specs/OAP-1.md` has the vectors.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{APP_SETTLE, Flags, Frame};
use crate::{ErrorBody, ErrorKind};

/// What every cheque signature starts with: a signature over a cheque cannot be taken for
/// one over anything else.
pub const DOMAIN: &[u8; 12] = b"ron-cheque/1";

/// Bytes an issuer signs: [`DOMAIN`], its key, the beneficiary's key, the cumulative amount
/// (u64 big-endian).
pub const SIGNED_LEN: usize = DOMAIN.len() + 32 + 32 + 8;

/// A signed promise of `cumulative` credits in all, from `issuer` to `beneficiary` (both
/// node keys: Ed25519, the keys behind their PeerIds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cheque {
    /// The paying node's key.
    pub issuer: [u8; 32],
    /// The paid node's key.
    pub beneficiary: [u8; 32],
    /// Every credit the issuer has paid the beneficiary, this cheque included.
    pub cumulative: u64,
    /// The issuer's Ed25519 signature over [`signed_bytes`].
    pub signature: [u8; 64],
}

/// The bytes a cheque's signature covers.
pub fn signed_bytes(
    issuer: &[u8; 32],
    beneficiary: &[u8; 32],
    cumulative: u64,
) -> [u8; SIGNED_LEN] {
    let mut out = [0u8; SIGNED_LEN];
    out[..12].copy_from_slice(DOMAIN);
    out[12..44].copy_from_slice(issuer);
    out[44..76].copy_from_slice(beneficiary);
    out[76..].copy_from_slice(&cumulative.to_be_bytes());
    out
}

impl Cheque {
    /// The bytes its signature covers.
    pub fn signed(&self) -> [u8; SIGNED_LEN] {
        signed_bytes(&self.issuer, &self.beneficiary, self.cumulative)
    }
}

/// A cheque's answer: what the beneficiary now holds of the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cashed {
    /// The issuer's cumulative amount now held (this cheque's).
    pub cumulative: u64,
    /// What this cheque added to the one held before.
    pub credited: u64,
}

/// Why a frame is not a well-formed 0x0401 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettleError(String);

fn bad(why: impl Into<String>) -> SettleError {
    SettleError(why.into())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChequeJson {
    op: String,
    issuer: String,
    beneficiary: String,
    cumulative: u64,
    signature: String,
}

/// A node key as text: `ed25519/<64 hex>` (as accounts name keys).
pub fn key_text(key: &[u8; 32]) -> String {
    format!("ed25519/{}", hex::encode(key))
}

fn key_of(text: &str) -> Result<[u8; 32], SettleError> {
    let mut key = [0u8; 32];
    let hex = text
        .strip_prefix("ed25519/")
        .ok_or_else(|| bad("a key is ed25519/<64 hex>"))?;
    hex::decode_to_slice(hex, &mut key).map_err(|_| bad("a key is ed25519/<64 hex>"))?;
    Ok(key)
}

/// The request frame carrying `cheque`.
pub fn request_frame(cheque: &Cheque) -> Frame {
    let body = ChequeJson {
        op: "cheque".into(),
        issuer: key_text(&cheque.issuer),
        beneficiary: key_text(&cheque.beneficiary),
        cumulative: cheque.cumulative,
        signature: hex::encode(cheque.signature),
    };
    let mut frame = Frame::new(Flags::REQ | Flags::START | Flags::END, APP_SETTLE, 0);
    // Strings and a number: serializes without fail.
    frame.payload = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    frame
}

/// Reads a request frame: the cheque, well formed (its signature is the payment service's to
/// check).
pub fn decode_request(frame: &Frame) -> Result<Cheque, SettleError> {
    if frame.app_proto_id != APP_SETTLE {
        return Err(bad(format!("app {:#06x}", frame.app_proto_id)));
    }
    if frame.flags != Flags::REQ | Flags::START | Flags::END {
        return Err(bad("a cheque is one REQ|START|END frame"));
    }
    let body: ChequeJson =
        serde_json::from_slice(&frame.payload).map_err(|e| bad(e.to_string()))?;
    if body.op != "cheque" {
        return Err(bad(format!("unknown op {:?}", body.op)));
    }
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&body.signature, &mut signature)
        .map_err(|_| bad("a signature is 128 hex"))?;
    Ok(Cheque {
        issuer: key_of(&body.issuer)?,
        beneficiary: key_of(&body.beneficiary)?,
        cumulative: body.cumulative,
        signature,
    })
}

/// The reply frame: the cheque cashed, or refused (its kind and the shared error body).
pub fn reply_frame(reply: &Result<Cashed, (ErrorKind, ErrorBody)>) -> Frame {
    match reply {
        Ok(cashed) => {
            let mut frame = Frame::new(Flags::RESP | Flags::START | Flags::END, APP_SETTLE, 0);
            frame.payload = Bytes::from(serde_json::to_vec(cashed).unwrap_or_default());
            frame
        }
        Err((kind, body)) => Frame::error_reply(APP_SETTLE, 0, *kind, body),
    }
}

/// Reads a reply frame.
pub fn decode_reply(frame: &Frame) -> Result<Result<Cashed, (ErrorKind, ErrorBody)>, SettleError> {
    if frame.app_proto_id != APP_SETTLE {
        return Err(bad(format!("app {:#06x}", frame.app_proto_id)));
    }
    if frame.flags != Flags::RESP | Flags::START | Flags::END {
        return Err(bad("a cheque's answer is one RESP|START|END frame"));
    }
    if frame.code != 0 {
        let body: ErrorBody =
            serde_json::from_slice(&frame.payload).map_err(|e| bad(e.to_string()))?;
        let kind = ErrorKind::from_status(frame.code).unwrap_or(ErrorKind::Internal);
        return Ok(Err((kind, body)));
    }
    serde_json::from_slice(&frame.payload)
        .map(Ok)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::BytesMut;
    use ed25519_dalek::{Signer, SigningKey, Verifier};

    fn hex_frame(frame: &Frame) -> String {
        let mut buf = BytesMut::new();
        frame
            .encode(&mut buf, crate::oap::DEFAULT_MAX_FRAME)
            .unwrap();
        hex::encode(&buf)
    }

    /// The spec's vectors: issuer key from the secret 32 × 0x01, beneficiary from 32 × 0x02,
    /// cumulative 64.
    fn vector_cheque() -> Cheque {
        let issuer = SigningKey::from_bytes(&[1u8; 32]);
        let beneficiary = SigningKey::from_bytes(&[2u8; 32])
            .verifying_key()
            .to_bytes();
        let signed = signed_bytes(&issuer.verifying_key().to_bytes(), &beneficiary, 64);
        Cheque {
            issuer: issuer.verifying_key().to_bytes(),
            beneficiary,
            cumulative: 64,
            signature: issuer.sign(&signed).to_bytes(),
        }
    }

    #[test]
    fn the_vectors_encode_and_decode_exactly() {
        let cheque = vector_cheque();
        let request = request_frame(&cheque);
        assert_eq!(
            std::str::from_utf8(&request.payload).unwrap(),
            VECTOR_REQUEST_JSON
        );
        assert_eq!(hex_frame(&request), VECTOR_REQUEST_HEX);
        assert_eq!(decode_request(&request).unwrap(), cheque);
        let key = ed25519_dalek::VerifyingKey::from_bytes(&cheque.issuer).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&cheque.signature);
        key.verify(&cheque.signed(), &sig).unwrap();

        let cashed = reply_frame(&Ok(Cashed {
            cumulative: 64,
            credited: 64,
        }));
        assert_eq!(hex_frame(&cashed), VECTOR_CASHED_HEX);
        assert_eq!(
            decode_reply(&cashed).unwrap().unwrap(),
            Cashed {
                cumulative: 64,
                credited: 64
            }
        );
        let body = ErrorBody::new(ErrorKind::Conflict, "the cheque is not above the 64 held");
        let stale = reply_frame(&Err((ErrorKind::Conflict, body.clone())));
        assert_eq!(hex_frame(&stale), VECTOR_STALE_HEX);
        assert_eq!(
            decode_reply(&stale).unwrap(),
            Err((ErrorKind::Conflict, body))
        );
    }

    #[test]
    fn malformed_cheques_are_refused() {
        let good = request_frame(&vector_cheque());
        let mut other_app = good.clone();
        other_app.app_proto_id = crate::oap::APP_TRANSFER;
        assert!(decode_request(&other_app).is_err());
        let mut not_whole = good.clone();
        not_whole.flags = Flags::REQ | Flags::START;
        assert!(decode_request(&not_whole).is_err());
        for payload in [
            &b"{}"[..],
            b"not json",
            br#"{"op":"cheque","issuer":"ed25519/00","beneficiary":"ed25519/00","cumulative":1,"signature":"00"}"#,
            br#"{"op":"pay","issuer":"x","beneficiary":"y","cumulative":1,"signature":"z"}"#,
        ] {
            let mut frame = good.clone();
            frame.payload = Bytes::copy_from_slice(payload);
            assert!(decode_request(&frame).is_err(), "{payload:?}");
        }
        let mut extra = good.clone();
        let mut json: serde_json::Value = serde_json::from_slice(&good.payload).unwrap();
        json["more"] = 1.into();
        extra.payload = Bytes::from(serde_json::to_vec(&json).unwrap());
        assert!(decode_request(&extra).is_err());
    }

    const VECTOR_REQUEST_JSON: &str = r#"{"op":"cheque","issuer":"ed25519/8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c","beneficiary":"ed25519/8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394","cumulative":64,"signature":"7e753a4459eb49d780eeafd62773b60c7395c0b85d1f7443acc911d02fe7682a2592cc4330de74df193fe11c7f3ca9b4883122e296f5d3f0b67dc70589b8d200"}"#;
    const VECTOR_REQUEST_HEX: &str = "7c0100000119000000010400000000000000000000000000000000000000000000000000007b226f70223a22636865717565222c22697373756572223a22656432353531392f38613838653364643734303966313935666435326462326433636261356437326361363730396266316439343132316266333734383830316234306636663563222c2262656e6566696369617279223a22656432353531392f38313339373730656138376431373566353661333534363663333463376563636362386438613931623465653337613235646636306635623866633962333934222c2263756d756c6174697665223a36342c227369676e6174757265223a223765373533613434353965623439643738306565616664363237373362363063373339356330623835643166373434336163633931316430326665373638326132353932636334333330646537346466313933666531316337663363613962343838333132326532393666356433663062363764633730353839623864323030227d";
    const VECTOR_CASHED_HEX: &str = "40000000011a000000010400000000000000000000000000000000000000000000000000007b2263756d756c6174697665223a36342c226372656469746564223a36347d";
    const VECTOR_STALE_HEX: &str = "64000000011a009901010400000000000000000000000000000000000000000000000000007b22636f6465223a22636f6e666c696374222c226d657373616765223a2274686520636865717565206973206e6f742061626f7665207468652036342068656c64227d";
}
