//! `ron node`: builds the kernel (config, metrics, bus, health), starts the services under the
//! supervisor, serves the gateway, and shuts down cleanly on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ron_auth::AuthSection;
use ron_kernel::config::{FieldError, KernelSection, Section};
use ron_kernel::health::Duty;
use ron_kernel::{Bus, Config, HealthState, KernelEvent, Metrics, wait_for_ctrl_c};
use serde::{Deserialize, Serialize};
use supervisor::{Policy, Supervisor};
use svc_gateway::{AppState, GatewaySection, StatusExtra};
use svc_index::Index;
use svc_oap::OapSection;
use svc_overlay::{OverlayHandle, OverlaySetup};
use svc_storage::{CpuPool, StorageSection, Store};

use crate::auth::KeyHome;
use crate::logging::{self, LogSection};

/// How often the signing keys are checked for rotation (and for keys rotated by
/// `ron key rotate`).
const KEY_CHECK: Duration = Duration::from_secs(5);

/// Manifests the index keeps in memory.
const INDEX_CACHE: usize = 4096;
/// Commands that may wait for the overlay.
const OVERLAY_QUEUE: usize = 128;
/// Overlay commands run at once.
const OVERLAY_IN_FLIGHT: usize = 256;
/// Uploads accepted at once.
const MAX_UPLOADS: usize = 64;

/// A quiet moment after the last change to the config file before it is reloaded.
const CONFIG_DEBOUNCE: Duration = Duration::from_millis(200);

/// `--data-dir`, shared by `ron node` and the commands that read a node's files.
#[derive(Debug, Args)]
pub(crate) struct DataDirArg {
    /// The node's data dir: its store, keys, `owner.token`, and `ron.toml` when present.
    #[arg(
        long,
        value_name = "DIR",
        env = "RON_DATA_DIR",
        default_value = "./ron-data"
    )]
    pub(crate) data_dir: PathBuf,
}

/// `ron node` flags. Flags override the config file.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Address of the HTTP gateway [config: gateway.listen; default 127.0.0.1:7700].
    #[arg(long, value_name = "ADDR")]
    gateway: Option<SocketAddr>,
    /// Address of the TLS gateway, HTTP/1.1 and HTTP/2 [config: gateway.tls_listen; default
    /// 127.0.0.1:7443]. Needs gateway.tls_cert and tls_key, or --tls-self-signed.
    #[arg(long, value_name = "ADDR")]
    gateway_tls: Option<SocketAddr>,
    /// Serve TLS with a self-signed development certificate, created in `<data dir>/tls/`
    /// on first use (in memory under --amnesia).
    #[arg(long)]
    tls_self_signed: bool,
    /// UDP address of the HTTP/3 gateway, with the TLS gateway's certificate [config:
    /// gateway.h3_listen; off by default]. Needs a `ron` built with `--features http3`.
    #[arg(long, value_name = "ADDR")]
    gateway_h3: Option<SocketAddr>,
    /// Address of the OAP/1 listener (TLS 1.3, ALPN ron/1) [config: oap.listen; default
    /// 127.0.0.1:7702]. Runs whenever the node has a certificate.
    #[arg(long, value_name = "ADDR")]
    oap_listen: Option<SocketAddr>,
    /// A multiaddr for the peer network to listen on, repeatable; replaces p2p.listen
    /// [default TCP and QUIC on port 7701 on every interface].
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    p2p_listen: Vec<svc_dht::Multiaddr>,
    /// A peer to join the network through (its multiaddr, with /p2p/<id>), repeatable; adds
    /// to p2p.bootstrap.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<svc_dht::Multiaddr>,
    /// A relay to be reachable through when other nodes cannot dial this one (its multiaddr,
    /// with /p2p/<id>), repeatable; adds to p2p.relays.
    #[arg(long, value_name = "MULTIADDR")]
    relay: Vec<svc_dht::Multiaddr>,
    #[command(flatten)]
    dir: DataDirArg,
    /// Config file to read instead of `<data dir>/ron.toml` (it must exist).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep everything in memory and write nothing to disk; all data is lost at exit.
    #[arg(long)]
    amnesia: bool,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NodeSection {
    /// How long shutdown waits for services to drain, in milliseconds (default 10000,
    /// 100 to 600000). Live.
    pub(crate) shutdown_deadline_ms: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            shutdown_deadline_ms: 10_000,
        }
    }
}

impl Section for NodeSection {
    const NAME: &'static str = "node";

    fn validate(&self) -> Result<(), FieldError> {
        if !(100..=600_000).contains(&self.shutdown_deadline_ms) {
            return Err(FieldError::new(
                "shutdown_deadline_ms",
                "must be between 100 and 600000",
            ));
        }
        Ok(())
    }
}

