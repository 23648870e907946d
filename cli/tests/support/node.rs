//! A `ron node` child process on 127.0.0.1 for tests.
#![allow(dead_code, unreachable_pub)] // each test crate uses its own subset

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

pub const BIN: &str = env!("CARGO_BIN_EXE_ron");

pub struct Node {
    pub child: Child,
    pub url: String,
    /// A client that presents the owner's token.
    pub http: reqwest::Client,
    /// The owner's token.
    pub token: String,
    pub data_dir: std::path::PathBuf,
    /// `https://…` when the node serves TLS.
    pub tls_url: Option<String>,
    /// `HOST:PORT` of the OAP/1 listener, when it runs.
    pub oap_addr: Option<String>,
    /// `HOST:PORT` (UDP) of the HTTP/3 listener, when it runs.
    pub h3_addr: Option<String>,
}

impl Node {
    /// Starts a node on a free port with `data_dir`, plus `extra` flags.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Node {
        Self::start_with(data_dir, extra, |_| {}).await
    }

    /// Like [`Node::start`], with the node's log at `filter` (a `RUST_LOG` filter) written to
    /// `<data dir>.log`, whatever `RON_TEST_LOG` says.
    pub async fn start_logged(data_dir: &Path, extra: &[&str], filter: &str) -> Node {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--gateway", "127.0.0.1:0"]);
        Self::launch_logging(cmd, data_dir, extra, |_| {}, Some(filter)).await
    }

    /// Like [`Node::start`], letting the caller adjust the command (environment, cwd).
    pub async fn start_with(
        data_dir: &Path,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Node {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--gateway", "127.0.0.1:0"]);
        Self::launch(cmd, data_dir, extra, adjust).await
    }

    /// Starts a node inside the network namespace `netns` (`ip netns exec`), its gateway on
    /// `gateway` (an address of that namespace reachable from here).
    pub async fn start_in_netns(
        netns: &str,
        gateway: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Node {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, BIN, "node", "--gateway", gateway]);
        Self::launch(cmd, data_dir, extra, |_| {}).await
    }

    async fn launch(
        cmd: Command,
        data_dir: &Path,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Node {
        Self::launch_logging(cmd, data_dir, extra, adjust, None).await
    }

    async fn launch_logging(
        mut cmd: Command,
        data_dir: &Path,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
        filter: Option<&str>,
    ) -> Node {
        let filter = filter
            .map(str::to_owned)
            .or_else(|| std::env::var("RON_TEST_LOG").ok());
        // The test's HTTP clients speak TLS too: one rustls provider for the process.
        ron_transport::install_default_provider();
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            // The peer network on loopback, on a port of its own, unless the test says.
            .args(if extra.contains(&"--p2p-listen") {
                &[][..]
            } else {
                &["--p2p-listen", "/ip4/127.0.0.1/tcp/0"][..]
            })
            .env_remove("RUST_LOG")
            .envs(filter.clone().map(|f| ("RUST_LOG", f)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn ron node");
        // Under amnesia the owner token is shown once on stderr; read it, then keep draining
        // stderr so the node never blocks on a full pipe.
        let stderr = child.stderr.take().expect("piped stderr");
        let (token_tx, token_rx) = tokio::sync::oneshot::channel();
        // RON_TEST_LOG=<filter>: each node's log goes to <data dir>.log, for debugging.
        let mut log = filter
            .as_ref()
            .map(|_| std::fs::File::create(data_dir.with_extension("log")).expect("log file"));
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut token_tx = Some(token_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(log) = &mut log {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                }
                if let Some((_, token)) = line.split_once("shown once): ")
                    && let Some(tx) = token_tx.take()
                {
                    let _ = tx.send(token.trim().to_owned());
                }
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("node printed its address in time")
            .expect("stdout readable")
            .expect("a line on stdout");
        let url = line
            .strip_prefix("ron node: gateway ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let tls = extra.contains(&"--tls-self-signed") || extra.contains(&"--gateway-tls");
        let tls_url = if tls {
            Some(next_line(&mut lines, "ron node: gateway ").await)
        } else {
            None
        };
        let oap_addr = if tls {
            Some(next_line(&mut lines, "ron node: oap ").await)
        } else {
            None
        };
        let h3_addr = if extra.contains(&"--gateway-h3") {
            Some(next_line(&mut lines, "ron node: gateway h3 https://").await)
        } else {
            None
        };
        let token = if extra.contains(&"--amnesia") {
            timeout(Duration::from_secs(10), token_rx)
                .await
                .expect("amnesia node printed its owner token")
                .expect("token line")
        } else {
            std::fs::read_to_string(data_dir.join("owner.token"))
                .expect("owner.token written at start")
                .trim()
                .to_owned()
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header value"),
        );
        Node {
            child,
            url,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("client"),
            token,
            data_dir: data_dir.to_owned(),
            tls_url,
            oap_addr,
            h3_addr,
        }
    }

    /// The node's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("the node is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status");
        kb << 10
    }

    /// The value of one `/metrics` series (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.1;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// PUTs `bytes` and waits until the node's announcement as their provider has gone out
    /// (a lookup right after a PUT may otherwise come before it, and answer 404).
    pub async fn put_announced(&self, bytes: Vec<u8>) -> String {
        let series = "p2p_announcements_total{outcome=\"ok\"}";
        let before = self.metric(series).await;
        let addr = self.put(bytes).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(series).await <= before {
            assert!(Instant::now() < deadline, "{addr} was never announced");
            sleep(Duration::from_millis(20)).await;
        }
        addr
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// `GET path` with the owner's token: the status and the body as text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (status, body) = self.get_bytes(path).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET path` with the owner's token: the status and the body's bytes.
    pub async fn get_bytes(&self, path: &str) -> (u16, bytes::Bytes) {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        (res.status().as_u16(), res.bytes().await.expect("body"))
    }

    /// `POST /put` of `bytes`; asserts success and returns the address.
    pub async fn put(&self, bytes: Vec<u8>) -> String {
        let res = self
            .http
            .post(format!("{}/put", self.url))
            .body(bytes)
            .send()
            .await
            .expect("upload");
        assert!(
            res.status().is_success(),
            "upload answered {}",
            res.status()
        );
        let body: Value = res.json().await.expect("JSON answer");
        body["address"].as_str().expect("an address").to_owned()
    }

    pub async fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status").await.1).expect("status JSON")
    }

    /// Polls `/status` until `pred` holds (bounded: 20 s).
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status().await;
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's first p2p listen address (with `/p2p/<id>`), once it has one.
    pub async fn p2p_addr(&self) -> String {
        let status = self
            .wait_status("a p2p listen address", |s| {
                s["p2p"]["listen"].as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
        status["p2p"]["listen"][0]
            .as_str()
            .expect("a listen address")
            .to_owned()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Runs the `ron` CLI against this node.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("RON_NODE", &self.url)
            .env("RON_DATA_DIR", &self.data_dir)
            .env("RON_TOKEN", &self.token)
            .output()
            .await
            .expect("run ron")
    }
}

/// A libp2p peer in this process (not a node): it joins through `seed`, answers peers from
/// `source`, and settles nothing. Its handle, its key, and a guard that stops it.
pub fn in_process_peer(
    seed: &str,
    source: std::sync::Arc<dyn svc_dht::Source>,
) -> (
    svc_dht::DhtHandle,
    svc_dht::identity::Keypair,
    tokio_util::sync::DropGuard,
) {
    let keypair = svc_dht::identity::Keypair::generate_ed25519();
    let (tx, mailbox) = supervisor::mailbox(64);
    let handle = svc_dht::DhtHandle::new(tx, keypair.public().to_peer_id());
    let config = ron_kernel::Config::builder()
        .register::<svc_dht::P2pSection>()
        .build()
        .expect("a config");
    let section = svc_dht::P2pSection {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        ..svc_dht::P2pSection::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let setup = svc_dht::Setup {
        keypair: keypair.clone(),
        config,
        section,
        bootstrap: vec![seed.parse().expect("a multiaddr")],
        source,
        metrics: handle.metrics().clone(),
        events: None,
        records: std::sync::Arc::new(svc_dht::NoRecords),
        settle: None,
    };
    tokio::spawn(svc_dht::run(shutdown.clone(), mailbox, setup));
    (handle, keypair, shutdown.drop_guard())
}

/// The node's next line on stdout, which must start with `prefix`; the rest of it.
async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> String {
    let line = timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("node printed {prefix:?} in time"))
        .expect("stdout readable")
        .unwrap_or_else(|| panic!("a line {prefix:?} on stdout"));
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
        .to_owned()
}

/// Writes `<dir>/ron.toml` (making `dir`) before a node starts there.
pub fn config(dir: &Path, toml: &str) {
    std::fs::create_dir_all(dir).expect("make the data dir");
    std::fs::write(dir.join("ron.toml"), toml).expect("write ron.toml");
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

/// What the reference tool says: `b3sum FILE`.
pub fn b3sum(path: &Path) -> String {
    let out = std::process::Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .expect("b3sum is installed (apt-get install b3sum; .ci/run does it)");
    assert!(out.status.success());
    format!(
        "b3:{}",
        String::from_utf8(out.stdout).expect("utf-8").trim()
    )
}

/// The stdout of a `ron` run that must have succeeded, trimmed.
pub fn ok_stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "ron failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
