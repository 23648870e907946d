//! `b3:<hex>` content addresses: the BLAKE3-256 of an object's bytes, exactly what `b3sum` prints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "b3:";
const HEX_LEN: usize = 64;

/// The address of an object: the 32-byte BLAKE3 digest of its complete, unencrypted bytes.
///
/// Its text form is `b3:` followed by exactly 64 lowercase hex digits. Parsing is strict: any
/// other form is an [`AddressError`], never a panic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address([u8; 32]);

/// Why a text is not an [`Address`] or an [`AddressPrefix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The text does not start with `b3:`.
    #[error("address must start with `b3:`")]
    Scheme,
    /// The digest part has the wrong number of characters.
    #[error("address must have {expected} hex digits after `b3:`, found {found}")]
    Length {
        /// How many digits were expected (at most, for a prefix).
        expected: usize,
        /// How many characters were found.
        found: usize,
    },
    /// A character of the digest is not a lowercase hex digit.
    #[error("address digit {index} is not a lowercase hex digit")]
    Digit {
        /// Zero-based position of the offending character after `b3:`.
        index: usize,
    },
}

impl Address {
    /// The address of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps a digest computed elsewhere (for instance by a streaming hasher).
    pub const fn from_bytes(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The 32 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first `nibbles` hex digits of this address, for routing by truncated prefix.
    /// `nibbles` is clamped to 64. A prefix only routes: bytes are returned after the full
    /// digest has been verified.
    pub fn prefix(&self, nibbles: usize) -> AddressPrefix {
        let nibbles = nibbles.min(HEX_LEN);
        let mut bytes = [0u8; 32];
        let whole = nibbles / 2;
        bytes[..whole].copy_from_slice(&self.0[..whole]);
        if nibbles % 2 == 1 {
            bytes[whole] = self.0[whole] & 0xf0;
        }
        AddressPrefix { bytes, nibbles }
    }

    /// The length of an address's text, `b3:` and 64 hex digits.
    pub const TEXT_LEN: usize = SCHEME.len() + HEX_LEN;

    /// The address's text (`b3:` and 64 lowercase hex digits) as ASCII bytes, made without
    /// allocating or the formatting machinery: for hot paths such as an HTTP `ETag`.
    pub fn ascii(&self) -> [u8; Self::TEXT_LEN] {
        let mut text = [0u8; Self::TEXT_LEN];
        text[..SCHEME.len()].copy_from_slice(SCHEME.as_bytes());
        // Cannot fail: the rest of the buffer is exactly twice the digest's length.
        let _ = hex::encode_to_slice(self.0, &mut text[SCHEME.len()..]);
        text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; HEX_LEN];
        // Cannot fail: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(SCHEME)?;
        // hex output is ASCII.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks that `digits` are lowercase hex, reporting the first offender.
fn check_lower_hex(digits: &str) -> Result<(), AddressError> {
    match digits
        .bytes()
        .position(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Some(index) => Err(AddressError::Digit { index }),
        None => Ok(()),
    }
}

/// The value of one lowercase hex digit.
const fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix(SCHEME).ok_or(AddressError::Scheme)?;
        if digits.len() != HEX_LEN {
            return Err(AddressError::Length {
                expected: HEX_LEN,
                found: digits.chars().count(),
            });
        }
        // One pass (addresses are parsed on every request that names one).
        let mut out = [0u8; 32];
        for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(check_lower_hex(digits)
                    .err()
                    .unwrap_or(AddressError::Digit { index: 2 * i }));
            };
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A truncated address (`b3:` and 1 to 64 lowercase hex digits), used to route; never to
/// identify content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressPrefix {
    bytes: [u8; 32],
    nibbles: usize,
}

impl AddressPrefix {
    /// How many hex digits the prefix has.
    pub const fn nibbles(&self) -> usize {
        self.nibbles
    }

    /// Whether `addr` starts with this prefix.
    pub fn matches(&self, addr: &Address) -> bool {
        let whole = self.nibbles / 2;
        addr.0[..whole] == self.bytes[..whole]
            && (self.nibbles.is_multiple_of(2) || addr.0[whole] & 0xf0 == self.bytes[whole])
    }
}

impl fmt::Display for AddressPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = Address(self.bytes).to_string();
        f.write_str(&full[..SCHEME.len() + self.nibbles])
    }
}

