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
    /// The token: `--token`, `RON_TOKEN`, or `<data dir>/owner.token` if it exists; and where
    /// it was looked for (for a 401's message).
    fn find(&self) -> anyhow::Result<(Option<String>, String)> {
        if let Some(t) = &self.token {
            return Ok((Some(t.trim().to_owned()), "--token / RON_TOKEN".to_owned()));
        }
        let path = self.dir.data_dir.join(crate::auth::OWNER_TOKEN);
        let looked = format!("--token, RON_TOKEN, {}", path.display());
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Some(text.trim().to_owned()), looked)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, looked)),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The certificate a node of this data dir serves with `--tls-self-signed`.
    fn dev_certificate(&self) -> Option<PathBuf> {
        let path = self.dir.data_dir.join("tls/cert.pem");
        path.exists().then_some(path)
    }
}

/// Talk OAP/1 instead of HTTP.
#[derive(Debug, Args)]
pub(crate) struct OapArgs {
    /// Use the node's OAP/1 listener at HOST:PORT (TLS) instead of HTTP.
    #[arg(long, value_name = "HOST:PORT")]
    oap: Option<String>,
    /// Trust the node's certificate (OAP/1, or an https:// node) if it is, or is issued by,
    /// one in this PEM file [default for https: `<data dir>/tls/cert.pem` when present].
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any certificate (encrypted, not authenticated: for development).
    #[arg(long)]
    insecure: bool,
}

impl OapArgs {
    /// The certificates `--ca` / `--insecure` say to trust.
    fn trust(&self) -> Option<ron_client::Trust> {
        match (&self.ca, self.insecure) {
            (Some(ca), _) => Some(ron_client::Trust::Ca(ca.clone())),
            (None, true) => Some(ron_client::Trust::Insecure),
            (None, false) => None,
        }
    }

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
    /// Where the token was looked for.
    looked: String,
    /// Which certificates an https:// node may present.
    trust: Option<ron_client::Trust>,
    /// How uploads ask to be protected (`--durability`), else as the node says.
    pub(crate) durability: Option<String>,
}

impl Target {
    pub(crate) fn new(node: &NodeUrl, creds: &Creds) -> anyhow::Result<Self> {
        let (token, looked) = creds.find()?;
        Ok(Self {
            url: node.resolve(),
            token,
            looked,
            trust: creds.dev_certificate().map(ron_client::Trust::Ca),
            durability: None,
        })
    }

    /// This target, trusting what `--ca` / `--insecure` say when given.
    pub(crate) fn trusting(mut self, oap: &OapArgs) -> Self {
        if let Some(trust) = oap.trust() {
            self.trust = Some(trust);
        }
        self
    }

    /// This target, for a command that speaks only HTTP: an error when `--oap` was given.
    pub(crate) fn http_only(self, oap: &OapArgs) -> anyhow::Result<Self> {
        if oap.oap.is_some() {
            bail!("-r speaks HTTP to the node's gateway: drop --oap");
        }
        Ok(self)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// The HTTP client: plain for http://, TLS (HTTP/2 or 1.1 by ALPN) with the trusted
    /// certificates for https://.
    pub(crate) fn http(&self) -> anyhow::Result<reqwest::Client> {
        self.client(false)
    }

    /// An HTTP/1.1-only client (a WebSocket upgrade is an HTTP/1.1 exchange).
    pub(crate) fn http1(&self) -> anyhow::Result<reqwest::Client> {
        self.client(true)
    }

    fn client(&self, http1_only: bool) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if http1_only {
            builder = builder.http1_only();
        }
        if self.url.starts_with("https://") {
            let trust = self.trust.as_ref().context(
                "an https:// node needs --ca FILE (its certificate) or --insecure \
                 (<data dir>/tls/cert.pem is trusted when present)",
            )?;
            let mut tls = (*ron_client::client_config(trust)?).clone();
            tls.alpn_protocols = if http1_only {
                vec![b"http/1.1".to_vec()]
            } else {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            };
            builder = builder.use_preconfigured_tls(tls);
        }
        builder.build().context("cannot build the HTTP client")
    }

