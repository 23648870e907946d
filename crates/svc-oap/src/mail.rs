//! App 0x0201 over the mailbox: decode, authorise, call one mailbox method, encode. The same
//! outcomes and codes as the gateway's `/mail/` routes, from the same [`Mailbox`] calls (one
//! authority: a proof, a quota, a rate or a size refused there is refused here).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ron_auth::token::Op;
use ron_auth::{Grant, Request};
use ron_proto::oap::mail::{
    AckReply, FetchReply, Fetched, MAX_BATCH, MailRequest, SendReply, ack_body, fetch_target,
};
use ron_proto::oap::{APP_MAILBOX, Flags, Frame, HEADER_LEN};
use ron_proto::{ErrorKind, Failure, Problem};
use svc_accounting::Who;
use svc_mailbox::envelope::Lane;
use svc_mailbox::{MailSection, Mailbox, Sender, Sent};
use tokio::sync::mpsc;

use crate::listener::{OapState, Out};
use crate::objects::Piece;

/// Most payload bytes in one data frame.
const DATA_FRAME: usize = 256 << 10;

type Refusal = Box<dyn Failure + Send + Sync>;

fn refusal(e: impl Failure + Send + Sync + 'static) -> Refusal {
    Box::new(e)
}

fn bad(message: impl Into<String>) -> Refusal {
    refusal(Problem::new(ErrorKind::BadInput, message))
}

async fn reply(out: &Out, corr: u64, code: u16, flags: Flags, payload: Bytes) -> bool {
    let mut frame = Frame::new(flags, APP_MAILBOX, corr);
    frame.code = code;
    frame.payload = payload;
    out.send(frame).await
}

