//! The OAP/1 listener: TCP + TLS 1.3 with ALPN `ron/1`, HELLO, and app 0x0101 (objects:
//! get / put / stat) with the same outcomes and status codes as the HTTP gateway. Capability
//! tokens ride in the `cap` bytes of a START frame and are checked by [`ron_auth::Auth`] exactly
//! as `Authorization: Bearer` is on HTTP.
//!
//! Per connection: one reader (the codec checks `len` and `ver` before allocating), one writer
//! fed by a bounded queue, the stream state machine shared by both, and one task per request
//! stream (at most `max_inflight`). A malformed frame closes only its own connection.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ron_auth::token::Op;
use ron_auth::{Auth, Denied, Grant, Request};
use ron_kernel::config::Config;
use ron_kernel::metrics::{Metrics, ReasonLabel};
use ron_proto::oap::objects::{GetReply, ObjectRequest, PutReply};
use ron_proto::oap::{
    APP_HELLO, APP_OBJECTS, CodecError, Flags, Frame, FrameCodec, HEADER_LEN, Hello, StreamTracker,
    inflate,
};
use ron_proto::{Address, ErrorBody, ErrorKind};
use ron_transport::TlsAcceptor;
use ron_transport::deadline::{Deadlined, Meter};
use ron_transport::limits::{Limiter, LimitsSection};
use svc_overlay::{OverlayError, OverlayHandle};
use svc_storage::{PutError, PutOptions};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The ALPN protocol id of OAP/1 over TLS.
pub const ALPN: &[u8] = b"ron/1";
/// Frames queued for a connection's writer.
const OUTBOUND: usize = 32;
/// Body pieces queued for one upload.
const BODY_QUEUE: usize = 8;
/// Bytes verified per step of a `get`.
const WINDOW: u64 = 1 << 20;
/// Most payload bytes in one data frame (so streams interleave).
const DATA_FRAME: usize = 256 << 10;

/// What the listener serves with.
#[derive(Clone)]
pub struct OapState {
    /// The object service.
    pub overlay: OverlayHandle,
    /// Capabilities.
    pub auth: Arc<Auth>,
    /// Largest frame accepted and sent, length field included.
    pub max_frame: usize,
    /// Open streams per connection.
    pub max_inflight: usize,
    /// Largest object a `put` may store.
    pub max_put_bytes: u64,
    /// Software version, for HELLO.
    pub version: &'static str,
    /// The node's configuration (`[limits]` is read per connection).
    pub config: Config,
    /// Admission under `[limits]`, shared with the node's other listeners.
    pub limiter: Arc<Limiter>,
    /// The node's metrics (`rejected_total{reason}`).
    pub metrics: Metrics,
    /// Told of every object a `put` stored (the node announces it to the peer network).
    pub on_stored: Option<Arc<dyn Fn(Address) + Send + Sync>>,
}

impl std::fmt::Debug for OapState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OapState")
            .field("max_frame", &self.max_frame)
            .field("max_inflight", &self.max_inflight)
            .field("max_put_bytes", &self.max_put_bytes)
            .finish_non_exhaustive()
    }
}

