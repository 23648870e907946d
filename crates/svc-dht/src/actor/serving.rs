//! Serving peers and asking them: range requests answered through the node's `Source`
//! (bounded in all and per peer, paced per peer), and this node's requests to others.

use super::*;

impl Actor {
    pub(super) fn served(&mut self, peer: PeerId) {
        self.serving -= 1;
        if let Some(n) = self.serving_by.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.serving_by.remove(&peer);
            }
        }
    }

    pub(super) fn transfer(
        &mut self,
        event: request_response::Event<Traced, TransferReply>,
        served: &mpsc::Sender<Served>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                } else if let Some(id) = self.by_hedge.remove(&request_id) {
                    let found = self.hedge_answer(response);
                    self.lookup_part(id, Ok(found), true);
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(match error {
                        request_response::OutboundFailure::Timeout => DhtError::Timeout,
                        other => DhtError::Peer(other.to_string()),
                    }));
                } else if let Some(id) = self.by_hedge.remove(&request_id) {
                    self.lookup_part(id, Ok(HashSet::new()), true);
                }
            }
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request: Traced { request, trace },
                        channel,
                        ..
                    },
                ..
            } => self.request(peer, request, trace, channel, served),
            _ => {}
        }
    }

    pub(super) fn request(
        &mut self,
        peer: PeerId,
        request: TransferRequest,
        trace: Option<TraceParent>,
        channel: ResponseChannel<TransferReply>,
        served: &mpsc::Sender<Served>,
    ) {
        if let TransferRequest::Providers { addr } = request {
            let reply = self.providers_held(&addr);
            let _ = self
                .swarm
                .behaviour_mut()
                .transfer
                .send_response(channel, reply);
            return;
        }
        let by_peer = self.serving_by.get(&peer).copied().unwrap_or(0);
        let refused = if self.serving >= SERVING {
            let wait = Duration::from_millis(1000);
            Some(refusal(ErrorKind::Overloaded, "too many transfers", wait))
        } else if by_peer >= SERVING_PER_PEER {
            let wait = Duration::from_millis(500);
            Some(refusal(
                ErrorKind::RateLimited,
                "too many transfers from you",
                wait,
            ))
        } else {
            None
        };
        let in_debt = match (&refused, &request, &self.settle) {
            (None, TransferRequest::Range { .. }, Some(settle)) => settle.may_serve(&peer).err(),
            _ => None,
        };
        let refused = refused.or_else(|| in_debt.map(debt_refusal));
        let pace = match (&refused, &request) {
            (None, TransferRequest::Range { start, end, .. }) => {
                self.pace(peer, end.saturating_sub(*start))
            }
            _ => Ok(Duration::ZERO),
        };
        let reply = match (refused, pace) {
            (Some(reply), _) => Some(reply),
            (None, Err(wait)) => Some(refusal(ErrorKind::RateLimited, "over its byte rate", wait)),
            (None, Ok(_)) => None,
        };
        if let Some(reply) = reply {
            let _ = self
                .swarm
                .behaviour_mut()
                .transfer
                .send_response(channel, reply);
            return;
        }
        let pace = pace.unwrap_or_default();
        self.serving += 1;
        *self.serving_by.entry(peer).or_default() += 1;
        let (source, served) = (self.source.clone(), served.clone());
        let settle = self.settle.clone();
        let answer_it = async move {
            let reply = match (request, settle) {
                (TransferRequest::Cheque(cheque), Some(settle)) => settle.cash(peer, cheque).await,
                (TransferRequest::Cheque(_), None) => {
                    let kind = ErrorKind::Forbidden;
                    TransferReply::ChequeRefused {
                        kind,
                        body: ErrorBody::new(kind, "this node takes no cheques"),
                    }
                }
                (request, _) => answer(source.as_ref(), peer, request).await,
            };
            // Paced after reading: the read overlaps the wait.
            tokio::time::sleep(pace).await;
            let _ = served.send((peer, channel, reply)).await;
        };
        match trace {
            // Part of the sender's trace: served (and logged) under its trace id, as a child
            // of the sender's span when traces are recorded.
            Some(parent) => {
                let context = supervisor::trace::start(Some(parent));
                let span = supervisor::trace::edge_span(
                    context,
                    || tracing::info_span!(parent: None, "peer.serve", request_id = %parent.trace_hex()),
                );
                self.answering.spawn(supervisor::trace::scope(
                    context,
                    answer_it.instrument(span),
                ));
            }
            None => drop(self.answering.spawn(answer_it)),
        }
    }

    /// The provider records held here for `addr`, with the addresses known for each.
    pub(super) fn providers_held(&mut self, addr: &Address) -> TransferReply {
        use kad::store::RecordStore;
        let me = *self.swarm.local_peer_id();
        let records = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .providers(&key(addr));
        let providers = records
            .into_iter()
            .take(MAX_PROVIDERS)
            .map(|record| {
                let addrs = if record.provider == me {
                    self.listen.clone()
                } else if record.addresses.is_empty() {
                    // Providers announce only confirmed external addresses, often none:
                    // what the routing table knows of the peer.
                    self.routing_addresses(record.provider)
                } else {
                    record.addresses
                };
                ProviderEntry {
                    peer: record.provider.to_string(),
                    addrs: addrs
                        .iter()
                        .take(MAX_ADDRS)
                        .map(ToString::to_string)
                        .collect(),
                }
            })
            .collect();
        TransferReply::Providers { providers }
    }

    /// Charges `bytes` to `peer`'s rate (`p2p.peer_bytes_per_sec`, live): how long its answer
    /// waits, or `Err(retry)` when that would be over [`MAX_PACE`].
    pub(super) fn pace(&mut self, peer: PeerId, bytes: u64) -> Result<Duration, Duration> {
        let rate = self.config.get::<P2pSection>().peer_bytes_per_sec;
        if rate == 0 {
            return Ok(Duration::ZERO);
        }
        let now = Instant::now();
        if self.paced.len() > 4096 {
            self.paced.retain(|_, t| *t > now);
        }
        let clear = self.paced.get(&peer).copied().unwrap_or(now).max(now);
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let wait = (clear + cost).saturating_duration_since(now + BURST);
        if wait > MAX_PACE {
            return Err(wait - MAX_PACE);
        }
        self.paced.insert(peer, clear + cost);
        Ok(wait)
    }
}

