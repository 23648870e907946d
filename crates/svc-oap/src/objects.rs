//! App 0x0101 over the overlay: decode, authorise, call one overlay method, encode. The same
//! outcomes and codes as the HTTP gateway's routes, from the same [`OverlayHandle`] calls.

use bytes::Bytes;
use ron_auth::token::Op;
use ron_auth::{Denied, Grant, Request};
use ron_proto::oap::objects::{GetReply, ObjectRequest, PutReply};
use ron_proto::oap::{APP_OBJECTS, Flags, HEADER_LEN};
use ron_proto::{Address, ErrorKind, Failure, Problem};
use std::net::IpAddr;
use svc_overlay::{Got, Incoming, Object, OverlayError, PutRequest};

use svc_accounting::{Usage, Who};
use svc_payment::{Priced, Settlement};
use tokio::sync::mpsc;

use crate::budget::Room;
use crate::listener::{OapState, Out};

/// Bytes verified per step of a `get`.
const WINDOW: u64 = 1 << 20;
/// Most payload bytes in one data frame (so streams interleave).
const DATA_FRAME: usize = 256 << 10;

/// What the reader hands an upload: bytes, with the room they take in the connection's
/// budget (given back once written), or the end.
pub(crate) enum Piece {
    Data(Bytes, Room),
    End,
}

fn authorize(state: &OapState, token: Option<&str>, op: Op, path: &str) -> Result<Grant, Denied> {
    state.auth.authorize(token, &Request { op, path })
}

/// Runs one object request to its reply.
pub(crate) async fn handle(
    state: &OapState,
    out: &Out,
    corr: u64,
    ip: IpAddr,
    request: ObjectRequest,
    token: Option<&str>,
    body: Option<mpsc::Receiver<Piece>>,
) {
    let outcome = match request {
        ObjectRequest::Get { addr } => get(state, out, corr, Caller { ip, token }, addr).await,
        ObjectRequest::Stat { addr } => stat(state, out, corr, addr, token).await,
        ObjectRequest::Put {
            size,
            media_type,
            expect,
            durability,
        } => match durability
            .as_deref()
            .map(ron_proto::layout::parse_durability)
        {
            Some(Err(e)) => Err(refusal(Problem::new(
                ErrorKind::BadInput,
                format!("invalid durability: {e}"),
            ))),
            parsed => {
                let request = PutRequest {
                    media_type,
                    expect,
                    durability: parsed.map(Result::unwrap_or_default),
                };
                put(state, out, corr, Caller { ip, token }, body, size, request).await
            }
        },
    };
    if let Err(e) = outcome {
        out.fail(corr, e.as_ref()).await;
    }
}

/// A failure answered at the start of a stream.
type Refusal = Box<dyn Failure + Send + Sync>;

fn refusal(e: impl Failure + Send + Sync + 'static) -> Refusal {
    Box::new(e)
}

async fn stat(
    state: &OapState,
    out: &Out,
    corr: u64,
    addr: Address,
    token: Option<&str>,
) -> Result<(), Refusal> {
    authorize(state, token, Op::Stat, &format!("/stat/{addr}")).map_err(refusal)?;
    let stat = state
        .overlay
        .stat(addr)
        .await
        .map_err(refusal)?
        .ok_or_else(|| refusal(OverlayError::NotFound(addr)))?;
    let json = Bytes::from(serde_json::to_vec(&stat).unwrap_or_default());
    out.reply(corr, 0, Flags::RESP | Flags::START | Flags::END, json)
        .await;
    Ok(())
}

/// Who asks: the client's address and the credential it sent.
#[derive(Debug, Clone, Copy)]
struct Caller<'a> {
    ip: IpAddr,
    token: Option<&'a str>,
}