/// The config builder for a node's file: every section registered.
fn config_builder(data_dir: &Path, file: Option<&Path>) -> ron_kernel::config::Builder {
    let builder = match file {
        Some(file) => Config::builder().file(file),
        None => Config::builder().optional_file(data_dir.join("ron.toml")),
    };
    builder
        .register::<KernelSection>()
        .register::<GatewaySection>()
        .register::<LogSection>()
        .register::<NodeSection>()
        .register::<StorageSection>()
        .register::<AuthSection>()
        .register::<OapSection>()
        .register::<ron_transport::limits::LimitsSection>()
        .register::<svc_dht::P2pSection>()
        .register::<svc_mailbox::MailSection>()
        .register::<svc_payment::PaymentSection>()
        .register::<svc_accounting::AccountingSection>()
        .register::<supervisor::slo::SloSection>()
}

/// A node's config read by a command that works on its data dir without running it.
pub(crate) fn offline_config(data_dir: &Path, file: Option<&Path>) -> anyhow::Result<Config> {
    Ok(config_builder(data_dir, file).build()?)
}

fn build_config(args: &NodeArgs, metrics: &Metrics) -> anyhow::Result<Config> {
    let mut builder = config_builder(&args.dir.data_dir, args.config.as_deref());
    if let Some(addr) = args.gateway {
        builder = builder.set("gateway.listen", addr.to_string());
    }
    if let Some(addr) = args.oap_listen {
        builder = builder.set("oap.listen", addr.to_string());
    }
    if let Some(addr) = args.gateway_tls {
        builder = builder.set("gateway.tls_listen", addr.to_string());
    }
    if let Some(addr) = args.gateway_h3 {
        builder = builder.set("gateway.h3_listen", addr.to_string());
    }
    Ok(builder.metrics(metrics).build()?)
}

type TlsListener = (
    std::net::TcpListener,
    Arc<ron_transport::rustls::ServerConfig>,
    Arc<ron_transport::LiveCert>,
    CertFiles,
);

/// Where the served certificate and key are read from again when they change.
#[derive(Debug, Clone)]
enum CertFiles {
    /// `gateway.tls_cert` and `tls_key`, as the configuration names them now.
    Configured,
    /// The development certificate in the data dir.
    Dev(std::path::PathBuf, std::path::PathBuf),
    /// A development certificate kept in memory (amnesia): never reloaded.
    Memory,
}

/// The TLS listener, bound, with its configuration: from `gateway.tls_cert`/`tls_key`, or a
/// self-signed development certificate; `None` when neither is asked for.
fn tls_listener(args: &NodeArgs, section: &GatewaySection) -> anyhow::Result<Option<TlsListener>> {
    let (material, files) = match (&section.tls_cert, &section.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), false) => (
            ron_transport::TlsMaterial::from_pem_files(cert, key)?,
            CertFiles::Configured,
        ),
        (Some(_), Some(_), true) => {
            anyhow::bail!("--tls-self-signed and gateway.tls_cert are exclusive")
        }
        (_, _, true) => {
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if !section.tls_listen.ip().is_unspecified() {
                names.push(section.tls_listen.ip().to_string());
            }
            if args.amnesia {
                tracing::info!("self-signed certificate kept in memory (amnesia)");
                (
                    ron_transport::DevCertificate::generate(&names)?.material(),
                    CertFiles::Memory,
                )
            } else {
                let dir = args.dir.data_dir.join("tls");
                let (material, path) = ron_transport::DevCertificate::load_or_create(&dir, &names)?;
                tracing::info!(cert = %path.display(), "TLS with a self-signed certificate");
                (material, CertFiles::Dev(path, dir.join("key.pem")))
            }
        }
        _ => return Ok(None),
    };
    let cert = ron_transport::LiveCert::new(material)?;
    let config = ron_transport::server_config(cert.clone(), &svc_gateway::ALPN)?;
    let listener = bind(section.tls_listen)?;
    Ok(Some((listener, config, cert, files)))
}

/// How often the certificate files are looked at for a change.
const CERT_POLL: Duration = Duration::from_secs(2);

