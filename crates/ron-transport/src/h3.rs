//! HTTP/3 (cargo feature `http3`): QUIC through quinn, HTTP/3 framing through h3, the same
//! tower service as the TCP listeners, and the same `[limits]`: handshake and header-read
//! deadlines, `read_idle_ms` as QUIC's idle timeout, `per_peer_streams` as the streams a
//! connection may open, `max_header_bytes` as the largest header section, `write_ms` on every
//! send, and the client address's byte rate (its bytes are charged to the shared
//! [`Limiter`], and its requests carry [`Peer`] for admission).
//!
//! [`request`] is a minimal client (one request on a new connection) for tests and tooling.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h3::server::{RequestResolver, RequestStream};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use ron_kernel::config::Config;
use tokio::time::{Sleep, sleep, timeout};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::deadline::Meter;
use crate::limits::{Limiter, LimitsSection, Peer};
use crate::{TlsError, provider};

/// The ALPN protocol id of HTTP/3.
pub const ALPN: &[u8] = b"h3";

fn tls_error(e: impl ToString) -> TlsError {
    TlsError::Config(e.to_string())
}

/// QUIC's TLS configuration: TLS 1.3 only (QUIC has no other), ring, ALPN `h3`, serving
/// whatever `cert` holds at each handshake.
pub fn quic_config(cert: Arc<crate::LiveCert>) -> Result<Arc<QuicServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    QuicServerConfig::try_from(tls)
        .map(Arc::new)
        .map_err(tls_error)
}

/// The QUIC settings for new connections under `limits`.
fn server_config(crypto: &Arc<QuicServerConfig>, limits: &LimitsSection) -> quinn::ServerConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(
        quinn::IdleTimeout::try_from(Duration::from_millis(limits.read_idle_ms)).ok(),
    );
    let streams = match limits.per_peer_streams {
        0 => 100, // quinn's default
        n => n,
    };
    transport.max_concurrent_bidi_streams(streams.into());
    let mut config = quinn::ServerConfig::with_crypto(crypto.clone());
    config.transport_config(Arc::new(transport));
    config
}

/// An HTTP/3 listener on one UDP socket.
pub struct H3Listener {
    endpoint: quinn::Endpoint,
    crypto: Arc<QuicServerConfig>,
    applied: LimitsSection,
}

impl H3Listener {
    /// Listens on `socket` (call inside a tokio runtime) with `crypto` from [`quic_config`].
    pub fn new(
        socket: UdpSocket,
        crypto: Arc<QuicServerConfig>,
        limits: &LimitsSection,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config(&crypto, limits)),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Self {
            endpoint,
            crypto,
            applied: limits.clone(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves `service` until `shutdown` is cancelled; then stops accepting, lets requests in
    /// flight finish (the caller bounds the wait) and closes the connections. `[limits]` is
    /// read from `config` for each new connection.
    pub async fn serve<S, B>(
        mut self,
        service: S,
        config: Config,
        limiter: Arc<Limiter>,
        shutdown: CancellationToken,
    ) -> io::Result<()>
    where
        S: Service<Request<H3Body>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let requests = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
                () = shutdown.cancelled() => break,
            };
            let limits = config.get::<LimitsSection>();
            if *limits != self.applied {
                // For the connections after this one.
                self.endpoint
                    .set_server_config(Some(server_config(&self.crypto, &limits)));
                self.applied = (*limits).clone();
            }
            let (service, limiter, requests) = (service.clone(), limiter.clone(), requests.clone());
            tokio::spawn(async move {
                connection(incoming, service, &limits, limiter, requests).await;
            });
        }
        self.endpoint.set_server_config(None);
        requests.close();
        requests.wait().await;
        self.endpoint.close(0u32.into(), b"shutting down");
        self.endpoint.wait_idle().await;
        Ok(())
    }
}

