//! Mail under `/mail/`: decode, authorise, one mailbox call, encode.
//!
//! - `GET /mail/node`: this node as a mailbox node (peer id, addresses), for a mail record.
//! - `PUT /mail/register`: keep the mailbox a signed record names this node for (a token
//!   allowing `put`, as for every write).
//! - `GET /mail/record/ed25519/{hex}`: the recipient's signed mail record (DAG-CBOR); the
//!   client checks it itself.
//! - `POST /mail/send`: an envelope. Kept when this node keeps the recipient's mailbox (no
//!   token needed: sealed sender); else, for a sender with a token allowing `put`, delivered
//!   to the recipient's mailbox node or kept in the outbox. 201 stored or delivered, 202
//!   queued.
//! - `POST /mail/fetch?lane=message|receipt&limit=N`, `GET /mail/msg/{id}`, `POST /mail/ack`:
//!   the owner's only, by the `ron-mail-auth` proof of their key.

use std::net::IpAddr;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use base64::Engine as _;
use ron_auth::Grant;
use ron_auth::token::Op;
use ron_proto::{Address, ErrorKind, Problem};
use ron_transport::limits::Peer;
use serde::Deserialize;
use serde_json::json;
use svc_accounting::Who;
use svc_mailbox::envelope::{Lane, MAX_BUCKET};
use svc_mailbox::record::{MAX_RECORD_BYTES, MailRecord, identity_bytes};
use svc_mailbox::{Mailbox, Sender, Sent, proof};

use crate::ApiError;
use crate::admin::Shared;
use crate::auth::authorize;

/// Most ids one ack carries.
const MAX_ACK: usize = 1000;

fn mailbox(state: &Shared) -> Result<&Mailbox, ApiError> {
    state
        .mail
        .as_ref()
        .ok_or_else(|| Problem::new(ErrorKind::NotFound, "this node keeps no mail").into())
}

async fn body(body: Body, max: usize, what: &str) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        Problem::new(
            ErrorKind::TooLarge,
            format!("{what} is at most {max} bytes"),
        )
        .into()
    })
}

fn proof_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(proof::HEADER).and_then(|v| v.to_str().ok())
}

fn path_and_query(req_uri: &axum::http::Uri) -> &str {
    req_uri.path_and_query().map_or("/", |p| p.as_str())
}

/// The identity the request's proof holds for.
fn prove(
    mail: &Mailbox,
    headers: &HeaderMap,
    method: &Method,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<[u8; 32], ApiError> {
    Ok(mail.authenticate(
        proof_header(headers),
        method.as_str(),
        path_and_query(uri),
        body,
    )?)
}

/// `GET /mail/node`.
pub(crate) async fn node(State(state): State<Shared>) -> Result<Response, ApiError> {
    let node = mailbox(&state)?.node().await.ok_or_else(|| {
        ApiError::from(Problem::new(
            ErrorKind::NotFound,
            "this node runs no peer network: it can keep no mailbox for others to reach",
        ))
    })?;
    Ok(Json(json!({"peer": node.peer, "addrs": node.addrs})).into_response())
}

/// `PUT /mail/register`: a signed record (DAG-CBOR, as `ron mail register` makes).
pub(crate) async fn register(
    State(state): State<Shared>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::Put, "/mail/register")?;
    let mail = mailbox(&state)?;
    let bytes = body(raw, MAX_RECORD_BYTES, "a mail record").await?;
    let record = mail.register(&bytes).await?;
    let nodes: Vec<&str> = record.mailboxes.iter().map(|n| n.peer.as_str()).collect();
    Ok(Json(json!({"key": record.key, "seq": record.seq, "mailboxes": nodes})).into_response())
}

/// `GET /mail/record/ed25519/{hex}`.
pub(crate) async fn record(
    State(state): State<Shared>,
    Path(hex): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = format!("ed25519/{hex}");
    if state.auth.requires_token(Op::Get) {
        authorize(&state, &headers, Op::Get, &format!("/mail/record/{key}"))?;
    }
    let identity = identity_bytes(&key).ok_or_else(|| {
        ApiError::from(Problem::new(
            ErrorKind::BadInput,
            "expected ed25519/<64 hex>",
        ))
    })?;
    let record: MailRecord = mailbox(&state)?.lookup(&identity).await?;
    let bytes = record.encode().map_err(svc_mailbox::MailError::from)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cbor"),
        )],
        bytes,
    )
        .into_response())
}