/// Serves a certificate and key changed on disk from the next handshake on, on every TLS
/// listener (HTTPS, OAP/1, HTTP/3), connections already open keeping theirs. A pair that does
/// not load (a certificate written before its key, a key that is not its key) leaves the one
/// served, and is tried again when either file changes.
fn spawn_cert_reload(
    sup: &mut Supervisor,
    config: &Config,
    metrics: &Metrics,
    (cert, files): (Arc<ron_transport::LiveCert>, CertFiles),
) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    if matches!(files, CertFiles::Memory) {
        return;
    }
    let reloads: Family<[(&'static str, &'static str); 1], Counter> = metrics.register(
        "tls_reloads",
        "Certificate reloads, by outcome (ok, failed)",
        Family::default(),
    );
    let expiry: Gauge = metrics.register(
        "tls_cert_not_after_seconds",
        "When the served certificate expires (unix seconds)",
        Gauge::default(),
    );
    expiry.set(cert.not_after());
    let config = config.clone();
    sup.spawn("tls-reload", Duty::Background, move |ctx| {
        let (cert, files, config) = (cert.clone(), files.clone(), config.clone());
        let (reloads, expiry) = (reloads.clone(), expiry.clone());
        async move {
            let paths = || match &files {
                CertFiles::Configured => {
                    let s = config.get::<GatewaySection>();
                    s.tls_cert.clone().zip(s.tls_key.clone())
                }
                CertFiles::Dev(c, k) => Some((c.clone(), k.clone())),
                CertFiles::Memory => None,
            };
            // What the files looked like when last read: their paths, sizes and mtimes.
            let look = |p: &Option<(std::path::PathBuf, std::path::PathBuf)>| {
                p.as_ref().map(|(c, k)| {
                    let meta = |f: &std::path::Path| {
                        std::fs::metadata(f).ok().map(|m| (m.len(), m.modified().ok()))
                    };
                    (c.clone(), k.clone(), meta(c), meta(k))
                })
            };
            let mut seen = look(&paths());
            loop {
                tokio::select! {
                    () = tokio::time::sleep(CERT_POLL) => {}
                    () = ctx.shutdown.cancelled() => return Ok::<(), String>(()),
                }
                let now = look(&paths());
                if now == seen {
                    continue;
                }
                seen = now;
                let Some((c, k)) = paths() else { continue };
                let loaded = ron_transport::TlsMaterial::from_pem_files(&c, &k)
                    .and_then(|material| cert.replace(material));
                match loaded {
                    Ok(()) => {
                        reloads.get_or_create(&[("outcome", "ok")]).inc();
                        expiry.set(cert.not_after());
                        tracing::info!(cert = %c.display(), not_after = cert.not_after(), "serving a new TLS certificate");
                    }
                    Err(e) => {
                        reloads.get_or_create(&[("outcome", "failed")]).inc();
                        tracing::warn!(cert = %c.display(), error = %e, "the changed TLS certificate does not load; still serving the previous one");
                    }
                }
            }
        }
    });
}

/// The HTTP/3 listener's socket, bound, with its certificate: `None` when `h3_listen` is not
/// set; an error when it is set without a certificate.
fn h3_socket(
    section: &GatewaySection,
    tls: Option<&TlsListener>,
) -> anyhow::Result<Option<(std::net::UdpSocket, Arc<ron_transport::LiveCert>)>> {
    let Some(listen) = section.h3_listen else {
        return Ok(None);
    };
    if cfg!(not(feature = "http3")) {
        anyhow::bail!(
            "this ron was built without HTTP/3: build it with `cargo build --features http3`"
        );
    }
    let Some((_, _, cert, _)) = tls else {
        anyhow::bail!(
            "HTTP/3 needs a certificate: set gateway.tls_cert and tls_key, or --tls-self-signed"
        );
    };
    let socket = std::net::UdpSocket::bind(listen)
        .with_context(|| format!("cannot listen on UDP {listen}"))?;
    Ok(Some((socket, cert.clone())))
}

/// Runs the HTTP/3 gateway under the supervisor; returns its address.
#[cfg(feature = "http3")]
fn spawn_h3(
    sup: &mut Supervisor,
    (socket, cert): (std::net::UdpSocket, Arc<ron_transport::LiveCert>),
    state: AppState,
) -> anyhow::Result<SocketAddr> {
    let addr = socket.local_addr()?;
    let crypto = ron_transport::h3::quic_config(cert)?;
    sup.spawn_edge("gateway-h3", Duty::ReadsAndWrites, move |ctx| {
        let (socket, crypto, state) = (socket.try_clone(), crypto.clone(), state.clone());
        async move {
            let limits = state.config.get::<ron_transport::limits::LimitsSection>();
            let listener = ron_transport::h3::H3Listener::new(socket?, crypto, &limits)?;
            svc_gateway::serve_h3(listener, state, ctx.shutdown.clone()).await
        }
    });
    Ok(addr)
}

/// Without the `http3` feature, asking for HTTP/3 is a clear start-up error.
#[cfg(not(feature = "http3"))]
fn spawn_h3(
    _sup: &mut Supervisor,
    _h3: (std::net::UdpSocket, Arc<ron_transport::LiveCert>),
    _state: AppState,
) -> anyhow::Result<SocketAddr> {
    anyhow::bail!("this ron was built without HTTP/3: build it with `cargo build --features http3`")
}

fn bind(listen: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The listeners a node serves on, bound before anything runs so a taken port is a clear
/// start-up error.
struct Listeners {
    gateway: std::net::TcpListener,
    tls: Option<TlsListener>,
    oap: Option<(
        std::net::TcpListener,
        Arc<ron_transport::rustls::ServerConfig>,
    )>,
    h3: Option<(std::net::UdpSocket, Arc<ron_transport::LiveCert>)>,
}

/// Where the node ended up listening, printed for scripts and tests.
struct Bound {
    gateway: SocketAddr,
    tls: Option<SocketAddr>,
    oap: Option<SocketAddr>,
    h3: Option<SocketAddr>,
}

/// Creates the data dir as a folder only this user may enter (0700), or tightens an existing
/// one (`true`): it holds keys, tokens and every object, some perhaps protected
/// (`auth.protect_reads`).
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data dir {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("cannot make data dir {} private", dir.display()))?;
        return Ok(true);
    }
    Ok(false)
}

