//! Ed25519 keys: their text forms, their files (mode 0600, written atomically and fsynced),
//! and the node's identity.
//!
//! One text form each, used everywhere (files, config, the CLI):
//! - public key: `ed25519/<64 hex>`
//! - secret key: `ed25519-private/<64 hex>` (only ever in a 0600 file or on a terminal)

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use biscuit_auth::{Algorithm, KeyPair, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// A key, file or text that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a key in our form.
    #[error("not a key: {0}")]
    Malformed(String),
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
}

impl KeyError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An Ed25519 signing key. The secret is zeroized when the key is dropped and never appears
/// in `Debug` output or logs.
pub struct SigningKey {
    pair: KeyPair,
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            pair: KeyPair::new_with_algorithm(Algorithm::Ed25519),
        }
    }

    /// Parses `ed25519-private/<hex>` (surrounding whitespace allowed).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let private = PrivateKey::from_str(text.trim())
            .map_err(|_| KeyError::Malformed("expected ed25519-private/<64 hex>".into()))?;
        if private.algorithm() != biscuit_auth::format::schema::public_key::Algorithm::Ed25519 {
            return Err(KeyError::Malformed("only Ed25519 keys are used".into()));
        }
        Ok(Self {
            pair: KeyPair::from(&private),
        })
    }

    /// The secret in text form, `ed25519-private/<hex>`, zeroized when dropped.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.private().to_prefixed_string())
    }

    /// The 32 secret bytes, zeroized when dropped.
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.pair.private().to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.pair.public()
    }

    /// Reads a key file written by [`SigningKey::write`] (or by hand, in the same form).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?);
        Self::from_text(&text).map_err(|e| match e {
            KeyError::Malformed(m) => KeyError::Malformed(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Writes the key to `path` (mode 0600, atomically, fsynced). Refuses to replace an
    /// existing file.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let mut text = self.to_text();
        text.push('\n');
        write_secret(path, text.as_bytes(), false).map_err(|e| KeyError::io(path, e))
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }

    /// The 32 bytes of the public half.
    pub fn public_bytes(&self) -> [u8; 32] {
        let bytes = self.pair.public().to_bytes();
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes[..32.min(bytes.len())]);
        out
    }

    /// An Ed25519 signature of `message` (RFC 8032, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let secret =
            libp2p_identity::ed25519::SecretKey::try_from_bytes(self.secret_bytes().to_vec());
        // A key this type holds is always 32 valid secret bytes.
        let Ok(secret) = secret else {
            return [0u8; 64];
        };
        let pair = libp2p_identity::ed25519::Keypair::from(secret);
        let mut out = [0u8; 64];
        out.copy_from_slice(&pair.sign(message));
        out
    }
}

/// Whether `sig` is the Ed25519 signature of `message` by the public key `public` (its 32
/// bytes); a malformed key or signature does not verify. Verification is strict (RFC 8032
/// with the small-order checks): a weak key such as all zeros, whose "signatures" anyone can
/// make for any message, verifies nothing.
pub fn verify_signature(public: &[u8; 32], message: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = <&[u8; 64]>::try_from(sig) else {
        return false;
    };
    ed25519_dalek::VerifyingKey::from_bytes(public).is_ok_and(|key| {
        !key.is_weak()
            && key
                .verify_strict(message, &ed25519_dalek::Signature::from_bytes(sig))
                .is_ok()
    })
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", public_text(&self.public()))
    }
}

/// The text form of a public key: `ed25519/<hex>`.
pub fn public_text(key: &PublicKey) -> String {
    format!("ed25519/{}", key.to_bytes_hex())
}

/// Parses a public key in the form `ed25519/<hex>`.
pub fn parse_public(text: &str) -> Result<PublicKey, KeyError> {
    let hex = text
        .trim()
        .strip_prefix("ed25519/")
        .ok_or_else(|| KeyError::Malformed("expected ed25519/<64 hex>".into()))?;
    if hex.len() != 64 {
        return Err(KeyError::Malformed("expected ed25519/<64 hex>".into()));
    }
    PublicKey::from_bytes_hex(hex, Algorithm::Ed25519)
        .map_err(|_| KeyError::Malformed("expected ed25519/<64 hex>".into()))
}

