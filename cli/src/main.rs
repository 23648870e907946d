//! `ron`: run a RustyOnions node, and talk to one.
#![forbid(unsafe_code)]

mod logging;
mod node;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// RustyOnions: a content-addressed, capability-secured, end-to-end encrypted network node.
#[derive(Debug, Parser)]
#[command(name = "ron", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the kernel, its services and the HTTP gateway.
    Node(node::NodeArgs),
}

fn main() -> ExitCode {
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
        match cli.command {
            Command::Node(args) => node::run(args).await,
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
