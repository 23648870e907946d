//! `ron`: run a RustyOnions node, and talk to one.
#![forbid(unsafe_code)]

mod auth;
mod client;
mod credits;
mod degrade;
mod logging;
mod mail;
mod node;
#[cfg(feature = "otlp")]
mod otlp;
mod p2p;
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: per-thread free lists instead of glibc's arenas; glibc's malloc and free were
/// ~14% of a small GET's instructions (decision 0008). Built without transparent huge pages,
/// which doubled the idle node's RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// RustyOnions: a content-addressed, capability-secured, end-to-end encrypted network node.
#[derive(Debug, Parser)]
#[command(name = "ron", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    node: client::NodeUrl,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the kernel, its services and the HTTP gateway.
    Node(node::NodeArgs),
    /// Store a file (or `-` for standard input) on the node; prints its address. With `-r`,
    /// a directory tree: every file, and a collection per folder; prints the root's address.
    Put {
        /// The file, `-`, or with `-r` the directory.
        file: PathBuf,
        /// Store the directory FILE and everything under it.
        #[arg(short, long, conflicts_with = "media_type")]
        recursive: bool,
        /// Media type to store with it [default: guessed from the file's name]; the same
        /// bytes stored again with a type take it.
        #[arg(long = "type", value_name = "MEDIA_TYPE")]
        media_type: Option<String>,
        /// Protect it across nodes as K+M shards (e.g. 4+2), or `none` [default: the
        /// node's storage.durability].
        #[arg(long, value_name = "K+M|none", value_parser = durability)]
        durability: Option<String>,
        #[command(flatten)]
        creds: client::Creds,
        #[command(flatten)]
        oap: client::OapArgs,
    },
    /// Fetch an object by address, verifying it as it arrives. With `-r`, a collection's
    /// whole tree into the directory `-o DIR`.
    Get {
        /// `b3:<hex>`.
        address: String,
        /// The address is a collection's: recreate its tree under `-o DIR`.
        #[arg(short, long, requires = "output")]
        recursive: bool,
        /// Write here (atomically) instead of standard output; into a directory as DIR/<hex>; `-` for standard output even on a terminal.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        creds: client::Creds,
        #[command(flatten)]
        oap: client::OapArgs,
    },
    /// Show an object's size, media type, chunks, pin and damage, as JSON.
    Stat {
        /// `b3:<hex>`.
        address: String,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Keep an object through garbage collection (fetched from peers first when the node lacks it).
    Pin {
        /// `b3:<hex>`.
        address: String,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Let garbage collection remove an object.
    Unpin {
        /// `b3:<hex>`.
        address: String,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// List what the node stores: address, size, pinned or cached, stored at, media type.
    Ls {
        /// One JSON object per line instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Remove objects from the node, pinned or not (chunks nothing else uses are freed).
    Rm {
        /// `b3:<hex>`, one or more.
        #[arg(required = true)]
        addresses: Vec<String>,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Collect garbage now: objects unpinned by their owner, the fetch cache past its budget,
    /// chunks nothing references.
    Gc {
        #[command(flatten)]
        creds: client::Creds,
    },
    /// The node's web console: prints (and opens, with a display) its URL with a token that
    /// expires in an hour.
    Console {
        /// Print the URL only.
        #[arg(long)]
        no_open: bool,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Mutable names: `ed25519/<hex>` (a key of yours) pointing at an address.
    #[command(subcommand)]
    Name(NameCommand),
    /// End-to-end encrypted mail: register, send, recv, ack, receipts.
    #[command(subcommand)]
    Mail(mail::MailCommand),
    /// What was used, per identity and hour (or minute): yours, or everyone's for the owner.
    Usage {
        /// One identity (the owner only, unless it is yours).
        #[arg(long, value_name = "IDENTITY")]
        of: Option<String>,
        /// Per minute (the last 48 hours) instead of per hour.
        #[arg(long)]
        minute: bool,
        /// Rows at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the node's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Credits on a node that charges: grant (owner), balance, history, peers (owner).
    #[command(subcommand)]
    Credits(credits::CreditsCommand),
    /// The node's peer network: its PeerId, the addresses others bootstrap from, and the
    /// peers connected now.
    Peers,
    /// A CPU profile of the node over the next SECONDS, in pprof's format (`go tool pprof
    /// FILE`); needs a token allowing `profile` (the owner's does).
    Profile {
        /// How long to sample (1 to 60).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Where to write it.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Ed25519 keys: create, show, rotate the node's signing key.
    #[command(subcommand)]
    Key(auth::KeyCommand),
    /// Capability tokens: mint, attenuate, inspect.
    #[command(subcommand)]
    Cap(auth::CapCommand),
}

/// `ron name …`.
#[derive(Debug, Subcommand)]
enum NameCommand {
    /// Point the name of KEY (its public key, `ed25519/<hex>`) at ADDRESS: a signed record
    /// with a higher sequence number, published by the node to its peers. Prints the name.
    Publish {
        /// The secret key file (`ron key gen --out FILE`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// `b3:<hex>`: a collection's root, or any object.
        address: String,
        /// How long readers may cache the record, in seconds (1 to 86400).
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        ttl: u64,
        #[command(flatten)]
        creds: client::Creds,
    },
    /// Print the address a name points at now.
    Resolve {
        /// `ed25519/<hex>`.
        name: String,
        /// The whole record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: client::Creds,
    },
}

fn main() -> ExitCode {
    // One rustls provider for the whole process (ring), before any TLS is configured: the
    // node's listeners and the CLI's HTTPS client alike.
    ron_transport::install_default_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ron: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let node = &cli.node;
        let target = |creds: &client::Creds| client::Target::new(node, creds);
        match cli.command {
            Command::Node(args) => node::run(args).await,
            Command::Put {
                file,
                recursive: true,
                durability,
                creds,
                oap,
                ..
            } => {
                let mut node = target(&creds)?.trusting(&oap).http_only(&oap)?;
                node.durability = durability;
                tree::put(&node, &file).await
            }
            Command::Put {
                file,
                media_type,
                durability,
                creds,
                oap,
                ..
            } => {
                let mut node = target(&creds)?.trusting(&oap);
                node.durability = durability;
                client::put(&node, &file, media_type, &oap).await
            }
            Command::Get {
                address,
                recursive: true,
                output: Some(output),
                creds,
                oap,
            } => {
                tree::get(
                    &target(&creds)?.trusting(&oap).http_only(&oap)?,
                    &address,
                    &output,
                )
                .await
            }
            Command::Get {
                address,
                output,
                creds,
                oap,
                ..
            } => {
                client::get(
                    &target(&creds)?.trusting(&oap),
                    &address,
                    output.as_ref(),
                    &oap,
                )
                .await
            }
            Command::Stat { address, creds } => client::stat(&target(&creds)?, &address).await,
            Command::Pin { address, creds } => client::pin(&target(&creds)?, &address, true).await,
            Command::Unpin { address, creds } => {
                client::pin(&target(&creds)?, &address, false).await
            }
            Command::Ls { json, creds } => client::ls(&target(&creds)?, json).await,
            Command::Rm { addresses, creds } => client::rm(&target(&creds)?, &addresses).await,
            Command::Gc { creds } => client::gc(&target(&creds)?).await,
            Command::Name(NameCommand::Publish {
                key,
                address,
                ttl,
                creds,
            }) => client::name_publish(&target(&creds)?, &key, &address, ttl).await,
            Command::Name(NameCommand::Resolve { name, json, creds }) => {
                client::name_resolve(&target(&creds)?, &name, json).await
            }
            Command::Mail(cmd) => mail::run(cmd, node).await,
            Command::Credits(cmd) => credits::run(cmd, node).await,
            Command::Usage {
                of,
                minute,
                limit,
                json,
                creds,
            } => credits::usage(&target(&creds)?, of.as_deref(), minute, limit, json).await,
            Command::Console { no_open, creds } => client::console(&target(&creds)?, !no_open),
            Command::Peers => client::peers(node).await,
            Command::Profile {
                seconds,
                out,
                creds,
            } => client::profile(&target(&creds)?, seconds, &out).await,
            Command::Key(cmd) => auth::key(cmd, node).await,
            Command::Cap(cmd) => auth::cap(cmd),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("ron: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--durability`: `none` or `K+M`, checked before anything is sent.
fn durability(value: &str) -> Result<String, String> {
    ron_proto::layout::parse_durability(value)
        .map(|_| value.trim().to_string())
        .map_err(|e| e.to_string())
}