/// Runs a node until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let tightened = !args.amnesia && private_data_dir(&args.dir.data_dir)?;
    let metrics = Metrics::new();
    let config = build_config(&args, &metrics)?;
    let log = Arc::new(logging::init(&config.get::<LogSection>())?);
    if tightened {
        tracing::info!(dir = %args.dir.data_dir.display(), "the data dir was open to other users: now 0700");
    }
    let bus = Bus::new(config.get::<KernelSection>().bus_capacity);
    bus.register_metrics(&metrics);
    let health = HealthState::new();
    let store = open_store(&args)?;
    let listeners = bind_listeners(&args, &config)?;
    let auth = open_auth(&args, &config)?;
    let limiter = Arc::new(ron_transport::limits::Limiter::default());
    limiter.apply(&config.get::<ron_transport::limits::LimitsSection>());

    let mut sup = Supervisor::new(
        bus.clone(),
        metrics.clone(),
        health.clone(),
        Policy::default(),
    );
    store.set_min_free(config.get::<StorageSection>().min_free_bytes);
    spawn_config_watch(&mut sup, &config, &bus, &log, &auth, (&limiter, &store));
    spawn_key_rotation(&mut sup, &args, &config, &auth, &limiter);
    let payment = spawn_payment(&mut sup, &args, &config, &metrics)?;
    payment.set_identity(auth.identity().keypair());
    let settle: Arc<dyn svc_dht::Settle> = Arc::new(crate::p2p::NodeSettle {
        payment: payment.clone(),
    });
    let (dht_tx, dht_mailbox) = supervisor::mailbox(svc_dht::MAILBOX);
    // The node's circuit breakers: the disk's (the overlay's), the DHT's and each peer's.
    let circuits = supervisor::Board::default();
    circuits.register_metrics(&metrics);
    let dht = svc_dht::DhtHandle::new(dht_tx, auth.identity().keypair().public().to_peer_id())
        .settling(settle.clone())
        .guarded_by(&circuits);
    dht.metrics().register(&metrics);
    let names = svc_index::Names::new(store.clone(), Some(dht.clone()));
    spawn_name_upkeep(&mut sup, &names);
    // The storage tally asks the store which uploads it still holds.
    let stored = store.clone();
    let overlay = spawn_overlay(
        &mut sup,
        store,
        (&config, &circuits),
        dht.clone(),
        &metrics,
        &auth,
    );
    // The swarm's events: discovery keeps its peer table from them, the guard hears of
    // departures.
    let (peer_events, _) = tokio::sync::broadcast::channel(1024);
    spawn_guard(&mut sup, &overlay, &bus, &peer_events);
    spawn_storage_upkeep(&mut sup, &overlay, &config);
    let mail = spawn_mailbox(&mut sup, &args, &config, &dht, &metrics)?;
    let accounting = spawn_accounting(&mut sup, &args, &config, &payment)?;
    accounting.set_stored(Arc::new(crate::p2p::NodeStored(stored)));
    let source: Arc<dyn svc_dht::Source> = Arc::new(crate::p2p::NodeSource {
        overlay: overlay.peer_source(),
        mail: mail.clone(),
    });
    let p2p_status = spawn_peer_network(
        &mut sup,
        &args,
        &config,
        &auth,
        &dht,
        dht_mailbox,
        (source, settle),
        &metrics,
        peer_events,
    )?;
    // The SLOs, measured by the edges; the watch degrades the node while one burns.
    let slo = supervisor::slo::Meter::default();
    slo.register_metrics(&metrics);
    crate::degrade::spawn(
        &mut sup,
        crate::degrade::Watched {
            config: config.clone(),
            meter: slo.clone(),
            limiter: limiter.clone(),
            dht: dht.clone(),
            overlay: overlay.clone(),
            overlay_queue: OVERLAY_QUEUE,
            health: health.clone(),
            bus: bus.clone(),
        },
    );
    let state = AppState {
        p2p_status: Some(p2p_status),
        circuits,
        slo,
        limiter,
        auth,
        traffic: svc_gateway::Traffic::new(&metrics),
        metrics,
        health: health.clone(),
        config: config.clone(),
        started,
        extra: StatusExtra {
            version: env!("CARGO_PKG_VERSION"),
            gateway: listeners.gateway.local_addr()?,
        },
        overlay,
        names,
        mail: Some(mail),
        payment: Some(payment),
        accounting: Some(accounting),
    };
    if let Some((_, _, cert, files)) = &listeners.tls {
        spawn_cert_reload(
            &mut sup,
            &config,
            &state.metrics,
            (cert.clone(), files.clone()),
        );
    }
    let bound = spawn_edges(&mut sup, listeners, state)?;
    health.mark_started();
    announce_started(&args, &config, &bound);

    wait_for_ctrl_c().await;
    tracing::info!("shutting down: no new requests, draining");
    health.mark_stopping();
    // Told while every subscriber still listens; then the edges drain what they are
    // answering, and only then do the services behind them stop.
    bus.publish(KernelEvent::Shutdown);
    let deadline = Duration::from_millis(config.get::<NodeSection>().shutdown_deadline_ms);
    let drained = sup.shutdown(deadline).await;
    tracing::info!(drained, "node stopped");
    log.flush().await;
    Ok(())
}

