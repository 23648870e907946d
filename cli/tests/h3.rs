//! The HTTP/3 gateway (a `ron` built with `--features http3`): objects over QUIC with the
//! same routes, capabilities and limits as HTTP/1.1 and HTTP/2.
//! `cargo test -p ron --features http3 --test h3`
#![cfg(feature = "http3")]
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use bytes::Bytes;
use ron_transport::h3::request;
use ron_transport::rustls::pki_types::CertificateDer;
use ron_transport::rustls::pki_types::pem::PemObject;
use support::{Node, data};

const MIB: usize = 1 << 20;

#[tokio::test]
async fn objects_over_http3_match_what_was_put() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(
        data_dir.join("ron.toml"),
        "[limits]\nexempt = []\nper_peer_rps = 3\n",
    )
    .unwrap();
    let node = Node::start(
        &data_dir,
        &[
            "--tls-self-signed",
            "--gateway-tls",
            "127.0.0.1:0",
            "--oap-listen",
            "127.0.0.1:0",
            "--gateway-h3",
            "127.0.0.1:0",
        ],
    )
    .await;
    let h3: std::net::SocketAddr = node.h3_addr.clone().unwrap().parse().unwrap();
    let roots = vec![CertificateDer::from_pem_file(data_dir.join("tls/cert.pem")).unwrap()];
    let bytes = data(3 * MIB + 17, 4);
    let addr = node.put(bytes.clone()).await;

    let get = |path: String| {
        http::Request::get(format!("https://localhost{path}"))
            .body(Bytes::new())
            .unwrap()
    };
    let (res, body) = request(h3, "localhost", &roots, get(format!("/o/{addr}")), 4 * MIB)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], format!("\"{addr}\""));
    assert!(body == bytes, "the object over HTTP/3 is the object put");

    // Uploads need a capability here as everywhere.
    let put = |token: Option<&str>| {
        let mut req = http::Request::post("https://localhost/put");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(Bytes::from_static(b"over quic")).unwrap()
    };
    let (res, _) = request(h3, "localhost", &roots, put(None), MIB)
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let (res, body) = request(h3, "localhost", &roots, put(Some(&node.token)), MIB)
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{body:?}");

    // The client address's rate covers HTTP/3 too (3 requests/s, burst 6, all used above
    // or now): refused with the shared error shape.
    let mut refused = None;
    for _ in 0..10 {
        let (res, body) = request(h3, "localhost", &roots, get(format!("/stat/{addr}")), MIB)
            .await
            .unwrap();
        if res.status() == 429 {
            refused = Some(body);
            break;
        }
    }
    let body: serde_json::Value = serde_json::from_slice(&refused.expect("a 429")).unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(node.get("/healthz").await.0, 200);
}
