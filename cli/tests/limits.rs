//! Hard limits against a live node: slowloris, a header bomb, a flood from one client, a
//! global flood with writes shed before reads, a flood that burns the latency SLO (the node
//! degrades, then recovers by itself); `/healthz` answers throughout.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Node, data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

async fn start(config: &str) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("ron.toml"), config).unwrap();
    let node = Node::start(&data_dir, &[]).await;
    (dir, node)
}

fn host(node: &Node) -> String {
    node.url.strip_prefix("http://").unwrap().to_owned()
}

async fn healthz(node: &Node) -> u16 {
    node.anonymous()
        .get(format!("{}/healthz", node.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn slowloris_connections_are_cut_at_the_header_deadline() {
    let (_dir, node) = start("[limits]\nheader_read_ms = 500\n").await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut conn = TcpStream::connect(host(&node)).await.unwrap();
        conn.write_all(b"GET /status HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        slow.push(conn);
    }
    let started = Instant::now();
    // Trickle one header line every 100 ms; the node must close well before we finish.
    let mut closed = 0;
    for round in 0..60 {
        for conn in &mut slow {
            let _ = conn
                .write_all(format!("x-a{round}: b\r\n").as_bytes())
                .await;
        }
        assert_eq!(
            healthz(&node).await,
            200,
            "healthz answers during the attack"
        );
        sleep(Duration::from_millis(100)).await;
        closed = 0;
        for conn in &mut slow {
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) = timeout(Duration::from_millis(1), conn.read(&mut buf)).await {
                // EOF, or the 408 hyper may send before closing.
                let _ = n;
                closed += 1;
            }
        }
        if closed == slow.len() {
            break;
        }
    }
    assert_eq!(closed, slow.len(), "every slow connection was closed");
    println!(
        "20 slowloris connections closed after {} ms (header_read_ms = 500)",
        started.elapsed().as_millis()
    );
}

#[tokio::test]
async fn a_header_bomb_is_431_and_harms_no_one() {
    let (_dir, node) = start("[limits]\nmax_header_bytes = 16384\n").await;
    let mut conn = TcpStream::connect(host(&node)).await.unwrap();
    let mut request = b"GET /status HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..2000 {
        request.extend_from_slice(format!("x-bomb-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let _ = conn.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    // Just under the limit is fine.
    let res = node
        .anonymous()
        .get(format!("{}/status", node.url))
        .header("x-big", "z".repeat(8000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(healthz(&node).await, 200);
}

#[tokio::test]
async fn one_client_flooding_gets_429_with_a_retry_hint() {
    let (_dir, node) = start("[limits]\nexempt = []\nper_peer_rps = 20\n").await;
    let addr = node.put(data(100, 1)).await;
    let client = node.anonymous();
    let (mut ok, mut limited) = (0u64, 0u64);
    let started = Instant::now();
    for _ in 0..200 {
        let res = client
            .get(format!("{}/stat/{addr}", node.url))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=5).contains(&retry), "{retry}");
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["code"], "rate_limited");
                let ms = body["retry_after_ms"].as_u64().unwrap();
                assert!((1000..=5000).contains(&ms), "{ms}");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The burst (2 x 20, one spent by the upload above) plus 20 per second of the flood, and
    // never more.
    let allowed = 39 + (started.elapsed().as_secs_f64() * 20.0).ceil() as u64 + 1;
    assert!(
        ok >= 39 && ok <= allowed && limited > 0,
        "ok {ok} (at most {allowed}), limited {limited}"
    );
    assert_eq!(healthz(&node).await, 200, "health is never rate limited");
    let metrics = node.get("/metrics").await.1;
    assert!(metrics.contains(&format!(
        "rejected_total{{reason=\"rate_limited\"}} {limited}"
    )));
    println!(
        "flood of 200 from one address at per_peer_rps = 20: {ok} served, {limited} refused with 429"
    );

    // Live: lifting the limit lets the same client through.
    std::fs::write(
        node.data_dir.join("ron.toml"),
        "[limits]\nper_peer_rps = 0\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = client
            .get(format!("{}/stat/{addr}", node.url))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "limit change never applied");
        sleep(Duration::from_millis(200)).await;
    }
}

/// An upload that sends `first` bytes, then waits until told to finish.
async fn slow_upload(node: &Node, tx_done: tokio::sync::oneshot::Receiver<()>) -> u16 {
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let req = node
        .http
        .post(format!("{}/put", node.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let feeder = async move {
        body_tx
            .send(Ok(data(1000, fastrand::u64(..))))
            .await
            .unwrap();
        let _ = tx_done.await;
        drop(body_tx);
    };
    let (res, ()) = tokio::join!(req, feeder);
    res.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test]
async fn a_global_flood_sheds_writes_before_reads() {
    let (_dir, node) = start("[limits]\nglobal_concurrency = 4\nper_peer_streams = 0\n").await;
    let addr = node.put(data(100, 2)).await;
    // Three uploads in progress: three quarters of global_concurrency.
    let mut finish = Vec::new();
    let mut uploads = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        finish.push(tx);
        let node_ref = &node;
        uploads.push(async move { slow_upload(node_ref, rx).await });
    }
    let uploads = futures_util::future::join_all(uploads);
    let probe = async {
        // Wait until the three are admitted.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = node.get("/readyz?writes=1").await;
            if status == 503 {
                break;
            }
            assert!(Instant::now() < deadline, "writes never shed");
            sleep(Duration::from_millis(20)).await;
        }
        // Writes: 503 with a retry hint. Reads still served. Plain readiness stays 200.
        let res = node
            .http
            .post(format!("{}/put", node.url))
            .body("more")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&retry));
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "overloaded");
        let res = node
            .http
            .get(format!("{}/o/{addr}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "reads are served while writes are shed");
        assert_eq!(node.get("/readyz").await.0, 200);
        assert_eq!(healthz(&node).await, 200);
        for tx in finish {
            let _ = tx.send(());
        }
    };
    let (statuses, ()) = tokio::join!(uploads, probe);
    assert_eq!(
        statuses,
        vec![201, 201, 201],
        "the admitted uploads complete"
    );
    assert_eq!(
        node.get("/readyz?writes=1").await.0,
        200,
        "writes accepted again"
    );
    println!(
        "global_concurrency = 4: with 3 uploads in flight, writes 503, reads 200, /readyz 200, /readyz?writes=1 503"
    );
}

#[tokio::test]
async fn slow_readers_and_idle_connections_are_cut_off() {
    let (_dir, node) = start("[limits]\nwrite_ms = 500\nread_idle_ms = 700\n").await;
    let size = 32 << 20;
    let addr = node.put(data(size, 3)).await;
    // A client that asks for 32 MiB and reads nothing.
    let mut slow = TcpStream::connect(host(&node)).await.unwrap();
    slow.write_all(format!("GET /o/{addr} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // An idle one.
    let mut idle = TcpStream::connect(host(&node)).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = timeout(Duration::from_secs(20), idle.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "idle connection closed");
    println!(
        "idle connection closed after {} ms (read_idle_ms = 700)",
        started.elapsed().as_millis()
    );
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(healthz(&node).await, 200);
    // Whatever was buffered before the cut, then the end: never the whole object.
    let mut got = Vec::new();
    let _ = timeout(Duration::from_secs(20), slow.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        got.len() < size,
        "the slow reader was cut off ({} of {size} bytes)",
        got.len()
    );
    println!(
        "slow reader cut off after {} of {size} bytes (write_ms = 500)",
        got.len()
    );
}

#[tokio::test]
async fn a_client_over_its_byte_rate_is_slowed_to_it_and_refused_while_over() {
    let rate = 1u64 << 20;
    let (_dir, node) = start(&format!(
        "[limits]\nexempt = []\nper_peer_bytes_per_sec = {rate}\n"
    ))
    .await;
    let size = 4 << 20;
    let bytes = data(size, 9);
    // At most two seconds' burst, then the rest at the rate: the upload itself is slowed.
    let started = Instant::now();
    let addr = node.put(bytes.clone()).await;
    let put_took = started.elapsed();
    assert!(put_took >= Duration::from_millis(1500), "{put_took:?}");

    // A download from the same address, with other requests made while it runs.
    let (url, client) = (format!("{}/o/{addr}", node.url), node.anonymous());
    let started = Instant::now();
    let download = tokio::spawn(async move {
        let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
        (body, Instant::now())
    });
    let (mut refused, mut health) = (Vec::new(), Vec::new());
    while !download.is_finished() {
        sleep(Duration::from_millis(100)).await;
        let res = node
            .anonymous()
            .get(format!("{}/stat/{addr}", node.url))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            refused.push(res.json::<Value>().await.unwrap());
        }
        health.push(healthz(&node).await);
    }
    let (body, done) = download.await.unwrap();
    let get_took = done - started;
    assert!(body == bytes, "the throttled download is whole and correct");
    // Even from a full bucket (two seconds' burst), the other half takes a second per MiB.
    assert!(get_took >= Duration::from_millis(1900), "{get_took:?}");
    assert!(
        !refused.is_empty(),
        "requests made while over the rate are refused"
    );
    assert!(refused.iter().all(|b| b["code"] == "rate_limited"
        && b["message"].as_str().unwrap().contains("byte rate")
        && (1000..=5000).contains(&b["retry_after_ms"].as_u64().unwrap())));
    assert!(
        health.iter().all(|&s| s == 200),
        "/healthz answers throughout"
    );
    println!(
        "per_peer_bytes_per_sec = 1 MiB/s: 4 MiB PUT took {put_took:?}, 4 MiB GET took {get_took:?}; \
         {} of {} requests made meanwhile refused with 429",
        refused.len(),
        health.len()
    );
}

/// Heavy tier: `cargo test -p ron --release --test limits -- --ignored --nocapture`
/// (needs `ulimit -n` of at least 10,500 for the test and the node).
#[tokio::test]
#[ignore = "heavy: 10,000 sockets"]
async fn ten_thousand_idle_connections_leave_the_node_answering() {
    let (_dir, node) = start("[limits]\nread_idle_ms = 600000\n").await;
    let mut held = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        held.push(TcpStream::connect(host(&node)).await.unwrap());
    }
    // Half of them even start a request and stall in the headers.
    for conn in held.iter_mut().step_by(2) {
        let _ = conn.write_all(b"GET /status HTTP/1.1\r\n").await;
    }
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(healthz(&node).await, 200);
        lat.push(t.elapsed());
    }
    lat.sort();
    let pid = node.child.id().unwrap();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
        .unwrap();
    println!(
        "10,000 idle connections held: /healthz p50 {:?}, p99 {:?}; node RSS {rss}",
        lat[100], lat[197]
    );
    // Half were mid-headers: the header deadline closes those, the idle rest stay.
    drop(held);
    assert_eq!(healthz(&node).await, 200);
}

/// Issue 22, item 2: a client making up HTTP methods grows no metric series.
#[tokio::test]
async fn made_up_methods_share_one_metric_label() {
    let (_dir, node) = start("").await;
    let client = node.anonymous();
    for i in 0..100 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        let res = client
            .request(method, format!("{}/o/b3:{}", node.url, "0".repeat(64)))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let metrics = node.get("/metrics").await.1;
    assert!(!metrics.contains("method=\"M"), "a client-made label");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("request_latency_seconds_count"))
        .count();
    assert!(series < 20, "{series} series");
}

