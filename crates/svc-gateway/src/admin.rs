//! Admin endpoints: liveness, readiness, metrics and status.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use ron_kernel::{Config, HealthState, Metrics};
use ron_proto::{ErrorBody, ErrorKind};
use serde::Deserialize;
use serde_json::json;

use crate::error::{error_response, json_error};
use crate::middleware::observe;

/// Facts about the node that `/status` reports beside the kernel's own.
#[derive(Debug, Clone)]
pub struct StatusExtra {
    /// Software version.
    pub version: &'static str,
    /// The gateway's bound address.
    pub gateway: SocketAddr,
}

/// Object bytes through the gateway.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub(crate) received: prometheus_client::metrics::counter::Counter,
    pub(crate) sent: prometheus_client::metrics::counter::Counter,
}

impl Traffic {
    /// Registers `object_bytes_received_total` and `object_bytes_sent_total`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            received: metrics.register(
                "object_bytes_received",
                "Object bytes received by POST /put",
                Default::default(),
            ),
            sent: metrics.register(
                "object_bytes_sent",
                "Verified object bytes sent by GET /o",
                Default::default(),
            ),
        }
    }
}

/// What the gateway's handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The node's metrics.
    pub metrics: Metrics,
    /// The node's health registry.
    pub health: HealthState,
    /// The node's configuration.
    pub config: Config,
    /// When the node started.
    pub started: Instant,
    /// Facts for `/status`.
    pub extra: StatusExtra,
    /// The object service.
    pub overlay: svc_overlay::OverlayHandle,
    /// The name resolver.
    pub names: svc_index::Names,
    /// The mailbox service, when mail is on.
    pub mail: Option<svc_mailbox::Mailbox>,
    /// The credit ledger and prices (`None`: nothing is ever charged).
    pub payment: Option<svc_payment::Payment>,
    /// Usage metering and quotas (`None`: nothing is metered).
    pub accounting: Option<svc_accounting::Accounting>,
    /// Byte counters.
    pub traffic: Traffic,
    /// Identity and capabilities.
    pub auth: std::sync::Arc<ron_auth::Auth>,
    /// Admission under `[limits]`.
    pub limiter: std::sync::Arc<ron_transport::limits::Limiter>,
    /// The peer network's part of `/status` (addresses, peers), when the node runs one.
    pub p2p_status: Option<PeerStatus>,
    /// The node's circuit breakers, for `/status`.
    pub circuits: supervisor::Board,
    /// The SLOs: every request is observed here; `/status` shows their burn.
    pub slo: supervisor::slo::Meter,
}

/// Reads the peer network's part of `/status`; supplied by the node.
#[derive(Clone)]
pub struct PeerStatus(
    pub  std::sync::Arc<
        dyn Fn() -> futures_util::future::BoxFuture<'static, Option<serde_json::Value>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for PeerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerStatus")
    }
}
/// The state handlers see: shared, so extracting it is one reference count.
pub(crate) type Shared = std::sync::Arc<AppState>;

