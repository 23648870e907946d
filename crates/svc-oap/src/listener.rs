//! Accepting OAP/1 connections, and one connection's demultiplexing: frames in, streams
//! tracked, uploads' bodies handed to their handlers, replies out through one writer.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ron_auth::Auth;
use ron_kernel::config::Config;
use ron_kernel::metrics::{Metrics, ReasonLabel};
use ron_proto::oap::objects::ObjectRequest;
use ron_proto::oap::{
    APP_HELLO, APP_MAILBOX, APP_OBJECTS, CodecError, Flags, Frame, FrameCodec, Hello,
    StreamTracker, check_client_hello, inflate,
};
use ron_proto::{ErrorKind, Failure, Problem};
use ron_transport::TlsAcceptor;
use ron_transport::deadline::{Deadlined, Meter};
use ron_transport::limits::{Limiter, LimitsSection};
use svc_overlay::OverlayHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::budget::{Addresses, Budget};
use crate::objects::{Piece, handle};

/// The ALPN protocol id of OAP/1 over TLS.
pub const ALPN: &[u8] = b"ron/1";
/// Frames queued for a connection's writer.
const OUTBOUND: usize = 32;
/// Body pieces queued for one upload.
const BODY_QUEUE: usize = 8;

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
    /// Software version, for HELLO.
    pub version: &'static str,
    /// The node's configuration (`[limits]` is read per connection).
    pub config: Config,
    /// Admission under `[limits]`, shared with the node's other listeners.
    pub limiter: Arc<Limiter>,
    /// The node's metrics (`rejected_total{reason}`).
    pub metrics: Metrics,
    /// The mailbox (app 0x0201), when mail is on.
    pub mail: Option<svc_mailbox::Mailbox>,
    /// The credit ledger and prices (`None`: nothing is charged).
    pub payment: Option<svc_payment::Payment>,
    /// Usage metering and quotas (`None`: nothing is metered).
    pub accounting: Option<svc_accounting::Accounting>,
}

