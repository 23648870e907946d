//! The durability simulation (heavy tier, ignored by default): 200 nodes in one process, each
//! a whole storage node as `ron node` wires it (its own on-disk store, overlay actor, swarm
//! on 127.0.0.1 and durability guard), holding protected objects while a tenth of the nodes
//! is replaced every simulated minute for ten minutes. A departure stops every task of its
//! node at once and deletes its data; a newcomer is a fresh node (new identity, empty store)
//! joining through three live ones. Uploaders leave too. At the end every object must be
//! whole: rebuilt byte for byte on a live node that never held it, and `protected` again.
//!
//!   cargo test -p svc-overlay --release --test churn -- --ignored --nocapture
//!
//! `RON_SIM_NODES` (200), `RON_SIM_MINUTES` (10), `RON_SIM_MINUTE_S` (real seconds per
//! simulated minute, 120), `RON_SIM_OBJECTS` (12), `RON_SIM_SEED`; `RON_SIM_LOG` (a filter
//! such as `svc_overlay=debug`) logs every node's lines to stderr, each with its node's number.
//!
//! The clock. 200 nodes on this machine's two cores keep both busy (mostly Kademlia and QUIC),
//! so a question to a peer takes seconds here where it takes milliseconds between real
//! hosts: a guard's pass over an object took 6-20 s. Under churn what decides is how long a
//! chunk waits between losing a holder and its repair, against how fast holders leave; with
//! 30 real seconds to a simulated minute that wait was a third of a simulated minute, and
//! chunks lost three holders within it (measured). So a simulated minute is two real ones,
//! and the pass still takes a tenth of a simulated minute where a real node's takes a
//! hundredth. The nodes' own timers are scaled the other way, as in the DHT simulation:
//! `storage.repair_interval_s = 2` (60 by default; the guard also wakes when a holder leaves)
//! and `p2p.ping_interval_ms = 30000` (a whole network's pings land on two cores). Nodes
//! listen on QUIC: one socket each, where TCP would take two descriptors per connection.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ron_kernel::{Bus, Config};
use ron_proto::Address;
use svc_dht::{DhtHandle, Multiaddr, P2pSection, Setup};
use svc_index::Index;
use svc_overlay::{OverlayHandle, OverlaySetup, PutRequest, State};
use svc_storage::{CpuPool, StorageSection, Store};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Each object: 3 MiB, three chunks of 4+2 shards.
const OBJECT_BYTES: usize = 3 << 20;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One node: its parts, and what stops them all.
struct Node {
    overlay: OverlayHandle,
    dht: DhtHandle,
    addr: Multiaddr,
    stop: CancellationToken,
    dir: PathBuf,
}

async fn start(n: usize, dir: PathBuf, bootstrap: Vec<Multiaddr>) -> Node {
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config::builder()
        .register::<P2pSection>()
        .register::<StorageSection>()
        .set("storage.repair_interval_s", 2)
        .set("p2p.ping_interval_ms", 30_000)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let store = Store::open(&dir.join("store"), CpuPool::new(2)).unwrap();
    let index = Index::new(store.clone(), 64);
    let keypair = svc_dht::identity::Keypair::generate_ed25519();
    let (dht_tx, dht_mailbox) = supervisor::mailbox(64);
    let dht = DhtHandle::new(dht_tx, keypair.public().to_peer_id());
    let (tx, mailbox) = supervisor::mailbox(64);
    let overlay = OverlayHandle::new(OverlaySetup {
        tx,
        store: store.clone(),
        index: index.clone(),
        max_uploads: 4,
        config: config.clone(),
        max_object: Arc::new(|| 64 << 20),
        dht: Some(dht.clone()),
        peers_may_read: Arc::new(|| true),
        circuits: supervisor::Board::default(),
        disk_circuit: OverlaySetup::DISK_CIRCUIT,
    });
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let section = P2pSection {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        ping_interval_ms: 30_000,
        ..P2pSection::default()
    };
    let setup = Setup {
        keypair,
        config,
        section,
        bootstrap,
        source: overlay.peer_source(),
        metrics: dht.metrics().clone(),
        events: Some(events.clone()),
        records: Arc::new(svc_index::NamePolicy),
        settle: None,
    };
    // Each node's lines carry its number (`RON_SIM_LOG`).
    let span = tracing::info_span!("node", n);
    let s = stop.clone();
    tokio::spawn(svc_dht::run(s, dht_mailbox, setup).instrument(span.clone()));
    let s = stop.clone();
    tokio::spawn(svc_overlay::run(s, mailbox, store, index, 4).instrument(span.clone()));
    let (o, s) = (overlay.clone(), stop.clone());
    tokio::spawn(svc_overlay::guard(o, Bus::new(64), Some(events.subscribe()), s).instrument(span));
    let addr = loop {
        if let Some(addr) = dht.status().await.unwrap().listen.first() {
            break addr.parse().unwrap();
        }
        sleep(Duration::from_millis(20)).await;
    };
    Node {
        overlay,
        dht,
        addr,
        stop,
        dir,
    }
}