fn open_store(args: &NodeArgs) -> anyhow::Result<Store> {
    if args.amnesia {
        tracing::info!("amnesia: everything stays in memory and is lost at exit");
        return Ok(Store::in_memory_with(CpuPool::default())?);
    }
    let dir = args.dir.data_dir.join("store");
    Store::open(&dir, CpuPool::default())
        .with_context(|| format!("cannot open the store in {}", dir.display()))
}

fn bind_listeners(args: &NodeArgs, config: &Config) -> anyhow::Result<Listeners> {
    let gateway = bind(config.get::<GatewaySection>().listen)?;
    let tls = tls_listener(args, &config.get::<GatewaySection>())?;
    let oap = match &tls {
        Some((_, _, cert, _)) => {
            let section = config.get::<OapSection>();
            let tls = ron_transport::server_config(cert.clone(), &[svc_oap::ALPN])?;
            Some((bind(section.listen)?, tls))
        }
        None => None,
    };
    let h3 = h3_socket(&config.get::<GatewaySection>(), tls.as_ref())?;
    Ok(Listeners {
        gateway,
        tls,
        oap,
        h3,
    })
}

fn key_home(args: &NodeArgs) -> KeyHome<'_> {
    if args.amnesia {
        KeyHome::Memory
    } else {
        KeyHome::Dir(&args.dir.data_dir)
    }
}

fn open_auth(args: &NodeArgs, config: &Config) -> anyhow::Result<Arc<ron_auth::Auth>> {
    let home = key_home(args);
    let (auth, rotated) = crate::auth::open(&home, &config.get::<AuthSection>())?;
    crate::auth::issue_owner_token(&auth, &home, rotated)?;
    tracing::info!(node_id = auth.node_id(), "identity");
    Ok(Arc::new(auth))
}

/// The config watcher, and the services' live settings applied on every new version.
fn spawn_config_watch(
    sup: &mut Supervisor,
    config: &Config,
    bus: &Bus,
    log: &Arc<logging::LogControl>,
    auth: &Arc<ron_auth::Auth>,
    (limiter, store): (&Arc<ron_transport::limits::Limiter>, &Store),
) {
    let (config, bus, log, auth) = (config.clone(), bus.clone(), log.clone(), auth.clone());
    let (limiter, store) = (limiter.clone(), store.clone());
    sup.spawn("config", Duty::Background, move |ctx| {
        let (config, bus, log, auth) = (config.clone(), bus.clone(), log.clone(), auth.clone());
        let (limiter, store) = (limiter.clone(), store.clone());
        async move {
            let mut events = bus.subscribe();
            let apply_live_settings = async {
                while let Some(event) = events.recv().await {
                    if let KernelEvent::ConfigUpdated { .. } = event {
                        log.apply(&config.get::<LogSection>());
                        auth.apply(&config.get::<AuthSection>());
                        limiter.apply(&config.get::<ron_transport::limits::LimitsSection>());
                        store.set_min_free(config.get::<StorageSection>().min_free_bytes);
                    }
                }
            };
            tokio::select! {
                watched = config.watch(&bus, CONFIG_DEBOUNCE) => watched.map_err(|e| e.to_string()),
                () = apply_live_settings => Ok(()),
                () = ctx.shutdown.cancelled() => Ok(()),
            }
        }
    });
}

/// Signing-key rotation (and keys rotated by `ron key rotate`), with the owner token
/// reissued on rotation.
fn spawn_key_rotation(
    sup: &mut Supervisor,
    args: &NodeArgs,
    config: &Config,
    auth: &Arc<ron_auth::Auth>,
    limiter: &Arc<ron_transport::limits::Limiter>,
) {
    let (auth, config, limiter) = (auth.clone(), config.clone(), limiter.clone());
    let (data_dir, amnesia) = (args.dir.data_dir.clone(), args.amnesia);
    sup.spawn("auth-keys", Duty::Background, move |ctx| {
        let (auth, config, data_dir) = (auth.clone(), config.clone(), data_dir.clone());
        let limiter = limiter.clone();
        async move {
            // Config updates reach `auth` through the bus at once; this catches one a
            // lagging subscriber missed.
            let mut applied = config.version();
            let home = if amnesia {
                KeyHome::Memory
            } else {
                KeyHome::Dir(&data_dir)
            };
            loop {
                tokio::select! {
                    () = tokio::time::sleep(KEY_CHECK) => {}
                    () = ctx.shutdown.cancelled() => return Ok::<(), String>(()),
                }
                if config.version() != applied {
                    applied = config.version();
                    auth.apply(&config.get::<AuthSection>());
                    limiter.apply(&config.get::<ron_transport::limits::LimitsSection>());
                }
                let done = auth
                    .maintain(ron_auth::unix_now())
                    .map_err(|e| e.to_string())?;
                if done.rotated {
                    crate::auth::issue_owner_token(&auth, &home, true)
                        .map_err(|e| format!("{e:#}"))?;
                }
            }
        }
    });
}

