//! The peer network on 127.0.0.1: five nodes joined through the first, an object PUT on one
//! node and read on another (found through the DHT, fetched and verified), an object nobody
//! has, and what `/status` shows.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Node, config, data};
use tokio::time::{Instant, sleep};

/// The node's first p2p listen address (with `/p2p/<id>`), once it has one.
async fn p2p_addr(node: &Node) -> String {
    let status = node
        .wait_status("a p2p listen address", |s| {
            s["p2p"]["listen"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    status["p2p"]["listen"][0].as_str().unwrap().to_owned()
}

async fn peers(node: &Node) -> usize {
    node.status().await["p2p"]["peers"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn five_nodes_find_and_verify_each_others_objects() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = p2p_addr(&first).await;
    assert!(
        seed.starts_with("/ip4/127.0.0.1/tcp/") && seed.contains("/p2p/12D3KooW"),
        "{seed}"
    );
    let mut nodes = vec![first];
    for i in 2..=5 {
        let mut flags = vec!["--bootstrap", seed.as_str()];
        if i == 3 {
            // Node 3 also speaks OAP/1: what is put there is announced too.
            flags.extend(["--tls-self-signed", "--gateway-tls", "127.0.0.1:0"]);
            flags.extend(["--oap-listen", "127.0.0.1:0"]);
        }
        let n = Node::start(&dir.path().join(format!("n{i}")), &flags).await;
        nodes.push(n);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers(&nodes[0]).await < 4 {
        assert!(
            Instant::now() < deadline,
            "the seed never saw all four others"
        );
        sleep(Duration::from_millis(100)).await;
    }

    // `ron peers` on the seed: its id, its addresses, and four peers.
    let out = support::ok_stdout(&nodes[0].cli(&["peers"]).await);
    assert!(out.starts_with("peer_id 12D3KooW"), "{out}");
    assert!(out.lines().any(|l| l == format!("listen {seed}")), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("peer ")).count(),
        4,
        "{out}"
    );

    // Every dependency's circuit is shown, closed, in /status and /metrics.
    let status = nodes[0].status().await;
    let circuits: Vec<(&str, &str)> = status["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["dependency"].as_str().unwrap(),
                c["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        circuits,
        [("dht", "closed"), ("peer", "closed"), ("storage", "closed")],
        "{status}"
    );
    let metrics = nodes[0].get("/metrics").await.1;
    for dependency in ["storage", "dht", "peer"] {
        let line = format!("circuit_state{{dependency=\"{dependency}\"}} 0");
        assert!(metrics.contains(&line), "{line} missing");
    }

    // PUT on node 2, GET on node 5: found through the DHT, fetched, verified, identical.
    let bytes = data(3 << 20, 11);
    let addr = nodes[1].put(bytes.clone()).await;
    let url = format!("{}/o/{addr}", nodes[4].url);
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.is_none() {
        let res = nodes[4].anonymous().get(&url).send().await.unwrap();
        match res.status().as_u16() {
            200 => got = Some(res.bytes().await.unwrap()),
            404 if Instant::now() < deadline => sleep(Duration::from_millis(200)).await,
            other => panic!("GET on node 5: {other} {}", res.text().await.unwrap()),
        }
    }
    assert!(got.unwrap() == bytes, "node 5 served node 2's bytes");
    // Node 5 now holds a copy (unpinned) and provides it too: committed just after the last
    // byte was sent (the response streams as the transfer verifies).
    let deadline = Instant::now() + Duration::from_secs(10);
    let stat = loop {
        let res = nodes[4]
            .anonymous()
            .get(format!("{}/stat/{addr}", nodes[4].url))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            break res.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "node 5 never stored its copy");
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stat["pinned"], false, "{stat}");
    // Its outboard was assembled from the pairs verified during the transfer; `stat` checks
    // every stored byte against it.
    assert_eq!(stat["damaged"], false, "{stat}");

    // PUT over OAP/1 on node 3, GET over HTTP on node 1.
    let file = dir.path().join("oap-object");
    let oap_bytes = data(700_000, 12);
    std::fs::write(&file, &oap_bytes).unwrap();
    let oap = nodes[2].oap_addr.clone().unwrap();
    let out = nodes[2]
        .cli(&["put", "--oap", &oap, "--insecure", file.to_str().unwrap()])
        .await;
    let oap_addr = support::ok_stdout(&out).trim().to_owned();
    let url = format!("{}/o/{oap_addr}", nodes[0].url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = nodes[0].anonymous().get(&url).send().await.unwrap();
        match res.status().as_u16() {
            200 => {
                assert!(res.bytes().await.unwrap() == oap_bytes);
                break;
            }
            404 if Instant::now() < deadline => sleep(Duration::from_millis(200)).await,
            other => panic!("GET on node 1: {other} {}", res.text().await.unwrap()),
        }
    }

    // `ron pin` on node 1, which lacks the 3 MiB object: fetched, verified, stored and pinned.
    support::ok_stdout(&nodes[0].cli(&["pin", &addr]).await);
    let stat = nodes[0].get(&format!("/stat/{addr}")).await;
    assert_eq!(stat.0, 200, "{}", stat.1);
    let stat: Value = serde_json::from_str(&stat.1).unwrap();
    assert_eq!(stat["pinned"], true, "{stat}");
    assert_eq!(stat["damaged"], false, "{stat}");

    // Node 3 lacks the 3 MiB object: a HEAD answers once a provider has proven the size, and
    // a range request answers from the copy fetched meanwhile.
    let url = format!("{}/o/{addr}", nodes[2].url);
    let res = nodes[2].anonymous().head(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-length"],
        (3u64 << 20).to_string().as_str()
    );
    let res = nodes[2]
        .anonymous()
        .get(&url)
        .header("range", "bytes=1000000-1000099")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert!(res.bytes().await.unwrap() == bytes[1_000_000..1_000_100]);

    // Node 5 (which cached the 3 MiB object) leaves and node 2 restarts on a new port: node 4,
    // which never held the object, still gets it, from the restarted node 2.
    let gone = nodes.remove(4);
    drop(gone);
    let mut old = nodes.remove(1);
    let data_dir = old.data_dir.clone();
    old.child.kill().await.unwrap(); // and waits: its store must be closed before it reopens
    drop(old);
    let restarted = Node::start(&data_dir, &["--bootstrap", &seed]).await;
    nodes.insert(1, restarted);
    let url = format!("{}/o/{addr}", nodes[3].url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = nodes[3].anonymous().get(&url).send().await.unwrap();
        match res.status().as_u16() {
            200 => {
                assert!(res.bytes().await.unwrap() == bytes);
                break;
            }
            404 | 503 | 504 if Instant::now() < deadline => sleep(Duration::from_millis(300)).await,
            other => panic!(
                "GET on node 4 after the restart: {other} {}",
                res.text().await.unwrap()
            ),
        }
    }

    // An object no node has: the lookups finish and the answer is 404, not a hang.
    let nobody = ron_proto::Address::of(b"no node has this");
    let started = Instant::now();
    let res = nodes[2]
        .anonymous()
        .get(format!("{}/o/{nobody}", nodes[2].url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Nor can it be pinned: a one-line error and a non-zero exit.
    let out = nodes[2].cli(&["pin", &nobody.to_string()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 404") && err.trim().lines().count() == 1,
        "{err}"
    );
    println!(
        "five nodes: 3 MiB PUT on node 2 read on node 5, and on node 4 after node 2 restarted; \
         a missing object answered 404 in {:?}",
        started.elapsed()
    );
}

/// Two nodes sending each other at most 2 MiB/s (after a one-second burst), so transfers
/// take seconds; the second bootstrapped from the first and connected to it.
async fn paced_pair(dir: &std::path::Path) -> (Node, Node) {
    let paced = "[p2p]\npeer_bytes_per_sec = 2097152\nfetch_timeout_ms = 60000\n";
    for n in ["n1", "n2"] {
        config(&dir.join(n), paced);
    }
    let origin = Node::start(&dir.join("n1"), &[]).await;
    let seed = p2p_addr(&origin).await;
    let reader = Node::start(&dir.join("n2"), &["--bootstrap", &seed]).await;
    reader
        .wait_status("a peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    (origin, reader)
}

#[tokio::test]
async fn a_transfer_survives_its_only_original_provider_dying() {
    let dir = tempfile::tempdir().unwrap();
    // Every node sends one peer 2 MiB/s (after a one-second burst): transfers take seconds.
    let paced = "[p2p]\npeer_bytes_per_sec = 2097152\nfetch_timeout_ms = 60000\n";
    for n in ["n1", "n2", "n3"] {
        config(&dir.path().join(n), paced);
    }
    let mut origin = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = p2p_addr(&origin).await;
    let cache = Node::start(&dir.path().join("n2"), &["--bootstrap", &seed]).await;
    let reader = Node::start(&dir.path().join("n3"), &["--bootstrap", &seed]).await;
    for node in [&cache, &reader] {
        node.wait_status("a peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| p.len() >= 2)
        })
        .await;
    }
    let bytes = data(12 << 20, 21);
    let addr = origin.put_announced(bytes.clone()).await;
    // Node 2 caches the object (from node 1, the only provider) and announces its copy.
    let (status, body) = cache.get(&format!("/o/{addr}")).await;
    assert_eq!(status, 200, "{body}");

    // Node 3 fetches from both; node 1 is killed once the transfer has started.
    let (url, client) = (format!("{}/o/{addr}", reader.url), reader.anonymous());
    let get = tokio::spawn(async move {
        let res = client.get(url).send().await.unwrap();
        (res.status().as_u16(), res.bytes().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.metric("p2p_fetched_bytes_total").await == 0.0 {
        assert!(Instant::now() < deadline, "node 3 never started fetching");
        sleep(Duration::from_millis(20)).await;
    }
    let at_kill = reader.metric("p2p_fetched_bytes_total").await;
    origin.child.kill().await.unwrap();
    let (status, got) = get.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        got == bytes,
        "identical bytes, finished from the cached copy"
    );
    assert!(
        at_kill < (12 << 20) as f64,
        "node 1 died mid-transfer ({at_kill} bytes in)"
    );
    assert!(reader.metric("p2p_peer_faults_total{fault=\"dead\"}").await >= 1.0);
    println!("12 MiB: node 1 killed {at_kill} bytes into node 3's transfer; node 2 finished it");
}

#[tokio::test]
async fn a_get_streams_while_the_transfer_verifies_and_is_cut_short_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (mut origin, reader) = paced_pair(dir.path()).await;
    let size = 12 << 20;
    let bytes = data(size, 71);
    let addr = origin.put_announced(bytes.clone()).await;

    // The answer starts once the size is proven, long before node 1 (2 MiB/s) has sent it all.
    let mut res = reader
        .anonymous()
        .get(format!("{}/o/{addr}", reader.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(size as u64));
    let mut got = Vec::new();
    while got.len() < 2 << 20 {
        let piece = res
            .chunk()
            .await
            .unwrap()
            .expect("bytes while the transfer runs");
        got.extend_from_slice(&piece);
    }
    // The only provider dies: the response is cut short, and what came is the object's prefix.
    origin.child.kill().await.unwrap();
    loop {
        match res.chunk().await {
            Ok(Some(piece)) => got.extend_from_slice(&piece),
            Ok(None) => panic!("a response ended whole with {} of {size} bytes", got.len()),
            Err(_) => break,
        }
    }
    assert!(got.len() < size, "node 1 died mid-transfer");
    assert!(
        got == bytes[..got.len()],
        "a verified prefix, never a wrong byte"
    );
    // Nothing half-stored.
    let (status, body) = reader.get(&format!("/stat/{addr}")).await;
    assert_eq!(status, 404, "{body}");
    println!(
        "streamed: {} of {size} bytes sent before the provider died, then the response was cut",
        got.len()
    );
}

#[tokio::test]
async fn requests_for_an_object_being_fetched_join_its_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, reader) = paced_pair(dir.path()).await;
    let size = 6 << 20;
    let bytes = data(size, 73);
    let addr = origin.put_announced(bytes.clone()).await;
    let url = format!("{}/o/{addr}", reader.url);
    let get = |range: Option<&'static str>| {
        let (client, url) = (reader.anonymous(), url.clone());
        tokio::spawn(async move {
            let mut req = client.get(url);
            if let Some(range) = range {
                req = req.header("range", range);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.bytes().await.unwrap())
        })
    };

    // One GET starts the fetch; once bytes move, a second whole GET, a range and a HEAD come.
    let first = get(None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.metric("p2p_fetched_bytes_total").await == 0.0 {
        assert!(Instant::now() < deadline, "node 2 never started fetching");
        sleep(Duration::from_millis(20)).await;
    }
    let (second, range) = (get(None), get(Some("bytes=1000-2999999")));
    let head = reader.anonymous().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], size.to_string().as_str());
    for (what, request) in [("first", first), ("second", second)] {
        let (status, got) = request.await.unwrap();
        assert_eq!(status, 200, "{what}");
        assert!(got == bytes, "{what}: identical bytes");
    }
    let (status, got) = range.await.unwrap();
    assert_eq!(status, 206);
    assert!(got == bytes[1000..3_000_000], "the range");

    // One fetch moved the object once.
    assert_eq!(
        reader.metric("p2p_fetches_total{outcome=\"ok\"}").await,
        1.0
    );
    let moved = reader.metric("p2p_fetched_bytes_total").await;
    assert!(
        moved <= size as f64,
        "{moved} bytes moved for one {size}-byte object"
    );
    println!("6 MiB: two GETs, a range and a HEAD during one fetch; the object moved once");
}

/// A provider that lies: it holds the object's outboard (so its parent hashes and its proof of
/// the size are right) but serves every group's bytes with one bit flipped.
struct Liar {
    data: bytes::Bytes,
    outboard: bao_tree::io::outboard::PreOrderMemOutboard,
}

impl svc_dht::Source for Liar {
    fn size(
        &self,
        addr: ron_proto::Address,
    ) -> futures_util::future::BoxFuture<'static, Option<u64>> {
        let size = (addr == ron_proto::Address::of(&self.data)).then_some(self.data.len() as u64);
        Box::pin(async move { size })
    }

    fn encoded(
        &self,
        addr: ron_proto::Address,
        start: u64,
        end: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<(u64, bytes::Bytes)>, String>> {
        use bao_tree::{ChunkNum, ChunkRanges};
        let size = self.data.len() as u64;
        let got = (addr == ron_proto::Address::of(&self.data)).then(|| {
            let mut served = self.data.to_vec();
            // Every group but the last (which proves the size) is corrupted.
            let last = (size - 1) / svc_dht::GROUP_BYTES * svc_dht::GROUP_BYTES;
            for at in (0..last).step_by(svc_dht::GROUP_BYTES as usize) {
                served[at as usize] ^= 1;
            }
            let ranges = ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)));
            let mut out = Vec::new();
            bao_tree::io::sync::encode_ranges(&served[..], &self.outboard, &ranges, &mut out)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((size, bytes::Bytes::from(out)))
        });
        let got = got.transpose();
        Box::pin(async move { got })
    }
}

#[tokio::test]
async fn a_malicious_provider_is_caught_and_an_honest_node_serves_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let honest = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = p2p_addr(&honest).await;
    let reader = Node::start(&dir.path().join("n2"), &["--bootstrap", &seed]).await;
    let reader_addr = p2p_addr(&reader).await;
    let bytes = data(4 << 20, 31);
    let addr: ron_proto::Address = honest.put_announced(bytes.clone()).await.parse().unwrap();

    // The malicious node: a libp2p peer in this process that joins through node 2 and
    // announces the object.
    let liar = Liar {
        outboard: bao_tree::io::outboard::PreOrderMemOutboard::create(
            &bytes,
            bao_tree::BlockSize::from_chunk_log(ron_proto::oap::GROUP_CHUNK_LOG),
        ),
        data: bytes::Bytes::from(bytes.clone()),
    };
    let (evil, _, _stop) = support::in_process_peer(&reader_addr, std::sync::Arc::new(liar));
    reader
        .wait_status("the malicious peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| p.len() >= 2)
        })
        .await;
    evil.provide(addr).await.unwrap();
    // Provider records travel in milliseconds on loopback; node 2 keeps both locally.
    sleep(Duration::from_secs(1)).await;

    let (status, _) = reader.get(&format!("/o/{addr}")).await;
    assert_eq!(status, 200);
    let got = reader
        .anonymous()
        .get(format!("{}/o/{addr}", reader.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == bytes, "identical bytes from the honest node");
    assert_eq!(
        reader.metric("p2p_peer_faults_total{fault=\"lie\"}").await,
        1.0,
        "the liar caught once, then not asked again"
    );
    println!("4 MiB: a provider serving corrupted groups was caught; node 1 served the object");
}

/// A network namespace joined to this one by veth pairs, one per subnet `10.<subnet>.<n>.0/24`
/// (this side `.1`, the namespace `.2`). This namespace does not forward between them, so two
/// namespaces on different subnets cannot reach each other, only this side.
struct Netns {
    name: String,
    /// Per subnet: this side's interface, this side's address, the namespace's address.
    links: Vec<(String, String, String)>,
}

fn ip(args: &str) {
    let out = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("iproute2's `ip` (apt-get install iproute2; .ci/run does it)");
    assert!(
        out.status.success(),
        "ip {args}: {} (network namespaces need root)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    fn create(tag: char, subnets: &[u8]) -> Netns {
        let id = std::process::id() % 100_000;
        let octet = id % 200 + 20;
        let name = format!("ron{tag}{id}");
        // Left over from a run that was killed: start clean.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        ip(&format!("netns add {name}"));
        let mut links = Vec::new();
        for (i, subnet) in subnets.iter().enumerate() {
            let (outer, inner) = (format!("r{tag}{i}{id}h"), format!("r{tag}{i}{id}n"));
            let (here, there) = (
                format!("10.{subnet}.{octet}.1"),
                format!("10.{subnet}.{octet}.2"),
            );
            ip(&format!("link add {outer} type veth peer name {inner}"));
            ip(&format!("link set {inner} netns {name}"));
            ip(&format!("addr add {here}/24 dev {outer}"));
            ip(&format!("link set {outer} up"));
            ip(&format!(
                "netns exec {name} ip addr add {there}/24 dev {inner}"
            ));
            ip(&format!("netns exec {name} ip link set {inner} up"));
            links.push((outer, here, there));
        }
        ip(&format!("netns exec {name} ip link set lo up"));
        Netns { name, links }
    }

    fn cut(&self, link: usize) {
        ip(&format!("link set {} down", self.links[link].0));
    }

    fn heal(&self, link: usize) {
        ip(&format!("link set {} up", self.links[link].0));
    }

    /// Whether a TCP connection from inside the namespace to `addr` succeeds.
    fn can_connect(&self, addr: &str) -> bool {
        let (host, port) = addr.rsplit_once(':').unwrap();
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "timeout", "3", "bash", "-c"])
            .arg(format!("echo > /dev/tcp/{host}/{port}"))
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pairs with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A relay's p2p addresses on the two given IPs (with `/p2p/<id>`), once it listens on both.
async fn listening_on(relay: &Node, one: &str, other: &str) -> (String, String) {
    let status = relay
        .wait_status("the relay listening twice", |s| {
            s["p2p"]["listen"].as_array().is_some_and(|l| l.len() >= 2)
        })
        .await;
    let on = |ip: &str| {
        status["p2p"]["listen"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with(&format!("/ip4/{ip}/")))
            .unwrap()
            .to_owned()
    };
    (on(one), on(other))
}

/// GETs `addr` on `node` until it answers 200 (bounded), returning the bytes.
async fn get_until_found(node: &Node, addr: &str, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let res = node
            .anonymous()
            .get(format!("{}/o/{addr}", node.url))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            // A streamed answer cut short (its transfer failed part-way) is asked again, as a
            // client would.
            200 => match res.bytes().await {
                Ok(bytes) => return bytes.to_vec(),
                Err(e) if Instant::now() < deadline => {
                    println!("{what}: the answer was cut short ({e}); asking again");
                    sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{what}: the answer was cut short: {e}"),
            },
            404 | 503 | 504 if Instant::now() < deadline => sleep(Duration::from_millis(500)).await,
            other => panic!("{what}: {other} {}", res.text().await.unwrap()),
        }
    }
}