/// Serves OAP/1 on `listener` until `shutdown` is cancelled; then stops accepting, stops
/// reading new frames, and waits for streams in progress (the caller bounds the wait).
/// `tls` should offer [`ALPN`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ron_transport::rustls::ServerConfig>,
    state: OapState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let state = Arc::new(state);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = ron_transport::accept(&listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let (acceptor, state, shutdown) = (acceptor.clone(), state.clone(), shutdown.clone());
        let limits = state.config.get::<LimitsSection>();
        connections.spawn(async move {
            let handshake = Duration::from_millis(limits.handshake_ms);
            let stream = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "oap TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "oap TLS handshake timed out");
                    return;
                }
            };
            // A peer that goes quiet mid-frame or stops reading is cut off; its bytes count
            // against its address's byte rate.
            let stream = Deadlined::new(
                stream,
                Duration::from_millis(limits.read_idle_ms),
                Duration::from_millis(limits.write_ms),
            )
            .metered(Meter::new(state.limiter.clone(), peer.ip()));
            connection(stream, peer.ip(), state, shutdown).await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// What the reader hands an upload.
enum Piece {
    Data(Bytes),
    End,
}

type Tracker = Arc<Mutex<StreamTracker>>;

/// Sends frames to the connection's writer.
#[derive(Clone)]
struct Out(mpsc::Sender<Frame>);

impl Out {
    async fn send(&self, frame: Frame) -> bool {
        self.0.send(frame).await.is_ok()
    }

    async fn error(&self, app: u16, corr: u64, kind: ErrorKind, body: ErrorBody) -> bool {
        self.send(Frame::error_reply(app, corr, kind, &body)).await
    }

    async fn fail(&self, corr: u64, kind: ErrorKind, message: impl Into<String>) -> bool {
        self.error(APP_OBJECTS, corr, kind, ErrorBody::new(kind, message))
            .await
    }

    async fn reply(&self, corr: u64, code: u16, flags: Flags, payload: Bytes) -> bool {
        let mut frame = Frame::new(flags, APP_OBJECTS, corr);
        frame.code = code;
        frame.payload = payload;
        self.send(frame).await
    }
}

async fn connection<S>(
    stream: S,
    ip: std::net::IpAddr,
    state: Arc<OapState>,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let codec = FrameCodec::new(state.max_frame);
    let mut reader = FramedRead::new(rd, codec);
    let tracker: Tracker = Arc::new(Mutex::new(StreamTracker::new(state.max_inflight)));
    let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOUND);
    let out = Out(tx);
    let writer = {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let mut sink = FramedWrite::new(wr, codec);
            while let Some(frame) = rx.recv().await {
                if frame.flags.contains(Flags::RESP) {
                    let seen = tracker
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .observe(&frame);
                    if let Err(e) = seen {
                        tracing::debug!(error = %e, "response outside a stream (a connection-level error)");
                    }
                }
                if sink.send(frame).await.is_err() {
                    return;
                }
            }
            let _ = SinkExt::<Frame>::close(&mut sink).await;
        })
    };
    let streams = TaskTracker::new();
    let mut bodies: HashMap<u64, mpsc::Sender<Piece>> = HashMap::new();
    loop {
        let next = tokio::select! {
            next = reader.next() => next,
            () = shutdown.cancelled() => break,
        };
        let mut frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(CodecError::Frame(e))) => {
                // Framing is lost: answer if we can, then close.
                out.error(0, 0, e.kind(), e.to_body()).await;
                break;
            }
            Some(Err(CodecError::Io(_))) => break,
            Some(Err(_)) => break,
        };
        let (app, corr) = (frame.app_proto_id, frame.corr_id);
        let observed = tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&frame);
        if let Err(e) = observed {
            out.error(app, corr, e.kind(), e.to_body()).await;
            continue;
        }
        if !frame.flags.contains(Flags::REQ) {
            let body = ErrorBody::with_code("protocol_violation", "a client sends only REQ frames");
            out.error(app, corr, ErrorKind::BadInput, body).await;
            continue;
        }
        if frame.flags.contains(Flags::COMP) {
            match inflate(&frame.payload, state.max_frame) {
                Ok(bytes) => frame.payload = bytes,
                Err(e) => {
                    let body = ErrorBody::with_code(e.code(), e.to_string());
                    out.error(app, corr, e.kind(), body).await;
                    bodies.remove(&corr);
                    continue;
                }
            }
        }
        let end = frame.flags.contains(Flags::END);
        if !frame.flags.contains(Flags::START) {
            // A continuation: body bytes for an upload (dropped if the upload already ended).
            if let Some(body) = bodies.get(&corr) {
                let mut gone = !frame.payload.is_empty()
                    && body.send(Piece::Data(frame.payload)).await.is_err();
                if end {
                    gone |= body.send(Piece::End).await.is_err();
                }
                if gone || end {
                    bodies.remove(&corr);
                }
            }
            continue;
        }
        match app {
            APP_HELLO => {
                let hello = Hello {
                    version: Some(state.version.to_owned()),
                    flags: Some(vec!["COMP".into()]),
                    transports: Some(vec!["tls".into()]),
                    max_frame: u32::try_from(state.max_frame).unwrap_or(u32::MAX),
                    max_inflight: u32::try_from(state.max_inflight).unwrap_or(u32::MAX),
                    ..Hello::default()
                };
                let mut reply =
                    Frame::new(Flags::RESP | Flags::START | Flags::END, APP_HELLO, corr);
                reply.payload = Bytes::from(serde_json::to_vec(&hello).unwrap_or_default());
                out.send(reply).await;
            }
            APP_OBJECTS => {
                let request = match serde_json::from_slice::<ObjectRequest>(&frame.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        out.fail(corr, ErrorKind::BadInput, format!("bad request: {e}"))
                            .await;
                        continue;
                    }
                };
                let token = match std::str::from_utf8(&frame.cap) {
                    Ok("") => None,
                    Ok(t) => Some(t.to_owned()),
                    Err(_) => {
                        let d = Denied::Unauthenticated("the capability is not a token".into());
                        denied(&out, corr, &d).await;
                        continue;
                    }
                };
                let write = matches!(request, ObjectRequest::Put { .. });
                let ticket = match state.limiter.admit_owned(Some(ip), write) {
                    Ok(ticket) => ticket,
                    Err(refused) => {
                        state
                            .metrics
                            .rejected()
                            .get_or_create(&ReasonLabel {
                                reason: refused.reason().to_owned(),
                            })
                            .inc();
                        out.error(APP_OBJECTS, corr, refused.kind(), refused.to_body())
                            .await;
                        continue;
                    }
                };
                let body = if write && !end {
                    let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE);
                    bodies.insert(corr, body_tx);
                    Some(body_rx)
                } else {
                    None
                };
                let (state, out) = (state.clone(), out.clone());
                streams.spawn(async move {
                    handle(&state, &out, corr, request, token.as_deref(), body).await;
                    drop(ticket);
                });
            }
            other => {
                let body =
                    ErrorBody::new(ErrorKind::NotFound, format!("no application {other:#06x}"));
                out.error(other, corr, ErrorKind::NotFound, body).await;
            }
        }
    }
    // Uploads still waiting for bytes are abandoned (their writers remove what they wrote).
    drop(bodies);
    streams.close();
    streams.wait().await;
    drop(out);
    let _ = writer.await;
}