impl std::fmt::Debug for OapState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OapState")
            .field("max_frame", &self.max_frame)
            .field("max_inflight", &self.max_inflight)
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
    let addresses = Arc::new(Addresses::default());
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = ron_transport::accept(&listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let (acceptor, state, shutdown) = (acceptor.clone(), state.clone(), shutdown.clone());
        let limits = state.config.get::<LimitsSection>();
        let budget = addresses.connect(peer.ip(), state.max_frame);
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
            // While it answers a get or stat (perhaps waiting for slow peers), a client that
            // sends nothing is not idle.
            let answering = Arc::new(AtomicUsize::new(0));
            let stream = Deadlined::new(
                stream,
                Duration::from_millis(limits.read_idle_ms),
                Duration::from_millis(limits.write_ms),
            )
            .metered(Meter::new(state.limiter.clone(), peer.ip()))
            .answering(answering.clone());
            let conn = Conn {
                ip: peer.ip(),
                budget,
                answering,
            };
            connection(stream, conn, state, shutdown).await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

type Tracker = Arc<Mutex<StreamTracker>>;

/// Sends frames to the connection's writer.
#[derive(Clone)]
pub(crate) struct Out {
    tx: mpsc::Sender<Frame>,
    metrics: Metrics,
}

impl Out {
    pub(crate) async fn send(&self, frame: Frame) -> bool {
        self.tx.send(frame).await.is_ok()
    }

    /// The one way a failure becomes a reply on OAP/1: an error frame with the kind's status
    /// as `code` and the shared JSON body (`end_only`: the stream has started, so the frame
    /// closes it instead of opening it). Refusals are counted in `rejected_total{reason}`.
    pub(crate) async fn failure(
        &self,
        app: u16,
        corr: u64,
        e: &(dyn Failure + Sync),
        end_only: bool,
    ) -> bool {
        let kind = e.kind();
        if matches!(kind, ErrorKind::Internal | ErrorKind::Damaged) {
            tracing::error!(error = %e, code = e.code(), "oap request failed");
        }
        if kind != ErrorKind::NotFound {
            self.metrics
                .rejected()
                .get_or_create(&ReasonLabel {
                    reason: e.code().to_owned(),
                })
                .inc();
        }
        let mut frame = Frame::error_reply(app, corr, kind, &e.body());
        if end_only {
            frame.flags = Flags::RESP | Flags::END;
        }
        self.send(frame).await
    }

    /// A failure of an object request, answered at its start.
    pub(crate) async fn fail(&self, corr: u64, e: &(dyn Failure + Sync)) -> bool {
        self.failure(APP_OBJECTS, corr, e, false).await
    }

    pub(crate) async fn reply(&self, corr: u64, code: u16, flags: Flags, payload: Bytes) -> bool {
        let mut frame = Frame::new(flags, APP_OBJECTS, corr);
        frame.code = code;
        frame.payload = payload;
        self.send(frame).await
    }
}

/// What one connection keeps besides its stream.
struct Conn {
    ip: std::net::IpAddr,
    /// Room for upload bytes waiting for their handlers.
    budget: Budget,
    /// Gets and stats being answered (reads are excused from the idle limit meanwhile).
    answering: Arc<AtomicUsize>,
}

/// Counts one answer in progress for as long as it lives.
struct Answering(Arc<AtomicUsize>);

impl Answering {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection<S>(stream: S, conn: Conn, state: Arc<OapState>, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let codec = FrameCodec::new(state.max_frame);
    let mut reader = FramedRead::new(rd, codec);
    let tracker: Tracker = Arc::new(Mutex::new(StreamTracker::new(state.max_inflight)));
    let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOUND);
    let out = Out {
        tx,
        metrics: state.metrics.clone(),
    };
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
    // A connection starts with HELLO: nothing else is served before it (specs/OAP-1.md).
    let mut greeted = false;
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
                out.send(Frame::error_reply(0, 0, e.kind(), &e.to_body()))
                    .await;
                break;
            }
            Some(Err(_)) => break,
        };
        let (app, corr) = (frame.app_proto_id, frame.corr_id);
        let observed = tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&frame);
        if let Err(e) = observed {
            out.send(Frame::error_reply(app, corr, e.kind(), &e.to_body()))
                .await;
            continue;
        }
        if !frame.flags.contains(Flags::REQ) {
            let problem = violation("a client sends only REQ frames");
            out.failure(app, corr, &problem, false).await;
            continue;
        }
        if frame.flags.contains(Flags::COMP) {
            match inflate(&frame.payload, state.max_frame) {
                Ok(bytes) => {
                    // What a payload inflates to counts against the address's byte rate like
                    // bytes on the wire (which the connection's meter counted already).
                    let extra = bytes.len().saturating_sub(frame.payload.len()) as u64;
                    if let Some(pause) = state.limiter.charge(conn.ip, extra) {
                        tokio::time::sleep(pause).await;
                    }
                    frame.payload = bytes;
                }
                Err(e) => {
                    let problem = Problem::with_code(e.kind(), e.code(), e.to_string());
                    out.failure(app, corr, &problem, false).await;
                    bodies.remove(&corr);
                    continue;
                }
            }
        }
        let end = frame.flags.contains(Flags::END);
        if !frame.flags.contains(Flags::START) {
            // A continuation: body bytes for an upload (dropped if the upload already ended).
            if let Some(body) = bodies.get(&corr) {
                let mut gone = false;
                if !frame.payload.is_empty() {
                    // Room in the connection's and address's budgets first: the reader waits
                    // while they are full, as it waits for a full queue.
                    gone = match conn.budget.room(frame.payload.len()).await {
                        Some(room) => body.send(Piece::Data(frame.payload, room)).await.is_err(),
                        None => true,
                    };
                }
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
            APP_HELLO => match check_client_hello(&frame.payload) {
                Ok(()) => {
                    greeted = true;
                    out.send(hello(&state, corr)).await;
                }
                Err(problem) => {
                    out.failure(app, corr, &problem, false).await;
                }
            },
            _ if !greeted => {
                let problem = violation("a connection starts with HELLO (app 0)");
                out.failure(app, corr, &problem, false).await;
            }
            APP_OBJECTS => {
                if let Some(body) = open_object_stream(&state, &out, &conn, frame, &streams).await {
                    bodies.insert(corr, body);
                }
            }
            APP_MAILBOX => {
                if let Some(body) = open_mail_stream(&state, &out, &conn, frame, &streams).await {
                    bodies.insert(corr, body);
                }
            }
            other => {
                let problem =
                    Problem::new(ErrorKind::NotFound, format!("no application {other:#06x}"));
                out.failure(other, corr, &problem, false).await;
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

/// A 400 `protocol_violation`: a frame this listener's rules do not allow where it came.
fn violation(why: &'static str) -> Problem {
    Problem::with_code(ErrorKind::BadInput, "protocol_violation", why)
}

/// The answer to HELLO: what this listener speaks and its limits.
fn hello(state: &OapState, corr: u64) -> Frame {
    let hello = Hello {
        version: Some(state.version.to_owned()),
        flags: Some(vec!["COMP".into()]),
        transports: Some(vec!["tls".into()]),
        max_frame: u32::try_from(state.max_frame).unwrap_or(u32::MAX),
        max_inflight: u32::try_from(state.max_inflight).unwrap_or(u32::MAX),
        ..Hello::default()
    };
    let mut reply = Frame::new(Flags::RESP | Flags::START | Flags::END, APP_HELLO, corr);
    reply.payload = Bytes::from(serde_json::to_vec(&hello).unwrap_or_default());
    reply
}

/// Opens an object request stream: decodes its request and token, admits it under the
/// node's limits, and runs its handler as a task of `streams`; the sender of the upload's
/// body when the request is a `put` whose bytes follow.
async fn open_object_stream(
    state: &Arc<OapState>,
    out: &Out,
    conn: &Conn,
    frame: Frame,
    streams: &TaskTracker,
) -> Option<mpsc::Sender<Piece>> {
    let corr = frame.corr_id;
    let end = frame.flags.contains(Flags::END);
    let request = match serde_json::from_slice::<ObjectRequest>(&frame.payload) {
        Ok(r) => r,
        Err(e) => {
            let problem = Problem::new(ErrorKind::BadInput, format!("bad request: {e}"));
            out.fail(corr, &problem).await;
            return None;
        }
    };
    let token = match std::str::from_utf8(&frame.cap) {
        Ok("") => None,
        Ok(t) => Some(t.to_owned()),
        Err(_) => {
            let d = ron_auth::Denied::Unauthenticated("the capability is not a token".into());
            out.fail(corr, &d).await;
            return None;
        }
    };
    let write = matches!(request, ObjectRequest::Put { .. });
    let ticket = match state.limiter.admit_owned(Some(conn.ip), write) {
        Ok(ticket) => ticket,
        Err(refused) => {
            out.fail(corr, &refused).await;
            return None;
        }
    };
    let (sender, body) = if write && !end {
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    // An upload's client is sending: its reads stay under the idle limit.
    let answering = (!write).then(|| Answering::new(&conn.answering));
    let (state, out, ip) = (state.clone(), out.clone(), conn.ip);
    // Each stream is a trace of its own (sampled at the node's ratio), logged under its id.
    let trace = supervisor::trace::start(None);
    let span = supervisor::trace::edge_span(
        trace,
        || tracing::info_span!("oap.request", request_id = %trace.parent.trace_hex()),
    );
    streams.spawn(supervisor::trace::scope(
        trace,
        async move {
            handle(&state, &out, corr, ip, request, token.as_deref(), body).await;
            drop((ticket, answering));
        }
        .instrument(span),
    ));
    sender
}

/// Opens a mail request stream (app 0x0201): decodes its request and token, admits it under
/// the node's limits, and runs its handler as a task of `streams`; the sender of the
/// envelope's bytes when the request is a `send`.
async fn open_mail_stream(
    state: &Arc<OapState>,
    out: &Out,
    conn: &Conn,
    frame: Frame,
    streams: &TaskTracker,
) -> Option<mpsc::Sender<Piece>> {
    use ron_proto::oap::mail::MailRequest;
    let corr = frame.corr_id;
    let end = frame.flags.contains(Flags::END);
    let request = match serde_json::from_slice::<MailRequest>(&frame.payload) {
        Ok(r) => r,
        Err(e) => {
            let problem = Problem::new(ErrorKind::BadInput, format!("bad request: {e}"));
            out.failure(APP_MAILBOX, corr, &problem, false).await;
            return None;
        }
    };
    let token = match std::str::from_utf8(&frame.cap) {
        Ok("") => None,
        Ok(t) => Some(t.to_owned()),
        Err(_) => {
            let d = ron_auth::Denied::Unauthenticated("the capability is not a token".into());
            out.failure(APP_MAILBOX, corr, &d, false).await;
            return None;
        }
    };
    let write = !matches!(request, MailRequest::Fetch { .. });
    let ticket = match state.limiter.admit_owned(Some(conn.ip), write) {
        Ok(ticket) => ticket,
        Err(refused) => {
            out.failure(APP_MAILBOX, corr, &refused, false).await;
            return None;
        }
    };
    let sends = matches!(request, MailRequest::Send { .. });
    let (sender, body) = if sends && !end {
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let answering = (!sends).then(|| Answering::new(&conn.answering));
    let (state, out, ip) = (state.clone(), out.clone(), conn.ip);
    streams.spawn(async move {
        crate::mail::handle(state, out, corr, ip, request, token, body).await;
        drop((ticket, answering));
    });
    sender
}
