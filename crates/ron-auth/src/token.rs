//! Capability tokens: biscuits whose blocks carry our caveats.
//!
//! Each caveat of a block is a Datalog check the authorizer evaluates against the facts of
//! the request (`time`, `operation`, `path`, `audience`), or, for the two stateful caveats, a
//! fact the verifier reads from every block and enforces with its own counters:
//!
//! ```text
//! check if time($t), $t <= 2026-11-26T10:00:00Z;          // --ttl
//! check if operation($op), ["put"].contains($op);          // --method
//! check if path($p), $p.starts_with("/put");               // --path
//! check if audience("12D3KooW…");                          // --audience
//! ron_budget(1048576, 7134…);                              // --max-bytes (id: random)
//! ron_rate(10, 1000, 9921…);                               // --rate 10/1s (per milliseconds)
//! ```
//!
//! Attenuation appends a block: checks only ever add up, and budgets and rates only ever
//! tighten (every one found in any block is enforced), so an attenuated token never allows
//! more than its parent.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use biscuit_auth::builder::Term;
use biscuit_auth::{Biscuit, BlockBuilder, UnverifiedBiscuit};

use crate::keys::{SigningKey, key_id};

/// An operation a token may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Read an object (`GET|HEAD /o/{addr}`).
    Get,
    /// Read an object's metadata (`GET /stat/{addr}`).
    Stat,
    /// Store an object (`POST /put`).
    Put,
    /// Pin an object (`POST /pin/{addr}`).
    Pin,
    /// Unpin an object (`DELETE /pin/{addr}`).
    Unpin,
    /// Remove an object, or collect garbage (`DELETE /o/{addr}`, `POST /gc`). Always needs a
    /// token.
    Delete,
    /// List what the node stores (`GET /objects`). Always needs a token.
    List,
    /// Read one's own account: credits, transfers, usage (`GET /credits/…`, `GET /usage`).
    /// Always needs a token.
    Account,
    /// Take a CPU profile of the node (`GET /debug/pprof/profile`). Always needs a token.
    Profile,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 9] = [
        Op::Get,
        Op::Stat,
        Op::Put,
        Op::Pin,
        Op::Unpin,
        Op::Delete,
        Op::List,
        Op::Account,
        Op::Profile,
    ];

    /// The name used in tokens and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Stat => "stat",
            Op::Put => "put",
            Op::Pin => "pin",
            Op::Unpin => "unpin",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Account => "account",
            Op::Profile => "profile",
        }
    }

    /// Whether the operation changes what the node stores.
    pub const fn is_write(self) -> bool {
        matches!(self, Op::Put | Op::Pin | Op::Unpin | Op::Delete)
    }

    /// Whether the operation needs a token whatever the config says (`auth.anonymous_put`
    /// and `auth.protect_reads` do not open it): removing objects and listing them.
    pub const fn owner_only(self) -> bool {
        matches!(self, Op::Delete | Op::List | Op::Account | Op::Profile)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                TokenError::Caveat(format!(
                    "unknown method {s:?} (one of get, stat, put, pin, unpin, delete, list, account, profile)"
                ))
            })
    }
}

/// At most `requests` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per window (at least 1).
    pub requests: u32,
    /// The window (at least 1 ms).
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = TokenError;

    /// `N/DURATION`, such as `10/1s` or `1000/1h`.
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let bad = || TokenError::Caveat(format!("rate {s:?} is not N/DURATION, such as 10/1s"));
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| bad())?;
        if requests == 0 || per < Duration::from_millis(1) {
            return Err(bad());
        }
        Ok(Rate { requests, per })
    }
}

/// The caveats of one block. Empty means "no further limit".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caveats {
    /// Not valid at or after this moment (unix seconds).
    pub expires_at: Option<u64>,
    /// Only these operations (empty: any).
    pub ops: BTreeSet<Op>,
    /// Only request paths starting with this.
    pub path_prefix: Option<String>,
    /// Only on the node with this id.
    pub audience: Option<String>,
    /// At most this many bytes uploaded with the token, in total.
    pub max_bytes: Option<u64>,
    /// At most this many requests per window.
    pub rate: Option<Rate>,
}

impl Caveats {
    /// True if the block would add no caveat.
    pub fn is_empty(&self) -> bool {
        self == &Caveats::default()
    }

    /// The Datalog of the block and its parameters.
    fn block(&self) -> Result<BlockBuilder, TokenError> {
        let mut code = String::new();
        let mut params: HashMap<String, Term> = HashMap::new();
        if let Some(at) = self.expires_at {
            code.push_str("check if time($t), $t < {expires};\n");
            params.insert("expires".into(), Term::Date(at));
        }
        if !self.ops.is_empty() {
            code.push_str("check if operation($op), {ops}.contains($op);\n");
            let ops = self.ops.iter().map(|op| Term::Str(op.as_str().into()));
            params.insert("ops".into(), Term::Set(ops.collect()));
        }
        if let Some(prefix) = &self.path_prefix {
            code.push_str("check if path($p), $p.starts_with({prefix});\n");
            params.insert("prefix".into(), Term::Str(prefix.clone()));
        }
        if let Some(audience) = &self.audience {
            code.push_str("check if audience({audience});\n");
            params.insert("audience".into(), Term::Str(audience.clone()));
        }
        if let Some(bytes) = self.max_bytes {
            let bytes = i64::try_from(bytes)
                .map_err(|_| TokenError::Caveat("max bytes is too large".into()))?;
            code.push_str("ron_budget({bytes}, {budget_id});\n");
            params.insert("bytes".into(), Term::Integer(bytes));
            params.insert("budget_id".into(), Term::Integer(caveat_id()));
        }
        if let Some(rate) = self.rate {
            let per_ms = i64::try_from(rate.per.as_millis())
                .map_err(|_| TokenError::Caveat("rate window is too long".into()))?;
            code.push_str("ron_rate({requests}, {per_ms}, {rate_id});\n");
            params.insert("requests".into(), Term::Integer(rate.requests.into()));
            params.insert("per_ms".into(), Term::Integer(per_ms));
            params.insert("rate_id".into(), Term::Integer(caveat_id()));
        }
        BlockBuilder::new()
            .code_with_params(code, params, HashMap::new())
            .map_err(|e| TokenError::Caveat(e.to_string()))
    }
}