#[tokio::test]
async fn a_partitioned_node_heals_when_the_partition_ends() {
    // Link 0 carries the peer network (cut to make the partition), link 1 the test's HTTP.
    let net = Netns::create('p', &[77, 78]);
    let (p2p_host, p2p_ns, http_ns) = (&net.links[0].1, &net.links[0].2, &net.links[1].2);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("/ip4/{p2p_host}/tcp/0");
    let n1 = Node::start(&dir.path().join("n1"), &["--p2p-listen", &listen]).await;
    let seed = p2p_addr(&n1).await;
    let flags = ["--p2p-listen", &listen, "--bootstrap", &seed];
    let n2 = Node::start(&dir.path().join("n2"), &flags).await;
    // The partitioned node gives up on a fetch after 3 s, so its GETs answer while cut off.
    config(&dir.path().join("x"), "[p2p]\nfetch_timeout_ms = 3000\n");
    let x_listen = format!("/ip4/{p2p_ns}/tcp/0");
    let x = Node::start_in_netns(
        &net.name,
        &format!("{http_ns}:0"),
        &dir.path().join("x"),
        &["--p2p-listen", &x_listen, "--bootstrap", &seed],
    )
    .await;
    x.wait_status("the namespaced node joining", |s| {
        s["p2p"]["peers"].as_array().is_some_and(|p| p.len() >= 2)
    })
    .await;

    // Partition: node X's peer network is cut off.
    net.cut(0);
    let cut = Instant::now();
    let a = n1.put(data(2 << 20, 41)).await;
    let b_bytes = data(1 << 20, 42);
    let b = x.put(b_bytes.clone()).await;
    let (status, body) = x.get(&format!("/o/{a}")).await;
    assert!(matches!(status, 404 | 503 | 504), "{status} {body}");
    // Its pings go unanswered: it closes the dead connections and knows it is alone.
    let deadline = Instant::now() + Duration::from_secs(60);
    while peers(&x).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the node never noticed the partition"
        );
        sleep(Duration::from_millis(250)).await;
    }
    let noticed = cut.elapsed();

    // Heal: it redials, rejoins, announces what it stored meanwhile, and fetches.
    net.heal(0);
    let healed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while peers(&x).await == 0 {
        assert!(Instant::now() < deadline, "the node never rejoined");
        sleep(Duration::from_millis(250)).await;
    }
    let rejoined = healed.elapsed();
    assert!(get_until_found(&x, &a, "X fetching A after the heal").await == data(2 << 20, 41));
    assert!(get_until_found(&n2, &b, "node 2 fetching B after the heal").await == b_bytes);
    println!(
        "partition: node X alone {noticed:?} after the cut, rejoined {rejoined:?} after the heal, \
         A and B fetched across {:?} after it",
        healed.elapsed()
    );
}

