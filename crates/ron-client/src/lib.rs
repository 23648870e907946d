//! A client for a node's OAP/1 listener (TLS 1.3, ALPN `ron/1`): HELLO on connect, then app
//! 0x0101 objects. `get` hashes what arrives and fails unless the bytes are exactly the
//! object's; `put` streams a reader in frames of at most the negotiated `max_frame`.
//!
//! ```no_run
//! # async fn run() -> Result<(), ron_client::ClientError> {
//! use ron_client::{OapClient, Trust};
//! let mut node = OapClient::connect("127.0.0.1:7702", &Trust::Insecure).await?;
//! let stored = node.put(&b"hello world"[..], Some(11), None, Some("owner token")).await?;
//! let mut copy = Vec::new();
//! node.get(&stored.address, None, &mut copy).await?;
//! assert_eq!(copy, b"hello world");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use ron_proto::oap::objects::{GetReply, ObjectRequest, PutReply};
use ron_proto::oap::{
    APP_HELLO, APP_OBJECTS, CodecError, DEFAULT_MAX_FRAME, Flags, Frame, FrameCodec, HEADER_LEN,
    Hello,
};
use ron_proto::{Address, ErrorBody, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Connecting (TCP and TLS) takes at most this long.
const CONNECT: Duration = Duration::from_secs(10);

/// Which server certificates to accept.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates issued by (or equal to) one in this PEM file.
    Ca(PathBuf),
    /// Any certificate: encryption without authentication, for development.
    Insecure,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error.
    #[error("{} ({}, code {})", body.message, body.code, kind.status())]
    Remote {
        /// Its kind.
        kind: ErrorKind,
        /// The node's error body.
        body: ErrorBody,
    },
    /// Connecting, TLS, or the connection broke.
    #[error("{0}")]
    Io(String),
    /// The node broke the protocol, or sent bytes that are not the object.
    #[error("{0}")]
    Protocol(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(format!("{what}: {e}"))
}

/// One connection to a node's OAP/1 listener.
pub struct OapClient {
    rd: FramedRead<ReadHalf<TlsStream<TcpStream>>, FrameCodec>,
    wr: FramedWrite<WriteHalf<TlsStream<TcpStream>>, FrameCodec>,
    max_frame: usize,
    next_corr: u64,
    hello: Hello,
}

impl OapClient {
    /// Connects to `addr` (`host:port`), completes TLS with ALPN `ron/1`, and exchanges HELLO.
    pub async fn connect(addr: &str, trust: &Trust) -> Result<Self, ClientError> {
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| ClientError::Io(format!("{addr}: expected HOST:PORT")))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Io(format!("{host}: {e}")))?;
        let connector = TlsConnector::from(client_config(trust)?);
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| io(&format!("cannot connect to {addr}"), e))?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| io("TLS handshake failed", e))
        };
        let tls = tokio::time::timeout(CONNECT, connect)
            .await
            .map_err(|_| ClientError::Io(format!("{addr}: timed out connecting")))??;
        let (rd, wr) = tokio::io::split(tls);
        let codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut client = Self {
            rd: FramedRead::new(rd, codec),
            wr: FramedWrite::new(wr, codec),
            max_frame: DEFAULT_MAX_FRAME,
            next_corr: 1,
            hello: Hello::default(),
        };
        let corr = client.corr();
        let mut hello = Frame::new(Flags::REQ | Flags::START | Flags::END, APP_HELLO, corr);
        hello.payload = Bytes::from_static(b"{}");
        client.send(hello).await?;
        let reply = client.expect_start(corr).await?;
        let theirs: Hello = serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::Protocol(format!("bad HELLO: {e}")))?;
        client.max_frame = DEFAULT_MAX_FRAME
            .min(theirs.max_frame as usize)
            .max(HEADER_LEN + 1);
        client.hello = theirs;
        Ok(client)
    }

    /// What the node said in HELLO.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    fn corr(&mut self) -> u64 {
        let c = self.next_corr;
        self.next_corr += 1;
        c
    }

    async fn send(&mut self, frame: Frame) -> Result<(), ClientError> {
        self.wr.send(frame).await.map_err(codec_error)
    }

    async fn next(&mut self) -> Result<Frame, ClientError> {
        match self.rd.next().await {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => Err(codec_error(e)),
            None => Err(ClientError::Io("the node closed the connection".into())),
        }
    }

    /// The next frame of stream `corr`, which must be a response start with code below 400.
    async fn expect_start(&mut self, corr: u64) -> Result<Frame, ClientError> {
        let frame = self.next().await?;
        if frame.corr_id != corr && frame.code >= 400 {
            // A connection-level error (corr 0): framing was refused.
            return Err(remote(&frame));
        }
        if frame.corr_id != corr || !frame.flags.contains(Flags::RESP | Flags::START) {
            return Err(ClientError::Protocol(format!(
                "unexpected frame {:?} on stream {}",
                frame.flags, frame.corr_id
            )));
        }
        if frame.code >= 400 {
            return Err(remote(&frame));
        }
        Ok(frame)
    }

    /// A request's START frame.
    fn start(&self, corr: u64, request: &ObjectRequest, token: Option<&str>, end: bool) -> Frame {
        let mut flags = Flags::REQ | Flags::START;
        if end {
            flags |= Flags::END;
        }
        let mut frame = Frame::new(flags, APP_OBJECTS, corr);
        frame.payload = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
        if let Some(t) = token {
            frame.cap = Bytes::copy_from_slice(t.as_bytes());
        }
        frame
    }

    /// Fetches `addr` into `out`, verifying it: fails (having written only part) if the bytes
    /// are not exactly the object's. Returns its size.
    pub async fn get<W: AsyncWrite + Unpin>(
        &mut self,
        addr: &Address,
        token: Option<&str>,
        out: &mut W,
    ) -> Result<u64, ClientError> {
        let corr = self.corr();
        let request = ObjectRequest::Get { addr: *addr };
        self.send(self.start(corr, &request, token, true)).await?;
        let head = self.expect_start(corr).await?;
        let reply: GetReply = serde_json::from_slice(&head.payload)
            .map_err(|e| ClientError::Protocol(format!("bad get reply: {e}")))?;
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        let mut ended = head.flags.contains(Flags::END);
        while !ended {
            let frame = self.next().await?;
            if frame.corr_id != corr || !frame.flags.contains(Flags::RESP) {
                return Err(ClientError::Protocol("frame outside the stream".into()));
            }
            if frame.code >= 400 {
                return Err(remote(&frame));
            }
            received += frame.payload.len() as u64;
            if received > reply.size {
                return Err(ClientError::Protocol("more bytes than announced".into()));
            }
            hasher.update(&frame.payload);
            out.write_all(&frame.payload)
                .await
                .map_err(|e| io("cannot write the output", e))?;
            ended = frame.flags.contains(Flags::END);
        }
        out.flush()
            .await
            .map_err(|e| io("cannot write the output", e))?;
        let got = Address::from_bytes(*hasher.finalize().as_bytes());
        if received != reply.size || got != *addr {
            return Err(ClientError::Protocol(format!(
                "received {received} bytes hashing to {got}, not {addr}"
            )));
        }
        Ok(received)
    }

    /// Stores what `body` yields (`size` when known, checked by the node before any byte),
    /// protected as the node's `storage.durability` says.
    pub async fn put<R: AsyncRead + Unpin>(
        &mut self,
        body: R,
        size: Option<u64>,
        media_type: Option<String>,
        token: Option<&str>,
    ) -> Result<PutReply, ClientError> {
        self.put_with(body, size, media_type, None, token).await
    }

    /// Like [`Client::put`], protected with `durability` (`"K+M"` or `"none"`) when given.
    pub async fn put_with<R: AsyncRead + Unpin>(
        &mut self,
        mut body: R,
        size: Option<u64>,
        media_type: Option<String>,
        durability: Option<String>,
        token: Option<&str>,
    ) -> Result<PutReply, ClientError> {
        let corr = self.corr();
        let request = ObjectRequest::Put {
            size,
            media_type,
            expect: None,
            durability,
        };
        self.send(self.start(corr, &request, token, false)).await?;
        let per_frame = (self.max_frame - HEADER_LEN).min(256 << 10);
        let mut buf = BytesMut::with_capacity(per_frame);
        loop {
            buf.clear();
            buf.reserve(per_frame);
            let mut limited = (&mut body).take(per_frame as u64);
            let mut n = 0;
            loop {
                let read = limited
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| io("cannot read the input", e))?;
                if read == 0 {
                    break;
                }
                n += read;
            }
            let last = n < per_frame;
            let mut flags = Flags::REQ;
            if last {
                flags |= Flags::END;
            }
            let mut frame = Frame::new(flags, APP_OBJECTS, corr);
            frame.payload = buf.split().freeze();
            // The node may refuse early (401, 413): stop sending as soon as it does.
            tokio::select! {
                biased;
                early = self.rd.next() => {
                    return match early {
                        Some(Ok(f)) if f.code >= 400 => Err(remote(&f)),
                        Some(Ok(_)) => Err(ClientError::Protocol("reply before the upload ended".into())),
                        Some(Err(e)) => Err(codec_error(e)),
                        None => Err(ClientError::Io("the node closed the connection".into())),
                    };
                }
                sent = self.wr.send(frame) => sent.map_err(codec_error)?,
            }
            if last {
                break;
            }
        }
        let reply = self.expect_start(corr).await?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::Protocol(format!("bad put reply: {e}")))
    }

    /// The node's stat JSON for `addr`.
    pub async fn stat(
        &mut self,
        addr: &Address,
        token: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let corr = self.corr();
        let request = ObjectRequest::Stat { addr: *addr };
        self.send(self.start(corr, &request, token, true)).await?;
        let reply = self.expect_start(corr).await?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::Protocol(format!("bad stat reply: {e}")))
    }
}

