//! Payment at the HTTP edge: what a read costs is paid before its bytes are sent (credits of
//! the token's holder, or a proof of work for an anonymous read), and the credit routes:
//! `POST /credits/grant` (owner), `GET /credits/balance[?of=ID]`, `GET /credits/history`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use ron_auth::token::Op;
use ron_auth::{Denied, Holder, Request};
use ron_proto::{Address, ErrorKind, Problem};
use serde::Deserialize;
use serde_json::json;
use svc_accounting::{Usage, Who, Window};
use svc_payment::{Payment, Priced, Settlement};

use crate::ApiError;
use crate::admin::{AppState, Shared};
use crate::auth::authorize;

tokio::task_local! {
    /// The client address of the request being answered (set by the gateway's middleware
    /// around each handler): whom an anonymous request is metered to.
    pub(crate) static CLIENT: Option<std::net::IpAddr>;
}

fn client() -> Option<std::net::IpAddr> {
    CLIENT.try_with(|c| *c).ok().flatten()
}

/// Whose token a request carries, when something needs to know (`None`: no token, or one
/// that fails its checks). The request was authorized before: this only names the holder.
fn holder(state: &AppState, headers: &HeaderMap, path: &str) -> Option<Holder> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    state
        .auth
        .identify(token.trim(), &Request { op: Op::Get, path })
}

/// Admits a read of `addr` moving `bytes`, before any of them is sent: the holder's hourly
/// quota (429 `quota_exceeded`), its price (402 without the credits) or a proof of work
/// where one is needed; then meters it.
pub(crate) async fn pay_read(
    state: &AppState,
    headers: &HeaderMap,
    addr: &Address,
    bytes: u64,
) -> Result<Settlement, ApiError> {
    let pricing = state.payment.as_ref().filter(|p| p.charges() || p.pow_on());
    if pricing.is_none() && state.accounting.is_none() {
        return Ok(Settlement::Free);
    }
    let target = format!("/o/{addr}");
    let who = holder(state, headers, &target);
    let metered = Who::of(who, client());
    if let Some(accounting) = &state.accounting {
        accounting.check(&metered, bytes)?;
    }
    let settled = match pricing {
        Some(payment) => {
            let pow = headers
                .get(ron_proto::pow::HEADER)
                .and_then(|v| v.to_str().ok());
            payment.admit(who, pow, Priced::Get, &target, bytes).await?
        }
        None => Settlement::Free,
    };
    if let Some(accounting) = &state.accounting {
        let usage = Usage {
            requests: 1,
            bytes_in: 0,
            bytes_out: bytes,
            messages: 0,
            byte_minutes: 0,
        };
        accounting.record(&metered, usage, matches!(settled, Settlement::Charged(_)));
    }
    Ok(settled)
}

/// Checks the uploader's hourly quota before anything is stored.
pub(crate) fn check_upload(
    state: &AppState,
    holder: Option<Holder>,
    announced: Option<u64>,
) -> Result<(), ApiError> {
    if let Some(accounting) = &state.accounting {
        accounting.check(&Who::of(holder, client()), announced.unwrap_or(0))?;
    }
    Ok(())
}

/// Meters a stored upload of `bytes` (`charged`: the ledger holds it).
pub(crate) fn record_upload(
    state: &AppState,
    holder: Option<Holder>,
    addr: ron_proto::Address,
    bytes: u64,
    charged: bool,
) {
    if let Some(accounting) = &state.accounting {
        accounting.upload(&Who::of(holder, client()), addr, bytes, charged);
    }
}

fn payment(state: &AppState) -> Result<&Payment, ApiError> {
    state.payment.as_ref().ok_or_else(|| {
        ApiError::from(Problem::new(
            ErrorKind::NotFound,
            "this node keeps no credit ledger",
        ))
    })
}

/// The holder of the request's token, which must allow `account` (401/403 otherwise).
fn account_holder(state: &AppState, headers: &HeaderMap, path: &str) -> Result<Holder, ApiError> {
    authorize(state, headers, Op::Account, path)?
        .holder()
        .ok_or_else(|| Denied::Unauthenticated("this needs a capability token".into()).into())
}

/// The body of `POST /credits/grant`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantBody {
    to: String,
    credits: u64,
}

fn check_account(id: &str) -> Result<(), ApiError> {
    let hex = id.strip_prefix("ed25519/").unwrap_or("");
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(Problem::new(
            ErrorKind::BadInput,
            "an account is a user key: ed25519/<64 lowercase hex digits>",
        )
        .into());
    }
    Ok(())
}

/// Whether `id` reads as a peer's account: `peer/<PeerId>` (base58, as `ron peers` prints).
fn is_peer_account(id: &str) -> bool {
    id.strip_prefix("peer/").is_some_and(|p| {
        (32..=64).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l'))
    })
}

/// `POST /credits/grant` `{"to":"ed25519/<hex>","credits":N}`: the owner grants credits.
pub(crate) async fn grant(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<GrantBody>,
) -> Result<Response, ApiError> {
    if account_holder(&state, &headers, "/credits/grant")? != Holder::Owner {
        return Err(Denied::Forbidden("only the node's owner grants credits".into()).into());
    }
    check_account(&body.to)?;
    if body.credits == 0 || body.credits > i64::MAX as u64 {
        return Err(
            Problem::new(ErrorKind::BadInput, "credits must be between 1 and 2^63-1").into(),
        );
    }
    let payment = payment(&state)?;
    let id = payment
        .deposit(
            &body.to,
            body.credits,
            svc_payment::settlement::Proof::OwnerGrant,
        )
        .await?;
    let balance = payment.balance(&body.to)?.map_or(0, |a| a.balance());
    Ok(Json(json!({
        "transfer": format!("{id:032x}"),
        "to": body.to,
        "credits": body.credits,
        "balance": i64::try_from(balance).unwrap_or(i64::MAX),
    }))
    .into_response())
}