#[tokio::test]
async fn a_restarted_node_rejoins_from_its_peer_table_without_bootstrap_flags() {
    let dir = tempfile::tempdir().unwrap();
    let seed_node = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = p2p_addr(&seed_node).await;
    let seed_id = seed.rsplit('/').next().unwrap().to_owned();
    let mut node = Node::start(&dir.path().join("n2"), &["--bootstrap", &seed]).await;
    // The table learns the seed (identify), written within a second; PeersUpdated counts it.
    node.wait_status("the peer table to know the seed", |s| {
        s["p2p"]["known"].as_u64() >= Some(1)
    })
    .await;
    assert!(node.metric("discovery_known_peers").await >= 1.0);
    let out = support::ok_stdout(&node.cli(&["peers"]).await);
    assert!(out.lines().any(|l| l == format!("seed {seed_id}")), "{out}");

    // Restarted with no --bootstrap: it dials what its table remembers.
    let data_dir = node.data_dir.clone();
    node.child.kill().await.unwrap();
    drop(node);
    let node = Node::start(&data_dir, &[]).await;
    let status = node
        .wait_status("the restarted node to rejoin", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    assert_eq!(status["p2p"]["peers"][0], seed_id.as_str());
}

#[tokio::test]
async fn a_node_nobody_can_dial_is_reached_through_a_relay() {
    // C and A each live in a namespace of their own; both reach the relay R (this side), and
    // nothing routes between them.
    let (ns_c, ns_a) = (Netns::create('c', &[79]), Netns::create('a', &[80]));
    let (r_c, c_ip) = (&ns_c.links[0].1, &ns_c.links[0].2);
    let (r_a, a_ip) = (&ns_a.links[0].1, &ns_a.links[0].2);
    let dir = tempfile::tempdir().unwrap();
    config(&dir.path().join("r"), "[p2p]\nrelay_server = true\n");
    let (listen_c, listen_a) = (format!("/ip4/{r_c}/tcp/0"), format!("/ip4/{r_a}/tcp/0"));
    let relay = Node::start(
        &dir.path().join("r"),
        &["--p2p-listen", &listen_c, "--p2p-listen", &listen_a],
    )
    .await;
    let (relay_c, relay_a) = listening_on(&relay, r_c, r_a).await;

    let c = Node::start_in_netns(
        &ns_c.name,
        &format!("{c_ip}:0"),
        &dir.path().join("c"),
        &[
            "--p2p-listen",
            &format!("/ip4/{c_ip}/tcp/0"),
            "--bootstrap",
            &relay_c,
            "--relay",
            &relay_c,
        ],
    )
    .await;
    c.wait_status("a reservation on the relay", |s| {
        s["p2p"]["listen"].as_array().is_some_and(|l| {
            l.iter()
                .any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")))
        })
    })
    .await;
    let a = Node::start_in_netns(
        &ns_a.name,
        &format!("{a_ip}:0"),
        &dir.path().join("a"),
        &[
            "--p2p-listen",
            &format!("/ip4/{a_ip}/tcp/0"),
            "--bootstrap",
            &relay_a,
        ],
    )
    .await;
    // No direct path: from A's namespace, C's own addresses cannot be reached at all.
    let c_gateway = c.url.trim_start_matches("http://").to_owned();
    assert!(!ns_a.can_connect(&c_gateway), "A must not reach C directly");

    let bytes = data(300_000, 51);
    let addr = c.put(bytes.clone()).await;
    let got = get_until_found(&a, &addr, "A fetching C's object through the relay").await;
    assert!(got == bytes, "identical bytes through the relay");
    let status = a.status().await;
    println!(
        "relay: A fetched 300 KB from C through R; A's peers {}, nat {}; hole punching: ok {} failed {}",
        status["p2p"]["peers"],
        status["p2p"]["nat"],
        a.metric("p2p_holepunch_total{outcome=\"ok\"}").await
            + c.metric("p2p_holepunch_total{outcome=\"ok\"}").await,
        a.metric("p2p_holepunch_total{outcome=\"failed\"}").await
            + c.metric("p2p_holepunch_total{outcome=\"failed\"}").await,
    );
}

/// Runs `cmd` (whitespace-separated) inside namespace `ns`, failing the test on error.
fn in_ns(ns: &str, cmd: &str) {
    ip(&format!("netns exec {ns} {cmd}"))
}

/// Two home networks behind NATs, joined by an "internet" namespace: node C behind one NAT,
/// node A behind the other, the relay R on the internet side.
///
/// Each NAT is a router namespace doing what home routers do: it rewrites the private source
/// (MASQUERADE, which keeps the port when it can), lets in only what answers a flow started
/// from inside, and drops everything else unsolicited, so nothing from outside can open a
/// connection to C or A. The test's own HTTP reaches each node over a link of its own that
/// nothing routes to.
struct NatLab {
    ns: Vec<String>,
    tag: String,
    octet: u32,
}

impl NatLab {
    fn create() -> NatLab {
        let id = std::process::id() % 100_000;
        let (tag, octet) = (format!("n{id}"), id % 200 + 20);
        let names = ["inet", "rc", "ra", "nc", "na"].map(|n| format!("{tag}{n}"));
        for name in &names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
            ip(&format!("netns add {name}"));
            in_ns(name, "ip link set lo up");
        }
        let lab = NatLab {
            ns: names.to_vec(),
            tag,
            octet,
        };
        let (t, o) = (&lab.tag, octet);
        lab.forward("inet");
        // This side <-> the internet: the relay's HTTP.
        ip(&format!("link add {t}hi type veth peer name {t}ih"));
        ip(&format!("link set {t}ih netns {t}inet"));
        ip(&format!("addr add 10.94.{o}.1/24 dev {t}hi"));
        ip(&format!("link set {t}hi up"));
        in_ns(
            &format!("{t}inet"),
            &format!("ip addr add 10.94.{o}.2/24 dev {t}ih"),
        );
        in_ns(&format!("{t}inet"), &format!("ip link set {t}ih up"));
        for (x, net, http) in [("c", 91, 95), ("a", 92, 96)] {
            let (inet, router, node) = (format!("{t}inet"), format!("{t}r{x}"), format!("{t}n{x}"));
            // Internet <-> router: the NAT's public side.
            in_ns(
                &inet,
                &format!("ip link add {t}i{x} type veth peer name {t}p{x} netns {router}"),
            );
            in_ns(&inet, &format!("ip addr add 10.{net}.1.1/24 dev {t}i{x}"));
            in_ns(&inet, &format!("ip link set {t}i{x} up"));
            in_ns(&router, &format!("ip addr add 10.{net}.1.2/24 dev {t}p{x}"));
            in_ns(&router, &format!("ip link set {t}p{x} up"));
            in_ns(&router, &format!("ip route add default via 10.{net}.1.1"));
            // Router <-> node: the home network.
            in_ns(
                &router,
                &format!("ip link add {t}l{x} type veth peer name {t}n{x} netns {node}"),
            );
            in_ns(
                &router,
                &format!("ip addr add 192.168.{net}.1/24 dev {t}l{x}"),
            );
            in_ns(&router, &format!("ip link set {t}l{x} up"));
            in_ns(
                &node,
                &format!("ip addr add 192.168.{net}.2/24 dev {t}n{x}"),
            );
            in_ns(&node, &format!("ip link set {t}n{x} up"));
            in_ns(&node, &format!("ip route add default via 192.168.{net}.1"));
            lab.forward(&format!("r{x}"));
            let public = format!("{t}p{x}");
            in_ns(
                &router,
                &format!("iptables -t nat -A POSTROUTING -o {public} -j MASQUERADE"),
            );
            in_ns(
                &router,
                &format!(
                    "iptables -A FORWARD -i {public} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
                ),
            );
            in_ns(&router, &format!("iptables -A FORWARD -i {public} -j DROP"));
            // Dropped before conntrack confirms it, an unsolicited packet leaves no state
            // behind that would make the NAT pick another port for the node's own flow.
            in_ns(
                &router,
                &format!("iptables -A INPUT -i {public} -m conntrack --ctstate NEW -j DROP"),
            );
            // This side <-> node: the test's HTTP only.
            ip(&format!("link add {t}h{x} type veth peer name {t}g{x}"));
            ip(&format!("link set {t}g{x} netns {node}"));
            ip(&format!("addr add 10.{http}.{o}.1/24 dev {t}h{x}"));
            ip(&format!("link set {t}h{x} up"));
            in_ns(
                &node,
                &format!("ip addr add 10.{http}.{o}.2/24 dev {t}g{x}"),
            );
            in_ns(&node, &format!("ip link set {t}g{x} up"));
        }
        lab
    }

    fn name(&self, short: &str) -> String {
        format!("{}{short}", self.tag)
    }

    fn forward(&self, short: &str) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name(short), "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .output()
            .unwrap();
        assert!(out.status.success(), "forwarding on in {short}");
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for name in &self.ns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
        }
    }
}