/// App 0x0201, the mailbox: the operations of `/mail/send`, `/mail/fetch` and `/mail/ack`.
impl OapClient {
    fn mail_frame(corr: u64, flags: Flags, payload: Vec<u8>, token: Option<&str>) -> Frame {
        let mut frame = Frame::new(flags, ron_proto::oap::APP_MAILBOX, corr);
        frame.payload = Bytes::from(payload);
        if let Some(t) = token {
            frame.cap = Bytes::copy_from_slice(t.as_bytes());
        }
        frame
    }

    /// Sends an envelope (`proof`: the sender's, optional; `token`: lets the node forward
    /// it): the node's answer and its code (201 stored or delivered, 202 queued).
    pub async fn mail_send(
        &mut self,
        envelope: &[u8],
        proof: Option<String>,
        token: Option<&str>,
    ) -> Result<(u16, ron_proto::oap::mail::SendReply), ClientError> {
        let corr = self.corr();
        let request = ron_proto::oap::mail::MailRequest::Send {
            size: envelope.len() as u64,
            proof,
        };
        let head = serde_json::to_vec(&request).unwrap_or_default();
        self.send(Self::mail_frame(
            corr,
            Flags::REQ | Flags::START,
            head,
            token,
        ))
        .await?;
        let per_frame = (self.max_frame - HEADER_LEN).min(256 << 10);
        let mut pieces = envelope.chunks(per_frame).peekable();
        if pieces.peek().is_none() {
            self.send(Self::mail_frame(
                corr,
                Flags::REQ | Flags::END,
                vec![],
                None,
            ))
            .await?;
        }
        while let Some(piece) = pieces.next() {
            let flags = if pieces.peek().is_none() {
                Flags::REQ | Flags::END
            } else {
                Flags::REQ
            };
            self.send(Self::mail_frame(corr, flags, piece.to_vec(), None))
                .await?;
        }
        let reply = self.expect_start(corr).await?;
        let answer = serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::Protocol(format!("bad send reply: {e}")))?;
        Ok((reply.code, answer))
    }

    /// Up to `limit` visible envelopes of the prover's `lane`: each id with its bytes.
    pub async fn mail_fetch(
        &mut self,
        lane: &str,
        limit: usize,
        proof: String,
    ) -> Result<Vec<(Address, Vec<u8>)>, ClientError> {
        let corr = self.corr();
        let request = ron_proto::oap::mail::MailRequest::Fetch {
            lane: lane.to_owned(),
            limit,
            proof,
        };
        let head = serde_json::to_vec(&request).unwrap_or_default();
        self.send(Self::mail_frame(
            corr,
            Flags::REQ | Flags::START | Flags::END,
            head,
            None,
        ))
        .await?;
        let first = self.expect_start(corr).await?;
        let reply: ron_proto::oap::mail::FetchReply = serde_json::from_slice(&first.payload)
            .map_err(|e| ClientError::Protocol(format!("bad fetch reply: {e}")))?;
        let total: u64 = reply.messages.iter().map(|m| m.size).sum();
        let mut bytes = Vec::new();
        let mut ended = first.flags.contains(Flags::END);
        while !ended {
            let frame = self.next().await?;
            if frame.corr_id != corr || !frame.flags.contains(Flags::RESP) {
                return Err(ClientError::Protocol("frame outside the stream".into()));
            }
            if frame.code >= 400 {
                return Err(remote(&frame));
            }
            if (bytes.len() + frame.payload.len()) as u64 > total {
                return Err(ClientError::Protocol("more bytes than announced".into()));
            }
            bytes.extend_from_slice(&frame.payload);
            ended = frame.flags.contains(Flags::END);
        }
        if bytes.len() as u64 != total {
            return Err(ClientError::Protocol("fewer bytes than announced".into()));
        }
        let mut out = Vec::with_capacity(reply.messages.len());
        let mut at = 0usize;
        for m in reply.messages {
            let end = at + usize::try_from(m.size).unwrap_or(usize::MAX);
            out.push((m.id, bytes[at..end].to_vec()));
            at = end;
        }
        Ok(out)
    }

    /// Deletes these of the prover's messages: the ids that were queued.
    pub async fn mail_ack(
        &mut self,
        ids: Vec<Address>,
        proof: String,
    ) -> Result<Vec<Address>, ClientError> {
        let corr = self.corr();
        let request = ron_proto::oap::mail::MailRequest::Ack { ids, proof };
        let head = serde_json::to_vec(&request).unwrap_or_default();
        self.send(Self::mail_frame(
            corr,
            Flags::REQ | Flags::START | Flags::END,
            head,
            None,
        ))
        .await?;
        let reply = self.expect_start(corr).await?;
        let answer: ron_proto::oap::mail::AckReply = serde_json::from_slice(&reply.payload)
            .map_err(|e| ClientError::Protocol(format!("bad ack reply: {e}")))?;
        Ok(answer.acked)
    }
}

fn remote(frame: &Frame) -> ClientError {
    let kind = ErrorKind::from_status(frame.code).unwrap_or(ErrorKind::Internal);
    let body = serde_json::from_slice(&frame.payload)
        .unwrap_or_else(|_| ErrorBody::new(kind, "the node sent no error body"));
    ClientError::Remote { kind, body }
}

fn codec_error(e: CodecError) -> ClientError {
    match e {
        CodecError::Frame(f) => ClientError::Protocol(f.to_string()),
        other => ClientError::Io(other.to_string()),
    }
}

/// The TLS client configuration [`OapClient::connect`] uses (ALPN `ron/1`), for callers that
/// speak to the listener directly.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = ron_transport::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| io("TLS", e))?;
    let mut config = match trust {
        Trust::Ca(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| io(&path.display().to_string(), e))?;
            for cert in certs {
                let cert = cert.map_err(|e| io(&path.display().to_string(), e))?;
                roots
                    .add(cert)
                    .map_err(|e| io(&path.display().to_string(), e))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Io(format!(
                    "{}: no certificate in the file",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"ron/1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate, still checking that the server holds its key (`--insecure`).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