/// The overlay actor under the supervisor, over the store, with the peer network.
fn spawn_overlay(
    sup: &mut Supervisor,
    store: Store,
    (config, circuits): (&Config, &supervisor::Board),
    dht: svc_dht::DhtHandle,
    metrics: &Metrics,
    auth: &Arc<ron_auth::Auth>,
) -> OverlayHandle {
    let index = Index::new(store.clone(), INDEX_CACHE);
    let (tx, mailbox) = supervisor::mailbox(OVERLAY_QUEUE);
    let limits = config.clone();
    let overlay = OverlayHandle::new(OverlaySetup {
        tx,
        store: store.clone(),
        index: index.clone(),
        max_uploads: MAX_UPLOADS,
        config: config.clone(),
        max_object: Arc::new(move || limits.get::<GatewaySection>().max_put_bytes),
        dht: Some(dht),
        // One authority for reads: what HTTP serves only with a token, no peer is served.
        peers_may_read: {
            let auth = auth.clone();
            Arc::new(move || !auth.requires_token(ron_auth::token::Op::Get))
        },
        circuits: circuits.clone(),
        disk_circuit: OverlaySetup::DISK_CIRCUIT,
    });
    overlay.register_metrics(metrics);
    sup.spawn_actor(
        "overlay",
        Duty::ReadsAndWrites,
        mailbox,
        move |ctx, mailbox| {
            svc_overlay::run(
                ctx.shutdown,
                mailbox,
                store.clone(),
                index.clone(),
                OVERLAY_IN_FLIGHT,
            )
        },
    );
    overlay
}

/// Announces what the store holds at start, then every `storage.gc_interval_s` removes what
/// the owner unpinned and keeps the fetch cache within its budget.
fn spawn_storage_upkeep(sup: &mut Supervisor, overlay: &OverlayHandle, config: &Config) {
    let (overlay, config) = (overlay.clone(), config.clone());
    sup.spawn("storage-gc", Duty::Background, move |ctx| {
        let (overlay, config) = (overlay.clone(), config.clone());
        async move {
            tokio::select! {
                () = overlay.announce_all() => {}
                () = ctx.shutdown.cancelled() => return Ok::<(), String>(()),
            }
            loop {
                let every = Duration::from_secs(config.get::<StorageSection>().gc_interval_s);
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = ctx.shutdown.cancelled() => return Ok(()),
                }
                match overlay.collect().await {
                    Ok(report) if report.objects > 0 => tracing::info!(
                        objects = report.objects,
                        chunks = report.chunks,
                        bytes = report.bytes,
                        "collected garbage"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot collect garbage"),
                }
            }
        }
    });
}

/// How often the names this node published are stored on peers again (their copies expire,
/// and a node that was alone when it published reached nobody).
const REPUBLISH_NAMES: Duration = Duration::from_secs(30 * 60);

/// The durability guard: places the shards of protected uploads, renews their leases and
/// repairs what was lost (`svc_overlay::guard`).
fn spawn_guard(
    sup: &mut Supervisor,
    overlay: &OverlayHandle,
    bus: &Bus,
    events: &tokio::sync::broadcast::Sender<svc_dht::PeerEvent>,
) {
    let (overlay, bus, events) = (overlay.clone(), bus.clone(), events.clone());
    sup.spawn("durability", Duty::Background, move |ctx| {
        svc_overlay::guard(
            overlay.clone(),
            bus.clone(),
            Some(events.subscribe()),
            ctx.shutdown.clone(),
        )
    });
}

/// The mailbox service under the supervisor: its store is `<data dir>/mail.redb` (in memory
/// under `--amnesia`).
fn spawn_mailbox(
    sup: &mut Supervisor,
    args: &NodeArgs,
    config: &Config,
    dht: &svc_dht::DhtHandle,
    metrics: &Metrics,
) -> anyhow::Result<svc_mailbox::Mailbox> {
    let queues = if args.amnesia {
        svc_mailbox::queue::Queues::in_memory()?
    } else {
        let path = args.dir.data_dir.join("mail.redb");
        svc_mailbox::queue::Queues::open(&path)
            .with_context(|| format!("cannot open the mailbox store {}", path.display()))?
    };
    let mail = svc_mailbox::Mailbox::new(queues, config.clone(), Some(dht.clone()));
    mail.register_metrics(metrics);
    let service = mail.clone();
    sup.spawn("mailbox", Duty::Background, move |ctx| {
        service.clone().run(ctx.shutdown)
    });
    Ok(mail)
}

