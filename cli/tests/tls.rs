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

/// A node in `data_dir` serving the certificate `cert` and key `key` from its config, on
/// HTTPS and OAP/1.
async fn serving(
    data_dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Node {
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(
        data_dir.join("ron.toml"),
        format!(
            "[gateway]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    Node::start(
        data_dir,
        &[
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
        ],
    )
    .await
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
    let node = serving(&dir.path().join("second"), &cert, &key).await;
    let https = node.tls_url.clone().unwrap();
    let (ok, body) = curl(&[
        "--http2",
        "--cacert",
        cert.to_str().unwrap(),
        &format!("{https}/healthz"),
    ]);
    assert!(ok, "served the configured certificate");
    assert_eq!(body.trim(), "ok");
    assert!(
        !node.data_dir.join("tls").exists(),
        "no certificate generated"
    );

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

/// Writes a fresh self-signed pair for 127.0.0.1 (the key first, then the certificate, as
/// a renewal tool would); returns the certificate's DER.
fn new_pair(cert: &std::path::Path, key: &std::path::Path) -> Vec<u8> {
    let pair =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    std::fs::write(key, pair.signing_key.serialize_pem()).unwrap();
    std::fs::write(cert, pair.cert.pem()).unwrap();
    pair.cert.der().to_vec()
}

type Conn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` offering `alpn`, trusting any certificate; the certificate the
/// node showed.
async fn handshake(addr: &str, alpn: &[u8]) -> (Conn, Vec<u8>) {
    let mut config = (*ron_client::client_config(&ron_client::Trust::Insecure).unwrap()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let leaf = conn.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (conn, leaf)
}

/// `GET /healthz` over an open HTTP/1.1 connection: the status line.
async fn healthz(conn: &mut Conn) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer is small: its head and body arrive within a few reads.
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_to_the_next_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = new_pair(&cert, &key);
    let node = serving(&dir.path().join("node"), &cert, &key).await;
    let https = node.tls_url.clone().unwrap();
    let tls_addr = https.strip_prefix("https://").unwrap().to_owned();
    let oap_addr = node.oap_addr.clone().unwrap();

    let (mut open, shown) = handshake(&tls_addr, b"http/1.1").await;
    assert!(shown == first, "the configured certificate is served");
    assert!(healthz(&mut open).await.starts_with("HTTP/1.1 200"));

    // Renewed on disk: the next handshake on every TLS listener gets the new one.
    let second = new_pair(&cert, &key);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, shown) = handshake(&tls_addr, b"http/1.1").await;
        if shown == second {
            break;
        }
        assert!(shown == first, "an unknown certificate");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, shown) = handshake(&oap_addr, b"ron/1").await;
    assert!(shown == second, "OAP/1 serves the new certificate too");
    // The connection opened before goes on.
    assert!(healthz(&mut open).await.starts_with("HTTP/1.1 200"));
    assert_eq!(node.metric("tls_reloads_total{outcome=\"ok\"}").await, 1.0);

    // A key that is not the certificate's: refused, the second pair stays. (The renewal
    // above may have been seen half done, key before certificate: a failure counted then.)
    let failed = node.metric("tls_reloads_total{outcome=\"failed\"}").await;
    let other = dir.path().join("other.pem");
    new_pair(&other, &key);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while node.metric("tls_reloads_total{outcome=\"failed\"}").await <= failed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the torn pair was never tried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, shown) = handshake(&tls_addr, b"http/1.1").await;
    assert!(shown == second, "a torn pair is not served");
    assert!(node.metric("tls_cert_not_after_seconds").await > 4.0e9);
}