async fn connection<S, B>(
    incoming: quinn::Incoming,
    service: S,
    limits: &LimitsSection,
    limiter: Arc<Limiter>,
    requests: TaskTracker,
) where
    S: Service<Request<H3Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let handshake = Duration::from_millis(limits.handshake_ms);
    let conn = match timeout(handshake, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return tracing::debug!(error = %e, "QUIC handshake failed"),
        Err(_) => return tracing::debug!("QUIC handshake timed out"),
    };
    let ip = conn.remote_address().ip();
    let built = h3::server::builder()
        .max_field_section_size(limits.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(e) => return tracing::debug!(error = %e, "HTTP/3 connection setup failed"),
    };
    let header_read = Duration::from_millis(limits.header_read_ms);
    let write_stall = Duration::from_millis(limits.write_ms);
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let (service, limiter) = (service.clone(), limiter.clone());
                requests.spawn(async move {
                    request_stream(resolver, service, ip, limiter, header_read, write_stall).await;
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/3 connection ended");
                break;
            }
        }
    }
}

async fn request_stream<S, B>(
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    service: S,
    ip: IpAddr,
    limiter: Arc<Limiter>,
    header_read: Duration,
    write_stall: Duration,
) where
    S: Service<Request<H3Body>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display + Send,
{
    let (req, stream) = match timeout(header_read, resolver.resolve_request()).await {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(e)) => return tracing::debug!(error = %e, "bad HTTP/3 request"),
        Err(_) => return tracing::debug!("HTTP/3 request headers timed out"),
    };
    let (mut send, recv) = stream.split();
    let mut req = req.map(|()| H3Body {
        recv,
        meter: Meter::new(limiter.clone(), ip),
        pause: None,
        done: false,
    });
    req.extensions_mut().insert(Peer(ip));
    let response = match service.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let head = Response::from_parts(parts, ());
    if !matches!(
        timeout(write_stall, send.send_response(head)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let mut meter = Meter::new(limiter, ip);
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "response body failed");
                return send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: the gateway sends none
        };
        let n = data.len();
        if !matches!(timeout(write_stall, send.send_data(data)).await, Ok(Ok(()))) {
            // The client stopped reading (or went away): give up the stream.
            return send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        }
        if let Some(pause) = meter.add(n) {
            sleep(pause).await;
        }
    }
    let _ = timeout(write_stall, send.finish()).await;
}

/// A request body arriving on an HTTP/3 stream, metered against its client address.
pub struct H3Body {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    meter: Meter,
    pause: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(pause) = &mut this.pause {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        match ready!(this.recv.poll_recv_data(cx)) {
            Ok(Some(mut buf)) => {
                let data = buf.copy_to_bytes(buf.remaining());
                if let Some(pause) = this.meter.add(data.len()) {
                    this.pause = Some(Box::pin(sleep(pause)));
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Sends one request over a new HTTP/3 connection to `addr`, trusting only `roots`, and
/// returns the response head and at most `max_body` bytes of its body.
pub async fn request(
    addr: SocketAddr,
    server_name: &str,
    roots: &[CertificateDer<'static>],
    req: Request<Bytes>,
    max_body: usize,
) -> io::Result<(Response<()>, Bytes)> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(io::Error::other)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(io::Error::other)?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let endpoint = quinn::Endpoint::client(local)?;
    let conn = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, server_name)
        .map_err(io::Error::other)?
        .await?;
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(io::Error::other)?;
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let (head, body) = req.into_parts();
    let mut stream = sender
        .send_request(Request::from_parts(head, ()))
        .await
        .map_err(io::Error::other)?;
    if !body.is_empty() {
        stream.send_data(body).await.map_err(io::Error::other)?;
    }
    stream.finish().await.map_err(io::Error::other)?;
    let response = stream.recv_response().await.map_err(io::Error::other)?;
    let mut got = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(io::Error::other)? {
        if got.len() + chunk.remaining() > max_body {
            return Err(io::Error::other(format!(
                "response body larger than {max_body} bytes"
            )));
        }
        got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    drop(stream);
    drop(sender);
    endpoint.close(0u32.into(), b"done");
    driving.abort();
    Ok((response, got.freeze()))
}