/// The payment service under the supervisor: its ledger is `<data dir>/ledger.redb` (in
/// memory under `--amnesia`).
fn spawn_payment(
    sup: &mut Supervisor,
    args: &NodeArgs,
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<svc_payment::Payment> {
    let ledger = if args.amnesia {
        svc_payment::ledger::Ledger::in_memory()?
    } else {
        let path = args.dir.data_dir.join("ledger.redb");
        svc_payment::ledger::Ledger::open(&path)
            .with_context(|| format!("cannot open the ledger {}", path.display()))?
    };
    let payment = svc_payment::Payment::new(ledger, config.clone());
    payment.metrics().register(metrics);
    let service = payment.clone();
    sup.spawn("payment", Duty::Background, move |ctx| {
        service.clone().run(ctx.shutdown)
    });
    Ok(payment)
}

/// The accounting service under the supervisor: its rollups are `<data dir>/usage.redb` (in
/// memory under `--amnesia`).
fn spawn_accounting(
    sup: &mut Supervisor,
    args: &NodeArgs,
    config: &Config,
    payment: &svc_payment::Payment,
) -> anyhow::Result<svc_accounting::Accounting> {
    let rollups = if args.amnesia {
        svc_accounting::rollup::Rollups::in_memory()?
    } else {
        let path = args.dir.data_dir.join("usage.redb");
        svc_accounting::rollup::Rollups::open(&path)
            .with_context(|| format!("cannot open the usage rollups {}", path.display()))?
    };
    let accounting =
        svc_accounting::Accounting::new(rollups, Some(payment.clone()), config.clone());
    let service = accounting.clone();
    sup.spawn("accounting", Duty::Background, move |ctx| {
        service.clone().run(ctx.shutdown)
    });
    Ok(accounting)
}

/// Publishes the names this node keeps again: soon after start (once peers are likely
/// connected), then every [`REPUBLISH_NAMES`].
fn spawn_name_upkeep(sup: &mut Supervisor, names: &svc_index::Names) {
    let names = names.clone();
    sup.spawn("names", Duty::Background, move |ctx| {
        let names = names.clone();
        async move {
            let mut wait = Duration::from_secs(5);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = ctx.shutdown.cancelled() => return Ok::<(), String>(()),
                }
                let done = names.republish().await;
                if done > 0 {
                    tracing::debug!(names = done, "published names again");
                }
                wait = REPUBLISH_NAMES;
            }
        }
    });
}

/// The swarm's actor and discovery under the supervisor; returns the peer network's part of
/// `/status`.
#[allow(clippy::too_many_arguments)] // the node's parts this wiring needs, each once
fn spawn_peer_network(
    sup: &mut Supervisor,
    args: &NodeArgs,
    config: &Config,
    auth: &ron_auth::Auth,
    dht: &svc_dht::DhtHandle,
    mailbox: supervisor::Mailbox<svc_dht::Command>,
    (source, settle): (Arc<dyn svc_dht::Source>, Arc<dyn svc_dht::Settle>),
    metrics: &Metrics,
    events: tokio::sync::broadcast::Sender<svc_dht::PeerEvent>,
) -> anyhow::Result<svc_gateway::PeerStatus> {
    let mut section = (*config.get::<svc_dht::P2pSection>()).clone();
    if !args.p2p_listen.is_empty() {
        section.listen = args.p2p_listen.iter().map(ToString::to_string).collect();
    }
    // A port another process holds is a start-up error here, not a restart loop later.
    svc_dht::check_listen_free(&section.listen).map_err(anyhow::Error::msg)?;
    section
        .relays
        .extend(args.relay.iter().map(ToString::to_string));
    // The peer table: the peers that answered before, recently good first, join the
    // bootstrap list; discovery keeps it from the swarm's events.
    let table = Arc::new(if args.amnesia {
        svc_discovery::PeerTable::in_memory()
    } else {
        svc_discovery::PeerTable::open(&args.dir.data_dir.join("peers.redb"))
    }?);
    let seeds = table.seeds(16, svc_discovery::unix_now())?;
    if !seeds.is_empty() {
        tracing::info!(seeds = seeds.len(), "bootstrapping from the peer table too");
    }
    let mut bootstrap = args.bootstrap.clone();
    bootstrap.extend(svc_discovery::seed_addrs(&seeds));
    let setup = svc_dht::Setup {
        keypair: auth.identity().keypair().clone(),
        config: config.clone(),
        section,
        bootstrap,
        source,
        metrics: dht.metrics().clone(),
        events: Some(events.clone()),
        // Peers' records are kept only when they are valid names, layout pointers or mail
        // records, never older than held.
        records: Arc::new(crate::p2p::NodeRecords),
        settle: Some(settle),
    };
    sup.spawn_actor("dht", Duty::Background, mailbox, move |ctx, mailbox| {
        svc_dht::run(ctx.shutdown, mailbox, setup.clone())
    });
    let (updates, _) = tokio::sync::broadcast::channel(svc_discovery::UPDATES);
    crate::p2p::count_known(metrics, &table, updates.subscribe());
    {
        let (table, dht) = (table.clone(), dht.clone());
        sup.spawn("discovery", Duty::Background, move |ctx| {
            svc_discovery::run(
                ctx.shutdown,
                table.clone(),
                events.subscribe(),
                updates.clone(),
                dht.clone(),
            )
        });
    }
    Ok(crate::p2p::status(dht.clone(), table))
}

