//! The swarm's connection security over TCP: TLS 1.3 offered first, with AES-GCM before
//! ChaCha20 (the vendored `libp2p-tls`, decision 0012), and Noise still accepted from peers
//! that speak only it.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

mod common;

use std::time::Duration;

use common::{address_of, node};
use futures_util::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, ping, tcp, tls, yamux};
use tokio_rustls::rustls::CipherSuite;

#[test]
fn tcp_and_quic_connections_prefer_aes_gcm() {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let client = tls::make_client_config(&key, None).unwrap();
    let server = tls::make_server_config(&key).unwrap();
    for suites in [
        &client.crypto_provider().cipher_suites,
        &server.crypto_provider().cipher_suites,
    ] {
        let order: Vec<CipherSuite> = suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            order,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
    }
}

/// Dials `$addr` from a bare swarm that secures TCP with `$upgrade` only; the first thing
/// that happens: connected (true) or refused (false).
macro_rules! connects {
    ($addr:expr, $upgrade:expr) => {{
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), $upgrade, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| ping::Behaviour::default())
            .unwrap()
            .build();
        swarm.dial($addr).unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => break true,
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        eprintln!("refused: {error}");
                        break false;
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap()
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_accepts_peers_speaking_only_tls_or_only_noise() {
    let n = node(&[], None, 0, &[]);
    let addr = address_of(&n.handle).await;
    assert!(connects!(addr.clone(), tls::Config::new), "TLS");
    assert!(connects!(addr.clone(), noise::Config::new), "Noise");
    n.shutdown.cancel();
}
