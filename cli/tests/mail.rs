//! Mail between nodes on 127.0.0.1: alice on node A mails bob, whose mailbox is node B; bob
//! reads it (sender verified) and acknowledges it; alice reads bob's signed receipt. The
//! outbox delivers once B returns; a full mailbox tells the sender; nobody but bob reads or
//! acknowledges bob's mail; tampered envelopes are refused; no plaintext is left on disk; and
//! `kill -9` during a storm of sends loses no acknowledged message.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ron_auth::SigningKey;
use serde_json::Value;
use support::{Node, ok_stdout};
use svc_mailbox::envelope::{self, Lane, MAX_BUCKET, MailKey};
use svc_mailbox::{now_ms, proof};
use tokio::time::{Instant, sleep};

/// `ron key gen` into `dir/<who>.key`: the key file and its name.
async fn key(node: &Node, dir: &Path, who: &str) -> (String, String) {
    let file = dir.join(format!("{who}.key"));
    let file = file.to_str().unwrap().to_owned();
    let name = ok_stdout(&node.cli(&["key", "gen", "--out", &file]).await);
    (file, name)
}

async fn two_nodes(dir: &Path, b_extra: &[&str]) -> (Node, Node) {
    let a = Node::start(&dir.join("a"), &[]).await;
    let seed = a.p2p_addr().await;
    let mut extra = vec!["--bootstrap", &seed];
    extra.extend_from_slice(b_extra);
    let b = Node::start(&dir.join("b"), &extra).await;
    a.wait_status("a peer", |s| {
        s["p2p"]["peers"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;
    (a, b)
}

/// Runs `ron` against `node` until it succeeds (records spread through the DHT): its stdout.
async fn eventually(node: &Node, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = node.cli(args).await;
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "ron {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sleep(Duration::from_millis(500)).await;
    }
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A request with the proof of `key`.
fn proven(
    node: &Node,
    key: &SigningKey,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let header = proof::sign(key, method.as_str(), path, now_ms() / 1000, &body);
    node.anonymous()
        .request(method, format!("{}{path}", node.url))
        .header(proof::HEADER, header)
        .body(body)
}

/// One fetch of `key`'s visible messages on `node` (each then hidden for the visibility
/// timeout): id and envelope.
async fn fetch(node: &Node, key: &SigningKey) -> Vec<(String, Vec<u8>)> {
    let res = proven(
        node,
        key,
        reqwest::Method::POST,
        "/mail/fetch?limit=1000",
        vec![],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                b64.decode(m["envelope"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Every visible message of `key` on `node`, fetched page by page: id -> envelope, and the
/// number of times an id came back (each must come once).
async fn fetch_all(node: &Node, key: &SigningKey) -> (HashMap<String, Vec<u8>>, usize) {
    let (mut all, mut pages) = (HashMap::new(), 0);
    let mut repeats = 0;
    loop {
        let page = fetch(node, key).await;
        if page.is_empty() {
            return (all, repeats);
        }
        for (id, env) in page {
            repeats += usize::from(all.insert(id, env).is_some());
        }
        pages += 1;
        assert!(pages < 1000, "too many pages");
    }
}

#[tokio::test]
async fn alice_mails_bob_across_nodes_and_gets_his_signed_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(dir.path(), &[]).await;
    let (alice_key, alice) = key(&a, dir.path(), "alice").await;
    let (bob_key, bob) = key(&b, dir.path(), "bob").await;
    assert_eq!(
        ok_stdout(&a.cli(&["mail", "register", "--key", &alice_key]).await),
        alice
    );
    assert_eq!(
        ok_stdout(&b.cli(&["mail", "register", "--key", &bob_key]).await),
        bob
    );

    // Bob is offline (no client of his runs) while alice sends through her node.
    let secret = "meet me at the usual place at nine";
    let id = eventually(
        &a,
        &[
            "mail", "send", "--key", &alice_key, "--to", &bob, "-m", secret,
        ],
    )
    .await;
    assert!(id.starts_with("b3:"), "{id}");
    assert!(a.metric("mail_forwarded_total").await >= 1.0);

    // Nobody else reads or acknowledges bob's mail: eve's proof shows her (empty) mailbox,
    // a proof claiming bob's key without it is refused, eve's ack of bob's id does nothing.
    let eve = SigningKey::generate();
    assert!(fetch(&b, &eve).await.is_empty());
    let forged = proof::sign(&eve, "POST", "/mail/fetch", now_ms() / 1000, b"").replacen(
        &svc_mailbox::record::identity_text(&eve.public_bytes()),
        &bob,
        1,
    );
    let res = b
        .anonymous()
        .post(format!("{}/mail/fetch", b.url))
        .header(proof::HEADER, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "bad_mail_proof");
    let res = b
        .anonymous()
        .post(format!("{}/mail/fetch", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let ack = serde_json::to_vec(&serde_json::json!({"ids": [id]})).unwrap();
    let res = proven(&b, &eve, reqwest::Method::POST, "/mail/ack", ack)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["acked"], serde_json::json!([]));

    // A tampered envelope: a broken head is refused by the node; a flipped ciphertext byte
    // (which only bob can see) is refused by bob's client and never shown as a message.
    let bob_id = SigningKey::read(Path::new(&bob_key)).unwrap();
    let bob_mail = MailKey::derive(&bob_id);
    let alice_id = SigningKey::read(Path::new(&alice_key)).unwrap();
    let mut forged = envelope::seal(
        &alice_id,
        &bob_id.public_bytes(),
        &bob_mail.public(),
        Lane::Message,
        now_ms(),
        b"tampered with",
        MAX_BUCKET,
    )
    .unwrap();
    let mut bad_head = forged.clone();
    bad_head[0] ^= 1;
    let res = b
        .anonymous()
        .post(format!("{}/mail/send", b.url))
        .body(bad_head)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "invalid_envelope"
    );
    forged[600] ^= 1;
    let res = b
        .anonymous()
        .post(format!("{}/mail/send", b.url))
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "the node cannot see inside: it keeps it");

    let out = b.cli(&["mail", "recv", "--key", &bob_key]).await;
    let shown = ok_stdout(&out);
    assert_eq!(shown, format!("{id} from {alice}\n{secret}"), "{shown}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );

    // No plaintext anywhere under either node's data dir.
    for file in files(&a.data_dir).into_iter().chain(files(&b.data_dir)) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "plaintext in {}",
            file.display()
        );
    }

    // Bob acknowledges: a receipt goes back through alice's mailbox; the message is gone.
    assert_eq!(
        ok_stdout(&b.cli(&["mail", "ack", "--key", &bob_key, &id]).await),
        id
    );
    assert_eq!(
        ok_stdout(&b.cli(&["mail", "recv", "--key", &bob_key]).await),
        ""
    );
    let receipts = eventually(&a, &["mail", "receipts", "--key", &alice_key, "--json"]).await;
    let mut lines = receipts.lines().filter(|l| !l.is_empty());
    let receipt: Value = serde_json::from_str(lines.next().unwrap_or("{}")).unwrap();
    assert_eq!(receipt["message"], id.as_str(), "{receipts}");
    assert_eq!(receipt["by"], bob.as_str());
    assert!(b.metric("mail_acks_total").await >= 1.0);
    // Read once, the receipt is cleared.
    assert_eq!(
        ok_stdout(&a.cli(&["mail", "receipts", "--key", &alice_key]).await),
        ""
    );
}

#[tokio::test]
async fn the_outbox_delivers_when_the_mailbox_node_returns_and_a_full_mailbox_says_so() {
    let dir = tempfile::tempdir().unwrap();
    support::config(&dir.path().join("b"), "[mail]\nquota_messages = 2\n");
    let (a, mut b) = two_nodes(dir.path(), &[]).await;
    let b_p2p = b.p2p_addr().await;
    let (alice_key, _) = key(&a, dir.path(), "alice").await;
    let (bob_key, bob) = key(&b, dir.path(), "bob").await;
    ok_stdout(&b.cli(&["mail", "register", "--key", &bob_key]).await);
    let first = eventually(
        &a,
        &[
            "mail", "send", "--key", &alice_key, "--to", &bob, "-m", "one",
        ],
    )
    .await;

    // B goes away: the send is queued in A's outbox (durably), and delivered when B is back
    // on the same address.
    let seed = a.p2p_addr().await;
    b.signal("-9");
    let _ = b.child.wait().await;
    drop(b);
    let out = a
        .cli(&[
            "mail",
            "send",
            "--key",
            &alice_key,
            "--to",
            &bob,
            "-m",
            "while you were away",
        ])
        .await;
    let second = ok_stdout(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("queued"),
        "{out:?}"
    );
    assert_eq!(a.metric("mail_outbox_depth").await, 1.0);
    let listen = b_p2p.split("/p2p/").next().unwrap().to_owned();
    let b = Node::start(
        &dir.path().join("b"),
        &["--bootstrap", &seed, "--p2p-listen", &listen],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while a.metric("mail_outbox_depth").await > 0.0 {
        assert!(Instant::now() < deadline, "the outbox never delivered");
        sleep(Duration::from_millis(500)).await;
    }
    let got = ok_stdout(&b.cli(&["mail", "recv", "--key", &bob_key, "--json"]).await);
    let ids: HashSet<String> = got
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, HashSet::from([first, second]), "{got}");

    // Two queued is bob's quota: the next send is refused, and alice is told why.
    let out = a
        .cli(&[
            "mail", "send", "--key", &alice_key, "--to", &bob, "-m", "three",
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mailbox_full") && err.contains("full"),
        "{err}"
    );
    assert_eq!(
        a.metric("mail_outbox_depth").await,
        0.0,
        "refused, not queued"
    );
}

#[tokio::test]
async fn kill_9_during_a_storm_of_sends_loses_no_acknowledged_message() {
    const SENDERS: usize = 64;
    const ROUNDS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("b");
    support::config(
        &data,
        "[mail]\nquota_messages = 10000000\nquota_bytes = 1099511627776\n",
    );
    let mut b = Node::start(&data, &[]).await;
    let bob = SigningKey::generate();
    let bob_mail = MailKey::derive(&bob);
    let bob_file = dir.path().join("bob.key");
    bob.write(&bob_file).unwrap();
    ok_stdout(
        &b.cli(&["mail", "register", "--key", bob_file.to_str().unwrap()])
            .await,
    );
    let mut acknowledged: HashSet<String> = HashSet::new();
    for round in 0..ROUNDS {
        // Each sender sends until the node dies under it, recording each 201.
        let url = format!("{}/mail/send", b.url);
        let mut storm = tokio::task::JoinSet::new();
        for s in 0..SENDERS {
            let (url, http) = (url.clone(), reqwest::Client::new());
            let sender = SigningKey::generate();
            let (to, enc) = (bob.public_bytes(), bob_mail.public());
            storm.spawn(async move {
                let mut ok = Vec::new();
                for i in 0..10_000u32 {
                    let text = format!("round {round} sender {s} message {i}");
                    let env = envelope::seal(
                        &sender,
                        &to,
                        &enc,
                        Lane::Message,
                        0,
                        text.as_bytes(),
                        MAX_BUCKET,
                    )
                    .unwrap();
                    match http.post(&url).body(env).send().await {
                        Ok(res) if res.status() == 201 => {
                            let v: Value = res.json().await.unwrap();
                            ok.push(v["id"].as_str().unwrap().to_owned());
                        }
                        _ => break,
                    }
                }
                ok
            });
        }
        sleep(Duration::from_millis(700 + 300 * round as u64)).await;
        b.signal("-9");
        while let Some(ok) = storm.join_next().await {
            acknowledged.extend(ok.unwrap());
        }
        // Restarted once it has exited, as a supervisor would: a client sees the listener
        // close before the kernel has closed the dead process's other files (and their locks).
        let _ = b.child.wait().await;
        drop(b);
        b = Node::start(&data, &[]).await;
        // Every acknowledged message is there, each id once.
        let (got, repeats) = fetch_all(&b, &bob).await;
        assert_eq!(repeats, 0, "an id came back twice");
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|id| !got.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged messages lost",
            missing.len(),
            acknowledged.len()
        );
        for (id, env) in &got {
            assert_eq!(&ron_proto::Address::of(env).to_string(), id);
            envelope::open(&bob_mail, env).unwrap();
        }
        eprintln!(
            "round {round}: {} acknowledged, {} queued after restart",
            acknowledged.len(),
            got.len()
        );
    }
    assert!(
        acknowledged.len() > SENDERS,
        "the storm sent too little to test anything"
    );
}

#[tokio::test]
async fn messages_are_pushed_over_the_websocket_as_they_arrive() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let b = Node::start(&dir.path().join("b"), &[]).await;
    let (alice_key, alice) = key(&b, dir.path(), "alice").await;
    let (bob_key, bob) = key(&b, dir.path(), "bob").await;
    ok_stdout(&b.cli(&["mail", "register", "--key", &bob_key]).await);
    // Without bob's proof the socket is not opened.
    let res = b
        .anonymous()
        .get(format!("{}/mail/ws", b.url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let mut follow = tokio::process::Command::new(support::BIN)
        .args(["mail", "recv", "--key", &bob_key, "--follow"])
        .env("RON_NODE", &b.url)
        .env("RON_TOKEN", &b.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut err = tokio::io::BufReader::new(follow.stderr.take().unwrap()).lines();
    let waiting = tokio::time::timeout(Duration::from_secs(30), err.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(waiting.contains("waiting for mail"), "{waiting}");
    for n in 0..3 {
        let text = format!("pushed {n}");
        let id = ok_stdout(
            &b.cli(&[
                "mail", "send", "--key", &alice_key, "--to", &bob, "-m", &text,
            ])
            .await,
        );
        let head = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("pushed in time")
            .unwrap()
            .unwrap();
        assert_eq!(head, format!("{id} from {alice}"));
        let body = lines.next_line().await.unwrap().unwrap();
        assert_eq!(body, text);
    }
    follow.kill().await.unwrap();
}

#[tokio::test]
async fn oap_1_speaks_the_same_mail_with_the_same_refusals() {
    use ron_client::{ClientError, OapClient, Trust};
    use ron_proto::oap::mail::{ack_body, fetch_target};
    let dir = tempfile::tempdir().unwrap();
    let b = Node::start(&dir.path().join("b"), &["--tls-self-signed"]).await;
    let bob = SigningKey::generate();
    let bob_file = dir.path().join("bob.key");
    bob.write(&bob_file).unwrap();
    ok_stdout(
        &b.cli(&["mail", "register", "--key", bob_file.to_str().unwrap()])
            .await,
    );
    let bob_mail = MailKey::derive(&bob);
    let alice = SigningKey::generate();
    let mut oap = OapClient::connect(b.oap_addr.as_ref().unwrap(), &Trust::Insecure)
        .await
        .unwrap();
    // Sent over OAP/1 (with the sender's proof), read over HTTP and OAP/1 alike.
    let env = envelope::seal(
        &alice,
        &bob.public_bytes(),
        &bob_mail.public(),
        Lane::Message,
        now_ms(),
        b"over oap",
        MAX_BUCKET,
    )
    .unwrap();
    let proof = proof::sign(&alice, "POST", "/mail/send", now_ms() / 1000, &env);
    let (code, sent) = oap.mail_send(&env, Some(proof), None).await.unwrap();
    assert_eq!((code, sent.state.as_str()), (201, "stored"));
    assert_eq!(sent.id, ron_proto::Address::of(&env));
    let target = fetch_target("message", 10);
    let got = oap
        .mail_fetch(
            "message",
            10,
            proof::sign(&bob, "POST", &target, now_ms() / 1000, b""),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, sent.id);
    assert_eq!(
        envelope::open(&bob_mail, &got[0].1).unwrap().content,
        b"over oap"
    );

    // The same refusals as HTTP: a proof for another request, a replayed one, a broken
    // envelope, a size past the limit.
    let wrong = proof::sign(&bob, "POST", "/mail/fetch", now_ms() / 1000, b"");
    let err = oap.mail_fetch("message", 10, wrong).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote { kind, body } if *kind == ron_proto::ErrorKind::Unauthorized && body.code == "bad_mail_proof"),
        "{err:?}"
    );
    let mut broken = env.clone();
    broken[0] ^= 1;
    let err = oap.mail_send(&broken, None, None).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote { body, .. } if body.code == "invalid_envelope"),
        "{err:?}"
    );
    let huge = vec![0u8; MAX_BUCKET * 2];
    let err = oap.mail_send(&huge, None, None).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote { kind, .. } if *kind == ron_proto::ErrorKind::TooLarge),
        "{err:?}"
    );
    // Eve's ack of bob's id does nothing; bob's does.
    let eve = SigningKey::generate();
    let body = ack_body(&[sent.id]);
    let eve_proof = proof::sign(&eve, "POST", "/mail/ack", now_ms() / 1000, &body);
    assert!(
        oap.mail_ack(vec![sent.id], eve_proof)
            .await
            .unwrap()
            .is_empty()
    );
    let bob_proof = proof::sign(&bob, "POST", "/mail/ack", now_ms() / 1000, &body);
    let replay = bob_proof.clone();
    assert_eq!(
        oap.mail_ack(vec![sent.id], bob_proof).await.unwrap(),
        vec![sent.id]
    );
    let err = oap.mail_ack(vec![sent.id], replay).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote { body, .. } if body.code == "bad_mail_proof"),
        "{err:?}"
    );
    assert!(fetch_all(&b, &bob).await.0.is_empty());
}
