//! One trace across two nodes: a GET on node B of an object only node A holds, sent with a
//! sampled `traceparent`, is exported over OTLP by both nodes under one trace id; A's spans
//! are children of B's. Each node exports to an OTLP/HTTP receiver in this process. Unsampled
//! requests export nothing. Needs the `otlp` feature:
//! `cargo test -p ron --features otlp --test tracing`.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;
use support::{Node, config, data};
use tokio::time::{Instant, sleep};

/// A span as an OTLP/JSON export shows it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
}

/// An OTLP/HTTP receiver: keeps the spans of every `POST /v1/traces` (JSON).
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let receiver = Self::default();
        let keep = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let keep = keep.clone();
                        async move { keep.take(req).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        (receiver, url)
    }

    async fn take(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<String>, std::convert::Infallible> {
        assert_eq!(req.uri().path(), "/v1/traces");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
        let mut spans = Vec::new();
        for resource in export["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    let text = |k: &str| span[k].as_str().unwrap_or_default().to_lowercase();
                    spans.push(Span {
                        name: text("name"),
                        trace: text("traceId"),
                        id: text("spanId"),
                        parent: text("parentSpanId"),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(spans);
        self.bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
        Ok(hyper::Response::new("{}".to_owned()))
    }

    fn of(&self, trace: &str) -> Vec<Span> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.trace == trace).cloned().collect()
    }

    fn all(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_b_fetched_from_a_is_one_trace_across_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ((a_spans, a_url), (b_spans, b_url)) = (Receiver::start().await, Receiver::start().await);
    // New traces are never sampled here: only the request sent with a sampled traceparent is
    // recorded, on both nodes.
    let section = |url: &str| format!("[log]\notlp_endpoint = \"{url}\"\ntrace_sample = 0.0\n");
    config(&dir.path().join("a"), &section(&a_url));
    config(&dir.path().join("b"), &section(&b_url));
    let a = Node::start(&dir.path().join("a"), &[]).await;
    let seed = a.p2p_addr().await;
    let b = Node::start_logged(&dir.path().join("b"), &["--bootstrap", &seed], "info").await;
    b.wait_status("a peer", |s| {
        s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;
    let bytes = data(3 << 20, 11);
    let addr = a.put_announced(bytes.clone()).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let res = b
        .anonymous()
        .get(format!("{}/o/{addr}", b.url))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap() == bytes, "identical bytes");

    // Batches leave every few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (on_a, on_b) = (a_spans.of(trace), b_spans.of(trace));
        let served = on_a.iter().any(|s| s.name == "peer.serve");
        let requested = on_b.iter().any(|s| s.name == "request");
        if served && requested {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace {trace} on both nodes: A {on_a:?}, B {on_b:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let (on_a, on_b) = (a_spans.of(trace), b_spans.of(trace));
    // B: the request is the client's span's child; the fetch's hops are under it.
    let request = on_b.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(request.parent, client_span, "{on_b:?}");
    for hop in ["dht.lookup", "peer.transfer", "peer.request"] {
        assert!(
            on_b.iter().any(|s| s.name == hop),
            "no {hop} span on B: {on_b:?}"
        );
    }
    // A: each range it served is a child of one of B's spans.
    let b_ids: Vec<&str> = on_b.iter().map(|s| s.id.as_str()).collect();
    let served: Vec<&Span> = on_a.iter().filter(|s| s.name == "peer.serve").collect();
    assert!(
        served.iter().all(|s| b_ids.contains(&s.parent.as_str())),
        "A's spans hang off B's: {served:?} / {b_ids:?}"
    );
    // B's log lines for the request carry the trace id.
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("fetched from peers") && l.contains(trace)),
        "no log line with the trace id"
    );
    // Nothing else was sampled: the upload on A and every other request left no span.
    let stray: Vec<Span> = a_spans
        .all()
        .into_iter()
        .chain(b_spans.all())
        .filter(|s| s.trace != trace)
        .collect();
    assert!(stray.is_empty(), "unsampled spans exported: {stray:?}");

    // A sampled upload with the owner's token: its spans (the request, the commit) are
    // exported, and no export holds the token.
    let upload = "0af7651916cd43dd8448eb211c80319c";
    let res = b
        .http
        .post(format!("{}/put", b.url))
        .header("traceparent", format!("00-{upload}-b7ad6b7169203331-01"))
        .body(data(100_000, 12))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b_spans
        .of(upload)
        .iter()
        .any(|s| s.name == "storage.commit")
    {
        assert!(
            Instant::now() < deadline,
            "the upload's spans: {:?}",
            b_spans.of(upload)
        );
        sleep(Duration::from_millis(200)).await;
    }
    let bodies = b_spans.bodies.lock().unwrap().join("\n");
    assert!(!b.token.is_empty());
    assert!(!bodies.contains(&b.token), "the owner's token was exported");
    assert!(
        !bodies.contains("Bearer"),
        "an authorization header was exported"
    );
    println!(
        "one trace across two nodes: {} spans on B, {} on A ({} ranges served)",
        on_b.len(),
        on_a.len(),
        served.len()
    );
}
