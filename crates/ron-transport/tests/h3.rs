//! HTTP/3 end to end on 127.0.0.1: an axum router served by [`H3Listener`], reached with the
//! crate's own client; request and response bodies, the client address on each request, the
//! byte rate, certificate trust, and shutdown.
#![cfg(feature = "http3")]
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::routing::{get, post};
use bytes::Bytes;
use ron_kernel::Config;
use ron_transport::DevCertificate;
use ron_transport::h3::{H3Listener, quic_config, request};
use ron_transport::limits::{Limiter, LimitsSection, Peer};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

fn app() -> Router {
    Router::new()
        .route(
            "/hello",
            get(|Extension(Peer(ip)): Extension<Peer>| async move {
                format!("hello over h3 from {ip}")
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/big", get(|| async { vec![7u8; 3 * MIB] }))
        .layer(DefaultBodyLimit::max(4 * MIB))
}

fn get_req(path: &str) -> http::Request<Bytes> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Bytes::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_bodies_peers_rates_and_trust_over_http3() {
    ron_transport::install_default_provider();
    let dev = DevCertificate::generate(&["localhost".into()]).unwrap();
    let roots = vec![rustls_pki_der(dev.cert_pem())];
    // The client is on loopback: no network is exempt here, so its limits apply.
    let limits = LimitsSection {
        per_peer_bytes_per_sec: MIB as u64,
        exempt: vec![],
        ..LimitsSection::default()
    };
    let config = Config::builder()
        .register::<LimitsSection>()
        .set("limits.per_peer_bytes_per_sec", MIB as i64)
        .build()
        .unwrap();
    let limiter = Arc::new(Limiter::default());
    limiter.apply(&limits);
    let listener = H3Listener::new(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        quic_config(ron_transport::LiveCert::new(dev.material()).unwrap()).unwrap(),
        &limits,
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(listener.serve(app(), config, limiter.clone(), shutdown.clone()));

    let (res, body) = request(addr, "localhost", &roots, get_req("/hello"), MIB)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(body, "hello over h3 from 127.0.0.1");

    let upload = Bytes::from((0..MIB).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let post = http::Request::post("https://localhost/echo")
        .body(upload.clone())
        .unwrap();
    let (res, body) = request(addr, "localhost", &roots, post, 2 * MIB)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(body == upload, "the body came back whole");

    // 3 MiB down at 1 MiB/s with a 2 MiB burst, after the 2 MiB moved above: slowed.
    let started = Instant::now();
    let (res, body) = request(addr, "localhost", &roots, get_req("/big"), 4 * MIB)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!((res.status().as_u16(), body.len()), (200, 3 * MIB));
    assert!(took >= Duration::from_millis(900), "{took:?}");

    let (res, _) = request(addr, "localhost", &roots, get_req("/nowhere"), MIB)
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // A client that does not trust the node's certificate gets no answer.
    let other = DevCertificate::generate(&["localhost".into()]).unwrap();
    let untrusted = vec![rustls_pki_der(other.cert_pem())];
    assert!(
        request(addr, "localhost", &untrusted, get_req("/hello"), MIB)
            .await
            .is_err()
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the listener stops on shutdown")
        .unwrap()
        .unwrap();
    println!("HTTP/3: 3 MiB at per_peer_bytes_per_sec = 1 MiB/s took {took:?}");
}

fn rustls_pki_der(pem: &str) -> ron_transport::rustls::pki_types::CertificateDer<'static> {
    use ron_transport::rustls::pki_types::pem::PemObject;
    ron_transport::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}
