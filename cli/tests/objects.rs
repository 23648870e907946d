//! Objects through a real node: the CLI and plain HTTP, checked against `b3sum`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Node, b3sum, data};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, sleep};

const MIB: usize = 1 << 20;

fn curl(args: &[&str]) -> std::process::ExitStatus {
    std::process::Command::new("curl")
        .args(args)
        .status()
        .expect("curl is installed (.ci/run installs it)")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p))
        } else {
            out.push(p)
        }
    }
    out
}

async fn get_with(node: &Node, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = node.http.get(format!("{}{path}", node.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn error_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    (status, body["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn round_trips_through_the_cli_and_http_match_b3sum() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    for (i, len) in [0, 1, 1023, MIB - 1, MIB, MIB + 1, 5 * MIB, 64 * MIB]
        .into_iter()
        .enumerate()
    {
        let bytes = data(len, i as u64);
        let file = dir.path().join(format!("in-{len}"));
        std::fs::write(&file, &bytes).unwrap();
        let expected = b3sum(&file);

        let out = node.cli(&["put", file.to_str().unwrap()]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{expected}\n"),
            "len {len}"
        );
        assert!(out.stderr.is_empty(), "nothing extra when piped");

        let back = dir.path().join(format!("out-{len}"));
        let out = node
            .cli(&["get", &expected, "-o", back.to_str().unwrap()])
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read(&back).unwrap() == bytes, "cli get, len {len}");

        let res = get_with(&node, &format!("/o/{expected}"), &[]).await;
        assert_eq!(res.status(), 200);
        assert!(res.bytes().await.unwrap() == bytes, "http get, len {len}");

        // And with curl itself, as a user would.
        let curl_out = dir.path().join(format!("curl-{len}"));
        let url = format!("{}/o/{expected}", node.url);
        assert!(curl(&["-sf", "-o", curl_out.to_str().unwrap(), &url]).success());
        assert!(
            std::fs::read(&curl_out).unwrap() == bytes,
            "curl get, len {len}"
        );
        if len > 2 {
            let slice = dir.path().join(format!("curl-range-{len}"));
            let range = format!("{}-{}", len / 3, len - 2);
            assert!(curl(&["-sf", "-r", &range, "-o", slice.to_str().unwrap(), &url]).success());
            assert!(
                std::fs::read(&slice).unwrap() == bytes[len / 3..=len - 2],
                "curl range, len {len}"
            );
        }

        // Ranges: a few slices, checked against the file.
        if len > 0 {
            let mut rng = fastrand::Rng::with_seed(len as u64);
            for _ in 0..4 {
                let a = rng.usize(0..len);
                let b = rng.usize(a..len);
                let res = get_with(
                    &node,
                    &format!("/o/{expected}"),
                    &[("range", &format!("bytes={a}-{b}"))],
                )
                .await;
                assert_eq!(res.status(), 206);
                assert_eq!(
                    res.headers()["content-range"],
                    format!("bytes {a}-{b}/{len}").as_str()
                );
                assert!(
                    res.bytes().await.unwrap() == bytes[a..=b],
                    "range {a}-{b} of {len}"
                );
            }
            let tail = len.min(100);
            let res = get_with(
                &node,
                &format!("/o/{expected}"),
                &[("range", &format!("bytes=-{tail}"))],
            )
            .await;
            assert!(res.bytes().await.unwrap() == bytes[len - tail..]);
        }

        // Uploading the same bytes over HTTP: 200, same address.
        let res = node
            .http
            .post(format!("{}/put", node.url))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "second upload of len {len}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["address"], expected.as_str());
        assert_eq!(body["size"], len as u64);
    }
    let status = node.status().await;
    assert_eq!(status["storage"]["objects"], 8);

    // The same figures, and the traffic, in /metrics.
    let (_, metrics) = node.get("/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("storage_objects"), 8);
    assert_eq!(
        value("storage_bytes_logical"),
        status["storage"]["bytes_logical"].as_u64().unwrap()
    );
    let total: u64 = [
        0u64,
        1,
        1023,
        (MIB - 1) as u64,
        MIB as u64,
        (MIB + 1) as u64,
        5 * MIB as u64,
        64 * MIB as u64,
    ]
    .iter()
    .sum();
    assert_eq!(
        value("object_bytes_received_total"),
        2 * total,
        "each object uploaded twice: ron put, then a plain POST"
    );
    assert!(
        value("object_bytes_sent_total") >= 3 * total,
        "cli, reqwest and curl each read everything"
    );
    assert_eq!(value("overlay_queue_depth"), 0);
    assert_eq!(value("overlay_uploads"), 0);
    assert!(value("index_cache_misses_total") > 0);
}

/// The heavy tier: `cargo test -p ron --release --test objects -- --ignored`.
#[tokio::test]
#[ignore = "heavy: a 1 GiB object (about 15 s in release, plus the build)"]
async fn one_gib_round_trip_matches_b3sum() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let file = dir.path().join("1g");
    let mut all = Vec::with_capacity(1 << 30);
    for i in 0..1024u64 {
        all.extend_from_slice(&data(MIB, i));
    }
    std::fs::write(&file, &all).unwrap();
    let expected = b3sum(&file);
    let url = format!("{}/put", node.url);
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-T",
            file.to_str().unwrap(),
            "-H",
            "expect:",
            "-H",
            &format!("authorization: Bearer {}", node.token),
            &url,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["address"], expected.as_str());
    let back = dir.path().join("back");
    let out = node
        .cli(&["get", &expected, "-o", back.to_str().unwrap()])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b3sum(&back), expected);
    let range = dir.path().join("range");
    let get = format!("{}/o/{expected}", node.url);
    assert!(
        curl(&[
            "-sf",
            "-r",
            "1000000000-1000999999",
            "-o",
            range.to_str().unwrap(),
            &get
        ])
        .success()
    );
    assert!(std::fs::read(&range).unwrap() == all[1_000_000_000..1_001_000_000]);
}

#[tokio::test]
async fn headers_conditional_requests_and_multiple_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let bytes = data(3 * MIB, 42);
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    let addr = serde_json::from_str::<Value>(&text).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/o/{addr}");

    let res = node
        .http
        .head(format!("{}{path}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["etag"], format!("\"{addr}\"").as_str());
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-length"], (3 * MIB).to_string().as_str());

    let res = get_with(&node, &path, &[("if-none-match", &format!("\"{addr}\""))]).await;
    assert_eq!(res.status(), 304);
    let res = get_with(&node, &path, &[("if-none-match", "\"b3:something-else\"")]).await;
    assert_eq!(res.status(), 200);

    let res = get_with(&node, &path, &[("range", "bytes=0-9,2000000-2000009,-5")]).await;
    assert_eq!(res.status(), 206);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap()
        .to_owned();
    let declared: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    let mut expected = Vec::new();
    for (a, b) in [
        (0usize, 9usize),
        (2_000_000, 2_000_009),
        (3 * MIB - 5, 3 * MIB - 1),
    ] {
        expected.extend_from_slice(format!("--{boundary}\r\nContent-Type: image/png\r\nContent-Range: bytes {a}-{b}/{}\r\n\r\n", 3 * MIB).as_bytes());
        expected.extend_from_slice(&bytes[a..=b]);
        expected.extend_from_slice(b"\r\n");
    }
    expected.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    assert!(body[..] == expected[..]);

    // A non-bytes unit is ignored (RFC 9110): the whole object.
    let res = get_with(&node, &path, &[("range", "items=0-1")]).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let bytes = data(MIB + 17, 5);
    let addr = node.put(bytes.clone()).await;
    let hex = addr.strip_prefix("b3:").unwrap();

    let long = format!("b3:{}", "a".repeat(10_000));
    let malformed = [
        addr.to_uppercase(),
        format!("b3:{}", &hex[..63]),
        "b3:".to_owned(),
        format!("sha256:{hex}"),
        format!("b3:%7a%7a{}", &hex[4..]),
        "b3:%ff%fe".to_owned(),
        long,
    ];
    for bad in &malformed {
        for route in ["/o/", "/stat/"] {
            let (status, code) =
                error_code(get_with(&node, &format!("{route}{bad}"), &[]).await).await;
            assert_eq!(
                (status, code.as_str()),
                (400, "bad_input"),
                "{route}{bad:.80}"
            );
        }
    }
    let unknown = format!("/o/b3:{}", "0".repeat(64));
    assert_eq!(
        error_code(get_with(&node, &unknown, &[]).await).await,
        (404, "not_found".into())
    );

    let path = format!("/o/{addr}");
    let too_many: String = (0..200)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect::<Vec<_>>()
        .join(",");
    for range in [
        "bytes=-0",
        "bytes=5-1",
        "bytes=99999999999999999999999-",
        "bytes=2000000-",
        &format!("bytes={too_many}"),
    ] {
        let res = get_with(&node, &path, &[("range", range)]).await;
        assert_eq!(
            res.headers()["content-range"],
            format!("bytes */{}", MIB + 17).as_str(),
            "{range:.40}"
        );
        assert_eq!(
            error_code(res).await,
            (416, "range_not_satisfiable".into()),
            "{range:.40}"
        );
    }

    // Expected-address mismatch: 422, and the content is not stored.
    let other = data(1000, 99);
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .header("x-ron-expect-address", addr.as_str())
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, (422, "content_mismatch".into()));
    let other_addr = ron_proto::Address::of(&other);
    assert_eq!(
        get_with(&node, &format!("/stat/{other_addr}"), &[])
            .await
            .status(),
        404
    );
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .header("x-ron-expect-address", "b3:nope")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, (400, "bad_input".into()));

    // Pins of unknown objects are 404; of known ones, 200.
    let res = node
        .http
        .post(format!("{}/pin/{other_addr}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = node
        .http
        .delete(format!("{}/pin/{addr}", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        node.get(&format!("/stat/{addr}"))
            .await
            .1
            .contains("\"pinned\":false")
    );
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused_early() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(
        data_dir.join("ron.toml"),
        "[gateway]\nmax_put_bytes = 1000000\n",
    )
    .unwrap();
    let node = Node::start(&data_dir, &[]).await;
    // Announced too large: refused before the body is read.
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .body(vec![0u8; 2_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, (413, "too_large".into()));
    // Chunked, no length: refused as soon as the stream passes the limit.
    let host = node.url.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!("POST /put HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n", node.token).into_bytes();
    for _ in 0..11 {
        request.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        request.extend_from_slice(&[1u8; 100_000]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let _ = conn.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.200}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer:.400}");
    // A fresh client: the node closed the first refusal's connection (its body unread), and
    // a pooled client could pick that connection up again just as it closes.
    let metrics = node
        .anonymous()
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("rejected_total{reason=\"too_large\"} 2"));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir, &[]).await;
    let host = node.url.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(
        format!(
            "POST /put HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
            node.token,
            20 * MIB
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&data(9 * MIB, 3)).await.unwrap();
    // Wait until the node has cut and stored at least one chunk, then vanish.
    let chunks = data_dir.join("store").join("chunks");
    let deadline = Instant::now() + Duration::from_secs(20);
    while files_under(&chunks).is_empty() {
        assert!(Instant::now() < deadline, "no chunk was ever written");
        sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    // The upload's chunk jobs finish on their own after the writer is dropped: one may still
    // be writing its temporary file when the chunks stored before it are already removed, so
    // wait until both folders stay empty together (ten looks in a row, 200 ms).
    let tmp = data_dir.join("store").join("tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut empty_looks = 0;
    while empty_looks < 10 {
        let left = (files_under(&chunks), files_under(&tmp));
        if left.0.is_empty() && left.1.is_empty() {
            empty_looks += 1;
        } else {
            empty_looks = 0;
            assert!(
                Instant::now() < deadline,
                "abandoned files left behind: {left:?}"
            );
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.status().await["storage"]["objects"], 0);
}

#[tokio::test]
async fn damaged_bytes_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir, &[]).await;
    let bytes = data(6 * MIB, 77);
    let addr = node.put(bytes.clone()).await;

    // Flip one byte in the middle of the last chunk file.
    let manifest_chunks = files_under(&data_dir.join("store").join("chunks"));
    let victim = manifest_chunks
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut raw = std::fs::read(victim).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x80;
    std::fs::write(victim, raw).unwrap();

    // Plain HTTP: the response never completes with wrong bytes.
    let res = get_with(&node, &format!("/o/{addr}"), &[]).await;
    // Either aborted mid-body (an error) or cut short; never whole.
    if let Ok(body) = res.bytes().await {
        assert!(
            body.len() < bytes.len(),
            "a damaged object must not be served whole"
        );
    }
    // The CLI fails and leaves no output file.
    let out_file = dir.path().join("out");
    let out = node
        .cli(&["get", &addr, "-o", out_file.to_str().unwrap()])
        .await;
    assert!(!out.status.success());
    assert!(!out_file.exists());
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
    // STAT says damaged; the damage is counted.
    let stat: Value = serde_json::from_str(&node.get(&format!("/stat/{addr}")).await.1).unwrap();
    assert_eq!(stat["damaged"], true);
    assert!(
        node.get("/metrics")
            .await
            .1
            .contains("rejected_total{reason=\"damaged\"}")
    );

    // A deleted chunk file: GET aborts, STAT reports damage, nothing panics.
    std::fs::remove_file(victim).unwrap();
    let res = get_with(&node, &format!("/o/{addr}"), &[]).await;
    if let Ok(body) = res.bytes().await {
        assert!(body.len() < bytes.len());
    }
    let stat: Value = serde_json::from_str(&node.get(&format!("/stat/{addr}")).await.1).unwrap();
    assert_eq!(stat["damaged"], true);
    assert_eq!(node.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn amnesia_writes_nothing_anywhere() {
    let root = tempfile::tempdir().unwrap();
    let (home, tmp, cwd, data_dir) = (
        root.path().join("home"),
        root.path().join("tmp"),
        root.path().join("cwd"),
        root.path().join("data"),
    );
    for d in [&home, &tmp, &cwd, &data_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let node = Node::start_with(&data_dir, &["--amnesia"], |cmd| {
        cmd.env("HOME", &home).env("TMPDIR", &tmp).current_dir(&cwd);
    })
    .await;
    let bytes = data(5 * MIB, 8);
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let addr = res.json::<Value>().await.unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        get_with(&node, &format!("/o/{addr}"), &[])
            .await
            .bytes()
            .await
            .unwrap()
            == bytes
    );
    // Writes still need the owner's token (shown once on stderr, kept nowhere).
    let res = node
        .anonymous()
        .post(format!("{}/put", node.url))
        .body("stranger")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let out = node.cli(&["pin", &addr]).await;
    assert!(out.status.success());
    assert!(
        node.status().await["node_id"]
            .as_str()
            .unwrap()
            .starts_with("12D3KooW")
    );
    // Nothing anywhere, during the run and after a clean exit.
    let empty = |when: &str| {
        for d in [&home, &tmp, &cwd, &data_dir] {
            assert!(
                std::fs::read_dir(d).unwrap().next().is_none(),
                "{} is not empty {when}",
                d.display()
            );
        }
    };
    empty("while running");
    let mut node = node;
    node.signal("-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(20), node.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    empty("after exit");
}

#[tokio::test]
async fn the_data_dir_is_the_nodes_alone() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // A data dir left open to every local user (as the default umask made them) is tightened.
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = Node::start(&data_dir, &[]).await;
    node.put(data(3 * MIB, 5)).await;
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("store")), 0o700);
    let files = files_under(&data_dir);
    for name in ["meta.redb", "peers.redb", "owner.token"] {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == name)),
            "no {name} in {files:?}"
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(data_dir.join("store").join("chunks")))
    );
    for file in &files {
        assert_eq!(
            mode(file) & 0o077,
            0,
            "{} is readable by others",
            file.display()
        );
    }
}

