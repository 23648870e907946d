//! Three swarms on 127.0.0.1 in one process: a chain bootstrapped one from the next, provider
//! lookups across it, ranges fetched and verified, a missing object and a lying peer.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use libp2p::Multiaddr;
use ron_proto::Address;
use svc_dht::{DhtError, DhtHandle, P2pSection, Source, run};

/// Objects in memory; `lie` flips a byte of everything it serves.
struct Memory {
    objects: HashMap<Address, Bytes>,
    lie: bool,
}

impl Source for Memory {
    fn size(&self, addr: Address) -> BoxFuture<'static, Option<u64>> {
        let size = self.objects.get(&addr).map(|b| b.len() as u64);
        async move { size }.boxed()
    }

    fn read(
        &self,
        addr: Address,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>, String>> {
        let got = self.objects.get(&addr).map(|b| {
            let end = end.min(b.len() as u64);
            let mut bytes = b.slice(start as usize..end as usize).to_vec();
            if self.lie && !bytes.is_empty() {
                bytes[0] ^= 1;
            }
            (b.len() as u64, Bytes::from(bytes))
        });
        async move { Ok(got) }.boxed()
    }
}

fn node(objects: &[Bytes], lie: bool, bootstrap: &[Multiaddr]) -> DhtHandle {
    let section = P2pSection {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: Vec::new(),
        ..P2pSection::default()
    };
    let source = Memory {
        objects: objects
            .iter()
            .map(|b| (Address::of(b), b.clone()))
            .collect(),
        lie,
    };
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let (tx, mailbox) = supervisor::mailbox(64);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(run(
        shutdown,
        mailbox,
        keypair,
        section,
        bootstrap.to_vec(),
        Arc::new(source),
    ));
    DhtHandle::new(tx, peer_id)
}

async fn address_of(node: &DhtHandle) -> Multiaddr {
    for _ in 0..100 {
        let status = node.status().await.unwrap();
        if let Some(addr) = status.listen.first() {
            return addr.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never listened")
}

async fn fetch(from: &DhtHandle, peer: libp2p::PeerId, addr: Address) -> Result<Vec<u8>, DhtError> {
    let got = std::sync::Mutex::new(Vec::new());
    from.fetch_to(peer, addr, 1 << 30, |bytes| {
        got.lock().unwrap().extend_from_slice(&bytes);
        async { Ok(()) }
    })
    .await?;
    Ok(got.into_inner().unwrap())
}

async fn wait_for_peers(node: &DhtHandle, n: usize) {
    for _ in 0..250 {
        if node.status().await.unwrap().peers.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never connected to {n} peers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_across_the_network_and_their_bytes_verified() {
    let big = Bytes::from(
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let small = Bytes::from_static(b"hello world");
    let a = node(&[big.clone(), small.clone()], false, &[]);
    let b = node(&[], false, &[address_of(&a).await]);
    let c = node(&[], false, &[address_of(&b).await]);
    wait_for_peers(&b, 2).await;
    a.provide(Address::of(&big)).await.unwrap();
    a.provide(Address::of(&small)).await.unwrap();

    // C learns of A only through B.
    let mut providers = Vec::new();
    for _ in 0..50 {
        providers = c.providers(Address::of(&big)).await.unwrap();
        if !providers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(providers, vec![a.peer_id()]);
    let got = fetch(&c, a.peer_id(), Address::of(&big)).await.unwrap();
    assert!(got == big, "3 MB fetched in ranges and verified");
    let got = fetch(&c, a.peer_id(), Address::of(&small)).await.unwrap();
    assert_eq!(got, small);

    // Nobody has this one: the lookup ends with no provider, and asking A directly is 404.
    let nothing = Address::of(b"nobody has this");
    assert_eq!(c.providers(nothing).await.unwrap(), Vec::new());
    match fetch(&c, a.peer_id(), nothing).await {
        Err(DhtError::Refused(kind, message)) => {
            assert_eq!(kind, ron_proto::ErrorKind::NotFound);
            assert!(message.contains("no object"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // A peer that flips a bit is caught before its bytes are used.
    let liar = node(std::slice::from_ref(&small), true, &[address_of(&a).await]);
    wait_for_peers(&liar, 1).await;
    match fetch(&c, liar.peer_id(), Address::of(&small)).await {
        Err(DhtError::Peer(message)) => assert!(message.contains("not b3:"), "{message}"),
        other => panic!("{other:?}"),
    }
}