    /// [`check`], with where the token was looked for when the node answers 401.
    pub(crate) async fn check(&self, res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let unauthorized = res.status() == reqwest::StatusCode::UNAUTHORIZED;
        check(res).await.map_err(|e| {
            if unauthorized {
                let presented = if self.token.is_some() {
                    "a token was presented"
                } else {
                    "no token found"
                };
                e.context(format!("{presented}; looked in {}", self.looked))
            } else {
                e
            }
        })
    }
}

impl Target {
    /// Sends `req` with the token: the node's answer, whatever it is.
    pub(crate) async fn raw(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        self.authorized(req)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", base(self)))
    }

    /// Sends `req` with the token: the node's answer, checked (a refusal is a one-line error).
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let res = self.raw(req).await?;
        self.check(res).await
    }

    /// The answer's JSON, or `None` when the node answers 404; any other refusal is a
    /// one-line error.
    pub(crate) async fn json_unless_missing(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let res = self.raw(req).await?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let value = self
            .check(res)
            .await?
            .json()
            .await
            .context("the node's answer is not JSON")?;
        Ok(Some(value))
    }

    /// [`Target::send`], and the answer's JSON.
    pub(crate) async fn json(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(req)
            .await?
            .json()
            .await
            .context("the node's answer is not JSON")
    }
}

/// `ron profile`: the node's CPU profile over `seconds`, written to `out`.
pub(crate) async fn profile(t: &Target, seconds: u64, out: &Path) -> anyhow::Result<()> {
    let req = t
        .http()?
        .get(format!("{}/debug/pprof/profile", base(t)))
        .query(&[("seconds", seconds)])
        .timeout(Duration::from_secs(seconds + 60));
    let bytes = t.send(req).await?.bytes().await?;
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: a CPU profile of {seconds} s ({} bytes); read it with `go tool pprof {}`",
        out.display(),
        bytes.len(),
        out.display()
    );
    Ok(())
}

