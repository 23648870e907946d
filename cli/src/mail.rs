//! `ron mail`: register a mailbox, send, receive, acknowledge (signing a receipt back to the
//! sender), and read receipts. Every envelope is sealed and opened here, on the user's
//! machine: the node sees ciphertext, the recipient and a size bucket.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;
use ron_auth::SigningKey;
use ron_proto::Address;
use svc_mailbox::envelope::{self, Lane, MAX_BUCKET, MailKey, Opened, Receipt};
use svc_mailbox::record::{MailRecord, MailboxNode, identity_bytes, identity_text};
use svc_mailbox::{now_ms, proof};

use crate::client::{self, Creds, Target, base};

/// `ron mail …`.
#[derive(Debug, Subcommand)]
pub(crate) enum MailCommand {
    /// Publish your mail record, naming the node you talk to as your mailbox.
    Register {
        /// Your key file (from `ron key gen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[command(flatten)]
        creds: Creds,
    },
    /// Send a message, end-to-end encrypted to the recipient and signed by you.
    Send {
        /// Your key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The recipient: ed25519/<hex>.
        #[arg(long, value_name = "ed25519/<hex>")]
        to: String,
        /// The message text (else FILE's bytes).
        #[arg(short = 'm', long, conflicts_with = "file")]
        message: Option<String>,
        /// A file to send (`-` for standard input).
        #[arg(required_unless_present = "message")]
        file: Option<PathBuf>,
        #[command(flatten)]
        creds: Creds,
    },
    /// Receive your messages: each one's id, verified sender and content.
    Recv {
        /// Your key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Keep waiting for new messages.
        #[arg(long)]
        follow: bool,
        /// Write each message to DIR/<id hex> instead of printing it.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: Creds,
    },
    /// Acknowledge messages: a signed receipt goes back to each sender, then the mailbox
    /// deletes them.
    Ack {
        /// Your key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The message ids (b3:<hex>).
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        creds: Creds,
    },
    /// Read the receipts of messages you sent (each verified as the recipient's), and clear them.
    Receipts {
        /// Your key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// One JSON object per receipt.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: Creds,
    },
}