/// `?of=ed25519/<hex>` (the owner only) and `?limit=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Of {
    of: Option<String>,
    limit: Option<usize>,
}

/// The account a request may read: its own, or any for the owner.
fn whose(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    of: Option<String>,
) -> Result<String, ApiError> {
    let holder = account_holder(state, headers, path)?;
    match (of, holder) {
        (Some(of), Holder::Owner) => {
            if !svc_payment::accounts::NODE.contains(&of.as_str()) && !is_peer_account(&of) {
                check_account(&of)?;
            }
            Ok(of)
        }
        (Some(of), h) if of == h.account() => Ok(of),
        (Some(_), _) => {
            Err(Denied::Forbidden("only the node's owner reads other accounts".into()).into())
        }
        (None, h) => Ok(h.account()),
    }
}

/// `GET /credits/balance[?of=ID]`: an account's credits.
pub(crate) async fn balance(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Of>,
) -> Result<Response, ApiError> {
    let account = whose(&state, &headers, "/credits/balance", q.of)?;
    let payment = payment(&state)?;
    let a = payment.balance(&account)?.unwrap_or_default();
    Ok(Json(json!({
        "account": account,
        "balance": i64::try_from(a.balance()).unwrap_or(i64::MAX),
        "available": i64::try_from(a.available()).unwrap_or(i64::MAX),
        "reserved": a.debits_pending,
        "paid_until_ms": (a.paid_until_ms > 0).then_some(a.paid_until_ms),
    }))
    .into_response())
}

/// `GET /credits/history[?of=ID][&limit=N]`: an account's newest transfers (100 unless
/// `limit`, at most 1,000).
pub(crate) async fn history(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Of>,
) -> Result<Response, ApiError> {
    let account = whose(&state, &headers, "/credits/history", q.of)?;
    let payment = payment(&state)?;
    let transfers = payment.history(&account, q.limit.unwrap_or(100).clamp(1, 1000))?;
    Ok(Json(json!({ "account": account, "transfers": transfers })).into_response())
}

/// `GET /credits/peers[?limit=N]` (the owner only): the peers this node settles with, largest
/// balances first (100 unless `limit`, at most 1,000), each with its balance as the ledger
/// holds it and the highest cheques held each way.
pub(crate) async fn peers(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Of>,
) -> Result<Response, ApiError> {
    if account_holder(&state, &headers, "/credits/peers")? != Holder::Owner {
        return Err(
            Denied::Forbidden("only the node's owner reads its peers' accounts".into()).into(),
        );
    }
    if q.of.is_some() {
        return Err(Problem::new(ErrorKind::BadInput, "peers takes no `of`").into());
    }
    let payment = payment(&state)?;
    let peers = payment.peers(q.limit.unwrap_or(100).clamp(1, 1000))?;
    let s = state.config.get::<svc_payment::PaymentSection>();
    Ok(Json(json!({
        "settlement": payment.settlement(),
        "per_mib": s.peer_per_mib,
        "pay_at": s.peer_pay_at,
        "debt_limit": s.peer_debt_limit,
        "peers": peers,
    }))
    .into_response())
}

/// `?of=ID&window=minute|hour&since_ms=N&limit=N` of `GET /usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    of: Option<String>,
    window: Option<String>,
    since_ms: Option<u64>,
    limit: Option<usize>,
}

/// `GET /usage`: usage rows per identity and window. The owner sees every identity (or `of`
/// one); anyone else their own.
pub(crate) async fn usage(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Response, ApiError> {
    let holder = account_holder(&state, &headers, "/usage")?;
    let identity = match (holder, q.of) {
        (Holder::Owner, of) => of,
        (h, None) => Some(h.account()),
        (h, Some(of)) if of == h.account() => Some(of),
        (_, Some(_)) => {
            return Err(
                Denied::Forbidden("only the node's owner reads others' usage".into()).into(),
            );
        }
    };
    let window = match q.window.as_deref() {
        None | Some("hour") => Window::Hour,
        Some("minute") => Window::Minute,
        Some(_) => {
            return Err(Problem::new(ErrorKind::BadInput, "window is minute or hour").into());
        }
    };
    let accounting = state.accounting.as_ref().ok_or_else(|| {
        ApiError::from(Problem::new(
            ErrorKind::NotFound,
            "this node meters nothing",
        ))
    })?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let rows = accounting.rows(window, identity.as_deref(), q.since_ms.unwrap_or(0), limit)?;
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "identity": r.identity,
                "start_ms": r.start_ms,
                "requests": r.usage.requests,
                "bytes_in": r.usage.bytes_in,
                "bytes_out": r.usage.bytes_out,
                "messages": r.usage.messages,
                "byte_hours": r.usage.byte_minutes as f64 / 60.0,
            })
        })
        .collect();
    let window = if window == Window::Hour {
        "hour"
    } else {
        "minute"
    };
    Ok(Json(json!({ "window": window, "rows": rows })).into_response())
}