/// Solves a node's proof-of-work challenge on a blocking thread: the `ron-pow` header's value.
pub(crate) async fn solve_pow(challenge: &ron_proto::PowChallenge) -> anyhow::Result<String> {
    let mut c = [0u8; 32];
    hex::decode_to_slice(&challenge.challenge, &mut c)
        .ok()
        .filter(|()| challenge.bits <= 40)
        .context("the node's proof-of-work challenge is malformed")?;
    let bits = challenge.bits;
    // 2^(bits+8) tries find an answer but for a chance of e^-256.
    let tries = 1u64 << (u32::from(bits) + 8).min(63);
    let nonce = tokio::task::spawn_blocking(move || ron_proto::pow::solve(&c, bits, tries))
        .await
        .context("the proof-of-work solver failed")?
        .context("no proof of work found")?;
    Ok(ron_proto::pow::answer(&c, nonce))
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

pub(crate) fn parse_addr(text: &str) -> anyhow::Result<Address> {
    text.parse::<Address>()
        .with_context(|| format!("{text:?} is not a b3: address"))
}

pub(crate) fn base(node: &Target) -> &str {
    &node.url
}

/// `ron put FILE` (`-` for standard input): prints the address, and only that, on stdout.
pub(crate) async fn put(
    node: &Target,
    file: &Path,
    media_type: Option<String>,
    oap: &OapArgs,
) -> anyhow::Result<()> {
    if file.is_dir() {
        bail!(
            "{} is a directory: ron put -r stores a tree",
            file.display()
        );
    }
    // The node never sees the file's name: the type it suggests travels with the bytes.
    let media_type = media_type.or_else(|| guessed(file));
    if let Some(mut client) = oap.connect().await? {
        let stored = if file == Path::new("-") {
            client
                .put_with(
                    tokio::io::stdin(),
                    None,
                    media_type,
                    node.durability.clone(),
                    node.token.as_deref(),
                )
                .await?
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let len = f.metadata().await?.len();
            client
                .put_with(
                    f,
                    Some(len),
                    media_type,
                    node.durability.clone(),
                    node.token.as_deref(),
                )
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
    let addr = node.post(&node.http()?, body, len, media_type).await?;
    println!("{addr}");
    Ok(())
}

/// The media type a file's name suggests, unless it is standard input.
fn guessed(file: &Path) -> Option<String> {
    if file == Path::new("-") {
        return None;
    }
    ron_proto::collection::guess_media_type(&file.file_name()?.to_string_lossy())
}

impl Target {
    /// `POST /put` of `body` (`len` bytes when known, stored as `media_type`): the address.
    pub(crate) async fn post(
        &self,
        http: &reqwest::Client,
        body: reqwest::Body,
        len: Option<u64>,
        media_type: Option<String>,
    ) -> anyhow::Result<Address> {
        let mut req = http.post(format!("{}/put", base(self))).body(body);
        if let Some(len) = len {
            req = req.header(reqwest::header::CONTENT_LENGTH, len);
        }
        if let Some(mt) = media_type {
            req = req.header(reqwest::header::CONTENT_TYPE, mt);
        }
        if let Some(durability) = &self.durability {
            req = req.header(svc_gateway::DURABILITY, durability);
        }
        let stored = self.json(req).await?;
        stored["address"]
            .as_str()
            .context("the node's answer has no address")?
            .parse()
            .context("the node's answer has a malformed address")
    }
}

/// Where `ron get` writes: `-o FILE`; into `-o DIR` as `DIR/<hex>`; `-o -` or no `-o` to
/// standard output, which must not be a terminal without `-o -` (no binary dumped on a
/// screen by accident).
fn destination(addr: &Address, out: Option<&PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    match out {
        Some(dir) if dir.is_dir() => Ok(Some(dir.join(&addr.to_string()[3..]))),
        Some(path) => Ok(Some(path.clone())),
        None if std::io::stdout().is_terminal() => {
            bail!("refusing to write an object to the terminal: use -o FILE (or -o - to insist)")
        }
        None => Ok(None),
    }
}

/// `ron get ADDR [-o FILE|DIR]`: writes the object to FILE (atomically) or stdout, verifying
/// it against its address as it arrives.
pub(crate) async fn get(
    node: &Target,
    addr: &str,
    out: Option<&PathBuf>,
    oap: &OapArgs,
) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let dest = destination(&addr, out)?;
    let out = dest.as_ref();
    if let Some(mut client) = oap.connect().await? {
        return get_oap(&mut client, node, &addr, out).await;
    }
    let http = node.http()?;
    match out {
        Some(path) if path != Path::new("-") => save(node, &http, &addr, path, true).await,
        _ => {
            let res = node.fetch(&http, &addr).await?;
            let bar = progress(res.content_length(), "get");
            let result = copy_verified(res, &mut tokio::io::stdout(), &addr, &bar).await;
            bar.finish_and_clear();
            result
        }
    }
}

impl Target {
    /// `GET /o/ADDR`, checked: the response whose body is the object. A node that asks an
    /// anonymous reader for a proof of work (402 with a challenge) gets one, once.
    pub(crate) async fn fetch(
        &self,
        http: &reqwest::Client,
        addr: &Address,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}/o/{addr}", base(self));
        let res = self.raw(http.get(&url)).await?;
        if res.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            return self.check(res).await;
        }
        let text = res.text().await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_str(&text)
            .map_err(|_| anyhow::anyhow!("the node answered HTTP 402"))?;
        let Some(challenge) = body.payment.as_ref().and_then(|p| p.pow.clone()) else {
            bail!("{} ({}, HTTP 402)", body.message, body.code);
        };
        let answer = solve_pow(&challenge).await?;
        let res = self
            .raw(http.get(&url).header(ron_proto::pow::HEADER, answer))
            .await?;
        self.check(res).await
    }
}