async fn get(
    state: &OapState,
    out: &Out,
    corr: u64,
    Caller { ip, token }: Caller<'_>,
    addr: Address,
) -> Result<(), Refusal> {
    // The credential is a token, or `pow <answer>` (a proof of work for an anonymous read).
    let (token, pow) = match token.map(|t| t.strip_prefix("pow ")) {
        Some(Some(answer)) => (None, Some(answer)),
        _ => (token, None),
    };
    let target = format!("/o/{addr}");
    let grant = authorize(state, token, Op::Get, &target).map_err(refusal)?;
    let per_frame = state
        .max_frame
        .saturating_sub(HEADER_LEN)
        .clamp(1, DATA_FRAME);
    let got = state.overlay.get(addr).await.map_err(refusal)?;
    let size = match &got {
        Got::Stored(object) => object.size(),
        Got::Arriving(incoming) => incoming.size,
    };
    // The quota, then the price, before a byte is sent, as over HTTP; then it is metered.
    let who = Who::of(grant.holder(), Some(ip));
    if let Some(accounting) = &state.accounting {
        accounting.check(&who, size).map_err(refusal)?;
    }
    let mut charged = false;
    if let Some(payment) = &state.payment {
        let settled = payment
            .admit(grant.holder(), pow, Priced::Get, &target, size)
            .await
            .map_err(refusal)?;
        charged = matches!(settled, Settlement::Charged(_));
    }
    if let Some(accounting) = &state.accounting {
        let usage = Usage {
            requests: 1,
            bytes_in: 0,
            bytes_out: size,
            messages: 0,
            byte_minutes: 0,
        };
        accounting.record(&who, usage, charged);
    }
    match got {
        Got::Stored(object) => send_stored(out, corr, object, per_frame).await,
        Got::Arriving(incoming) => send_arriving(out, corr, addr, incoming, per_frame).await,
    }
    Ok(())
}

/// The head of a `get`'s answer; `false` when the client is gone (or the object is empty,
/// whose head ends the stream).
async fn head(out: &Out, corr: u64, size: u64, media_type: Option<String>) -> bool {
    let mut flags = Flags::RESP | Flags::START;
    if size == 0 {
        flags |= Flags::END;
    }
    let head = Bytes::from(serde_json::to_vec(&GetReply { size, media_type }).unwrap_or_default());
    out.reply(corr, 0, flags, head).await && size > 0
}

/// Sends `bytes` in data frames of at most `per_frame`, the last with `END` when `last`.
async fn frames(out: &Out, corr: u64, bytes: &Bytes, per_frame: usize, last: bool) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let next = (at + per_frame).min(bytes.len());
        let mut flags = Flags::RESP;
        if last && next == bytes.len() {
            flags |= Flags::END;
        }
        if !out.reply(corr, 0, flags, bytes.slice(at..next)).await {
            return false;
        }
        at = next;
    }
    true
}

/// The stored copy, verified a window at a time; damage that cannot be repaired ends the
/// stream with an error frame (no unverified byte is ever sent).
async fn send_stored(out: &Out, corr: u64, object: Object, per_frame: usize) {
    let size = object.size();
    if !head(out, corr, size, object.media_type()).await {
        return;
    }
    let mut offset = 0;
    while offset < size {
        let end = (offset + WINDOW).min(size);
        let window = match object.read_verified(offset, end).await {
            Ok(bytes) => bytes,
            Err(e) => {
                out.failure(APP_OBJECTS, corr, &e, true).await;
                return;
            }
        };
        if !frames(out, corr, &window, per_frame, end == size).await {
            return;
        }
        offset = end;
    }
}