struct Net {
    dir: PathBuf,
    nodes: Vec<Option<Node>>,
    started: usize,
    rng: fastrand::Rng,
}

impl Net {
    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    fn node(&self, slot: usize) -> &Node {
        self.nodes[slot].as_ref().unwrap()
    }

    /// A live slot not in `not`.
    fn pick(&mut self, not: &[usize]) -> usize {
        let live: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|i| !not.contains(i))
            .collect();
        live[self.rng.usize(..live.len())]
    }

    /// A fresh node in `slot`, joining through up to three live nodes.
    async fn start(&mut self, slot: usize) {
        let live = self.live();
        let mut bootstrap = Vec::new();
        for _ in 0..3.min(live.len()) {
            let seed = live[self.rng.usize(..live.len())];
            bootstrap.push(self.node(seed).addr.clone());
        }
        let dir = self.dir.join(format!("n{}", self.started));
        self.started += 1;
        self.nodes[slot] = Some(start(self.started - 1, dir, bootstrap).await);
    }

    /// Connections open across the network (each counted at both ends).
    async fn connections(&self) -> usize {
        let mut open = 0;
        for node in self.nodes.iter().flatten() {
            open += node.dht.status().await.map_or(0, |s| s.peers.len());
        }
        open
    }

    /// The node in `slot` goes: every task of it stops, its data is deleted.
    fn kill(&mut self, slot: usize) {
        let node = self.nodes[slot].take().unwrap();
        node.stop.cancel();
        let _ = std::fs::remove_dir_all(&node.dir);
    }
}

/// Each object's state as a live node counts it (a task of its own: the churn goes on).
fn census(
    net: &mut Net,
    objects: &[Address],
) -> tokio::task::JoinHandle<Vec<(Address, State, usize)>> {
    let asks: Vec<(OverlayHandle, Address)> = objects
        .iter()
        .map(|object| {
            let watcher = net.pick(&[]);
            (net.node(watcher).overlay.clone(), *object)
        })
        .collect();
    tokio::spawn(async move {
        let counts = asks.into_iter().map(|(overlay, object)| async move {
            match overlay.durability(object).await {
                Ok(Some(d)) => {
                    if d.state != State::Protected {
                        eprintln!("  {object}: {d:?}");
                    }
                    (object, d.state, d.min_holders)
                }
                // A node that could not find the layout then: unknown, not counted.
                other => {
                    eprintln!("  {object}: {other:?}");
                    (object, State::Pending, 0)
                }
            }
        });
        futures_util::future::join_all(counts).await
    })
}