/// Copies a response's body into `sink`, hashing it as it goes: an error when the bytes are
/// not the object `addr` names.
async fn copy_verified(
    res: reqwest::Response,
    sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    addr: &Address,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut hasher = blake3::Hasher::new();
    let mut stream = res.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.context(
            "the transfer broke off (the node aborts rather than send bytes that fail verification)",
        )?;
        hasher.update(&piece);
        sink.write_all(&piece)
            .await
            .context("cannot write the output")?;
        bar.inc(piece.len() as u64);
    }
    sink.flush().await.context("cannot write the output")?;
    let got = Address::from_bytes(*hasher.finalize().as_bytes());
    if got != *addr {
        bail!("received bytes hash to {got}, not {addr}");
    }
    Ok(())
}

/// A part file beside `path` that no other download (or entry of a tree) can be using: hidden,
/// with a random tag.
fn part_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{:08x}.ron-part", fastrand::u32(..)))
}

/// Fetches `addr` into `path` atomically: a part file, verified against the address, synced,
/// then renamed into place. Nothing is left behind on failure.
pub(crate) async fn save(
    node: &Target,
    http: &reqwest::Client,
    addr: &Address,
    path: &Path,
    show_progress: bool,
) -> anyhow::Result<()> {
    let res = node.fetch(http, addr).await?;
    let bar = if show_progress {
        progress(res.content_length(), "get")
    } else {
        ProgressBar::hidden()
    };
    let part = part_path(path);
    let mut f = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("cannot create {}", part.display()))?;
    let result = async {
        copy_verified(res, &mut f, addr, &bar).await?;
        f.sync_all().await.context("cannot write the output")?;
        tokio::fs::rename(&part, path)
            .await
            .with_context(|| format!("cannot move into {}", path.display()))
    }
    .await;
    bar.finish_and_clear();
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}

/// `ron stat ADDR`: the node's JSON, pretty-printed.
pub(crate) async fn stat(node: &Target, addr: &str) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let value = node
        .json(node.http()?.get(format!("{}/stat/{addr}", base(node))))
        .await?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// `ron pin ADDR` / `ron unpin ADDR`.