async fn denied(out: &Out, corr: u64, d: &Denied) {
    let kind = d.kind();
    let mut body = ErrorBody::new(kind, d.to_string());
    if let Denied::RateLimited { retry_after } = d {
        body = body.retry_after_ms(
            u64::try_from(retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }
    out.error(APP_OBJECTS, corr, kind, body).await;
}

fn authorize(state: &OapState, token: Option<&str>, op: Op, path: &str) -> Result<Grant, Denied> {
    state.auth.authorize(token, &Request { op, path })
}

async fn overlay_failed(out: &Out, corr: u64, e: &OverlayError) {
    let kind = e.kind();
    let mut body = ErrorBody::new(
        kind,
        if kind == ErrorKind::Internal {
            "internal error".into()
        } else {
            e.to_string()
        },
    );
    if kind.is_retryable() {
        body = body.retry_after_ms(1000);
    }
    tracing::warn!(error = %e, "oap object operation failed");
    out.error(APP_OBJECTS, corr, kind, body).await;
}

async fn handle(
    state: &OapState,
    out: &Out,
    corr: u64,
    request: ObjectRequest,
    token: Option<&str>,
    body: Option<mpsc::Receiver<Piece>>,
) {
    match request {
        ObjectRequest::Get { addr } => get(state, out, corr, addr, token).await,
        ObjectRequest::Stat { addr } => {
            if let Err(d) = authorize(state, token, Op::Stat, &format!("/stat/{addr}")) {
                return denied(out, corr, &d).await;
            }
            match state.overlay.stat(addr).await {
                Ok(Some(stat)) => {
                    let json = Bytes::from(serde_json::to_vec(&stat).unwrap_or_default());
                    out.reply(corr, 0, Flags::RESP | Flags::START | Flags::END, json)
                        .await;
                }
                Ok(None) => {
                    out.fail(corr, ErrorKind::NotFound, format!("no object {addr}"))
                        .await;
                }
                Err(e) => overlay_failed(out, corr, &e).await,
            }
        }
        ObjectRequest::Put {
            size,
            media_type,
            expect,
        } => put(state, out, corr, token, body, size, media_type, expect).await,
    }
}

async fn get(state: &OapState, out: &Out, corr: u64, addr: Address, token: Option<&str>) {
    if let Err(d) = authorize(state, token, Op::Get, &format!("/o/{addr}")) {
        return denied(out, corr, &d).await;
    }
    let reader = match state.overlay.open(addr).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            out.fail(corr, ErrorKind::NotFound, format!("no object {addr}"))
                .await;
            return;
        }
        Err(e) => return overlay_failed(out, corr, &e).await,
    };
    let size = reader.size();
    let head = GetReply {
        size,
        media_type: reader.manifest().media_type.clone(),
    };
    let mut flags = Flags::RESP | Flags::START;
    if size == 0 {
        flags |= Flags::END;
    }
    let head = Bytes::from(serde_json::to_vec(&head).unwrap_or_default());
    if !out.reply(corr, 0, flags, head).await || size == 0 {
        return;
    }
    let per_frame = state
        .max_frame
        .saturating_sub(HEADER_LEN)
        .clamp(1, DATA_FRAME);
    let mut offset = 0;
    while offset < size {
        let end = (offset + WINDOW).min(size);
        let window = match reader.read_verified(offset, end).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // The stream has started: end it with a non-zero code; no unverified byte left.
                tracing::error!(error = %e, %addr, "stored object failed verification");
                let body = ErrorBody::new(ErrorKind::Internal, "stored object is damaged");
                let mut frame = Frame::error_reply(APP_OBJECTS, corr, ErrorKind::Internal, &body);
                frame.flags = Flags::RESP | Flags::END;
                out.send(frame).await;
                return;
            }
        };
        let mut at = 0;
        while at < window.len() {
            let next = (at + per_frame).min(window.len());
            let mut flags = Flags::RESP;
            if end == size && next == window.len() {
                flags |= Flags::END;
            }
            if !out.reply(corr, 0, flags, window.slice(at..next)).await {
                return;
            }
            at = next;
        }
        offset = end;
    }
}