fn tally(states: &[(Address, State, usize)]) -> String {
    let count = |s| states.iter().filter(|(_, x, _)| *x == s).count();
    format!(
        "{} protected, {} degraded, {} lost, {} pending or not found",
        count(State::Protected),
        count(State::Degraded),
        count(State::Lost),
        count(State::Pending)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: 200 nodes for about half an hour; cargo test -p svc-overlay --release --test churn -- --ignored --nocapture"]
async fn a_churning_network_loses_no_protected_object() {
    let nodes = usize::try_from(env("RON_SIM_NODES", 200)).unwrap().max(12);
    let minutes = env("RON_SIM_MINUTES", 10);
    let minute = Duration::from_secs(env("RON_SIM_MINUTE_S", 120));
    let count = usize::try_from(env("RON_SIM_OBJECTS", 12)).unwrap().max(1);
    let seed = env("RON_SIM_SEED", 17);
    if let Ok(filter) = std::env::var("RON_SIM_LOG") {
        tracing_subscriber::fmt()
            // (`churn=info`: each line names its node.)
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                "{filter},churn=info"
            )))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net {
        dir: dir.path().to_owned(),
        nodes: (0..nodes).map(|_| None).collect(),
        started: 0,
        rng: fastrand::Rng::with_seed(seed),
    };
    let began = Instant::now();
    for slot in 0..nodes {
        net.start(slot).await;
    }
    eprintln!("{nodes} nodes up in {:.0?}", began.elapsed());
    sleep(Duration::from_secs(5)).await;

    // The objects, each put on a node of its own, protected 4+2 (the default).
    let mut uploaders = Vec::new();
    let mut objects = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..count {
        let mut rng = fastrand::Rng::with_seed(seed * 1000 + i as u64);
        let bytes: Vec<u8> = (0..OBJECT_BYTES).map(|_| rng.u8(..)).collect();
        let uploader = net.pick(&uploaders);
        let mut up = net
            .node(uploader)
            .overlay
            .put(PutRequest::default())
            .unwrap();
        up.write(&bytes).await.unwrap();
        objects.push(up.finish().await.unwrap().address);
        hashes.push(blake3::hash(&bytes));
        uploaders.push(uploader);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    for (object, uploader) in objects.iter().zip(&uploaders) {
        loop {
            let d = net
                .node(*uploader)
                .overlay
                .durability(*object)
                .await
                .unwrap();
            if d.as_ref()
                .is_some_and(|d| d.state == State::Protected && d.min_holders == 6)
            {
                break;
            }
            assert!(Instant::now() < deadline, "{object} never protected: {d:?}");
            sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "{count} objects of {} MiB protected, {:.0?} in",
        OBJECT_BYTES >> 20,
        began.elapsed()
    );

    // Churn: a tenth of the nodes replaced per simulated minute, one at a time, evenly.
    let per_minute = (nodes / 10).max(1);
    let step = minute / u32::try_from(per_minute).unwrap();
    let churn = Instant::now();
    let (mut replaced, mut uploaders_gone, mut worst) = (0, 0, usize::MAX);
    let mut counted = Vec::new();
    for m in 0..minutes {
        for j in 0..per_minute {
            let at = minute * u32::try_from(m).unwrap() + step * u32::try_from(j).unwrap();
            tokio::time::sleep_until(churn + at).await;
            let slot = net.pick(&[]);
            for uploader in &mut uploaders {
                if *uploader == slot {
                    // Gone; the slot's next node is not the uploader.
                    *uploader = usize::MAX;
                    uploaders_gone += 1;
                }
            }
            net.kill(slot);
            net.start(slot).await;
            replaced += 1;
        }
        eprintln!(
            "simulated minute {}: {replaced} nodes replaced ({uploaders_gone} uploaders), {:.0?} in; \
             {} connections per node",
            m + 1,
            churn.elapsed(),
            net.connections().await / nodes,
        );
        counted.push(census(&mut net, &objects));
    }
    let churned = churn.elapsed();
    // What a random live node counted at each minute's end (a count, not the verdict: one
    // node's lookups under load can miss holders; the reads below decide).
    for (m, states) in counted.into_iter().enumerate() {
        let states = states.await.unwrap();
        eprintln!(
            "counted after simulated minute {}: {}",
            m + 1,
            tally(&states)
        );
        let known = states.iter().filter(|(_, s, _)| *s != State::Pending);
        worst = worst.min(known.map(|(.., h)| *h).min().unwrap_or(usize::MAX));
    }

    // Every object whole: rebuilt on a live node that never held it, byte for byte.
    for (object, hash) in objects.iter().zip(&hashes) {
        let reader = net.pick(&uploaders);
        let copy = net.node(reader).overlay.get_stored(*object).await;
        let copy = copy.unwrap_or_else(|e| panic!("{object} lost: {e}"));
        let bytes = copy.read_verified(0, copy.size()).await.unwrap();
        assert_eq!(blake3::hash(&bytes), *hash, "{object}: wrong bytes");
    }
    // And protected again on six live, distinct holders.
    let deadline = Instant::now() + Duration::from_secs(600);
    let states = loop {
        let states = census(&mut net, &objects).await.unwrap();
        if states
            .iter()
            .all(|(_, s, h)| *s == State::Protected && *h == 6)
        {
            break states;
        }
        assert!(
            Instant::now() < deadline,
            "not all protected again: {}",
            tally(&states)
        );
        sleep(Duration::from_secs(2)).await;
    };
    eprintln!(
        "churn: {nodes} nodes, {replaced} replaced ({uploaders_gone} uploaders) over {minutes} \
         simulated minutes in {churned:.0?}; {count} objects, none lost, every one read back \
         byte for byte and {} again; fewest live holders of a chunk counted at a minute's end: \
         {worst}; total {:.0?}",
        tally(&states),
        began.elapsed()
    );
    for node in net.nodes.iter().flatten() {
        node.stop.cancel();
    }
}
