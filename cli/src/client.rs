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
    /// The node's gateway [env: RON_NODE; default: http://127.0.0.1:7700].
    #[arg(
        long = "node",
        value_name = "URL",
        global = true,
        num_args = 0..=1,
        default_missing_value = ""
    )]
    url: Option<String>,
}

impl NodeUrl {
    /// Whether `--node` was given (with or without a URL).
    pub(crate) fn given(&self) -> bool {
        self.url.is_some()
    }

    /// The URL: `--node URL`, else `RON_NODE`, else the default.
    pub(crate) fn resolve(&self) -> String {
        self.url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| std::env::var("RON_NODE").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:7700".to_owned())
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Credentials: the capability token a command presents.
#[derive(Debug, Args)]
pub(crate) struct Creds {
    /// Capability token [env: RON_TOKEN; else `owner.token` in the data dir].
    #[arg(long, value_name = "TOKEN", env = "RON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    dir: crate::node::DataDirArg,
}

impl Creds {
    /// The token: `--token`, `RON_TOKEN`, or `<data dir>/owner.token` if it exists.
    fn find(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_owned()));
        }
        let path = self.dir.data_dir.join(crate::auth::OWNER_TOKEN);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// Talk OAP/1 instead of HTTP.
#[derive(Debug, Args)]
pub(crate) struct OapArgs {
    /// Use the node's OAP/1 listener at HOST:PORT (TLS) instead of HTTP.
    #[arg(long, value_name = "HOST:PORT")]
    oap: Option<String>,
    /// Trust the node's certificate if it is (or is issued by) one in this PEM file.
    #[arg(
        long,
        value_name = "FILE",
        requires = "oap",
        conflicts_with = "insecure"
    )]
    ca: Option<PathBuf>,
    /// Accept any certificate (encrypted, not authenticated: for development).
    #[arg(long, requires = "oap")]
    insecure: bool,
}

impl OapArgs {
    /// A connected client, when `--oap` was given.
    async fn connect(&self) -> anyhow::Result<Option<ron_client::OapClient>> {
        let Some(addr) = &self.oap else {
            return Ok(None);
        };
        let trust = match (&self.ca, self.insecure) {
            (Some(ca), _) => ron_client::Trust::Ca(ca.clone()),
            (None, true) => ron_client::Trust::Insecure,
            (None, false) => bail!("--oap needs --ca FILE (the node's certificate) or --insecure"),
        };
        Ok(Some(ron_client::OapClient::connect(addr, &trust).await?))
    }
}

/// A node to talk to, and the token to present.
pub(crate) struct Target {
    url: String,
    token: Option<String>,
}

impl Target {
    pub(crate) fn new(node: &NodeUrl, creds: &Creds) -> anyhow::Result<Self> {
        Ok(Self {
            url: node.resolve(),
            token: creds.find()?,
        })
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }
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

fn base(node: &Target) -> &str {
    &node.url
}

/// `ron put FILE` (`-` for standard input): prints the address, and only that, on stdout.
pub(crate) async fn put(
    node: &Target,
    file: &Path,
    media_type: Option<String>,
    oap: &OapArgs,
) -> anyhow::Result<()> {
    if let Some(mut client) = oap.connect().await? {
        let stored = if file == Path::new("-") {
            client
                .put(tokio::io::stdin(), None, media_type, node.token.as_deref())
                .await?
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let len = f.metadata().await?.len();
            client
                .put(f, Some(len), media_type, node.token.as_deref())
                .await?
        };
        println!("{}", stored.address);
        return Ok(());
    }
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
    let mut req = node.authorized(client()?.post(format!("{}/put", base(node))).body(body));
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
pub(crate) async fn get(
    node: &Target,
    addr: &str,
    out: Option<&PathBuf>,
    oap: &OapArgs,
) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    if let Some(mut client) = oap.connect().await? {
        return get_oap(&mut client, node, &addr, out).await;
    }
    let res = node
        .authorized(client()?.get(format!("{}/o/{addr}", base(node))))
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
pub(crate) async fn stat(node: &Target, addr: &str) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let res = node
        .authorized(client()?.get(format!("{}/stat/{addr}", base(node))))
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
pub(crate) async fn pin(node: &Target, addr: &str, pinned: bool) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let url = format!("{}/pin/{addr}", base(node));
    let http = client()?;
    let req = node.authorized(if pinned {
        http.post(url)
    } else {
        http.delete(url)
    });
    check(
        req.send()
            .await
            .with_context(|| format!("cannot reach the node at {}", base(node)))?,
    )
    .await?;
    Ok(())
}

/// `ron peers`: the node's PeerId and listen addresses, one connected peer per line, then how
/// many peers its table knows (kept across restarts) and the seeds it would dial first.
pub(crate) async fn peers(node: &NodeUrl) -> anyhow::Result<()> {
    let status = node_status(node).await?;
    let p2p = status
        .get("p2p")
        .filter(|p| !p.is_null())
        .context("the node runs no peer network")?;
    let list = |key: &str| -> Vec<String> {
        p2p[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("peer_id {}", p2p["peer_id"].as_str().unwrap_or_default());
    for addr in list("listen") {
        println!("listen {addr}");
    }
    for peer in list("peers") {
        println!("peer {peer}");
    }
    println!("known {}", p2p["known"].as_u64().unwrap_or(0));
    for seed in list("seeds") {
        println!("seed {seed}");
    }
    Ok(())
}

/// The node's `/status`, for `ron key show --node`.
pub(crate) async fn node_status(node: &NodeUrl) -> anyhow::Result<serde_json::Value> {
    let url = node.resolve();
    let res = client()?
        .get(format!("{url}/status"))
        .send()
        .await
        .with_context(|| format!("cannot reach the node at {url}"))?;
    check(res)
        .await?
        .json()
        .await
        .context("the node's answer is not JSON")
}

/// `ron get --oap`: into a part file renamed into place once verified, or stdout.
async fn get_oap(
    client: &mut ron_client::OapClient,
    node: &Target,
    addr: &Address,
    out: Option<&PathBuf>,
) -> anyhow::Result<()> {
    match out {
        Some(path) if path != Path::new("-") => {
            let part = path.with_extension("ron-part");
            let mut f = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot create {}", part.display()))?;
            let got = client.get(addr, node.token.as_deref(), &mut f).await;
            if let Err(e) = got {
                drop(f);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e.into());
            }
            f.sync_all().await.context("cannot write the output")?;
            tokio::fs::rename(&part, path)
                .await
                .with_context(|| format!("cannot move into {}", path.display()))
        }
        _ => {
            client
                .get(addr, node.token.as_deref(), &mut tokio::io::stdout())
                .await?;
            Ok(())
        }
    }
}
