//! Keys and capabilities: the node's start-up (identity, signing keys, owner token) and the
//! `ron key …` / `ron cap …` commands, which work offline on a data dir or a key file.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ron_auth::token::{self, Caveats, Op, Rate};
use ron_auth::{Auth, AuthSection, KeyRing, NodeIdentity, SigningKey, public_text, unix_now};

/// The owner's token in the data dir.
pub(crate) const OWNER_TOKEN: &str = "owner.token";
/// The node identity key in the data dir.
const IDENTITY: &str = "identity.key";
/// The folder of capability-signing keys in the data dir.
const SIGNING_KEYS: &str = "keys";

/// Where a node keeps its keys: a data dir, or nowhere (amnesia).
pub(crate) enum KeyHome<'a> {
    Dir(&'a Path),
    Memory,
}

/// Opens (or creates) the node's identity and signing keys and brings them up to date.
/// Returns the authority and whether a new signing key was made (the owner token must then
/// be renewed).
pub(crate) fn open(home: &KeyHome<'_>, section: &AuthSection) -> anyhow::Result<(Auth, bool)> {
    let (identity, ring) = match home {
        KeyHome::Dir(dir) => {
            let identity = NodeIdentity::load_or_create(&dir.join(IDENTITY))
                .context("cannot load the node identity key")?;
            let ring = KeyRing::open(&dir.join(SIGNING_KEYS))
                .context("cannot open the capability-signing keys")?;
            (identity, ring)
        }
        KeyHome::Memory => (NodeIdentity::ephemeral(), KeyRing::in_memory()),
    };
    let before = ring.active().map(|k| k.id);
    let auth = Auth::new(identity, ring, section, unix_now())
        .context("cannot prepare the capability-signing keys")?;
    let rotated = auth.ring().active().map(|k| k.id) != before;
    Ok((auth, rotated))
}

/// Hands the owner a token: in `<data dir>/owner.token` (0600) when it is missing or the
/// signing key changed, or once on stderr under amnesia.
pub(crate) fn issue_owner_token(
    auth: &Auth,
    home: &KeyHome<'_>,
    renew: bool,
) -> anyhow::Result<()> {
    match home {
        KeyHome::Dir(dir) => {
            let path = dir.join(OWNER_TOKEN);
            if renew || !path.exists() {
                let token = auth.owner_token().context("cannot mint the owner token")?;
                ron_auth::write_secret(&path, format!("{token}\n").as_bytes(), true)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!(path = %path.display(), "owner token written");
            }
        }
        KeyHome::Memory => {
            let token = auth.owner_token().context("cannot mint the owner token")?;
            eprintln!("ron node: owner token (amnesia: kept nowhere, shown once): {token}");
        }
    }
    Ok(())
}

/// `ron key …`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an Ed25519 key: the secret goes to FILE (0600), the public key to stdout.
    /// Without --out, the secret is printed instead.
    Gen {
        /// Where to write the secret key.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public key of a secret key FILE (`-`: stdin), or with --node the node's id.
    Show {
        /// A secret key file.
        file: Option<PathBuf>,
    },
    /// Replace the node's capability-signing key now (the old one verifies for
    /// auth.key_grace_days) and renew owner.token. A running node picks the key up within
    /// seconds.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
}

/// `ron cap …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CapCommand {
    /// Mint a token, signed by the node's signing key (from the data dir) or by --key.
    Mint {
        #[command(flatten)]
        caveats: CaveatArgs,
        /// Sign with this secret key (one listed in a node's auth.trusted_roots) instead of
        /// the node's.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Narrow a token (offline, no key needed): the result never allows more than TOKEN.
    Attenuate {
        /// The token (`-`: stdin).
        token: String,
        #[command(flatten)]
        caveats: CaveatArgs,
    },
    /// Show a token's blocks (caveats) and revocation ids, without verifying it.
    Inspect {
        /// The token (`-`: stdin).
        token: String,
    },
}

