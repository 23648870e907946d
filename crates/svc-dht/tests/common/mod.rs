//! Swarms in one process for the tests: objects in memory, honest or lying.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test crate uses its own subset

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::{BlockSize, ChunkNum, ChunkRanges};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use libp2p::Multiaddr;
use ron_proto::Address;
use svc_dht::{DhtHandle, GROUP_BYTES, P2pSection, Setup, Source, run};
use tokio_util::sync::CancellationToken;

pub const BLOCK: BlockSize = BlockSize::from_chunk_log(ron_proto::oap::GROUP_CHUNK_LOG);

/// Objects in memory with their outboards. A liar serves, from `lie_from` on, bytes with one
/// bit flipped in every group, under honest parent hashes: its lies pass until a group's
/// bytes are checked. While `failures` is above zero, a request for a range starting at
/// byte 0 fails (an internal error), counting it down.
pub struct Memory {
    objects: HashMap<Address, (Bytes, Arc<PreOrderMemOutboard>)>,
    lie_from: Option<usize>,
    failures: Arc<AtomicUsize>,
}

impl Source for Memory {
    fn size(&self, addr: Address) -> BoxFuture<'static, Option<u64>> {
        let size = self.objects.get(&addr).map(|(b, _)| b.len() as u64);
        async move { size }.boxed()
    }

    fn encoded(
        &self,
        addr: Address,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<(u64, Bytes)>, String>> {
        if start == 0
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return async { Err("a hiccup".to_owned()) }.boxed();
        }
        let got = self.objects.get(&addr).map(|(data, outboard)| {
            let mut served = data.to_vec();
            if let Some(from) = self.lie_from {
                for at in (from..served.len()).step_by(GROUP_BYTES as usize) {
                    served[at] ^= 1;
                }
            }
            let ranges = ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)));
            let mut out = Vec::new();
            bao_tree::io::sync::encode_ranges(&served[..], outboard.as_ref(), &ranges, &mut out)
                .unwrap();
            (data.len() as u64, Bytes::from(out))
        });
        async move { Ok(got) }.boxed()
    }
}

pub struct Node {
    pub handle: DhtHandle,
    pub shutdown: CancellationToken,
    /// Requests from byte 0 this node's source fails before it serves them again.
    pub failures: Arc<AtomicUsize>,
}

pub fn node(
    objects: &[Bytes],
    lie_from: Option<usize>,
    rate: u64,
    bootstrap: &[Multiaddr],
) -> Node {
    node_on("/ip4/127.0.0.1/tcp/0", objects, lie_from, rate, bootstrap)
}

/// Like [`node`], listening on `listen` (QUIC keeps a many-node network in one process within
/// its file descriptors: one socket per node, not two per connection).
pub fn node_on(
    listen: &str,
    objects: &[Bytes],
    lie_from: Option<usize>,
    rate: u64,
    bootstrap: &[Multiaddr],
) -> Node {
    let section = P2pSection {
        listen: vec![listen.into()],
        ..P2pSection::default()
    };
    node_with(section, objects, lie_from, rate, bootstrap)
}

/// [`node_on`] with a whole `[p2p]` section.
pub fn node_with(
    section: P2pSection,
    objects: &[Bytes],
    lie_from: Option<usize>,
    rate: u64,
    bootstrap: &[Multiaddr],
) -> Node {
    let config = ron_kernel::Config::builder()
        .register::<P2pSection>()
        .set("p2p.peer_bytes_per_sec", i64::try_from(rate).unwrap())
        .build()
        .unwrap();
    let source = Memory {
        objects: objects
            .iter()
            .map(|b| {
                let outboard = PreOrderMemOutboard::create(b, BLOCK);
                (Address::of(b), (b.clone(), Arc::new(outboard)))
            })
            .collect(),
        lie_from,
        failures: Arc::new(AtomicUsize::new(0)),
    };
    let failures = source.failures.clone();
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let (tx, mailbox) = supervisor::mailbox(64);
    let shutdown = CancellationToken::new();
    let handle = DhtHandle::new(tx, peer_id);
    let setup = Setup {
        keypair,
        config,
        section,
        bootstrap: bootstrap.to_vec(),
        source: Arc::new(source),
        metrics: handle.metrics().clone(),
        events: None,
        records: Arc::new(svc_dht::NoRecords),
        settle: None,
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = run(stop, mailbox, setup).await {
            eprintln!("a swarm stopped: {e}");
        }
    });
    Node {
        handle,
        shutdown,
        failures,
    }
}

pub async fn address_of(node: &DhtHandle) -> Multiaddr {
    for _ in 0..100 {
        let status = node.status().await.unwrap();
        if let Some(addr) = status.listen.first() {
            return addr.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never listened")
}