/// The edges under the supervisor: the HTTP gateway, and with a certificate the TLS gateway,
/// the OAP/1 listener and HTTP/3.
fn spawn_edges(
    sup: &mut Supervisor,
    listeners: Listeners,
    state: AppState,
) -> anyhow::Result<Bound> {
    let Listeners {
        gateway,
        tls,
        oap,
        h3,
    } = listeners;
    let bound = gateway.local_addr()?;
    {
        let state = state.clone();
        sup.spawn_edge("gateway", Duty::ReadsAndWrites, move |ctx| {
            let (listener, state) = (gateway.try_clone(), state.clone());
            async move {
                let listener = tokio::net::TcpListener::from_std(listener?)?;
                svc_gateway::serve(listener, state, ctx.shutdown.clone()).await
            }
        });
    }
    let oap = match oap {
        Some((listener, tls_config)) => Some(spawn_oap(sup, listener, tls_config, &state)?),
        None => None,
    };
    let tls = match tls {
        Some((listener, tls_config, _, _)) => {
            let addr = listener.local_addr()?;
            let state = state.clone();
            sup.spawn_edge("gateway-tls", Duty::ReadsAndWrites, move |ctx| {
                let (listener, state, tls_config) =
                    (listener.try_clone(), state.clone(), tls_config.clone());
                async move {
                    let listener = tokio::net::TcpListener::from_std(listener?)?;
                    svc_gateway::serve_tls(listener, tls_config, state, ctx.shutdown.clone()).await
                }
            });
            Some(addr)
        }
        None => None,
    };
    let h3 = match h3 {
        Some(h3) => Some(spawn_h3(sup, h3, state)?),
        None => None,
    };
    Ok(Bound {
        gateway: bound,
        tls,
        oap,
        h3,
    })
}

fn spawn_oap(
    sup: &mut Supervisor,
    listener: std::net::TcpListener,
    tls_config: Arc<ron_transport::rustls::ServerConfig>,
    state: &AppState,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let section = state.config.get::<OapSection>();
    let oap_state = svc_oap::OapState {
        overlay: state.overlay.clone(),
        auth: state.auth.clone(),
        max_frame: section.max_frame,
        max_inflight: section.max_inflight,
        version: env!("CARGO_PKG_VERSION"),
        config: state.config.clone(),
        limiter: state.limiter.clone(),
        metrics: state.metrics.clone(),
        mail: state.mail.clone(),
        payment: state.payment.clone(),
        accounting: state.accounting.clone(),
    };
    sup.spawn_edge("oap", Duty::ReadsAndWrites, move |ctx| {
        let (listener, state, tls_config) =
            (listener.try_clone(), oap_state.clone(), tls_config.clone());
        async move {
            let listener = tokio::net::TcpListener::from_std(listener?)?;
            svc_oap::serve(listener, tls_config, state, ctx.shutdown.clone()).await
        }
    });
    Ok(addr)
}

/// The log line, and the lines a script (or a test) reads to find the node.
fn announce_started(args: &NodeArgs, config: &Config, bound: &Bound) {
    let gateway = bound.gateway;
    tracing::info!(%gateway, data_dir = %args.dir.data_dir.display(), config_version = config.version(), "node started");
    println!("ron node: gateway http://{gateway}");
    if let Some(addr) = bound.tls {
        println!("ron node: gateway https://{addr}");
    }
    if let Some(addr) = bound.oap {
        println!("ron node: oap {addr}");
    }
    if let Some(addr) = bound.h3 {
        println!("ron node: gateway h3 https://{addr}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

    /// The README's sample `ron.toml` is a file a user can copy: it parses, every section
    /// and field is known, every value validates.
    #[test]
    fn the_readme_sample_config_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n[kernel]").unwrap() + "```toml\n".len();
        let sample = &readme[start..];
        let sample = &sample[..sample.find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ron.toml");
        std::fs::write(&file, sample).unwrap();
        let config = super::offline_config(dir.path(), Some(&file)).unwrap();
        let limits = config.get::<ron_transport::limits::LimitsSection>();
        assert_eq!(*limits, ron_transport::limits::LimitsSection::default());
    }
}