#[tokio::test]
async fn a_node_behind_a_nat_is_reached_by_hole_punching() {
    let lab = NatLab::create();
    let o = lab.octet;
    let dir = tempfile::tempdir().unwrap();
    config(&dir.path().join("r"), "[p2p]\nrelay_server = true\n");
    let relay = Node::start_in_netns(
        &lab.name("inet"),
        &format!("10.94.{o}.2:0"),
        &dir.path().join("r"),
        &[
            "--p2p-listen",
            "/ip4/10.91.1.1/udp/0/quic-v1",
            "--p2p-listen",
            "/ip4/10.92.1.1/udp/0/quic-v1",
        ],
    )
    .await;
    let (relay_c, relay_a) = listening_on(&relay, "10.91.1.1", "10.92.1.1").await;
    let behind_nat = |x: &str, net: u8, relay: &str| {
        (
            lab.name(&format!("n{x}")),
            vec![
                "--p2p-listen".to_owned(),
                format!("/ip4/192.168.{net}.2/udp/0/quic-v1"),
                "--bootstrap".to_owned(),
                relay.to_owned(),
                "--relay".to_owned(),
                relay.to_owned(),
            ],
        )
    };
    let (ns_c, flags_c) = behind_nat("c", 91, &relay_c);
    let flags_c: Vec<&str> = flags_c.iter().map(String::as_str).collect();
    let c = Node::start_in_netns(
        &ns_c,
        &format!("10.95.{o}.2:0"),
        &dir.path().join("c"),
        &flags_c,
    )
    .await;
    c.wait_status("C's reservation on the relay", |s| {
        s["p2p"]["listen"].as_array().is_some_and(|l| {
            l.iter()
                .any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")))
        })
    })
    .await;
    let first = data(400_000, 61);
    let second = data(700_000, 62);
    let (addr1, addr2) = (c.put(first.clone()).await, c.put(second.clone()).await);
    let c_id = p2p_addr(&c).await.rsplit('/').next().unwrap().to_owned();

    let (ns_a, flags_a) = behind_nat("a", 92, &relay_a);
    let flags_a: Vec<&str> = flags_a.iter().map(String::as_str).collect();
    let a = Node::start_in_netns(
        &ns_a,
        &format!("10.96.{o}.2:0"),
        &dir.path().join("a"),
        &flags_a,
    )
    .await;
    // The first connection between A and C can only be relayed; over it, DCUtR has both
    // sides send to each other's NAT at once, which opens both NATs to the other's flow.
    let got = get_until_found(&a, &addr1, "A fetching C's object").await;
    assert!(got == first, "identical bytes");
    let deadline = Instant::now() + Duration::from_secs(60);
    let punched = loop {
        let ok = a.metric("p2p_holepunch_total{outcome=\"ok\"}").await
            + c.metric("p2p_holepunch_total{outcome=\"ok\"}").await;
        if ok > 0.0 {
            break ok;
        }
        assert!(Instant::now() < deadline, "no hole punched in 60 s");
        sleep(Duration::from_millis(250)).await;
    };
    let failed = a.metric("p2p_holepunch_total{outcome=\"failed\"}").await
        + c.metric("p2p_holepunch_total{outcome=\"failed\"}").await;

    // The proof that the path is direct: with the relay gone, A still finds and fetches C's
    // second object, over the connection the punch opened.
    drop(relay);
    let got = get_until_found(&a, &addr2, "A fetching from C with the relay gone").await;
    assert!(got == second, "identical bytes over the direct connection");
    let peers = a.status().await["p2p"]["peers"].clone();
    assert!(
        peers.as_array().unwrap().iter().any(|p| p == c_id.as_str()),
        "A stays connected to C: {peers}"
    );
    println!(
        "hole punching: {punched} punched ({failed} failed attempts first); with the relay gone \
         A fetched 700 KB from C directly; A's peers {peers}"
    );
}

