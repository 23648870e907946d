//! The gateway's connections, plain and TLS (HTTP/1.1 and HTTP/2 by ALPN `h2`), accepted by
//! one loop per listener and served on its lanes (`lanes`, a thread per core), under `[limits]`: TLS handshake and header-read deadlines, the
//! request-head size, the client address for per-peer admission, and on HTTP/2 at most
//! [`MAX_STREAMS`] streams per connection and a send deadline on its responses (`held`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ron_transport::TlsAcceptor;
use ron_transport::TlsStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::held::{MAX_STREAMS, Sends};
use crate::lanes::{Lanes, Serve};
use crate::{AppState, router};
use ron_transport::deadline::{Deadlined, Meter};
use ron_transport::limits::{LimitsSection, Peer};

/// What the TLS listener offers in ALPN, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Serves the gateway over plain HTTP on `listener` until `shutdown` is cancelled, then
/// stops accepting and lets requests in flight finish (the caller bounds that with its own
/// deadline).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    accept_loop(listener, None, state, shutdown).await
}

/// Like [`serve`], over TLS; `tls` should offer [`ALPN`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ron_transport::rustls::ServerConfig>,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    accept_loop(listener, Some(TlsAcceptor::from(tls)), state, shutdown).await
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = router(state.clone());
    let lanes = Lanes::start(if tls.is_some() {
        "gateway-tls"
    } else {
        "gateway"
    })?;
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = ron_transport::accept(&listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let limits = state.config.get::<LimitsSection>();
        let (tls, app, watcher) = (tls.clone(), app.clone(), graceful.watcher());
        let ip = peer.ip();
        let meter = Meter::new(state.limiter.clone(), ip);
        let sends = Arc::new(Sends::default());
        let watch = Watch {
            sends: sends.clone(),
            metrics: state.metrics.clone(),
        };
        let serve: Serve = Box::new(move |tcp| {
            Box::pin(async move {
                let app = app.map_request(move |mut req: axum::extract::Request<_>| {
                    req.extensions_mut().insert(Peer(ip));
                    req.extensions_mut().insert(sends.clone());
                    req
                });
                let idle = Duration::from_millis(limits.read_idle_ms);
                match tls {
                    None => {
                        if first_bytes(&tcp, idle).await {
                            Box::pin(connection(tcp, app, &limits, meter, watcher, watch)).await;
                        }
                    }
                    Some(acceptor) => {
                        let handshake = Duration::from_millis(limits.handshake_ms);
                        match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                            Ok(Ok(mut stream)) => {
                                if first_tls_bytes(&mut stream, idle).await {
                                    Box::pin(connection(
                                        stream, app, &limits, meter, watcher, watch,
                                    ))
                                    .await;
                                }
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            })
        });
        tokio::select! {
            () = lanes.hand(tcp, serve) => {}
            () = shutdown.cancelled() => break,
        }
    }
    // Connections finish what they are answering, then the lanes close.
    graceful.shutdown().await;
    drop(lanes);
    Ok(())
}

/// Serves the gateway over HTTP/3 (cargo feature `http3`) until `shutdown` is cancelled,
/// under the same `[limits]` and admission as the TCP listeners.
#[cfg(feature = "http3")]
pub async fn serve_h3(
    listener: ron_transport::h3::H3Listener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let (config, limiter) = (state.config.clone(), state.limiter.clone());
    listener
        .serve(router(state), config, limiter, shutdown)
        .await
}

/// Waits up to `idle` for a new connection's first bytes. hyper allocates its read buffer
/// (8 KiB) as soon as it starts reading, so a connection is handed to it only once its client
/// has something to say: an idle connection costs a few hundred bytes until then.
async fn first_bytes(tcp: &TcpStream, idle: Duration) -> bool {
    matches!(tokio::time::timeout(idle, tcp.readable()).await, Ok(Ok(())))
}

/// [`first_bytes`] after a TLS handshake: request bytes that arrived with the client's last
/// handshake flight are already inside rustls, and the socket may never turn readable again.
async fn first_tls_bytes(stream: &mut TlsStream<TcpStream>, idle: Duration) -> bool {
    let (tcp, tls) = stream.get_mut();
    match tls.process_new_packets() {
        Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => true,
        Ok(_) => first_bytes(tcp, idle).await,
        Err(e) => {
            tracing::debug!(error = %e, "TLS error after the handshake");
            false
        }
    }
}

/// What a connection watches its HTTP/2 responses with (`held`).
struct Watch {
    sends: Arc<Sends>,
    metrics: ron_kernel::metrics::Metrics,
}

async fn connection<I, S>(
    io: I,
    app: S,
    limits: &LimitsSection,
    meter: Meter,
    watcher: hyper_util::server::graceful::Watcher,
    watch: Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::extract::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_ms))
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS);
    let io = Deadlined::new(
        io,
        Duration::from_millis(limits.read_idle_ms),
        Duration::from_millis(limits.write_ms),
    )
    .metered(meter)
    .answering(watch.sends.answering());
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    let write = Duration::from_millis(limits.write_ms);
    tokio::select! {
        ended = watcher.watch(conn.into_owned()) => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // An HTTP/2 response that has not moved for `write_ms` (the client keeps its
        // flow-control window shut) closes the connection and frees what its streams held.
        () = watch.sends.stalled(write) => {
            tracing::debug!(?write, "closing a connection: a response stopped moving");
            watch
                .metrics
                .rejected()
                .get_or_create(&ron_kernel::metrics::ReasonLabel {
                    reason: "send_stalled".to_owned(),
                })
                .inc();
        }
    }
}
