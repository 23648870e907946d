//! A full disk: a node whose data dir is a small tmpfs refuses uploads with
//! `507 insufficient_storage` once they would leave less than `storage.min_free_bytes` free
//! (before the body when its length is announced, as the bytes arrive when not), leaves
//! nothing half-written, goes on serving reads, and takes uploads again by itself once there
//! is room. Mounting the tmpfs needs root, as the network-namespace tests do.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message

#[path = "support/node.rs"]
mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{Node, data};

/// A tmpfs of `mib` MiB mounted at a fresh directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "mount a tmpfs: {} (this test needs root)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.file_type().unwrap().is_dir() {
                    files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

async fn put_status(node: &Node, body: Vec<u8>) -> (u16, Value) {
    let res = node
        .http
        .post(format!("{}/put", node.url))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An upload of `body` on a connection of its own (announced with `content-length`, or
/// chunked), sent for as long as the node reads it: the node's answer, as text. A node that
/// refuses early answers and closes while the body is still on its way, which a pooled HTTP
/// client reports as a broken pipe instead of the answer.
async fn raw_put(node: &Node, body: &[u8], announced: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = node.url.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let framing = if announced {
        format!("content-length: {}", body.len())
    } else {
        "transfer-encoding: chunked".to_owned()
    };
    let mut request = format!(
        "POST /put HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {}\r\nconnection: close\r\n{framing}\r\n\r\n",
        node.token
    )
    .into_bytes();
    if announced {
        request.extend_from_slice(body);
    } else {
        for piece in body.chunks(1 << 20) {
            request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            request.extend_from_slice(piece);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
    }
    let (mut read, mut write) = conn.split();
    let send = async {
        let _ = write.write_all(&request).await;
    };
    let mut answer = Vec::new();
    let receive = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        read.read_to_end(&mut answer),
    );
    let (_, _) = tokio::join!(send, receive);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_507_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let _fs = Tmpfs::mount(&data_dir, 64);
    support::config(
        &data_dir,
        "[storage]\nmin_free_bytes = 8388608\ndurability = \"none\"\n",
    );
    let node = Node::start(&data_dir, &[]).await;
    let kept = data(4 << 20, 1);
    let addr = node.put(kept.clone()).await;

    // Fill the file system until 12 MiB are free: an 8 MiB upload would leave less than the
    // 8 MiB kept free.
    let free = node.metric("storage_free_bytes").await as u64;
    assert!(free > 20 << 20, "{free} bytes free on the tmpfs");
    std::fs::write(
        data_dir.join("filler"),
        vec![7u8; (free - (12 << 20)) as usize],
    )
    .unwrap();
    let store = data_dir.join("store");
    let chunks_before = files(&store.join("chunks"));

    // Announced: refused before its body is read.
    let answer = raw_put(&node, &data(8 << 20, 2), true).await;
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer:.300}");
    assert!(
        answer.contains("\"code\":\"insufficient_storage\"") && answer.contains("no room"),
        "{answer:.600}"
    );
    // Not announced: refused as its chunks would pass the reserve; what it wrote is removed.
    let answer = raw_put(&node, &data(8 << 20, 3), false).await;
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer:.300}");
    assert!(
        answer.contains("\"code\":\"insufficient_storage\""),
        "{answer:.600}"
    );
    // The refused upload's chunk jobs finish on their own once it is dropped: wait until
    // `tmp/` is empty and the chunks are back to what they were (bounded: 20 s).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while files(&store.join("tmp")) != 0 || files(&store.join("chunks")) != chunks_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {} in tmp/, {} chunks (was {chunks_before})",
            files(&store.join("tmp")),
            files(&store.join("chunks"))
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(node.metric("storage_writes_refused_full_total").await >= 1.0);

    // Reads go on.
    let (status, got) = node.get_bytes(&format!("/o/{addr}")).await;
    assert_eq!(status, 200);
    assert!(got == kept, "the stored object reads back whole");

    // Room again: uploads resume by themselves.
    std::fs::remove_file(data_dir.join("filler")).unwrap();
    let big = data(8 << 20, 3);
    let (status, body) = put_status(&node, big.clone()).await;
    assert_eq!(status, 201, "{body}");
    let again = body["address"].as_str().unwrap();
    let (status, got) = node.get_bytes(&format!("/o/{again}")).await;
    assert_eq!(status, 200);
    assert!(got == big);
    println!("a 64 MiB tmpfs: 507 at the 8 MiB reserve, reads served, uploads resumed");
}