#[tokio::test]
async fn reads_protected_over_http_are_protected_on_the_peer_network() {
    let dir = tempfile::tempdir().unwrap();
    let quick = "[p2p]\nfetch_timeout_ms = 5000\n";
    for n in ["n1", "n2"] {
        config(&dir.path().join(n), quick);
    }
    let origin = Node::start(&dir.path().join("n1"), &[]).await;
    let seed = p2p_addr(&origin).await;
    let reader = Node::start(&dir.path().join("n2"), &["--bootstrap", &seed]).await;
    reader
        .wait_status("a peer", |s| {
            s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    // Reads open: announced, and served to peers.
    let served = origin.put_announced(data(300_000, 1)).await;
    assert_eq!(reader.get(&format!("/o/{served}")).await.0, 200);
    let before = origin.put_announced(data(300_000, 2)).await;

    // Reads protected, by a live change of the origin's config.
    std::fs::write(
        dir.path().join("n1").join("ron.toml"),
        format!("{quick}[auth]\nprotect_reads = true\n"),
    )
    .unwrap();
    origin
        .wait_status("reads protected", |s| {
            s["auth"]["reads_need_token"] == Value::Bool(true)
        })
        .await;
    let announced = origin
        .metric("p2p_announcements_total{outcome=\"ok\"}")
        .await;
    let after = origin.put(data(300_000, 3)).await;
    for addr in [&before, &after] {
        let anonymous = origin.anonymous();
        let res = anonymous.get(format!("{}/o/{addr}", origin.url)).send();
        assert_eq!(res.await.unwrap().status().as_u16(), 401);
        // The peer network refuses it too: the record announced before leads to a node that
        // answers as if it held nothing, and the object put since was never announced.
        let (status, body) = reader.get(&format!("/o/{addr}")).await;
        assert_ne!(status, 200, "{addr} reached a peer: {body:.200}");
    }
    assert_eq!(
        origin
            .metric("p2p_announcements_total{outcome=\"ok\"}")
            .await,
        announced,
        "an object was announced while reads were protected"
    );
    // The owner still reads everything.
    assert_eq!(origin.get(&format!("/o/{after}")).await.0, 200);
}