impl fmt::Debug for AddressPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for AddressPrefix {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix(SCHEME).ok_or(AddressError::Scheme)?;
        if digits.is_empty() || digits.len() > HEX_LEN {
            return Err(AddressError::Length {
                expected: HEX_LEN,
                found: digits.chars().count(),
            });
        }
        check_lower_hex(digits)?;
        let mut bytes = [0u8; 32];
        for (i, b) in digits.bytes().enumerate() {
            let v = match b {
                b'0'..=b'9' => b - b'0',
                _ => b - b'a' + 10,
            };
            bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        }
        Ok(Self {
            bytes,
            nibbles: digits.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HELLO: &str = "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";
    const EMPTY: &str = "b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn spec_addressing_vectors() {
        assert_eq!(Address::of(b"hello world").to_string(), HELLO);
        assert_eq!(Address::of(b"").to_string(), EMPTY);
    }

    #[test]
    fn ascii_is_the_text() {
        assert_eq!(&Address::of(b"hello world").ascii()[..], HELLO.as_bytes());
        assert_eq!(&Address::of(b"").ascii()[..], EMPTY.as_bytes());
    }

    #[test]
    fn rejects_malformed_text() {
        let long = format!("b3:{}", "a".repeat(10_000));
        let cases: &[(&str, AddressError)] = &[
            ("", AddressError::Scheme),
            (
                "b3:",
                AddressError::Length {
                    expected: 64,
                    found: 0,
                },
            ),
            (
                "B3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24",
                AddressError::Scheme,
            ),
            ("sha256:d749", AddressError::Scheme),
            (
                "b3:D74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24",
                AddressError::Digit { index: 0 },
            ),
            (
                "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e2",
                AddressError::Length {
                    expected: 64,
                    found: 63,
                },
            ),
            (
                "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e244",
                AddressError::Length {
                    expected: 64,
                    found: 65,
                },
            ),
            (
                "b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e2g",
                AddressError::Digit { index: 63 },
            ),
            (
                " b3:d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24",
                AddressError::Scheme,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                text.parse::<Address>().unwrap_err(),
                *want,
                "input {text:?}"
            );
        }
        assert!(matches!(
            long.parse::<Address>(),
            Err(AddressError::Length { found: 10_000, .. })
        ));
        let percent = format!("b3:%64%37%34{}", "a".repeat(55));
        assert_eq!(
            percent.parse::<Address>(),
            Err(AddressError::Digit { index: 0 })
        );
        // Multi-byte characters of the right byte length are rejected, not sliced mid-char.
        let multibyte = format!("b3:{}é", "a".repeat(62));
        assert!(multibyte.parse::<Address>().is_err());
    }

    #[test]
    fn serde_uses_text_form() {
        let addr = Address::of(b"hello world");
        let json = serde_json::to_string(&addr).unwrap();
        assert_eq!(json, format!("\"{HELLO}\""));
        assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), addr);
        assert!(serde_json::from_str::<Address>("\"b3:00\"").is_err());
    }

    #[test]
    fn prefix_routes_by_leading_digits() {
        let addr = Address::of(b"hello world");
        let p: AddressPrefix = "b3:d7498".parse().unwrap();
        assert_eq!(p.nibbles(), 5);
        assert!(p.matches(&addr));
        assert_eq!(addr.prefix(5), p);
        assert_eq!(p.to_string(), "b3:d7498");
        assert!(!"b3:d7499".parse::<AddressPrefix>().unwrap().matches(&addr));
        assert!("b3:".parse::<AddressPrefix>().is_err());
        assert!("b3:D7".parse::<AddressPrefix>().is_err());
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(bytes in any::<[u8; 32]>()) {
            let addr = Address::from_bytes(bytes);
            let text = addr.to_string();
            prop_assert_eq!(text.len(), 67);
            prop_assert_eq!(text.parse::<Address>().unwrap(), addr);
        }

        #[test]
        fn uppercase_is_rejected(bytes in any::<[u8; 32]>(), at in 0usize..64) {
            let text = Address::from_bytes(bytes).to_string();
            let mut chars: Vec<char> = text.chars().collect();
            prop_assume!(chars[3 + at].is_ascii_alphabetic());
            chars[3 + at] = chars[3 + at].to_ascii_uppercase();
            let upper: String = chars.into_iter().collect();
            prop_assert_eq!(upper.parse::<Address>(), Err(AddressError::Digit { index: at }));
        }

        #[test]
        fn wrong_length_is_rejected(bytes in any::<[u8; 32]>(), len in 0usize..64) {
            let text = Address::from_bytes(bytes).to_string();
            let cut = &text[..3 + len];
            let is_length_error = matches!(cut.parse::<Address>(), Err(AddressError::Length { .. }));
            prop_assert!(is_length_error);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,100}") {
            let _ = text.parse::<Address>();
            let _ = text.parse::<AddressPrefix>();
        }

        #[test]
        fn every_prefix_matches_its_address(bytes in any::<[u8; 32]>(), n in 1usize..=64) {
            let addr = Address::from_bytes(bytes);
            let p = addr.prefix(n);
            prop_assert!(p.matches(&addr));
            prop_assert_eq!(p.to_string().parse::<AddressPrefix>().unwrap(), p);
        }
    }
}