/// A random id that ties a budget's or rate's counter to the block that declared it.
fn caveat_id() -> i64 {
    fastrand::i64(1..)
}

/// Why a token could not be made, read or attenuated.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A caveat cannot be expressed.
    #[error("{0}")]
    Caveat(String),
    /// The text is not a token.
    #[error("not a capability token: {0}")]
    Malformed(String),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Mints a token signed by `key`: one block with `caveats`, and the key's id as the hint a
/// verifier uses to pick the key. Returns the token's text form (URL-safe base64).
pub fn mint(key: &SigningKey, caveats: &Caveats) -> Result<String, TokenError> {
    let block = caveats.block()?;
    let token = Biscuit::builder()
        .merge(block)
        .root_key_id(key_id(&key.public()))
        .build(key.pair())
        .map_err(|e| TokenError::Sign(e.to_string()))?;
    token
        .to_base64()
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Appends a block with `caveats` to `token`: offline, no key needed, and never more than
/// the parent allows.
pub fn attenuate(token: &str, caveats: &Caveats) -> Result<String, TokenError> {
    if caveats.is_empty() {
        return Err(TokenError::Caveat(
            "attenuation needs at least one caveat".into(),
        ));
    }
    let parent = parse_unverified(token)?;
    let child = parent
        .append(caveats.block()?)
        .map_err(|e| TokenError::Sign(e.to_string()))?;
    child
        .to_base64()
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// What a token says, without checking its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The id of the root key that should verify it.
    pub root_key_id: Option<u32>,
    /// Each block in order: its Datalog and its revocation id (hex).
    pub blocks: Vec<BlockView>,
}

/// One block of an [`Inspection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    /// The block's Datalog source.
    pub source: String,
    /// Its revocation id (hex), the value `auth.revoked` lists.
    pub revocation_id: String,
}

/// Reads a token's blocks and revocation ids (signatures are not checked: this is for
/// people, not for authorization).
pub fn inspect(token: &str) -> Result<Inspection, TokenError> {
    let t = parse_unverified(token)?;
    let ids = t.revocation_identifiers();
    let mut blocks = Vec::with_capacity(t.block_count());
    for (i, id) in ids.iter().enumerate() {
        let source = t
            .print_block_source(i)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        blocks.push(BlockView {
            source,
            revocation_id: hex::encode(id),
        });
    }
    Ok(Inspection {
        root_key_id: t.root_key_id(),
        blocks,
    })
}

/// The largest token text accepted (a token grows with each block; this allows dozens).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

pub(crate) fn parse_unverified(token: &str) -> Result<UnverifiedBiscuit, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than 16 KiB".into()));
    }
    UnverifiedBiscuit::from_base64(token).map_err(|e| TokenError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_ops_parse() {
        assert_eq!(
            "10/1s".parse::<Rate>().unwrap(),
            Rate {
                requests: 10,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            "5/2m".parse::<Rate>().unwrap().per,
            Duration::from_secs(120)
        );
        for bad in ["", "10", "0/1s", "x/1s", "10/0s", "10/fast"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        assert_eq!("put".parse::<Op>().unwrap(), Op::Put);
        assert!("PUT".parse::<Op>().is_err());
    }

    #[test]
    fn inspect_shows_every_block_and_its_revocation_id() {
        let key = SigningKey::generate();
        let root = mint(
            &key,
            &Caveats {
                ops: [Op::Put].into(),
                path_prefix: Some("/put".into()),
                ..Caveats::default()
            },
        )
        .unwrap();
        let child = attenuate(
            &root,
            &Caveats {
                expires_at: Some(1_800_000_000),
                max_bytes: Some(1000),
                ..Caveats::default()
            },
        )
        .unwrap();
        let seen = inspect(&child).unwrap();
        assert_eq!(seen.root_key_id, Some(key_id(&key.public())));
        assert_eq!(seen.blocks.len(), 2);
        assert!(seen.blocks[0].source.contains("\"put\""));
        assert!(seen.blocks[0].source.contains("starts_with(\"/put\")"));
        assert!(seen.blocks[1].source.contains("time($t)"));
        assert!(seen.blocks[1].source.contains("ron_budget(1000"));
        assert_eq!(seen.blocks[0].revocation_id.len(), 128);
        assert!(attenuate(&root, &Caveats::default()).is_err());
        assert!(inspect("not a token").is_err());
    }
}
