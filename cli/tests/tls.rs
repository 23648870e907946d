//! The gateway over TLS: HTTP/2 and HTTP/1.1 on one listener, with a self-signed development
//! certificate or one from config, checked with the curl binary.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use support::{BIN, Node, data};

/// `curl -sS` with `args`; returns (exit ok, stdout).
fn curl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn http2_and_http1_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = Node::start(
        &data_dir,
        &[
            "--tls-self-signed",
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let https = node.tls_url.clone().unwrap();
    assert!(https.starts_with("https://127.0.0.1:"), "{https}");
    let cert = data_dir.join("tls").join("cert.pem");
    assert!(cert.exists() && data_dir.join("tls").join("key.pem").exists());

    let bytes = data(3 << 20, 5);
    let addr = node.put(bytes.clone()).await;
    let out = dir.path().join("h2");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, seen) = curl(&[
            flag,
            "-k",
            "-o",
            out.to_str().unwrap(),
            "-w",
            "%{http_version} %{http_code}",
            &format!("{https}/o/{addr}"),
        ]);
        assert!(ok);
        assert_eq!(seen, format!("{version} 200"));
        assert!(std::fs::read(&out).unwrap() == bytes, "{flag}");
    }
    // The certificate verifies for 127.0.0.1 when trusted explicitly (no -k).
    let (ok, body) = curl(&[
        "--http2",
        "--cacert",
        cert.to_str().unwrap(),
        &format!("{https}/healthz"),
    ]);
    assert!(ok);
    assert_eq!(body.trim(), "ok");
    // Writes over TLS, with the owner's token; ranges too.
    let file = dir.path().join("up");
    std::fs::write(&file, data(70_000, 6)).unwrap();
    let (ok, code) = curl(&[
        "--http2",
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("authorization: Bearer {}", node.token),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{https}/put"),
    ]);
    assert!(ok);
    assert_eq!(code, "201");
    let (ok, _) = curl(&[
        "--http2",
        "-k",
        "-r",
        "1000-1999",
        "-o",
        out.to_str().unwrap(),
        &format!("{https}/o/{addr}"),
    ]);
    assert!(ok);
    assert!(std::fs::read(&out).unwrap() == bytes[1000..2000]);
    // A client speaking plain HTTP to the TLS port gets nothing usable, and the node lives.
    let plain = https.replacen("https://", "http://", 1);
    assert!(!curl(&["-m", "5", &format!("{plain}/healthz")]).0);
    assert_eq!(node.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_configured_certificate_is_served_and_half_a_pair_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Make a certificate with a first node, then serve it from config on a second.
    let first_dir = dir.path().join("first");
    let first = Node::start(
        &first_dir,
        &[
            "--tls-self-signed",
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    drop(first);
    let (cert, key) = (
        first_dir.join("tls/cert.pem"),
        first_dir.join("tls/key.pem"),
    );
    let data_dir = dir.path().join("second");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(
        data_dir.join("ron.toml"),
        format!(
            "[gateway]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let node = Node::start(
        &data_dir,
        &[
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let https = node.tls_url.clone().unwrap();
    let (ok, body) = curl(&[
        "--http2",
        "--cacert",
        cert.to_str().unwrap(),
        &format!("{https}/healthz"),
    ]);
    assert!(ok, "served the configured certificate");
    assert_eq!(body.trim(), "ok");
    assert!(!data_dir.join("tls").exists(), "no certificate generated");

    // Half a pair: one line, non-zero exit.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[gateway]\ntls_cert = \"{}\"\n", cert.display()),
    )
    .unwrap();
    check_start_fails(&["--config", bad.to_str().unwrap()], "tls_cert").await;
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "[gateway]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
    )
    .unwrap();
    check_start_fails(
        &["--config", missing.to_str().unwrap()],
        "/nonexistent/c.pem",
    )
    .await;
}

async fn check_start_fails(args: &[&str], mentions: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "node",
            "--gateway",
            "127.0.0.1:0",
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ron: error:") && last.contains(mentions),
        "{err}"
    );
}

#[tokio::test]
async fn amnesia_keeps_the_certificate_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let node = Node::start(
        &data_dir,
        &[
            "--amnesia",
            "--tls-self-signed",
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let https = node.tls_url.clone().unwrap();
    let (ok, body) = curl(&["--http2", "-k", &format!("{https}/healthz")]);
    assert!(ok);
    assert_eq!(body.trim(), "ok");
    assert!(std::fs::read_dir(&data_dir).unwrap().next().is_none());
}

#[tokio::test]
async fn http3_without_a_certificate_or_the_feature_is_a_clear_start_error() {
    // No certificate: refused whichever way ron was built.
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "node",
            "--gateway",
            "127.0.0.1:0",
            "--gateway-h3",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP/3 needs a certificate") || err.contains("built without HTTP/3"),
        "{err}"
    );
    #[cfg(not(feature = "http3"))]
    check_start_fails(
        &["--tls-self-signed", "--gateway-h3", "127.0.0.1:0"],
        "built without HTTP/3",
    )
    .await;
}
