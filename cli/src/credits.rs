//! `ron credits grant|balance|history|peers`: the node's credit ledger over HTTP.

use clap::Subcommand;
use serde_json::json;

use crate::client::{Creds, Target, base};

/// Credits: what requests cost on a node that charges (`[payment]`).
#[derive(Debug, Subcommand)]
pub(crate) enum CreditsCommand {
    /// Grant credits to a user key (the node's owner only).
    Grant {
        /// The account: a user key, `ed25519/<hex>` (one in the node's `auth.trusted_roots`).
        #[arg(long, value_name = "ed25519/HEX")]
        to: String,
        /// How many credits.
        credits: u64,
        #[command(flatten)]
        creds: Creds,
    },
    /// The credits of your token's key (or of `--of`, for the owner).
    Balance {
        /// Another account (the owner only).
        #[arg(long, value_name = "ACCOUNT")]
        of: Option<String>,
        /// Print the node's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: Creds,
    },
    /// The newest transfers of your token's key (or of `--of`, for the owner).
    History {
        /// Another account (the owner only).
        #[arg(long, value_name = "ACCOUNT")]
        of: Option<String>,
        /// How many (at most 1,000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the node's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: Creds,
    },
    /// The peers this node settles ranges with (the owner only): what each owes or is owed,
    /// and the highest cheques each way.
    Peers {
        /// How many (at most 1,000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the node's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: Creds,
    },
}

/// Runs a `ron credits` command against the node at `node`.
pub(crate) async fn run(cmd: CreditsCommand, node: &crate::client::NodeUrl) -> anyhow::Result<()> {
    match cmd {
        CreditsCommand::Grant { to, credits, creds } => {
            let t = Target::new(node, &creds)?;
            let v = t
                .json(
                    t.http()?
                        .post(format!("{}/credits/grant", base(&t)))
                        .json(&json!({"to": to, "credits": credits})),
                )
                .await?;
            println!(
                "granted {credits} credits to {to}: balance {}",
                v["balance"]
            );
        }
        CreditsCommand::Balance { of, json, creds } => {
            let t = Target::new(node, &creds)?;
            let v = t.json(query(&t, "balance", of.as_deref(), None)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{}: {} credits ({} available, {} reserved)",
                    v["account"].as_str().unwrap_or("?"),
                    v["balance"],
                    v["available"],
                    v["reserved"]
                );
            }
        }
        CreditsCommand::History {
            of,
            limit,
            json,
            creds,
        } => {
            let t = Target::new(node, &creds)?;
            let v = t
                .json(query(&t, "history", of.as_deref(), Some(limit))?)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let account = v["account"].as_str().unwrap_or("");
            for tr in v["transfers"].as_array().into_iter().flatten() {
                let amount = tr["amount"].as_u64().unwrap_or(0);
                let sign = if tr["debit"].as_str() == Some(account) {
                    "-"
                } else {
                    "+"
                };
                let at = tr["at_ms"].as_u64().unwrap_or(0);
                let when = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
                );
                let state = tr["state"].as_str().filter(|s| !s.is_empty());
                let count = tr["count"].as_u64().unwrap_or(0);
                println!(
                    "{when} {sign}{amount} {} {}{}{}",
                    what(tr["code"].as_u64().unwrap_or(0)),
                    tr["kind"].as_str().unwrap_or(""),
                    state.map(|s| format!(" ({s})")).unwrap_or_default(),
                    if count > 1 {
                        format!(" ({count} requests)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        CreditsCommand::Peers { limit, json, creds } => {
            let t = Target::new(node, &creds)?;
            let v = t.json(query(&t, "peers", None, Some(limit))?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{} credits per MiB; a cheque at {} owed; peers refused at {} owed",
                v["per_mib"], v["pay_at"], v["debt_limit"]
            );
            for p in v["peers"].as_array().into_iter().flatten() {
                let now = p["balance_now"].as_i64().unwrap_or(0);
                let standing = match now {
                    0 => "settled".to_owned(),
                    n if n > 0 => format!("this node owes {n}"),
                    n => format!("owes this node {}", -n),
                };
                println!(
                    "{}: {standing} (cheques: {} received, {} sent)",
                    p["account"].as_str().unwrap_or("?"),
                    p["cheque_in"],
                    p["cheque_out"]
                );
            }
        }
    }
    Ok(())
}

fn query(
    t: &Target,
    what: &str,
    of: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(of) = of {
        q.push(("of", of.to_owned()));
    }
    if let Some(l) = limit {
        q.push(("limit", l.to_string()));
    }
    Ok(t.http()?
        .get(format!("{}/credits/{what}", base(t)))
        .query(&q))
}

/// What a transfer's code paid for.
fn what(code: u64) -> &'static str {
    match code {
        1 => "get",
        2 => "put",
        3 | 5 => "flat period",
        4 => "put",
        10 => "grant",
        20 => "ranges served",
        21 => "ranges received",
        22 => "cheque received",
        23 => "cheque sent",
        _ => "other",
    }
}

/// `ron usage`: usage rows per identity and window (`GET /usage`), one per line:
/// `<window start> <identity> <requests> requests, <in> B in, <out> B out, <n> messages`.
pub(crate) async fn usage(
    t: &Target,
    of: Option<&str>,
    minute: bool,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let mut q: Vec<(&str, String)> = vec![
        ("window", if minute { "minute" } else { "hour" }.to_owned()),
        ("limit", limit.to_string()),
    ];
    if let Some(of) = of {
        q.push(("of", of.to_owned()));
    }
    let v = t
        .json(t.http()?.get(format!("{}/usage", base(t))).query(&q))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for row in v["rows"].as_array().into_iter().flatten() {
        let start = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(row["start_ms"].as_u64().unwrap_or(0)),
        );
        println!(
            "{start} {} {} requests, {} B in, {} B out, {} messages, {:.3} GiB-hours stored",
            row["identity"].as_str().unwrap_or("?"),
            row["requests"],
            row["bytes_in"],
            row["bytes_out"],
            row["messages"],
            row["byte_hours"].as_f64().unwrap_or(0.0) / f64::from(1u32 << 30)
        );
    }
    Ok(())
}