pub(crate) async fn pin(node: &Target, addr: &str, pinned: bool) -> anyhow::Result<()> {
    let addr = parse_addr(addr)?;
    let url = format!("{}/pin/{addr}", base(node));
    let http = node.http()?;
    node.send(if pinned {
        http.post(url)
    } else {
        http.delete(url)
    })
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
            let part = part_path(path);
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

/// `ron ls`: every object the node stores, a line each (address, size, pinned or cached,
/// stored at, media type), a page of 1,000 at a time; `--json`: the objects as JSON lines.
pub(crate) async fn ls(node: &Target, json: bool) -> anyhow::Result<()> {
    let http = node.http()?;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/objects?limit=1000", base(node));
        if let Some(a) = &after {
            url.push_str("&after=");
            url.push_str(a);
        }
        let page = node.json(http.get(url)).await?;
        for o in page["objects"].as_array().into_iter().flatten() {
            if json {
                println!("{o}");
                continue;
            }
            let stored_at = o["stored_at"]
                .as_u64()
                .map(|s| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(s),
                    )
                    .to_string()
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "{}  {:>12}  {:<6}  {}  {}",
                o["address"].as_str().unwrap_or_default(),
                o["size"].as_u64().unwrap_or(0),
                if o["pinned"].as_bool() == Some(true) {
                    "pinned"
                } else {
                    "cached"
                },
                stored_at,
                o["media_type"].as_str().unwrap_or("-"),
            );
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}

/// `ron rm ADDR...`: removes each object from the node (pinned or not).
pub(crate) async fn rm(node: &Target, addrs: &[String]) -> anyhow::Result<()> {
    let http = node.http()?;
    for text in addrs {
        let addr = parse_addr(text)?;
        node.send(http.delete(format!("{}/o/{addr}", base(node))))
            .await
            .with_context(|| format!("cannot remove {addr}"))?;
    }
    Ok(())
}

/// `ron gc`: the node's garbage collection, now; prints what it removed.
pub(crate) async fn gc(node: &Target) -> anyhow::Result<()> {
    let report = node
        .json(node.http()?.post(format!("{}/gc", base(node))))
        .await?;
    println!(
        "removed {} objects, {} chunks, {} bytes",
        report["objects"].as_u64().unwrap_or(0),
        report["chunks"].as_u64().unwrap_or(0),
        report["bytes"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// `ron name publish --key FILE ROOT`: signs a record pointing the key's name at ROOT, with a
/// sequence number above the one published now (and at least the time in seconds, so a
/// record lost everywhere is still outdone), and has the node publish it.
pub(crate) async fn name_publish(
    node: &Target,
    key: &Path,
    target: &str,
    ttl_s: u64,
) -> anyhow::Result<()> {
    let target = parse_addr(target)?;
    let key = ron_auth::SigningKey::read(key)?;
    let name = ron_auth::public_text(&key.public());
    let http = node.http()?;
    let url = format!("{}/names/{name}", base(node));
    // Never published (or found nowhere): any sequence will do.
    let current = node
        .json_unless_missing(http.get(&url))
        .await?
        .map_or(0, |record| record["seq"].as_u64().unwrap_or(0));
    let seq = (current + 1).max(ron_auth::unix_now());
    let record = ron_auth::name::NameRecord::sign(&key, target, seq, ttl_s)?;
    let published = node.json(http.put(&url).body(record.encode()?)).await?;
    eprintln!(
        "{name} -> {target} (sequence {seq}, kept by {} peers)",
        published["peers"].as_u64().unwrap_or(0)
    );
    println!("{name}");
    Ok(())
}

/// `ron name resolve ed25519/<hex>`: prints the address the name points at now.
pub(crate) async fn name_resolve(node: &Target, name: &str, json: bool) -> anyhow::Result<()> {
    ron_auth::parse_public(name).context("a name is ed25519/<64 hex>")?;
    let record = node
        .json(node.http()?.get(format!("{}/names/{name}", base(node))))
        .await?;
    if json {
        println!("{record}");
    } else {
        println!("{}", record["target"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// How long the token `ron console` hands the browser lasts.
const CONSOLE_TOKEN_TTL: u64 = 3600;

/// `ron console`: the URL of the node's web console with a token that expires in an hour in
/// its fragment (never sent to a server, dropped from the address bar by the page): printed,
/// and opened with `xdg-open` when there is a display.
pub(crate) fn console(node: &Target, open: bool) -> anyhow::Result<()> {
    let owner = node.token.as_deref().with_context(|| {
        format!(
            "no token to derive the console's from; looked in {}",
            node.looked
        )
    })?;
    let caveats = ron_auth::token::Caveats {
        expires_at: Some(ron_auth::unix_now() + CONSOLE_TOKEN_TTL),
        ..Default::default()
    };
    let short = ron_auth::token::attenuate(owner, &caveats)?;
    let url = format!("{}/#token={short}", base(node));
    println!("{url}");
    let display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if open && display {
        match std::process::Command::new("xdg-open").arg(&url).status() {
            Ok(s) if s.success() => {
                eprintln!("opened in your browser; the token expires in an hour")
            }
            _ => eprintln!("open the URL above in a browser; the token expires in an hour"),
        }
    } else {
        eprintln!("open the URL above in a browser; the token expires in an hour");
    }
    Ok(())
}
