//! What a new user meets at the command line: clear one-line errors (a directory to `put`, a
//! 401 that says where the token was looked for, a port already taken by another node's peer
//! network), `-o DIR`, a TLS gateway reached with `--node https://…`, and an amnesia node
//! whose config watcher has nothing to watch and stays up.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::time::Duration;

use support::{BIN, Node, b3sum, data, ok_stdout};

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[tokio::test]
async fn the_cli_says_what_is_wrong_and_writes_where_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        &dir.path().join("n"),
        &["--tls-self-signed", "--gateway-tls", "127.0.0.1:0"],
    )
    .await;

    let err = one_line_error(&node.cli(&["put", dir.path().to_str().unwrap()]).await);
    assert!(err.contains("is a directory"), "{err}");

    // No token anywhere: the 401 names where one was looked for.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, data(10_000, 1)).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["put", file.to_str().unwrap()])
        .env("RON_NODE", &node.url)
        .env("RON_DATA_DIR", &empty)
        .env_remove("RON_TOKEN")
        .output()
        .await
        .unwrap();
    let err = one_line_error(&out);
    assert!(
        err.contains("HTTP 401") && err.contains("owner.token") && err.contains("RON_TOKEN"),
        "{err}"
    );

    // -o DIR writes DIR/<hex>.
    let addr = ok_stdout(&node.cli(&["put", file.to_str().unwrap()]).await)
        .trim()
        .to_owned();
    let outdir = dir.path().join("out");
    std::fs::create_dir_all(&outdir).unwrap();
    ok_stdout(
        &node
            .cli(&["get", &addr, "-o", outdir.to_str().unwrap()])
            .await,
    );
    assert_eq!(b3sum(&outdir.join(&addr[3..])), addr);

    // The TLS gateway by URL: the data dir's self-signed certificate is trusted.
    let tls = node.tls_url.clone().unwrap();
    let back = dir.path().join("back");
    let out = tokio::process::Command::new(BIN)
        .args(["--node", &tls, "get", &addr, "-o", back.to_str().unwrap()])
        .env("RON_DATA_DIR", &node.data_dir)
        .output()
        .await
        .unwrap();
    ok_stdout(&out);
    assert_eq!(b3sum(&back), addr);
    let out = tokio::process::Command::new(BIN)
        .args(["--node", &tls, "stat", &addr])
        .env("RON_DATA_DIR", &empty)
        .output()
        .await
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("--ca") && err.contains("--insecure"), "{err}");
}

#[tokio::test]
async fn a_peer_port_another_node_holds_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("/ip4/127.0.0.1/tcp/{}", held.local_addr().unwrap().port());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["node", "--gateway", "127.0.0.1:0", "--p2p-listen", &taken])
            .arg("--data-dir")
            .arg(dir.path().join("n"))
            .output(),
    )
    .await
    .expect("the node must exit, not keep restarting its peer network")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot listen on") && err.contains(&taken),
        "{err}"
    );
}

#[tokio::test]
async fn an_amnesia_node_without_a_data_dir_keeps_its_config_watcher_up() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("never-made"), &["--amnesia"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = node.get("/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "service_restarts_total{service=\"config\"} 0"),
        "{metrics}"
    );
    assert!(!dir.path().join("never-made").exists());
}