/// `POST /mail/send`.
pub(crate) async fn send(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let mail = mailbox(&state)?;
    let ip: Option<IpAddr> = req.extensions().get::<Peer>().map(|p| p.0);
    let (parts, raw) = req.into_parts();
    let max = state
        .config
        .get::<svc_mailbox::MailSection>()
        .max_message_bytes
        .min(MAX_BUCKET);
    let envelope = body(raw, max, "an envelope").await?;
    // A proof of the sender's key puts the send under that key's rate; else the address's.
    let from = match proof_header(&parts.headers) {
        Some(_) => Sender::Key(prove(
            mail,
            &parts.headers,
            &parts.method,
            &parts.uri,
            &envelope,
        )?),
        None => match ip {
            Some(ip) if !state.limiter.is_exempt(ip) => Sender::Addr(ip),
            _ => Sender::Local,
        },
    };
    let relay = authorize(&state, &parts.headers, Op::Put, "/mail/send").ok();
    let who = Who::sender(
        match from {
            Sender::Key(k) => Some(k),
            _ => None,
        },
        relay.as_ref().and_then(Grant::holder),
        ip,
    );
    let size = envelope.len() as u64;
    let (status, body) = match mail.send(envelope, from, relay.is_some()).await? {
        Sent::Stored { id, fresh } => (
            StatusCode::CREATED,
            json!({"id": id, "state": "stored", "duplicate": !fresh}),
        ),
        Sent::Delivered(d) => (
            StatusCode::CREATED,
            json!({"id": d.id, "state": "delivered", "node": d.node}),
        ),
        Sent::Queued { id } => (StatusCode::ACCEPTED, json!({"id": id, "state": "queued"})),
    };
    if let Some(accounting) = &state.accounting {
        accounting.record_mail(&who, size);
    }
    Ok((status, Json(body)).into_response())
}

/// The query of `POST /mail/fetch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FetchQuery {
    lane: Option<String>,
    limit: Option<usize>,
}

/// `POST /mail/fetch?lane=message|receipt&limit=N`: up to N (default 100, at most 1000)
/// visible envelopes, base64, each hidden for the visibility timeout unless acknowledged.
pub(crate) async fn fetch(
    State(state): State<Shared>,
    Query(query): Query<FetchQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let mail = mailbox(&state)?;
    let (parts, raw) = req.into_parts();
    let _ = body(raw, 0, "a fetch's body").await?;
    let who = prove(mail, &parts.headers, &parts.method, &parts.uri, b"")?;
    let lane = match query.lane.as_deref() {
        None | Some("message") => Lane::Message,
        Some("receipt") => Lane::Receipt,
        Some(_) => {
            return Err(Problem::new(ErrorKind::BadInput, "lane is message or receipt").into());
        }
    };
    let got = mail.fetch(who, lane, query.limit.unwrap_or(100)).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let messages: Vec<_> = got
        .iter()
        .map(|m| {
            json!({"id": m.id, "stored_at_ms": m.stored_at_ms, "envelope": b64.encode(&m.envelope)})
        })
        .collect();
    Ok(Json(json!({"messages": messages})).into_response())
}

/// `GET /mail/msg/{id}`: one envelope of the prover's, hidden or not.
pub(crate) async fn message(
    State(state): State<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let mail = mailbox(&state)?;
    let (parts, _) = req.into_parts();
    let who = prove(mail, &parts.headers, &parts.method, &parts.uri, b"")?;
    let id: Address = id
        .parse()
        .map_err(|_| ApiError::from(Problem::new(ErrorKind::BadInput, "expected b3:<hex>")))?;
    let found = mail.get(who, id).await?.ok_or_else(|| {
        ApiError::from(Problem::new(
            ErrorKind::NotFound,
            "no such message in your mailbox",
        ))
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        found.envelope,
    )
        .into_response())
}

/// The body of `POST /mail/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    ids: Vec<Address>,
}

/// `POST /mail/ack` with `{"ids":["b3:…"]}`: deletes those of the prover's messages; answers
/// the ids that were queued.
pub(crate) async fn ack(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let mail = mailbox(&state)?;
    let (parts, raw) = req.into_parts();
    let bytes = body(raw, MAX_ACK * 80 + 64, "an ack").await?;
    let who = prove(mail, &parts.headers, &parts.method, &parts.uri, &bytes)?;
    let asked: AckBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::from(Problem::new(
            ErrorKind::BadInput,
            format!("expected {{\"ids\":[\"b3:…\"]}}: {e}"),
        ))
    })?;
    if asked.ids.len() > MAX_ACK {
        return Err(Problem::new(
            ErrorKind::TooLarge,
            format!("at most {MAX_ACK} ids per ack"),
        )
        .into());
    }
    let acked = mail.ack(who, asked.ids).await?;
    Ok(Json(json!({"acked": acked})).into_response())
}