/// The gateway's routes with their middleware.
pub fn router(state: AppState) -> Router {
    // One reference count per request, not one per field: handlers clone the state.
    let state: Shared = std::sync::Arc::new(state);
    Router::new()
        .route("/", get(crate::console::page))
        .route("/console/app.js", get(crate::console::script))
        .route("/console/app.css", get(crate::console::style))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/put", post(crate::objects::put))
        .route(
            "/names/ed25519/{hex}",
            get(crate::names::show).put(crate::names::publish),
        )
        .route("/n/ed25519/{hex}", get(crate::names::follow))
        .route("/n/ed25519/{hex}/", get(crate::names::follow))
        .route("/n/ed25519/{hex}/{*path}", get(crate::names::follow))
        .route("/mail/node", get(crate::mail::node))
        .route("/mail/register", put(crate::mail::register))
        .route("/mail/record/ed25519/{hex}", get(crate::mail::record))
        .route("/mail/send", post(crate::mail::send))
        .route("/mail/fetch", post(crate::mail::fetch))
        .route("/mail/msg/{id}", get(crate::mail::message))
        .route("/mail/ack", post(crate::mail::ack))
        .route("/mail/ws", get(crate::mail::socket))
        .route("/credits/grant", post(crate::payment::grant))
        .route("/credits/balance", get(crate::payment::balance))
        .route("/credits/history", get(crate::payment::history))
        .route("/credits/peers", get(crate::payment::peers))
        .route("/debug/pprof/profile", get(crate::profile::profile))
        .route("/usage", get(crate::payment::usage))
        .route("/objects", get(crate::objects::list))
        .route("/gc", post(crate::objects::gc))
        .route(
            "/o/{addr}",
            get(crate::objects::get).delete(crate::objects::delete),
        )
        .route("/o/{addr}/", get(crate::collections::walk))
        .route("/o/{addr}/{*path}", get(crate::collections::walk))
        .route("/stat/{addr}", get(crate::objects::stat))
        .route(
            "/pin/{addr}",
            post(crate::objects::pin).delete(crate::objects::unpin),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// 200 for as long as the process can answer.
async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ReadyQuery {
    writes: Option<String>,
}

/// 200 while reads can be served; with `?writes=1`, 200 only while writes are accepted too
/// (not while they are shed: under load, or while the node is degraded by an SLO burning).
/// The body is `{"reads":bool,"writes":bool,"degraded":bool}` either way.
async fn readyz(State(state): State<Shared>, Query(q): Query<ReadyQuery>) -> Response {
    let mut ready = state.health.readiness();
    if state.limiter.shedding() {
        ready.writes = false;
    }
    let want_writes = q
        .writes
        .as_deref()
        .is_some_and(|v| matches!(v, "1" | "true" | "yes"));
    let ok = ready.reads && (!want_writes || ready.writes);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "reads": ready.reads,
        "writes": ready.writes,
        "degraded": state.limiter.degraded(),
    });
    (status, Json(body)).into_response()
}

/// Prometheus / OpenMetrics text.
async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Version, uptime, config version and every service's health.
async fn status(State(state): State<Shared>) -> Response {
    let config = &state.config;
    let storage = match state.overlay.stats().await {
        Ok(stats) => json!(stats),
        Err(e) => json!({"error": ron_proto::Failure::public_message(&e)}),
    };
    let index = state.overlay.index().stats();
    let p2p = match &state.p2p_status {
        Some(read) => (read.0)().await,
        None => None,
    };
    let signing = state.auth.ring().active().map(|k| {
        json!({"id": k.id, "public_key": ron_auth::public_text(&k.key.public()), "created": k.created})
    });
    Json(json!({
        "node_id": state.auth.node_id(),
        "auth": {
            "signing_key": signing,
            "writes_need_token": state.auth.requires_token(ron_auth::token::Op::Put),
            "reads_need_token": state.auth.requires_token(ron_auth::token::Op::Get),
        },
        "storage": storage,
        "p2p": p2p,
        "mail": state.mail.as_ref().map(svc_mailbox::Mailbox::status),
        "index": {"hits": index.hits, "misses": index.misses, "cached": index.cached},
        "version": state.extra.version,
        "uptime_s": state.started.elapsed().as_secs(),
        "gateway": format!("http://{}", state.extra.gateway),
        "config": {
            "version": config.version(),
            "path": config.path().map(|p| p.display().to_string()),
            "last_error": config.last_error(),
        },
        "ready": state.health.readiness(),
        "slo": state.slo.burn(),
        "circuits": state.circuits.status().iter().map(|c| json!({
            "dependency": c.dependency,
            "state": c.state.as_str(),
            "open": c.open,
            "opened": c.opened,
        })).collect::<Vec<_>>(),
        "services": state.health.services(),
    }))
    .into_response()
}

async fn not_found() -> Response {
    error_response(
        ErrorKind::NotFound,
        &ErrorBody::new(ErrorKind::NotFound, "no such route"),
    )
}