#[allow(clippy::too_many_arguments)] // the request's fields, kept flat for readability
async fn put(
    state: &OapState,
    out: &Out,
    corr: u64,
    token: Option<&str>,
    body: Option<mpsc::Receiver<Piece>>,
    size: Option<u64>,
    media_type: Option<String>,
    expect: Option<Address>,
) {
    let grant = match authorize(state, token, Op::Put, "/put") {
        Ok(g) => g,
        Err(d) => return denied(out, corr, &d).await,
    };
    let limit = state.max_put_bytes;
    if size.is_some_and(|s| s > limit) {
        out.fail(
            corr,
            ErrorKind::TooLarge,
            format!("upload exceeds the limit of {limit} bytes"),
        )
        .await;
        return;
    }
    let mut charged = 0u64;
    if let Some(n) = size {
        if let Err(d) = grant.charge(n) {
            return denied(out, corr, &d).await;
        }
        charged = n;
    }
    let options = PutOptions {
        media_type,
        expect,
        max_bytes: Some(limit),
        unpinned: false,
        // The store reads the chunks back for the outboard: keep them in the page cache.
        around_cache: false,
    };
    let mut upload = match state.overlay.writer(options) {
        Ok(u) => u,
        Err(e) => {
            grant.refund(charged);
            return overlay_failed(out, corr, &e).await;
        }
    };
    let outcome: Result<(), (ErrorKind, String)> = async {
        if let Some(mut body) = body {
            loop {
                match body.recv().await {
                    Some(Piece::Data(bytes)) => {
                        if size.is_none() {
                            grant
                                .charge(bytes.len() as u64)
                                .map_err(|d| (d.kind(), d.to_string()))?;
                            charged += bytes.len() as u64;
                        }
                        upload
                            .writer
                            .write(&bytes)
                            .await
                            .map_err(|e| put_failure(&e))?;
                    }
                    Some(Piece::End) => break,
                    // The connection went away mid-upload: nothing is stored.
                    None => return Err((ErrorKind::BadInput, "upload cut short".into())),
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err((kind, message)) = outcome {
        grant.refund(charged);
        out.fail(corr, kind, message).await;
        return;
    }
    match upload.writer.finish().await {
        Ok(stored) => {
            if let Some(on_stored) = &state.on_stored {
                on_stored(stored.address);
            }
            if size.is_some_and(|s| s != stored.size) {
                // Stored anyway (the bytes are whole and verified); the announced size was wrong.
                tracing::debug!(announced = ?size, stored = stored.size, "oap put size differs");
            }
            let code = if stored.created { 201 } else { 200 };
            let reply = PutReply {
                address: stored.address,
                size: stored.size,
            };
            let json = Bytes::from(serde_json::to_vec(&reply).unwrap_or_default());
            out.reply(corr, code, Flags::RESP | Flags::START | Flags::END, json)
                .await;
        }
        Err(e) => {
            grant.refund(charged);
            let (kind, message) = put_failure(&e);
            out.fail(corr, kind, message).await;
        }
    }
}

fn put_failure(e: &PutError) -> (ErrorKind, String) {
    let kind = e.kind();
    if kind == ErrorKind::Internal {
        tracing::error!(error = %e, "oap upload failed");
        (kind, "internal error".into())
    } else {
        (kind, e.to_string())
    }
}

/// `[oap]`: the OAP/1 listener, started whenever the node has a TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OapSection {
    /// Address of the listener (default `127.0.0.1:7702`). Fixed at start; `--oap-listen`
    /// overrides it.
    pub listen: std::net::SocketAddr,
    /// Largest frame, length field included (default 1048576, 4096 to 16777216). Fixed.
    pub max_frame: usize,
    /// Open streams per connection (default 64, 1 to 4096). Fixed.
    pub max_inflight: usize,
}

impl Default for OapSection {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7702)),
            max_frame: ron_proto::oap::DEFAULT_MAX_FRAME,
            max_inflight: ron_proto::oap::DEFAULT_MAX_INFLIGHT,
        }
    }
}

impl ron_kernel::config::Section for OapSection {
    const NAME: &'static str = "oap";

    fn validate(&self) -> Result<(), ron_kernel::config::FieldError> {
        use ron_kernel::config::FieldError;
        if !(4096..=16 << 20).contains(&self.max_frame) {
            return Err(FieldError::new(
                "max_frame",
                "must be between 4096 and 16777216",
            ));
        }
        if !(1..=4096).contains(&self.max_inflight) {
            return Err(FieldError::new(
                "max_inflight",
                "must be between 1 and 4096",
            ));
        }
        Ok(())
    }

    fn check_live(&self, next: &Self) -> Result<(), ron_kernel::config::FieldError> {
        use ron_kernel::config::unchanged;
        unchanged("listen", &self.listen, &next.listen)?;
        unchanged("max_frame", &self.max_frame, &next.max_frame)?;
        unchanged("max_inflight", &self.max_inflight, &next.max_inflight)
    }
}
