//! `[p2p]`: where the swarm listens and whom it asks first.

use ron_kernel::config::{FieldError, Section, unchanged};
use serde::{Deserialize, Serialize};

/// `[p2p]`. Fixed at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pSection {
    /// Multiaddrs to listen on (default TCP and QUIC on port 7701 on every interface);
    /// `--p2p-listen` replaces them.
    pub listen: Vec<String>,
    /// Peers to join the network through, as multiaddrs (with `/p2p/<id>` when known);
    /// `--bootstrap` adds to them.
    pub bootstrap: Vec<String>,
    /// How long a GET for an object this node lacks may spend finding it on other nodes and
    /// proving its size before it answers 504 (milliseconds, default 10000); the transfer then
    /// runs while it makes progress (a whole-object GET streams it, a HEAD answers at once,
    /// a range request waits for the stored copy). Live.
    pub fetch_timeout_ms: u64,
    /// Bytes per second this node sends one peer (answers are paced past a one-second burst;
    /// 0: unlimited; default 64 MiB/s). Live.
    pub peer_bytes_per_sec: u64,
    /// Budget of the objects fetched from peers (and any other unpinned content): before a
    /// fetched object is stored, the oldest unpinned objects go until it fits; an object over
    /// the whole budget is not fetched (default 8 GiB). Live.
    pub cache_bytes: u64,
    /// Find peers on the local network by multicast DNS (default off: a server's LAN is not
    /// always its network; turn it on for home and office networks). Fixed at start.
    pub mdns: bool,
    /// Relays to be reachable through (multiaddrs ending in `/p2p/<relay id>`), for a node
    /// others cannot dial directly; `--relay` adds to them. Fixed at start.
    pub relays: Vec<String>,
    /// Serve as a relay for other nodes (circuits of up to 10 minutes and 256 MiB; libp2p's
    /// limits on reservations and circuits). Fixed at start.
    pub relay_server: bool,
    /// How often each connected peer is pinged (milliseconds, default 3000, at least 500). A
    /// peer that misses two pings (5 s timeout each) is disconnected, so this sets how soon a
    /// node notices a dead link or a partition, against the pings it sends: one per peer per
    /// interval. Fixed at start.
    pub ping_interval_ms: u64,
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7701".into(),
                "/ip4/0.0.0.0/udp/7701/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            fetch_timeout_ms: 10_000,
            peer_bytes_per_sec: 64 << 20,
            cache_bytes: 8 << 30,
            mdns: false,
            relays: Vec::new(),
            relay_server: false,
            ping_interval_ms: 3000,
        }
    }
}

impl Section for P2pSection {
    const NAME: &'static str = "p2p";

    fn validate(&self) -> Result<(), FieldError> {
        for (field, list) in [
            ("listen", &self.listen),
            ("bootstrap", &self.bootstrap),
            ("relays", &self.relays),
        ] {
            for addr in list {
                addr.parse::<libp2p::Multiaddr>()
                    .map_err(|e| FieldError::new(field, format!("{addr}: {e}")))?;
            }
        }
        if !(100..=600_000).contains(&self.fetch_timeout_ms) {
            return Err(FieldError::new(
                "fetch_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(500..=600_000).contains(&self.ping_interval_ms) {
            return Err(FieldError::new(
                "ping_interval_ms",
                "must be between 500 and 600000",
            ));
        }
        if self.peer_bytes_per_sec != 0 && self.peer_bytes_per_sec < 65_536 {
            return Err(FieldError::new(
                "peer_bytes_per_sec",
                "must be 0 (unlimited) or at least 65536",
            ));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), FieldError> {
        unchanged("listen", &self.listen, &next.listen)?;
        unchanged("bootstrap", &self.bootstrap, &next.bootstrap)?;
        unchanged("mdns", &self.mdns, &next.mdns)?;
        unchanged("relays", &self.relays, &next.relays)?;
        unchanged("relay_server", &self.relay_server, &next.relay_server)?;
        unchanged(
            "ping_interval_ms",
            &self.ping_interval_ms,
            &next.ping_interval_ms,
        )
    }
}

/// Checks that no other process listens on `listen`'s TCP and UDP ports, so a port already in
/// use is a start-up error, as the gateway's is. libp2p binds its listeners with
/// `SO_REUSEPORT`, so without this check two nodes on one machine would silently share a
/// port (and each other's connections). Each address with a fixed port is bound briefly
/// without port sharing; port 0 and non-IP addresses pass.
pub fn check_listen_free(listen: &[String]) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    for text in listen {
        let addr: libp2p::Multiaddr = text.parse().map_err(|e| format!("{text}: {e}"))?;
        let mut parts = addr.iter();
        let ip: std::net::IpAddr = match parts.next() {
            Some(Protocol::Ip4(ip)) => ip.into(),
            Some(Protocol::Ip6(ip)) => ip.into(),
            _ => continue,
        };
        let taken = match parts.next() {
            Some(Protocol::Tcp(port)) if port != 0 => std::net::TcpListener::bind((ip, port)).err(),
            Some(Protocol::Udp(port)) if port != 0 => std::net::UdpSocket::bind((ip, port)).err(),
            _ => None,
        };
        if let Some(e) = taken {
            return Err(format!("cannot listen on {text}: {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod listen_tests {
    use super::check_listen_free;

    #[test]
    fn a_taken_port_is_refused_and_a_free_or_chosen_one_passes() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = check_listen_free(&[format!("/ip4/127.0.0.1/tcp/{port}")]).unwrap_err();
        assert!(err.contains("cannot listen on"), "{err}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(check_listen_free(&[format!("/ip4/127.0.0.1/udp/{uport}/quic-v1")]).is_err());
        drop((held, udp));
        assert!(check_listen_free(&[format!("/ip4/127.0.0.1/tcp/{port}")]).is_ok());
        assert!(check_listen_free(&["/ip4/127.0.0.1/tcp/0".into()]).is_ok());
        assert!(check_listen_free(&["not a multiaddr".into()]).is_err());
    }
}