/// An object arriving from peers, forwarded as it verifies; a failed transfer ends the
/// stream with an error frame.
async fn send_arriving(
    out: &Out,
    corr: u64,
    addr: Address,
    mut incoming: Incoming,
    per_frame: usize,
) {
    let size = incoming.size;
    if !head(out, corr, size, None).await {
        return;
    }
    let mut sent = 0u64;
    while let Some(piece) = incoming.bytes.recv().await {
        let bytes = match piece {
            Ok(bytes) => bytes,
            Err(why) => {
                tracing::warn!(%addr, error = %why, "oap get: the transfer from peers failed");
                let e = OverlayError::FetchFailed(why);
                out.failure(APP_OBJECTS, corr, &e, true).await;
                return;
            }
        };
        sent += bytes.len() as u64;
        if !frames(out, corr, &bytes, per_frame, sent >= size).await {
            return;
        }
    }
    if sent < size {
        let e = OverlayError::FetchFailed(format!(
            "the transfer of {addr} ended at {sent} of {size} bytes"
        ));
        out.failure(APP_OBJECTS, corr, &e, true).await;
    }
}

fn size_mismatch(announced: u64, received: u64) -> Refusal {
    refusal(Problem::new(
        ErrorKind::BadInput,
        format!("the upload announced {announced} bytes and sent {received}"),
    ))
}

/// A `put`: the bytes that arrive are charged to the token (the announced size up front,
/// anything past it as it arrives) and must match the announced size before anything is
/// committed; the largest object is the node's live `gateway.max_put_bytes`.
async fn put(
    state: &OapState,
    out: &Out,
    corr: u64,
    Caller { ip, token }: Caller<'_>,
    body: Option<mpsc::Receiver<Piece>>,
    size: Option<u64>,
    request: PutRequest,
) -> Result<(), Refusal> {
    let grant = authorize(state, token, Op::Put, "/put").map_err(refusal)?;
    let limit = state.overlay.max_object_bytes();
    if size.is_some_and(|s| s > limit) {
        return Err(refusal(OverlayError::TooLarge { limit }));
    }
    if let Some(n) = size {
        state.overlay.room_for(n).map_err(refusal)?;
    }
    let mut charge = grant.charging();
    if let Some(n) = size {
        charge.add(n).map_err(refusal)?;
    }
    let who = Who::of(grant.holder(), Some(ip));
    if let Some(accounting) = &state.accounting {
        accounting.check(&who, size.unwrap_or(0)).map_err(refusal)?;
    }
    let mut reservation = match &state.payment {
        Some(p) => p.reserve(grant.holder(), size).await.map_err(refusal)?,
        None => svc_payment::Reservation::free(),
    };
    let mut upload = state.overlay.put(request).map_err(refusal)?;
    if let Some(mut body) = body {
        loop {
            match body.recv().await {
                Some(Piece::Data(bytes, _room)) => {
                    let received = upload.received() + bytes.len() as u64;
                    match size {
                        Some(n) if received > n => return Err(size_mismatch(n, received)),
                        Some(_) => {}
                        None => {
                            charge.add(bytes.len() as u64).map_err(refusal)?;
                            reservation.grow(received).await.map_err(refusal)?;
                        }
                    }
                    upload.write(&bytes).await.map_err(refusal)?;
                }
                Some(Piece::End) => break,
                // The connection went away mid-upload: nothing is stored.
                None => {
                    return Err(refusal(Problem::new(
                        ErrorKind::BadInput,
                        "upload cut short",
                    )));
                }
            }
        }
    }
    if let Some(n) = size
        && upload.received() != n
    {
        return Err(size_mismatch(n, upload.received()));
    }
    let stored = upload.finish().await.map_err(refusal)?;
    charge.keep();
    let charged = match reservation.post(stored.size).await {
        Ok(credits) => credits > 0,
        Err(e) => {
            tracing::warn!(error = %e, "an upload's reserved credits could not be charged");
            false
        }
    };
    if let Some(accounting) = &state.accounting {
        accounting.upload(&who, stored.address, stored.size, charged);
    }
    let code = if stored.created { 201 } else { 200 };
    let reply = PutReply {
        address: stored.address,
        size: stored.size,
    };
    let json = Bytes::from(serde_json::to_vec(&reply).unwrap_or_default());
    out.reply(corr, code, Flags::RESP | Flags::START | Flags::END, json)
        .await;
    Ok(())
}
