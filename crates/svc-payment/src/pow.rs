//! Proof-of-work challenges for anonymous reads (the puzzle itself is [`ron_proto::pow`]).
//!
//! A challenge is `expires_ms (8) | bits (1) | salt (7) | tag (16)`, the tag a BLAKE3 keyed
//! hash (the node's secret, made at start) over the rest and the request's target: the node
//! keeps nothing per challenge it hands out, a challenge for one object does not open
//! another, and no client picks its own difficulty. Each answered challenge is remembered
//! until it expires and accepted once. The difficulty is `pow_bits` while anonymous reads stay
//! under `pow_target_per_s`, and one bit more per doubling above it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::PoisonError;

use ron_proto::PowChallenge;

/// How long a challenge may be answered.
pub const TTL_MS: u64 = 60_000;
/// Answers remembered at most (each until its challenge expires).
const MAX_SEEN: usize = 262_144;
/// Difficulty never passes this, however loaded the node.
const MAX_BITS: u8 = 40;

/// Why an answer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted (and now spent).
    Accepted,
    /// Not an answer of a challenge of this node for this target.
    Forged,
    /// The challenge expired.
    Expired,
    /// The hash lacks the challenge's bits.
    Short,
    /// This challenge was answered before.
    Replayed,
    /// Too many answers are remembered to take another now.
    Busy,
}

/// The node's challenges and the answers it has accepted.
pub struct Puzzles {
    secret: [u8; 32],
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    answers: HashMap<[u8; 32], u64>,
    /// Anonymous reads counted in the current second, and the last full second's count.
    second: u64,
    this_second: u64,
    last_second: u64,
}

impl std::fmt::Debug for Puzzles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puzzles").finish_non_exhaustive()
    }
}

impl Default for Puzzles {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        fastrand::fill(&mut secret);
        // fastrand is not a CSPRNG: key a hash with its bytes over std's RandomState, which
        // the OS seeds.
        let os =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
        let secret = blake3::keyed_hash(&secret, &os.to_le_bytes());
        Self {
            secret: *secret.as_bytes(),
            seen: Mutex::default(),
        }
    }
}

impl Puzzles {
    fn tag(&self, head: &[u8; 16], target: &str) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        h.update(b"ron-pow 1\0");
        h.update(head);
        h.update(target.as_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
        tag
    }

    /// Counts an anonymous read and says the difficulty now (`base` bits, one more per
    /// doubling of the last second's reads above `target_per_s`).
    pub fn difficulty(&self, now_ms: u64, base: u8, target_per_s: u32) -> u8 {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let second = now_ms / 1000;
        if second != seen.second {
            seen.last_second = if second == seen.second + 1 {
                seen.this_second
            } else {
                0
            };
            seen.second = second;
            seen.this_second = 0;
        }
        seen.this_second += 1;
        let load = seen.last_second.max(seen.this_second);
        let target = u64::from(target_per_s.max(1));
        let extra = if load > target {
            (load / target).ilog2() as u8 + 1
        } else {
            0
        };
        base.saturating_add(extra).min(MAX_BITS)
    }

    /// A challenge for a read of `target`, `bits` hard, expiring [`TTL_MS`] after `now_ms`.
    pub fn challenge(&self, target: &str, bits: u8, now_ms: u64) -> PowChallenge {
        let expires_ms = now_ms + TTL_MS;
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&expires_ms.to_le_bytes());
        head[8] = bits;
        fastrand::fill(&mut head[9..]);
        let mut c = [0u8; 32];
        c[..16].copy_from_slice(&head);
        c[16..].copy_from_slice(&self.tag(&head, target));
        PowChallenge {
            challenge: hex::encode(c),
            bits,
            expires_ms,
        }
    }

    /// Checks an answer (`<challenge>.<nonce>`) for `target` at `now_ms`; an accepted one is
    /// spent.
    pub fn check(&self, answer: &str, target: &str, now_ms: u64) -> Verdict {
        let Some((c, nonce)) = ron_proto::pow::parse(answer) else {
            return Verdict::Forged;
        };
        let mut head = [0u8; 16];
        head.copy_from_slice(&c[..16]);
        if self.tag(&head, target)[..] != c[16..] {
            return Verdict::Forged;
        }
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&head[..8]);
        let expires_ms = u64::from_le_bytes(expires);
        if expires_ms <= now_ms {
            return Verdict::Expired;
        }
        if ron_proto::pow::work_bits(&c, nonce) < u32::from(head[8]) {
            return Verdict::Short;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.answers.contains_key(&c) {
            return Verdict::Replayed;
        }
        if seen.answers.len() >= MAX_SEEN {
            seen.answers.retain(|_, &mut until| until > now_ms);
            if seen.answers.len() >= MAX_SEEN {
                return Verdict::Busy;
            }
        }
        seen.answers.insert(c, expires_ms);
        Verdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solve(c: &PowChallenge) -> String {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&c.challenge, &mut bytes).unwrap();
        let nonce = ron_proto::pow::solve(&bytes, c.bits, u64::MAX).unwrap();
        ron_proto::pow::answer(&bytes, nonce)
    }

    #[test]
    fn answers_are_checked_bound_and_spent_once() {
        let p = Puzzles::default();
        let c = p.challenge("/o/b3:aa", 8, 1_000);
        let a = solve(&c);
        assert_eq!(p.check(&a, "/o/b3:bb", 1_001), Verdict::Forged);
        assert_eq!(p.check(&a, "/o/b3:aa", 1_000 + TTL_MS), Verdict::Expired);
        assert_eq!(p.check(&a, "/o/b3:aa", 1_001), Verdict::Accepted);
        assert_eq!(p.check(&a, "/o/b3:aa", 1_002), Verdict::Replayed);
        // A challenge with its difficulty lowered by the client fails its tag.
        let mut forged = c.challenge.clone();
        forged.replace_range(16..18, "00");
        assert_eq!(
            p.check(&format!("{forged}.0000000000000000"), "/o/b3:aa", 1_001),
            Verdict::Forged
        );
        assert_eq!(p.check("nonsense", "/o/b3:aa", 1_001), Verdict::Forged);
        // Another node's challenge is forged here.
        let other = Puzzles::default().challenge("/o/b3:aa", 8, 1_000);
        assert_eq!(p.check(&solve(&other), "/o/b3:aa", 1_001), Verdict::Forged);
    }

    #[test]
    fn a_short_answer_is_refused() {
        let p = Puzzles::default();
        let c = p.challenge("/t", 20, 0);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&c.challenge, &mut bytes).unwrap();
        let weak = (0..)
            .find(|&n| ron_proto::pow::work_bits(&bytes, n) < 20)
            .unwrap();
        assert_eq!(
            p.check(&ron_proto::pow::answer(&bytes, weak), "/t", 1),
            Verdict::Short
        );
    }

    #[test]
    fn difficulty_rises_with_load() {
        let p = Puzzles::default();
        assert_eq!(p.difficulty(0, 16, 100), 16);
        for _ in 0..399 {
            p.difficulty(500, 16, 100);
        }
        // 400 in the last second, four times the target: two doublings.
        assert_eq!(p.difficulty(1_000, 16, 100), 19);
        // A quiet second later it is back.
        assert_eq!(p.difficulty(3_000, 16, 100), 16);
    }
}