/// Largest frame a client may send on a push socket (an ack of many ids).
const MAX_WS_FRAME: usize = 128 * 1024;
/// How often a push socket pings, and looks again for messages whose visibility ran out.
const WS_TICK: std::time::Duration = std::time::Duration::from_secs(5);
/// Ticks without a frame from the client before the socket is closed.
const WS_SILENT_TICKS: u32 = 4;

/// `GET /mail/ws`: a WebSocket that pushes the prover's messages and receipts as they
/// arrive, each a text frame `{"id","lane","stored_at_ms","envelope"}` (hidden then for the
/// visibility timeout, as a fetch does); the client acknowledges with `{"ack":["b3:…"]}` and
/// is answered `{"acked":[…]}`. Frames go out within `limits.write_ms`; a client silent for
/// 20 s (it answers pings) is dropped; 4 sockets per identity, 1,024 in all.
pub(crate) async fn socket(
    State(state): State<Shared>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let mail = mailbox(&state)?.clone();
    let who = prove(&mail, &headers, &method, &uri, b"")?;
    let guard = mail.open_socket(who)?;
    let write = std::time::Duration::from_millis(
        state
            .config
            .get::<ron_transport::limits::LimitsSection>()
            .write_ms,
    );
    Ok(upgrade
        .max_message_size(MAX_WS_FRAME)
        .max_frame_size(MAX_WS_FRAME)
        .on_upgrade(move |ws| async move {
            let _guard = guard;
            if let Err(e) = push(&mail, who, ws, write).await {
                tracing::debug!(error = %e, "a mail socket closed");
            }
        }))
}

/// Sends `message` within `write`.
async fn emit(
    ws: &mut axum::extract::ws::WebSocket,
    message: axum::extract::ws::Message,
    write: std::time::Duration,
) -> Result<(), String> {
    match tokio::time::timeout(write, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a frame did not go out within limits.write_ms".into()),
    }
}

/// The push loop of one socket.
async fn push(
    mail: &Mailbox,
    who: [u8; 32],
    mut ws: axum::extract::ws::WebSocket,
    write: std::time::Duration,
) -> Result<(), String> {
    use axum::extract::ws::Message;
    let mut news = mail.subscribe();
    let mut tick = tokio::time::interval(WS_TICK);
    let (mut due, mut silent) = (true, 0u32);
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        if due {
            due = false;
            for lane in [Lane::Message, Lane::Receipt] {
                let batch = mail
                    .fetch(who, lane, 100)
                    .await
                    .map_err(|e| e.to_string())?;
                for m in batch {
                    let frame = json!({"id": m.id, "lane": lane.as_str(),
                        "stored_at_ms": m.stored_at_ms, "envelope": b64.encode(&m.envelope)});
                    emit(&mut ws, Message::Text(frame.to_string().into()), write).await?;
                }
            }
        }
        tokio::select! {
            n = news.recv() => match n {
                Ok(r) => due = r == who,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => due = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
            frame = ws.recv() => {
                silent = 0;
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        let asked: serde_json::Value = serde_json::from_str(&text)
                            .map_err(|e| format!("not JSON: {e}"))?;
                        let ids: Vec<Address> = serde_json::from_value(asked["ack"].clone())
                            .map_err(|e| format!("expected {{\"ack\":[…]}}: {e}"))?;
                        if ids.len() > MAX_ACK {
                            return Err("too many ids in one ack".into());
                        }
                        let acked = mail.ack(who, ids).await.map_err(|e| e.to_string())?;
                        let reply = json!({"acked": acked}).to_string();
                        emit(&mut ws, Message::Text(reply.into()), write).await?;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Binary(_))) => return Err("binary frames are not spoken".into()),
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                }
            }
            _ = tick.tick() => {
                silent += 1;
                if silent > WS_SILENT_TICKS {
                    return Err("the client stopped answering".into());
                }
                emit(&mut ws, Message::Ping(Bytes::new()), write).await?;
                due = true;
            }
        }
    }
}