fn json(value: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Runs one mail request to its reply.
pub(crate) async fn handle(
    state: Arc<OapState>,
    out: Out,
    corr: u64,
    ip: IpAddr,
    request: MailRequest,
    token: Option<String>,
    body: Option<mpsc::Receiver<Piece>>,
) {
    let outcome = match state.mail.as_ref() {
        None => Err(refusal(Problem::new(
            ErrorKind::NotFound,
            "this node keeps no mail",
        ))),
        Some(mail) => match request {
            MailRequest::Send { size, proof } => {
                send(&state, mail, &out, corr, ip, size, proof, token, body).await
            }
            MailRequest::Fetch { lane, limit, proof } => {
                fetch(&state, mail, &out, corr, &lane, limit, &proof).await
            }
            MailRequest::Ack { ids, proof } => ack(mail, &out, corr, ids, &proof).await,
        },
    };
    if let Err(e) = outcome {
        out.failure(APP_MAILBOX, corr, e.as_ref(), false).await;
    }
}

/// Reads a `send`'s envelope: exactly `size` bytes.
async fn envelope(size: u64, body: Option<mpsc::Receiver<Piece>>) -> Result<Vec<u8>, Refusal> {
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    if let Some(mut body) = body {
        while let Some(piece) = body.recv().await {
            match piece {
                Piece::Data(data, _room) => {
                    if (bytes.len() + data.len()) as u64 > size {
                        return Err(bad("more bytes than the send's size"));
                    }
                    bytes.extend_from_slice(&data);
                }
                Piece::End => break,
            }
        }
    }
    if bytes.len() as u64 != size {
        return Err(bad("fewer bytes than the send's size"));
    }
    Ok(bytes)
}

#[allow(clippy::too_many_arguments)] // one request's parts, each once
async fn send(
    state: &OapState,
    mail: &Mailbox,
    out: &Out,
    corr: u64,
    ip: IpAddr,
    size: u64,
    proof: Option<String>,
    token: Option<String>,
    body: Option<mpsc::Receiver<Piece>>,
) -> Result<(), Refusal> {
    let max = state.config.get::<MailSection>().max_message_bytes as u64;
    if size > max {
        return Err(refusal(svc_mailbox::MailError::TooLarge {
            max: max as usize,
        }));
    }
    let bytes = envelope(size, body).await?;
    let from = match proof {
        Some(p) => Sender::Key(
            mail.authenticate(Some(&p), "POST", "/mail/send", &bytes)
                .map_err(refusal)?,
        ),
        None if state.limiter.is_exempt(ip) => Sender::Local,
        None => Sender::Addr(ip),
    };
    let relay = state
        .auth
        .authorize(
            token.as_deref(),
            &Request {
                op: Op::Put,
                path: "/mail/send",
            },
        )
        .ok();
    let key = match from {
        Sender::Key(k) => Some(k),
        _ => None,
    };
    let who = Who::sender(key, relay.as_ref().and_then(Grant::holder), Some(ip));
    let size = bytes.len() as u64;
    let (code, id, how) = match mail
        .send(Bytes::from(bytes), from, relay.is_some())
        .await
        .map_err(refusal)?
    {
        Sent::Stored { id, .. } => (201, id, "stored"),
        Sent::Delivered(d) => (201, d.id, "delivered"),
        Sent::Queued { id } => (202, id, "queued"),
    };
    if let Some(accounting) = &state.accounting {
        accounting.record_mail(&who, size);
    }
    let answer = SendReply {
        id,
        state: how.into(),
    };
    reply(
        out,
        corr,
        code,
        Flags::RESP | Flags::START | Flags::END,
        json(&answer),
    )
    .await;
    Ok(())
}

async fn fetch(
    state: &OapState,
    mail: &Mailbox,
    out: &Out,
    corr: u64,
    lane: &str,
    limit: usize,
    proof: &str,
) -> Result<(), Refusal> {
    let who = mail
        .authenticate(Some(proof), "POST", &fetch_target(lane, limit), b"")
        .map_err(refusal)?;
    let lane = match lane {
        "message" => Lane::Message,
        "receipt" => Lane::Receipt,
        _ => return Err(bad("lane is message or receipt")),
    };
    let got = mail
        .fetch(who, lane, limit.min(MAX_BATCH))
        .await
        .map_err(refusal)?;
    let head = FetchReply {
        messages: got
            .iter()
            .map(|m| Fetched {
                id: m.id,
                stored_at_ms: m.stored_at_ms,
                size: m.envelope.len() as u64,
            })
            .collect(),
    };
    if got.is_empty() {
        reply(
            out,
            corr,
            0,
            Flags::RESP | Flags::START | Flags::END,
            json(&head),
        )
        .await;
        return Ok(());
    }
    if !reply(out, corr, 0, Flags::RESP | Flags::START, json(&head)).await {
        return Ok(());
    }
    let per_frame = state
        .max_frame
        .saturating_sub(HEADER_LEN)
        .clamp(1, DATA_FRAME);
    let all: Vec<u8> = got.into_iter().flat_map(|m| m.envelope).collect();
    let mut pieces = all.chunks(per_frame).peekable();
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() {
            Flags::RESP | Flags::END
        } else {
            Flags::RESP
        };
        if !reply(out, corr, 0, flags, Bytes::copy_from_slice(piece)).await {
            break;
        }
    }
    Ok(())
}

async fn ack(
    mail: &Mailbox,
    out: &Out,
    corr: u64,
    ids: Vec<ron_proto::Address>,
    proof: &str,
) -> Result<(), Refusal> {
    if ids.len() > MAX_BATCH {
        return Err(refusal(Problem::new(
            ErrorKind::TooLarge,
            format!("at most {MAX_BATCH} ids per ack"),
        )));
    }
    let who = mail
        .authenticate(Some(proof), "POST", "/mail/ack", &ack_body(&ids))
        .map_err(refusal)?;
    let acked = mail.ack(who, ids).await.map_err(refusal)?;
    reply(
        out,
        corr,
        0,
        Flags::RESP | Flags::START | Flags::END,
        json(&AckReply { acked }),
    )
    .await;
    Ok(())
}