/// The short id of a public key carried in tokens as a hint (`root_key_id`): the first four
/// bytes of the BLAKE3 of the key. Only a hint: a collision costs a failed verification,
/// never a false one.
pub fn key_id(key: &PublicKey) -> u32 {
    let hash = blake3::hash(&key.to_bytes());
    let b = hash.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The node's long-lived network identity: an Ed25519 key whose libp2p `PeerId` text
/// (`12D3KooW…`) is the node id. It does not rotate.
pub struct NodeIdentity {
    keypair: libp2p_identity::Keypair,
    node_id: String,
}

impl NodeIdentity {
    /// A new identity that lives only in memory.
    pub fn ephemeral() -> Self {
        Self::from_keypair(libp2p_identity::Keypair::generate_ed25519())
    }

    /// Loads the identity from `path`, creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match SigningKey::read(path) {
            Ok(key) => Self::from_signing_key(&key),
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let key = SigningKey::generate();
                key.write(path)?;
                tracing::info!(path = %path.display(), "created the node identity key");
                Self::from_signing_key(&key)
            }
            Err(e) => Err(e),
        }
    }

    /// The identity whose secret is `key`.
    pub fn from_signing_key(key: &SigningKey) -> Result<Self, KeyError> {
        let mut bytes = key.secret_bytes();
        let keypair = libp2p_identity::Keypair::ed25519_from_bytes(&mut bytes[..])
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        Ok(Self::from_keypair(keypair))
    }

    fn from_keypair(keypair: libp2p_identity::Keypair) -> Self {
        let node_id = keypair.public().to_peer_id().to_string();
        Self { keypair, node_id }
    }

    /// The node id: the libp2p `PeerId` of the key, in its usual text form.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The key pair, for the peer-to-peer layer.
    pub fn keypair(&self) -> &libp2p_identity::Keypair {
        &self.keypair
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.node_id)
    }
}

/// Writes a secret file: a temporary file created with mode 0600, fsynced, renamed into
/// place, then the directory fsynced. With `replace` false an existing `path` is an error.
pub fn write_secret(path: &Path, bytes: &[u8], replace: bool) -> io::Result<()> {
    if !replace && path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "refusing to overwrite an existing key file",
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            fs::rename(&tmp, path)?;
        } else {
            // hard_link fails if `path` appeared meanwhile: no silent overwrite.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        }
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let key = SigningKey::generate();
        let again = SigningKey::from_text(&key.to_text()).unwrap();
        assert_eq!(key.public(), again.public());
        let public = public_text(&key.public());
        assert!(public.starts_with("ed25519/") && public.len() == 8 + 64);
        assert_eq!(parse_public(&public).unwrap(), key.public());
        assert!(!format!("{key:?}").contains(&key.to_text()[16..]));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "ed25519/00",
            "ed25519-private/zz",
            "secp256r1-private/00",
            "ed25519-private/0011",
        ] {
            assert!(SigningKey::from_text(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "ed25519/",
            "ed25519/xyz",
            "ed25519-private/00",
            "rsa/00",
        ] {
            assert!(parse_public(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_files_are_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SigningKey::generate();
        key.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(SigningKey::generate().write(&path).is_err());
        assert_eq!(SigningKey::read(&path).unwrap().public(), key.public());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn the_node_id_is_a_stable_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let first = NodeIdentity::load_or_create(&path).unwrap();
        let again = NodeIdentity::load_or_create(&path).unwrap();
        assert_eq!(first.node_id(), again.node_id());
        assert!(
            first.node_id().starts_with("12D3KooW"),
            "{}",
            first.node_id()
        );
        assert_ne!(first.node_id(), NodeIdentity::ephemeral().node_id());
    }
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn signatures_verify_strictly_and_weak_keys_verify_nothing() {
        let key = SigningKey::generate();
        let sig = key.sign(b"message");
        assert!(verify_signature(&key.public_bytes(), b"message", &sig));
        assert!(!verify_signature(&key.public_bytes(), b"other", &sig));
        assert!(!verify_signature(
            &key.public_bytes(),
            b"message",
            &sig[..63]
        ));
        // The all-zero key (a small-order point) with the all-zero signature would pass a
        // lax check for every message (found by the `mail` fuzz target).
        assert!(!verify_signature(&[0; 32], b"anything", &[0; 64]));
        let mut identity = [0u8; 32];
        identity[0] = 1; // the neutral point
        assert!(!verify_signature(&identity, b"anything", &[0; 64]));
    }
}