/// A data dir for offline key work.
#[derive(Debug, Args)]
pub(crate) struct DataDir {
    #[command(flatten)]
    dir: crate::node::DataDirArg,
    /// The node's config file (for `[auth]` key ages) instead of `<data dir>/ron.toml`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Caveats for `mint` and `attenuate`.
#[derive(Debug, Args)]
pub(crate) struct CaveatArgs {
    /// Valid for this long (`90s`, `5m`, `1h`, `30d`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Allow only this operation: get, stat, put, pin, unpin, delete, list, account, profile
    /// (repeatable).
    #[arg(long = "method", value_name = "OP")]
    methods: Vec<Op>,
    /// Allow only request paths starting with this (`/put`, `/pin/b3:…`).
    #[arg(long, value_name = "PREFIX")]
    path: Option<String>,
    /// Valid only on the node with this id (`ron key show --node`).
    #[arg(long, value_name = "NODE_ID")]
    audience: Option<String>,
    /// At most this many bytes uploaded with the token, in total.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// At most N requests per DURATION (`10/1s`).
    #[arg(long, value_name = "N/DURATION")]
    rate: Option<Rate>,
}

impl CaveatArgs {
    fn caveats(&self) -> anyhow::Result<Caveats> {
        let expires_at = match self.ttl {
            Some(ttl) if ttl.is_zero() => bail!("--ttl must be longer than zero"),
            Some(ttl) => Some(
                unix_now()
                    .checked_add(ttl.as_secs().max(1))
                    .context("--ttl is too long")?,
            ),
            None => None,
        };
        if let Some(p) = &self.path
            && !p.starts_with('/')
        {
            bail!("--path must start with /");
        }
        Ok(Caveats {
            expires_at,
            ops: self.methods.iter().copied().collect(),
            path_prefix: self.path.clone(),
            audience: self.audience.clone(),
            max_bytes: self.max_bytes,
            rate: self.rate,
        })
    }
}

fn section_of(dir: &DataDir) -> anyhow::Result<AuthSection> {
    let config = crate::node::offline_config(&dir.dir.data_dir, dir.config.as_deref())?;
    Ok(config.get::<AuthSection>().as_ref().clone())
}

fn read_arg(text: &str) -> anyhow::Result<String> {
    if text != "-" {
        return Ok(text.trim().to_owned());
    }
    let mut buf = String::new();
    std::io::stdin()
        .take(token::MAX_TOKEN_LEN as u64 + 1)
        .read_to_string(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf.trim().to_owned())
}

/// Runs a `ron key` command.
pub(crate) async fn key(cmd: KeyCommand, node: &crate::client::NodeUrl) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Gen { out } => {
            let key = SigningKey::generate();
            match out {
                Some(path) => {
                    key.write(&path)?;
                    println!("{}", public_text(&key.public()));
                }
                None => {
                    println!("{}", key.to_text().as_str());
                    if std::io::stderr().is_terminal() {
                        eprintln!("public key: {}", public_text(&key.public()));
                    }
                }
            }
        }
        KeyCommand::Show { file } => match (file, node.given()) {
            (None, true) => {
                let status = crate::client::node_status(node).await?;
                let id = status["node_id"]
                    .as_str()
                    .context("the node's /status has no node_id")?;
                println!("{id}");
            }
            (Some(path), false) => {
                let key = if path == Path::new("-") {
                    let text = zeroize::Zeroizing::new(read_arg("-")?);
                    SigningKey::from_text(&text)?
                } else {
                    SigningKey::read(&path)?
                };
                println!("{}", public_text(&key.public()));
            }
            (Some(_), true) => bail!("give a key FILE or --node, not both"),
            (None, false) => bail!("give a key FILE (or - for stdin), or --node"),
        },
        KeyCommand::Rotate { dir } => {
            let section = section_of(&dir)?;
            let home = KeyHome::Dir(&dir.dir.data_dir);
            let (auth, _) = open(&home, &section)?;
            let key = auth
                .ring()
                .rotate(unix_now())
                .context("cannot create a signing key")?;
            issue_owner_token(&auth, &home, true)?;
            println!("{}", public_text(&key.key.public()));
        }
    }
    Ok(())
}

/// Runs a `ron cap` command.
pub(crate) fn cap(cmd: CapCommand) -> anyhow::Result<()> {
    match cmd {
        CapCommand::Mint { caveats, key, dir } => {
            let caveats = caveats.caveats()?;
            let token = match key {
                Some(path) => token::mint(&SigningKey::read(&path)?, &caveats)?,
                None => {
                    if !dir.dir.data_dir.join(SIGNING_KEYS).is_dir() {
                        bail!(
                            "no signing keys in {} (run the node once, or pass --key FILE)",
                            dir.dir.data_dir.display()
                        );
                    }
                    let home = KeyHome::Dir(&dir.dir.data_dir);
                    let (auth, rotated) = open(&home, &section_of(&dir)?)?;
                    if rotated {
                        issue_owner_token(&auth, &home, true)?;
                    }
                    auth.mint(&caveats)?
                }
            };
            println!("{token}");
        }
        CapCommand::Attenuate { token, caveats } => {
            let child = token::attenuate(&read_arg(&token)?, &caveats.caveats()?)?;
            println!("{child}");
        }
        CapCommand::Inspect { token } => {
            let seen = token::inspect(&read_arg(&token)?)?;
            match seen.root_key_id {
                Some(id) => println!("root key id: {id}"),
                None => println!("root key id: (none)"),
            }
            for (i, block) in seen.blocks.iter().enumerate() {
                println!("block {i}: revocation id {}", block.revocation_id);
                for line in block.source.lines().filter(|l| !l.trim().is_empty()) {
                    println!("  {}", line.trim());
                }
            }
        }
    }
    Ok(())
}
