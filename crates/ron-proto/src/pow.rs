//! The proof-of-work puzzle of anonymous reads (a BLAKE3 hashcash): a node hands out a
//! 32-byte challenge and a difficulty in bits; the client finds a nonce such that
//! BLAKE3(challenge | nonce as 8 bytes little-endian) starts with that many zero bits, and sends
//! `ron-pow: <challenge hex>.<nonce as 16 hex digits>`. Checking an answer is one hash.
//!
//! ```
//! use ron_proto::pow;
//!
//! let challenge = [7u8; 32];
//! let nonce = pow::solve(&challenge, 8, u64::MAX).unwrap();
//! assert!(pow::work_bits(&challenge, nonce) >= 8);
//! let header = pow::answer(&challenge, nonce);
//! assert_eq!(pow::parse(&header), Some((challenge, nonce)));
//! ```

/// The HTTP header (and OAP/1 credential prefix, `pow <answer>`) that carries an answer.
pub const HEADER: &str = "ron-pow";

/// Leading zero bits of BLAKE3(`challenge` | `nonce`).
pub fn work_bits(challenge: &[u8; 32], nonce: u64) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(challenge);
    h.update(&nonce.to_le_bytes());
    let hash = h.finalize();
    let mut bits = 0;
    for byte in hash.as_bytes() {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// The first nonce (from a random start) that gives `bits` zero bits, trying at most `tries`
/// nonces (`None`: none found within them).
pub fn solve(challenge: &[u8; 32], bits: u8, tries: u64) -> Option<u64> {
    let start = fastrand::u64(..);
    (0..tries)
        .map(|i| start.wrapping_add(i))
        .find(|&nonce| work_bits(challenge, nonce) >= u32::from(bits))
}

/// The header value answering `challenge` with `nonce`.
pub fn answer(challenge: &[u8; 32], nonce: u64) -> String {
    format!("{}.{nonce:016x}", hex::encode(challenge))
}

/// The challenge and nonce of an answer (`None`: not an answer's shape).
pub fn parse(text: &str) -> Option<([u8; 32], u64)> {
    let (challenge, nonce) = text.trim().split_once('.')?;
    if challenge.len() != 64 || nonce.len() != 16 {
        return None;
    }
    let mut c = [0u8; 32];
    hex::decode_to_slice(challenge, &mut c).ok()?;
    let nonce = u64::from_str_radix(nonce, 16).ok()?;
    Some((c, nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_bad_ones_are_refused() {
        let c = [1u8; 32];
        let n = solve(&c, 10, 1 << 24).unwrap();
        assert!(work_bits(&c, n) >= 10);
        assert_eq!(parse(&answer(&c, n)), Some((c, n)));
        assert_eq!(parse("zz"), None);
        assert_eq!(
            parse(&format!("{}.{}", hex::encode(c), "x".repeat(16))),
            None
        );
        assert_eq!(parse(&format!("{}.1", hex::encode(c))), None);
    }
}
