//! `GET /debug/pprof/profile?seconds=N`: a CPU profile of the node over the next `N` seconds
//! (1 to 60, default 10), in pprof's protobuf format (`go tool pprof ron.pprof`). Only for a
//! token that allows `profile`; one profile at a time (409 while another is taken). The
//! sampler runs only while a profile is taken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use pprof::protos::Message;
use ron_auth::token::Op;
use ron_proto::{ErrorKind, Problem};
use serde::Deserialize;

use crate::ApiError;
use crate::admin::Shared;
use crate::auth::authorize;

/// Samples per second: not a multiple of common timer rates, so periodic work is not hidden.
const FREQUENCY: i32 = 99;
/// The longest profile asked for.
const MAX_SECONDS: u64 = 60;

/// A profile is being taken.
static TAKING: AtomicBool = AtomicBool::new(false);

/// Clears [`TAKING`] when the profile ends, however it ends (a client gone mid-way included).
struct Taking;

impl Drop for Taking {
    fn drop(&mut self) {
        TAKING.store(false, Ordering::Release);
    }
}

/// `?seconds=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileQuery {
    seconds: Option<u64>,
}

fn failed(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "cannot take a CPU profile");
    Problem::new(ErrorKind::Internal, "the profiler failed").into()
}

pub(crate) async fn profile(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<ProfileQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Op::Profile, "/debug/pprof/profile")?;
    let seconds = q.seconds.unwrap_or(10);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(Problem::new(
            ErrorKind::BadInput,
            format!("seconds must be between 1 and {MAX_SECONDS}"),
        )
        .into());
    }
    if TAKING.swap(true, Ordering::AcqRel) {
        return Err(Problem::new(
            ErrorKind::Conflict,
            "a profile is being taken; retry after it",
        )
        .into());
    }
    let taking = Taking;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Frames from these are skipped: unwinding through them from a signal handler can
        // deadlock (pprof-rs's advice).
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(failed)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Symbolizing is CPU work: off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let _taking = taking;
        let profile = guard
            .report()
            .build()
            .map_err(|e| e.to_string())?
            .pprof()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(profile.encode_to_vec())
    })
    .await
    .map_err(failed)?
    .map_err(failed)?;
    tracing::info!(seconds, bytes = encoded.len(), "a CPU profile was taken");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ron.pprof\"",
            ),
        ],
        encoded,
    )
        .into_response())
}
