//! `ron put`, `ron get`, `ron stat`, `ron pin`, `ron unpin`: talk to a running node over HTTP.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use ron_proto::{Address, ErrorBody};
use tokio::io::AsyncWriteExt;

/// Where the node is.
#[derive(Debug, Args)]
pub(crate) struct NodeUrl {
    /// The node's gateway.
    #[arg(
        long = "node",
        value_name = "URL",
        env = "RON_NODE",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    url: String,
}

/// Transfers at least this large show a progress bar (on a terminal).
const PROGRESS_MIN: u64 = 8 << 20;

fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    let show = std::io::stderr().is_terminal() && len.is_none_or(|l| l >= PROGRESS_MIN);
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(l) => ProgressBar::new(l),
        None => ProgressBar::new_spinner(),
    };
    let template = format!("{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")
}

/// Turns a non-success response into a one-line error.
async fn check(res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let text = res.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => bail!("{} ({}, HTTP {})", body.message, body.code, status.as_u16()),
        Err(_) => bail!("the node answered HTTP {status}"),
    }
}

fn parse_addr(text: &str) -> anyhow::Result<Address> {
    text.parse::<Address>()
        .with_context(|| format!("{text:?} is not a b3: address"))
}

fn base(node: &NodeUrl) -> &str {
    node.url.trim_end_matches('/')
}

/// `ron put FILE` (`-` for standard input): prints the address, and only that, on stdout.
pub(crate) async fn put(
    node: &NodeUrl,
    file: &Path,
    media_type: Option<String>,
) -> anyhow::Result<()> {
    let (body, len) = if file == Path::new("-") {
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), 256 << 10);
        (reqwest::Body::wrap_stream(stream), None)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {}", file.display()))?;
        let len = f
            .metadata()
            .await
            .with_context(|| format!("cannot stat {}", file.display()))?
            .len();
        let bar = progress(Some(len), "put");
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10).inspect(move |r| {
            if let Ok(b) = r {
                bar.inc(b.len() as u64);
            }
        });
        (reqwest::Body::wrap_stream(stream), Some(len))
    };
    let mut req = client()?.post(format!("{}/put", base(node))).body(body);
    if let Some(len) = len {
        req = req.header(reqwest::header::CONTENT_LENGTH, len);
    }
    if let Some(mt) = media_type {
        req = req.header(reqwest::header::CONTENT_TYPE, mt);
    }
    let res = check(
        req.send()
            .await
            .with_context(|| format!("cannot reach the node at {}", base(node)))?,
    )
    .await?;
    let stored: serde_json::Value = res.json().await.context("the node's answer is not JSON")?;
    let addr = stored["address"]
        .as_str()
        .context("the node's answer has no address")?;
    println!("{addr}");
    Ok(())
}

/// `ron get ADDR [-o FILE]`: writes the object to FILE (atomically) or stdout, verifying
/// it against its address as it arrives.
pub(crate) async fn get(node: &NodeUrl, addr: &str, out: Option<&PathBuf>) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let res = client()?
        .get(format!("{}/o/{addr}", base(node)))
        .send()
        .await
        .with_context(|| format!("cannot reach the node at {}", base(node)))?;
    let res = check(res).await?;
    let bar = progress(res.content_length(), "get");
    let mut hasher = blake3::Hasher::new();
    let (mut sink, part): (
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
        Option<(PathBuf, PathBuf)>,
    ) = match out {
        Some(path) if path != Path::new("-") => {
            let part = path.with_extension(format!(
                "{}ron-part",
                path.extension()
                    .map(|e| format!("{}.", e.to_string_lossy()))
                    .unwrap_or_default()
            ));
            let f = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot create {}", part.display()))?;
            (Box::new(f), Some((part, path.clone())))
        }
        _ => (Box::new(tokio::io::stdout()), None),
    };
    let result: anyhow::Result<()> = async {
        let mut stream = res.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.context("the transfer broke off (the node aborts rather than send bytes that fail verification)")?;
            hasher.update(&piece);
            sink.write_all(&piece).await.context("cannot write the output")?;
            bar.inc(piece.len() as u64);
        }
        sink.flush().await.context("cannot write the output")?;
        let got = Address::from_bytes(*hasher.finalize().as_bytes());
        if got != addr {
            bail!("received bytes hash to {got}, not {addr}");
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    match (result, part) {
        (Ok(()), Some((part, dest))) => tokio::fs::rename(&part, &dest)
            .await
            .with_context(|| format!("cannot move into {}", dest.display())),
        (Ok(()), None) => Ok(()),
        (Err(e), part) => {
            if let Some((part, _)) = part {
                let _ = tokio::fs::remove_file(part).await;
            }
            Err(e)
        }
    }
}

/// `ron stat ADDR`: the node's JSON, pretty-printed.
pub(crate) async fn stat(node: &NodeUrl, addr: &str) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let res = client()?
        .get(format!("{}/stat/{addr}", base(node)))
        .send()
        .await
        .with_context(|| format!("cannot reach the node at {}", base(node)))?;
    let value: serde_json::Value = check(res)
        .await?
        .json()
        .await
        .context("the node's answer is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// `ron pin ADDR` / `ron unpin ADDR`.
pub(crate) async fn pin(node: &NodeUrl, addr: &str, pinned: bool) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let url = format!("{}/pin/{addr}", base(node));
    let http = client()?;
    let req = if pinned {
        http.post(url)
    } else {
        http.delete(url)
    };
    check(
        req.send()
            .await
            .with_context(|| format!("cannot reach the node at {}", base(node)))?,
    )
    .await?;
    Ok(())
}