pub(super) fn refusal(kind: ErrorKind, message: &str, retry: Duration) -> TransferReply {
    let ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX).max(1);
    TransferReply::Error {
        kind,
        body: ErrorBody::new(kind, message).retry_after_ms(ms),
    }
}

/// A range refused to a peer owing `owed` credits, past its limit: 429 with what it owes,
/// which its node pays with a cheque before it asks again.
fn debt_refusal(owed: u64) -> TransferReply {
    let kind = ErrorKind::RateLimited;
    let mut body = ErrorBody::new(
        kind,
        format!("you owe this node {owed} credits, past its limit: send a cheque"),
    )
    .retry_after_ms(1000);
    body.payment = Some(Box::new(ron_proto::PaymentDue {
        price: Some(owed),
        balance: Some(-i64::try_from(owed).unwrap_or(i64::MAX)),
        pow: None,
    }));
    TransferReply::Error { kind, body }
}

pub(super) fn not_found(addr: &Address) -> TransferReply {
    let body = ErrorBody::new(ErrorKind::NotFound, format!("no object {addr}"));
    TransferReply::Error {
        kind: ErrorKind::NotFound,
        body,
    }
}

pub(super) async fn answer(
    source: &dyn Source,
    peer: PeerId,
    request: TransferRequest,
) -> TransferReply {
    match request {
        // Answered by the actor from its records, never here.
        TransferRequest::Providers { addr } => not_found(&addr),
        // Answered by the settlement, never here.
        TransferRequest::Cheque(_) => {
            let kind = ErrorKind::Forbidden;
            TransferReply::ChequeRefused {
                kind,
                body: ErrorBody::new(kind, "this node takes no cheques"),
            }
        }
        TransferRequest::Keep(keep) => match source.keep(peer, keep).await {
            Ok(lease_s) => TransferReply::Kept { lease_s },
            Err((kind, message)) => TransferReply::Error {
                kind,
                body: ErrorBody::new(kind, message),
            },
        },
        TransferRequest::Hold { addrs, lease_s } => {
            let (held, lease_s) = source.hold(addrs, lease_s).await;
            TransferReply::Held { held, lease_s }
        }
        TransferRequest::Have { addr } => match source.size(addr).await {
            Some(size) => TransferReply::Have { size },
            None => not_found(&addr),
        },
        TransferRequest::Range { addr, start, end } => {
            if end <= start || end - start > MAX_RANGE {
                let body = ErrorBody::new(
                    ErrorKind::BadInput,
                    format!("a range is 1 to {MAX_RANGE} bytes"),
                );
                return TransferReply::Error {
                    kind: ErrorKind::BadInput,
                    body,
                };
            }
            if start % GROUP_BYTES != 0 {
                let body = ErrorBody::new(
                    ErrorKind::BadInput,
                    format!("a range starts and ends at multiples of {GROUP_BYTES}"),
                );
                return TransferReply::Error {
                    kind: ErrorKind::BadInput,
                    body,
                };
            }
            match source.encoded(addr, start, end).await {
                Ok(Some((size, _))) if start >= size => {
                    let body = ErrorBody::new(
                        ErrorKind::RangeNotSatisfiable,
                        format!("the object has {size} bytes"),
                    );
                    TransferReply::Error {
                        kind: ErrorKind::RangeNotSatisfiable,
                        body,
                    }
                }
                Ok(Some((size, _))) if end % GROUP_BYTES != 0 && end < size => {
                    let body = ErrorBody::new(
                        ErrorKind::BadInput,
                        format!("a range ends at a multiple of {GROUP_BYTES} or the object's end"),
                    );
                    TransferReply::Error {
                        kind: ErrorKind::BadInput,
                        body,
                    }
                }
                Ok(Some((size, encoded))) => TransferReply::Range {
                    size,
                    start,
                    end: end.min(size),
                    encoded,
                },
                Ok(None) => not_found(&addr),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot serve a range to a peer");
                    let body = ErrorBody::new(ErrorKind::Internal, "internal error");
                    TransferReply::Error {
                        kind: ErrorKind::Internal,
                        body,
                    }
                }
            }
        }
    }
}