#[tokio::test]
async fn an_http_1_1_request_without_one_host_header_is_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let host = node.url.strip_prefix("http://").unwrap().to_owned();
    let ask = |request: String| {
        let host = host.clone();
        async move {
            let mut conn = tokio::net::TcpStream::connect(&host).await.unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer),
            )
            .await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    for request in [
        "GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n".to_owned(),
        format!(
            "GET /healthz HTTP/1.1\r\nhost: {host}\r\nhost: other\r\nconnection: close\r\n\r\n"
        ),
    ] {
        let answer = ask(request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.300}");
        assert!(answer.contains("\"code\":\"bad_input\""), "{answer:.400}");
    }
    // One Host header, or HTTP/1.0 (which has none): answered.
    let answer = ask(format!(
        "GET /healthz HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
    let answer = ask("GET /healthz HTTP/1.0\r\n\r\n".to_owned()).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer:.300}");
}

#[tokio::test]
async fn stored_pages_run_sandboxed_and_media_types_must_be_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), &[]).await;
    let put = |media_type: &'static str| {
        node.http
            .post(format!("{}/put", node.url))
            .header("content-type", media_type)
            .body(b"<script>fetch('/status')</script>".to_vec())
            .send()
    };
    let res = put("text/html; charset=utf-8").await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let addr: Value = res.json().await.unwrap();
    let res = node
        .anonymous()
        .get(format!(
            "{}/o/{}",
            node.url,
            addr["address"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let policy = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("sandbox"), "{policy}");
    assert!(!policy.contains("allow-same-origin"), "{policy}");
    // A media type that is not RFC 9110 is refused, never reflected.
    for bad in [
        "text/html;charset=\"><script>alert(1)</script>",
        "text/",
        "text/html; charset",
    ] {
        let res = put(bad).await.unwrap();
        assert_eq!(error_code(res).await, (400, "bad_input".into()), "{bad}");
    }
}