/// An HTTP/2 client that keeps every stream's flow-control window shut (initial window 0) and
/// the connection alive with PINGs, as a hostile client would.
struct ShutWindows {
    /// The `:status` of each answer whose head has arrived.
    statuses: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    /// Ends when the node closes the connection.
    closed: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ShutWindows {
    fn drop(&mut self) {
        self.closed.abort();
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Opens an HTTP/2 connection with shut windows and asks `url` on `streams` streams.
async fn shut_windows(node: &Node, url: &str, streams: usize) -> ShutWindows {
    let tcp = TcpStream::connect(host(node)).await.unwrap();
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let mut ping = connection.ping_pong().unwrap();
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let opener = {
        let (url, statuses) = (url.to_owned(), statuses.clone());
        tokio::spawn(async move {
            let mut send = send;
            // The answers are held, their bodies unread: their windows are never opened
            // (dropping one would reset its stream).
            let mut held = Vec::new();
            // One stream at a time: each answer's head is in before the next request.
            for _ in 0..streams {
                let Ok(ready) = send.ready().await else { break };
                send = ready;
                let request = http::Request::get(url.as_str()).body(()).unwrap();
                let Ok((response, stream)) = send.send_request(request, true) else {
                    break;
                };
                let Ok(response) = response.await else { break };
                statuses.lock().unwrap().push(response.status().as_u16());
                held.push((response, stream));
            }
            std::future::pending::<()>().await;
        })
    };
    let pinger = tokio::spawn(async move {
        while ping.ping(h2::Ping::opaque()).await.is_ok() {
            sleep(Duration::from_millis(200)).await;
        }
    });
    ShutWindows {
        statuses,
        closed,
        tasks: vec![opener, pinger],
    }
}

/// Issue 22, item 3: three HTTP/2 connections that announce a zero window, open 200 GETs of a
/// 1 MB object each and keep pinging held ~600 MB for as long as they pinged. Now a connection
/// opens at most 64 streams, and one whose responses stop moving is closed at `write_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_held_shut_are_cut_at_the_write_deadline() {
    let (_dir, node) = start("[limits]\nwrite_ms = 1000\n").await;
    let addr = node.put(data(1_000_000, 3)).await;
    let url = format!("{}/o/{addr}", node.url);
    let before = node.peak_rss();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(shut_windows(&node, &url, 200).await);
    }
    for client in &mut clients {
        timeout(Duration::from_secs(10), &mut client.closed)
            .await
            .expect("the node closes a connection whose answers do not move")
            .unwrap();
        let answered = client.statuses.lock().unwrap().len();
        assert!(answered <= 64, "{answered} streams on one connection");
    }
    let grown = node.peak_rss().saturating_sub(before);
    assert!(grown < 320 << 20, "the node grew by {} MiB", grown >> 20);
    assert_eq!(healthz(&node).await, 200);
    let metrics = node.get("/metrics").await.1;
    assert!(
        metrics.contains(r#"rejected_total{reason="send_stalled"} 3"#),
        "{metrics}"
    );
}

/// Issue 22, item 3: a response keeps its request's place until its body is sent, so one
/// address's unsent answers count against `per_peer_streams` across its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_streams_of_unsent_answers() {
    let (_dir, node) = start("[limits]\nexempt = []\nper_peer_streams = 8\n").await;
    let addr = node.put(data(1_000_000, 4)).await;
    let url = format!("{}/o/{addr}", node.url);
    // Before, each answer gave its place back once its handler returned: all 20 were 200.
    let clients = [
        shut_windows(&node, &url, 10).await,
        shut_windows(&node, &url, 10).await,
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut statuses = Vec::new();
    while Instant::now() < deadline {
        statuses = clients
            .iter()
            .flat_map(|c| c.statuses.lock().unwrap().clone())
            .collect();
        if statuses.len() == 20 {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    statuses.sort_unstable();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (8, 12), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_that_burns_the_latency_slo_sheds_writes_first_and_recovers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // The SLO at 2 ms, over windows of 2 s and 4 s. The object (256 KiB) is too large for the
    // cache of small objects: each read opens it on disk, and 128 readers at once queue for
    // the store, while a lone reader does not.
    let slo =
        "[slo]\nobject_latency_ms = 2\nshort_window_s = 2\nlong_window_s = 4\nmin_requests = 50\n";
    let (_dir, node) = start(slo).await;
    let addr = node.put(data(256 << 10, 5)).await;
    let url = format!("{}/o/{addr}", node.url);
    assert_eq!(node.get("/readyz?writes=1").await.0, 200);
    let (stop, served) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let flood: Vec<_> = (0..128)
        .map(|_| {
            let (http, url) = (node.http.clone(), url.clone());
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                // Bounded: at most 60 s, whatever happens.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    let res = http.get(&url).send().await.unwrap();
                    assert_eq!(res.status(), 200, "reads are served throughout");
                    res.bytes().await.unwrap();
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let degraded = node
        .wait_status("the node degraded by the flood", |s| {
            s["slo"]["degraded"] == true
        })
        .await;
    let burn = degraded["slo"]["object_latency"].clone();
    // Writes are shed first: 503 with a retry hint, on a node far from its concurrency limit.
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .body("a write during the burn")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "overloaded", "{body}");
    assert!(body["message"].as_str().unwrap().contains("SLO"), "{body}");
    // Reads go on; readiness says reads yes, writes no, degraded.
    assert_eq!(node.http.get(&url).send().await.unwrap().status(), 200);
    let (status, ready) = node.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let (status, ready) = node.get("/readyz?writes=1").await;
    assert_eq!(status, 503, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        (ready["reads"].as_bool(), ready["degraded"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(node.metric("slo_degraded").await, 1.0);
    assert_eq!(healthz(&node).await, 200);

    stop.store(true, Ordering::Relaxed);
    for reader in flood {
        reader.await.unwrap();
    }
    let flooded = served.load(Ordering::Relaxed);
    // The flood is over: one reader at a time, and the node recovers by itself.
    let calm = Instant::now();
    loop {
        let res = node.http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        if node.get("/readyz?writes=1").await.0 == 200 {
            break;
        }
        assert!(
            calm.elapsed() < Duration::from_secs(30),
            "still degraded 30 s after the flood: {}",
            node.status().await["slo"]
        );
        sleep(Duration::from_millis(10)).await;
    }
    let recovered_after = calm.elapsed();
    node.put(b"a write after the burn".to_vec()).await;
    let status = node.status().await;
    assert_eq!(status["slo"]["degraded"], false, "{status}");
    assert_eq!(status["slo"]["degradations"], 1, "{status}");
    assert_eq!(node.metric("slo_degradations_total").await, 1.0);
    println!(
        "a flood of 128 readers ({flooded} reads) burned the 2 ms latency SLO ({burn}): writes 503, \
         reads 200; recovered {recovered_after:?} after it stopped"
    );
}