async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &ErrorBody::with_code("method_not_allowed", "method not allowed on this route"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use ron_kernel::health::{Duty, ServiceState};
    use tower::ServiceExt;

    /// An in-memory overlay whose actor runs on the test's runtime.
    fn test_overlay() -> svc_overlay::OverlayHandle {
        let (overlay, actor) = svc_overlay::in_memory(8).unwrap();
        tokio::spawn(actor);
        overlay
    }

    pub(crate) fn state() -> AppState {
        let metrics = Metrics::new();
        AppState {
            traffic: crate::Traffic::new(&metrics),
            metrics,
            health: HealthState::new(),
            config: Config::builder()
                .register::<crate::GatewaySection>()
                .register::<ron_transport::limits::LimitsSection>()
                .build()
                .unwrap(),
            started: Instant::now(),
            extra: StatusExtra {
                version: "test",
                gateway: SocketAddr::from(([127, 0, 0, 1], 7700)),
            },
            overlay: test_overlay(),
            names: svc_index::Names::in_memory().unwrap(),
            mail: None,
            payment: None,
            accounting: None,
            limiter: std::sync::Arc::default(),
            p2p_status: None,
            circuits: supervisor::Board::default(),
            slo: supervisor::slo::Meter::default(),
            auth: std::sync::Arc::new(
                ron_auth::Auth::new(
                    ron_auth::NodeIdentity::ephemeral(),
                    ron_auth::KeyRing::in_memory(),
                    &ron_auth::AuthSection::default(),
                    ron_auth::unix_now(),
                )
                .unwrap(),
            ),
        }
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, String, axum::http::HeaderMap) {
        let res = app
            .clone()
            .oneshot(
                Request::get(uri)
                    .header("host", "node.test")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), headers)
    }

    #[tokio::test]
    async fn readiness_tells_reads_from_writes() {
        let st = state();
        let app = router(st.clone());
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        let (code, body, _) = get(&app, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"degraded":false,"reads":false,"writes":false}"#
            )
        );

        st.health.register("store", Duty::ReadsAndWrites);
        st.health.set_state("store", ServiceState::Running);
        st.health.mark_started();
        assert_eq!(get(&app, "/readyz?writes=1").await.0, StatusCode::OK);
        st.health.shed_writes(true);
        let (code, body, _) = get(&app, "/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (
                StatusCode::OK,
                r#"{"degraded":false,"reads":true,"writes":false}"#
            )
        );
        assert_eq!(
            get(&app, "/readyz?writes=1").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Degraded by an SLO burning: writes shed whatever the load, and it says so.
        st.health.shed_writes(false);
        st.limiter.set_degraded(true);
        let (code, body, _) = get(&app, "/readyz?writes=1").await;
        assert_eq!(
            (code, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"degraded":true,"reads":true,"writes":false}"#
            )
        );
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_get_the_json_error_shape() {
        let app = router(state());
        let (code, body, headers) = get(&app, "/nope").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body, r#"{"code":"not_found","message":"no such route"}"#);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert!(headers.contains_key("x-request-id"));

        let res = app
            .clone()
            .oneshot(
                Request::post("/healthz")
                    .header("host", "node.test")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn request_ids_are_echoed_and_latency_is_recorded_by_route() {
        let st = state();
        let app = router(st.clone());
        let res = app
            .clone()
            .oneshot(
                Request::get("/status")
                    .header("host", "node.test")
                    .header("x-request-id", "abc-123")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.headers()["x-request-id"], "abc-123");
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["config"]["version"], 1);
        assert_eq!(status["version"], "test");

        let _ = get(&app, "/does/not/exist").await;
        let (_, text, headers) = get(&app, "/metrics").await;
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        assert!(
            text.contains(
                r#"request_latency_seconds_count{route="/status",method="GET",status="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"route="<unmatched>",method="GET",status="4xx""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn hostile_request_ids_are_replaced() {
        let app = router(state());
        let long = "x".repeat(500);
        let res = app
            .clone()
            .oneshot(
                Request::get("/healthz")
                    .header("host", "node.test")
                    .header("x-request-id", long.as_str())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "a trace id instead");
        // With a traceparent (and no request id), the request id is its trace id.
        let res = app
            .clone()
            .oneshot(
                Request::get("/healthz")
                    .header("host", "node.test")
                    .header(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                    )
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            res.headers()["x-request-id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_live_request_deadline_answers_504_in_the_json_shape() {
        let st: Shared = std::sync::Arc::new(state());
        let slow = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(st.clone(), observe))
            .with_state(st.clone());
        let (code, body, _) = get(&slow, "/slow").await;
        assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&body["code"], &body["message"]),
            (&json!("timeout"), &json!("request deadline passed"))
        );
        // A timeout is worth retrying: the one retry policy gives it a hint.
        assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
        assert!(
            st.metrics
                .encode()
                .contains(r#"rejected_total{reason="timeout"} 1"#)
        );
    }
}
