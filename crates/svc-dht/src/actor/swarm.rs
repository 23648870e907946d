//! Building the swarm: transports (TCP with TLS 1.3 or Noise, Yamux; QUIC; the relay
//! client), the behaviours and their settings, the listeners, and the parsed bootstrap and
//! relay addresses.

use super::*;

/// A built swarm, listening, with the bootstrap addresses and the relays to listen through.
type Built = (libp2p::Swarm<Behaviour>, Vec<Multiaddr>, Vec<Multiaddr>);

/// The node's swarm, listening, with the bootstrap and relay addresses of `section`.
pub(super) fn build(
    keypair: libp2p::identity::Keypair,
    section: &P2pSection,
) -> Result<Built, String> {
    let (use_mdns, relay_server) = (section.mdns, section.relay_server);
    let ping_every = Duration::from_millis(section.ping_interval_ms);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            // TLS 1.3 first (AES-GCM: a fraction of Noise's ChaCha20 per byte), Noise for
            // peers without it (decision 0012).
            (tls::Config::new, noise::Config::new),
            muxer,
        )
        .map_err(|e| e.to_string())?
        .with_quic_config(|mut config| {
            // QUIC's own keep-alive paced by the ping: a packet per connection every 5 s
            // at the default interval, fewer when pings are rarer (thousands of idle
            // connections on one host otherwise spend its cores on keep-alives).
            let keep_alive = ping_every.div_f64(2.0).max(QUIC_KEEP_ALIVE);
            config.keep_alive_interval = keep_alive;
            config.max_idle_timeout =
                u32::try_from((keep_alive * 2).as_millis()).unwrap_or(u32::MAX);
            config
        })
        .with_relay_client((tls::Config::new, noise::Config::new), muxer)
        .map_err(|e| e.to_string())?
        .with_behaviour(|key, relay_client| {
            let id = key.public().to_peer_id();
            let store = kad::store::MemoryStore::with_config(
                id,
                kad::store::MemoryStoreConfig {
                    max_records: RECORDS,
                    max_provided_keys: RECORDS,
                    ..Default::default()
                },
            );
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?)
            } else {
                None
            };
            Ok(Behaviour {
                kad: kad::Behaviour::with_config(id, store, kad_config()),
                // Peers hear of new listen addresses (a relay reservation) as they appear.
                identify: identify::Behaviour::new(
                    identify::Config::new("/ron/1".into(), key.public())
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(ping_every)
                        .with_timeout(PING_TIMEOUT),
                ),
                mdns: Toggle::from(mdns),
                relay_client,
                relay: Toggle::from(relay_server.then(|| {
                    relay::Behaviour::new(
                        id,
                        relay::Config {
                            max_circuit_duration: CIRCUIT_DURATION,
                            max_circuit_bytes: CIRCUIT_BYTES,
                            ..relay::Config::default()
                        },
                    )
                })),
                dcutr: dcutr::Behaviour::new(id),
                autonat: autonat::Behaviour::new(id, autonat::Config::default()),
                transfer: request_response::Behaviour::with_codec(
                    TransferCodec,
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(REQUEST_TIMEOUT)
                        .with_max_concurrent_streams(SERVING),
                ),
            })
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    // Answer DHT queries from the start: on loopback and private networks nothing would
    // confirm an external address, and a node in client mode serves nobody.
    swarm.behaviour_mut().kad.set_mode(Some(Mode::Server));
    // An operator who turned the relay on wants it on: libp2p would wait for a confirmed
    // external address first, which loopback and private networks never produce.
    if let Some(relay) = swarm.behaviour_mut().relay.as_mut() {
        relay.set_status(Some(relay::Status::Enable));
    }
    for addr in &section.listen {
        let addr: Multiaddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        swarm
            .listen_on(addr.clone())
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    let mut bootstrap: Vec<Multiaddr> = Vec::new();
    for addr in &section.bootstrap {
        bootstrap.push(addr.parse().map_err(|e| format!("{addr}: {e}"))?);
    }
    // Reachable through each relay: a reservation there (the relay client dials the relay),
    // announced as a listen address `<relay>/p2p-circuit/p2p/<this node>`.
    let mut relays = Vec::new();
    for relay in &section.relays {
        relays.push(
            relay
                .parse::<Multiaddr>()
                .map_err(|e| format!("{relay}: {e}"))?,
        );
    }
    Ok((swarm, bootstrap, relays))
}

/// Yamux for TCP and relayed connections, writing data frames of up to [`YAMUX_FRAME`] bytes.
pub(super) fn muxer() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_split_send_size(YAMUX_FRAME);
    config
}

/// Kademlia's configuration: what peers send to be stored (records and provider records) is
/// handed to the actor first, which keeps only what the node's policy accepts.
fn kad_config() -> kad::Config {
    let mut config = kad::Config::new(kad::PROTOCOL_NAME);
    config.set_record_filtering(kad::StoreInserts::FilterBoth);
    // The routing table is refreshed by libp2p: every five minutes, and whenever it holds
    // fewer than 20 peers (every query refreshes the buckets it passes through too).
    config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
    config
}