/// Runs a `ron mail` command.
pub(crate) async fn run(cmd: MailCommand, node: &client::NodeUrl) -> anyhow::Result<()> {
    match cmd {
        MailCommand::Register { key, creds } => register(&Target::new(node, &creds)?, &key).await,
        MailCommand::Send {
            key,
            to,
            message,
            file,
            creds,
        } => {
            let content = match (message, file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("cannot read standard input")?;
                    buf
                }
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => bail!("give -m TEXT or a FILE"),
            };
            send(&Target::new(node, &creds)?, &key, &to, &content).await
        }
        MailCommand::Recv {
            key,
            follow,
            output,
            json,
            creds,
        } => {
            let out = Output { dir: output, json };
            recv(&Target::new(node, &creds)?, &key, follow, &out).await
        }
        MailCommand::Ack { key, ids, creds } => ack(&Target::new(node, &creds)?, &key, &ids).await,
        MailCommand::Receipts { key, json, creds } => {
            receipts(&Target::new(node, &creds)?, &key, json).await
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(SigningKey::read(path)?)
}

/// A request signed with the `ron-mail-auth` proof of `key`.
fn proven(
    node: &Target,
    http: &reqwest::Client,
    key: &SigningKey,
    method: reqwest::Method,
    path_and_query: &str,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let header = proof::sign(key, method.as_str(), path_and_query, now_ms() / 1000, &body);
    http.request(method, format!("{}{path_and_query}", base(node)))
        .header(proof::HEADER, header)
        .body(body)
}

/// The recipient's mail record, checked here (signature, identity): the node is not trusted
/// with the key envelopes are sealed to.
async fn record_of(node: &Target, identity: &[u8; 32]) -> anyhow::Result<MailRecord> {
    let name = identity_text(identity);
    let url = format!("{}/mail/record/{name}", base(node));
    let bytes = node
        .send(node.http()?.get(url))
        .await
        .with_context(|| format!("cannot find the mail record of {name}"))?
        .bytes()
        .await?;
    let record = MailRecord::decode(&bytes).context("the mail record does not verify")?;
    if record.identity() != Some(*identity) {
        bail!("the node answered another identity's mail record");
    }
    Ok(record)
}

async fn register(node: &Target, key: &Path) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let http = node.http()?;
    let me: serde_json::Value = node
        .json(http.get(format!("{}/mail/node", base(node))))
        .await?;
    let mailbox = MailboxNode {
        peer: me["peer"].as_str().unwrap_or_default().to_owned(),
        addrs: me["addrs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let identity = key.public_bytes();
    let url = format!("{}/mail/record/{}", base(node), identity_text(&identity));
    let current = match node.raw(http.get(url)).await? {
        res if res.status().is_success() => MailRecord::decode(&res.bytes().await?)
            .map(|r| r.seq)
            .unwrap_or(0),
        _ => 0,
    };
    let seq = (current + 1).max(ron_auth::unix_now());
    let enc = MailKey::derive(&key).public();
    let record = MailRecord::sign(&key, enc, vec![mailbox.clone()], seq)?;
    node.json(
        http.put(format!("{}/mail/register", base(node)))
            .body(record.encode()?),
    )
    .await?;
    eprintln!(
        "{} now receives mail at node {} (sequence {seq})",
        record.key, mailbox.peer
    );
    println!("{}", record.key);
    Ok(())
}

/// Seals `content` from `key` to `to` (looking up their record) and sends it through the node.
async fn seal_and_send(
    node: &Target,
    key: &SigningKey,
    to: &[u8; 32],
    lane: Lane,
    content: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let record = record_of(node, to).await?;
    let enc = record
        .enc_bytes()
        .context("the record's mail key is malformed")?;
    let sealed = envelope::seal(key, to, &enc, lane, now_ms(), content, MAX_BUCKET)?;
    let http = node.http()?;
    node.json(proven(
        node,
        &http,
        key,
        reqwest::Method::POST,
        "/mail/send",
        sealed,
    ))
    .await
}

async fn send(node: &Target, key: &Path, to: &str, content: &[u8]) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let to = identity_bytes(to).context("the recipient is ed25519/<64 hex>")?;
    let answer = seal_and_send(node, &key, &to, Lane::Message, content).await?;
    let id = answer["id"].as_str().unwrap_or_default();
    match answer["state"].as_str() {
        Some("queued") => eprintln!(
            "queued: the recipient's mailbox node cannot be reached now; your node retries"
        ),
        Some(state) => eprintln!("{state}"),
        None => {}
    }
    println!("{id}");
    Ok(())
}

/// Where received messages go.
struct Output {
    dir: Option<PathBuf>,
    json: bool,
}

/// Fetches one batch of `lane`: each envelope opened (the ids that do not open are reported
/// and skipped).
async fn fetch(
    node: &Target,
    key: &SigningKey,
    mail_key: &MailKey,
    lane: Lane,
) -> anyhow::Result<Vec<(Address, anyhow::Result<Opened>)>> {
    let http = node.http()?;
    let path = format!("/mail/fetch?lane={}&limit=100", lane.as_str());
    let answer = node
        .json(proven(
            node,
            &http,
            key,
            reqwest::Method::POST,
            &path,
            Vec::new(),
        ))
        .await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for m in answer["messages"].as_array().into_iter().flatten() {
        let id: Address = m["id"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("the node sent a malformed id")?;
        let opened = b64
            .decode(m["envelope"].as_str().unwrap_or_default())
            .context("the node sent a malformed envelope")
            .and_then(|bytes| {
                if Address::of(&bytes) != id {
                    bail!("the envelope is not its id");
                }
                Ok(envelope::open(mail_key, &bytes)?)
            });
        out.push((id, opened));
    }
    Ok(out)
}

fn show(id: &Address, m: &Opened, out: &Output) -> anyhow::Result<()> {
    let from = identity_text(&m.sender);
    if let Some(dir) = &out.dir {
        let path = dir.join(id.to_string().trim_start_matches("b3:"));
        std::fs::write(&path, &m.content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "{id} from {from}: {} bytes -> {}",
            m.content.len(),
            path.display()
        );
    } else if out.json {
        let text = String::from_utf8_lossy(&m.content);
        println!(
            "{}",
            serde_json::json!({"id": id, "from": from, "sent_at_ms": m.sent_at_ms, "text": text})
        );
    } else {
        match std::str::from_utf8(&m.content) {
            Ok(text) => println!("{id} from {from}\n{text}"),
            Err(_) => println!(
                "{id} from {from}: {} bytes, not text (use -o DIR)",
                m.content.len()
            ),
        }
    }
    Ok(())
}

async fn recv(node: &Target, key: &Path, follow: bool, out: &Output) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let mail_key = MailKey::derive(&key);
    if let Some(dir) = &out.dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if follow {
        return follow_socket(node, &key, &mail_key, out).await;
    }
    for (id, opened) in fetch(node, &key, &mail_key, Lane::Message).await? {
        match opened {
            Ok(m) => show(&id, &m, out)?,
            Err(e) => eprintln!("{id}: refused: {e:#}"),
        }
    }
    Ok(())
}

/// `recv --follow`: messages pushed over the node's WebSocket (`/mail/ws`) as they arrive,
/// each shown once, until the node closes it or Ctrl-C.
async fn follow_socket(
    node: &Target,
    key: &SigningKey,
    mail_key: &MailKey,
    out: &Output,
) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let http = node.http1()?;
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let req = proven(
        node,
        &http,
        key,
        reqwest::Method::GET,
        "/mail/ws",
        Vec::new(),
    )
    .header("connection", "upgrade")
    .header("upgrade", "websocket")
    .header("sec-websocket-version", "13")
    .header(
        "sec-websocket-key",
        base64::engine::general_purpose::STANDARD.encode(nonce),
    );
    let res = node.raw(req).await?;
    if res.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        node.check(res).await?;
        bail!("the node did not open a mail socket");
    }
    let upgraded = res
        .upgrade()
        .await
        .context("the mail socket did not open")?;
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        upgraded,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    eprintln!("waiting for mail (Ctrl-C to stop)");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut shown = HashSet::new();
    while let Some(frame) = ws.next().await {
        let text = match frame.context("the mail socket failed")? {
            Message::Text(text) => text,
            Message::Ping(p) => {
                ws.send(Message::Pong(p)).await?;
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        let pushed: serde_json::Value = serde_json::from_str(&text)?;
        if pushed["lane"] != "message" {
            continue;
        }
        let id: Address = pushed["id"].as_str().unwrap_or_default().parse()?;
        if !shown.insert(id) {
            continue;
        }
        let opened = b64
            .decode(pushed["envelope"].as_str().unwrap_or_default())
            .context("a malformed envelope")
            .and_then(|bytes| {
                if Address::of(&bytes) != id {
                    bail!("the envelope is not its id");
                }
                Ok(envelope::open(mail_key, &bytes)?)
            });
        match opened {
            Ok(m) => show(&id, &m, out)?,
            Err(e) => eprintln!("{id}: refused: {e:#}"),
        }
        use std::io::Write as _;
        std::io::stdout().flush()?;
    }
    Ok(())
}

async fn ack(node: &Target, key: &Path, ids: &[String]) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let mail_key = MailKey::derive(&key);
    let http = node.http()?;
    let ids: Vec<Address> = ids
        .iter()
        .map(|t| client::parse_addr(t))
        .collect::<anyhow::Result<_>>()?;
    for id in &ids {
        let path = format!("/mail/msg/{id}");
        let res = node
            .send(proven(
                node,
                &http,
                &key,
                reqwest::Method::GET,
                &path,
                Vec::new(),
            ))
            .await
            .with_context(|| format!("{id}"))?;
        let bytes = res.bytes().await?;
        // A receipt answers a message only; one that does not open gets none.
        let Ok(opened) = envelope::open(&mail_key, &bytes) else {
            eprintln!("{id}: does not open; acknowledged without a receipt");
            continue;
        };
        if opened.lane != Lane::Message {
            continue;
        }
        let receipt = Receipt {
            id: *id,
            acked_at_ms: now_ms(),
        };
        if let Err(e) = seal_and_send(
            node,
            &key,
            &opened.sender,
            Lane::Receipt,
            &receipt.to_bytes(),
        )
        .await
        {
            eprintln!(
                "{id}: the receipt to {} could not be sent: {e:#}",
                identity_text(&opened.sender)
            );
        }
    }
    let body = serde_json::to_vec(&serde_json::json!({"ids": ids}))?;
    let answer = node
        .json(proven(
            node,
            &http,
            &key,
            reqwest::Method::POST,
            "/mail/ack",
            body,
        ))
        .await?;
    for id in answer["acked"].as_array().into_iter().flatten() {
        println!("{}", id.as_str().unwrap_or_default());
    }
    Ok(())
}

async fn receipts(node: &Target, key: &Path, json: bool) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let mail_key = MailKey::derive(&key);
    let got = fetch(node, &key, &mail_key, Lane::Receipt).await?;
    let mut done = Vec::new();
    for (id, opened) in got {
        done.push(id);
        let receipt = opened.and_then(|m| {
            if m.lane != Lane::Receipt {
                bail!("not a receipt");
            }
            Ok((m.sender, Receipt::from_bytes(&m.content)?))
        });
        match receipt {
            Ok((by, r)) if json => println!(
                "{}",
                serde_json::json!({"message": r.id, "by": identity_text(&by), "acked_at_ms": r.acked_at_ms})
            ),
            Ok((by, r)) => println!(
                "{} delivered to {} at {}",
                r.id,
                identity_text(&by),
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(r.acked_at_ms)
                )
            ),
            Err(e) => eprintln!("{id}: refused: {e:#}"),
        }
    }
    if !done.is_empty() {
        let http = node.http()?;
        let body = serde_json::to_vec(&serde_json::json!({"ids": done}))?;
        node.json(proven(
            node,
            &http,
            &key,
            reqwest::Method::POST,
            "/mail/ack",
            body,
        ))
        .await?;
    }
    Ok(())
}
