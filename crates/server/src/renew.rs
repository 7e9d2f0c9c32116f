//! Long streams paid chunk by chunk: a voucher per chunk, posted by the client mid-stream
//! (the scheme's streaming pattern, as the reference batch-settlement streaming examples speak
//! it). For a route priced [`Pricing::Chunked`](crate::Pricing::Chunked).
//!
//! The route's offer `amount` is the price of one chunk of `tokens` units
//! ([`StreamMeter::units`]). The request's voucher pays the first chunk. Then:
//!
//! 1. The upstream's event stream is passed through event by event (never buffered beyond the
//!    line being read). When a chunk's units have gone out, at the end of that event, the chunk
//!    is committed (durably, its full price) and the stream **pauses**: the upstream is not read
//!    (TCP holds it back) and the gateway sends
//!    `event: x402-voucher-needed` with `{channelId, chargedCumulativeAmount, balance,
//!    nextMaxClaimableAmount, voucherEndpoint}`.
//! 2. The client signs the next voucher (ceiling = charged + one chunk; or a deposit payload to
//!    top the channel up) and posts it in `PAYMENT-SIGNATURE` to `POST
//!    /x402/voucher/{channelId}` on the same port. The gateway checks it exactly as a paid
//!    request's payment ([`Engine::begin`]) and answers the post: `200` and the accepted state,
//!    or `402` with the corrective `PAYMENT-REQUIRED` — a wrong voucher does not end the stream,
//!    so that nobody who merely knows the (public) channel id can break someone's stream.
//! 3. On a good voucher the stream sends `event: x402-voucher-accepted` with
//!    `{channelId, newChargedCumulativeAmount, balance, signedMaxClaimable, toppedUp}` and
//!    resumes. With none within `voucher_wait_secs` it sends `event: x402-error`
//!    (`{code: "voucher_timeout"}`) and ends.
//! 4. When the upstream ends, the last, partial chunk is charged prorated
//!    ([`ChunkTerms::prorate`], rounded down), `event: x402-settlement` carries
//!    `{channelId, chargedCumulativeAmount, signedMaxClaimable}`, and the `PAYMENT-RESPONSE`
//!    trailer the last commit's response with `chargedAmount` the whole request's charge.
//!
//! A stream the upstream breaks off, or one whose client goes away, is charged the chunks
//! already committed and the delivered part of the current one, prorated; nothing else. A
//! commit that cannot be made durable ends the stream with `x402-error` (the chunk is not
//! charged). A SIGKILL loses at most the current chunk's reservation, which is the payer's gain:
//! every chunk committed before it is on disk.
//!
//! **Where this follows the reference examples and where not.** Same events, fields, endpoint,
//! header, proration and trailer, so the reference streaming client pays paychan unchanged.
//! Differences, each on the safe side: the post is answered after the voucher is checked (the
//! examples answer `{ok: true}` first and report a bad voucher only in the stream); a bad post
//! does not end the stream; the chunk is committed when its last event has been sent, not
//! before the next upstream read; the upstream's own events pass through verbatim (no `event:
//! data` re-framing and no `event: done`), since the gateway fronts any event-stream API.
//! Non-streamed answers on a chunked route are charged one chunk (what the voucher reserved).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use alloy_primitives::B256;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use paychan_core::{
    ErrorCode, Rejection,
    batch::{BatchPayload, BatchRequirements, ResponseExtra},
    codec,
    x402::{PaymentPayload, ResourceInfo, SettlementResponse},
};
use paychan_engine::{Begin, Clock, Decline, Engine, OnchainSource, PaymentFacilitator, Ticket};
use paychan_store::Store;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::{
    paid::{PaidState, classify_decode_error, decline_response, plain_error},
    pricing::{ChunkTerms, StreamMeter},
};

/// The side endpoint's path prefix; the channel id follows.
pub const VOUCHER_PATH: &str = "/x402/voucher/";

/// How long a post waits for the stream's verdict.
const POST_WAIT: Duration = Duration::from_secs(30);

/// `POST /x402/voucher/{id}`: hands the posted voucher to the stream of channel `id` that waits
/// for one and answers with its verdict: `200` and the accepted state, `402` with the
/// corrective offer, `400` for a missing or malformed payment, `404` when no stream of that
/// channel waits.
pub(crate) async fn post<S, C, F, K>(
    st: &PaidState<S, C, F, K>,
    renewals: &Renewals,
    id: &str,
    headers: &HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<B256>() else {
        return plain_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::ChannelIdInvalid.as_str(),
            "the path ends in a channel id (0x and 64 hex digits)",
        );
    };
    let Some((tx, offer)) = renewals.sender(&id) else {
        return plain_error(
            StatusCode::NOT_FOUND,
            "no_pending_voucher",
            "no stream of this channel is waiting for a voucher",
        );
    };
    let Some(raw) = headers.get(codec::PAYMENT_SIGNATURE) else {
        return plain_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload.as_str(),
            "missing PAYMENT-SIGNATURE",
        );
    };
    let max = st.options.max_header_bytes;
    let raw = raw.to_str().unwrap_or_default();
    let payload: PaymentPayload<BatchPayload> = match codec::decode_limited(raw, max) {
        Ok(p) => p,
        Err(e) => {
            let r = classify_decode_error(raw, max, &e);
            return plain_error(StatusCode::BAD_REQUEST, r.code.as_str(), &r.message);
        }
    };
    let channel = match &payload.payload {
        BatchPayload::Voucher(v) => v.voucher.channel_id,
        BatchPayload::Deposit(d) => d.voucher.channel_id,
        other => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::PayloadType.as_str(),
                &format!(
                    "the voucher endpoint takes a voucher or a deposit, not a {}",
                    other.kind()
                ),
            );
        }
    };
    if channel != id {
        return plain_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload.as_str(),
            "the voucher is for another channel than the path names",
        );
    }
    let (reply, verdict) = oneshot::channel();
    if tx.try_send(Posted { payload, reply }).is_err() {
        let mut r = plain_error(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "vouchers for this stream are being checked",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let resource = ResourceInfo {
        url: format!("{VOUCHER_PATH}{id}"),
        description: None,
        mime_type: None,
    };
    match tokio::time::timeout(POST_WAIT, verdict).await {
        Ok(Ok(Ok(a))) => {
            let mut body = a.json();
            body["ok"] = serde_json::Value::Bool(true);
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Ok(Ok(Err(d))) => decline_response(d, &offer, resource, StatusCode::PAYMENT_REQUIRED),
        // The stream ended while the voucher waited, or did not answer in time.
        _ => plain_error(
            StatusCode::CONFLICT,
            "stream_ended",
            "the stream is no longer waiting for this voucher",
        ),
    }
}

/// Wrong vouchers a paused stream takes before it gives up (each is a signature check).
const MAX_BAD_POSTS: u32 = 16;

/// What a paused stream accepted: the fields of `x402-voucher-accepted`.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) channel_id: B256,
    pub(crate) charged: u128,
    pub(crate) balance: u128,
    pub(crate) ceiling: u128,
    pub(crate) topped_up: bool,
}

impl Accepted {
    fn json(&self) -> serde_json::Value {
        json!({
            "channelId": self.channel_id.to_string(),
            "newChargedCumulativeAmount": self.charged.to_string(),
            "balance": self.balance.to_string(),
            "signedMaxClaimable": self.ceiling.to_string(),
            "toppedUp": self.topped_up,
        })
    }
}

/// A voucher posted to the side endpoint, and where its verdict goes.
pub(crate) struct Posted {
    pub(crate) payload: PaymentPayload<BatchPayload>,
    pub(crate) reply: oneshot::Sender<Result<Accepted, Decline>>,
}

/// Streams paused for a voucher, by channel.
#[derive(Default)]
pub(crate) struct Renewals {
    waiting: Mutex<HashMap<B256, (mpsc::Sender<Posted>, BatchRequirements)>>,
}

/// A stream's place in [`Renewals`]; leaving it (drop) removes it.
struct Waiting {
    renewals: Arc<Renewals>,
    id: B256,
    rx: mpsc::Receiver<Posted>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut w) = self.renewals.waiting.lock() {
            w.remove(&self.id);
        }
    }
}

impl Renewals {
    /// Where to post a voucher for `id`, and the offer it pays, if a stream waits for one.
    fn sender(&self, id: &B256) -> Option<(mpsc::Sender<Posted>, BatchRequirements)> {
        self.waiting.lock().ok()?.get(id).cloned()
    }

    /// Registers a stream of `id` paying `offer` as waiting; `None` if another one already
    /// waits.
    fn wait(self: &Arc<Self>, id: B256, offer: &BatchRequirements) -> Option<Waiting> {
        let mut w = self.waiting.lock().ok()?;
        if w.contains_key(&id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(4);
        w.insert(id, (tx, offer.clone()));
        Some(Waiting {
            renewals: self.clone(),
            id,
            rx,
        })
    }
}

/// Everything a chunked stream needs besides its bodies.
pub(crate) struct Ctx<S, C, F, K> {
    pub(crate) engine: Engine<S, C, F, K>,
    pub(crate) offer: BatchRequirements,
    pub(crate) terms: ChunkTerms,
    pub(crate) renewals: Arc<Renewals>,
}

/// The body a client gets: frames from the task that runs the stream (capacity one, so that
/// what counts as delivered is what the client's connection took).
struct RxBody(mpsc::Receiver<Result<Frame<Bytes>, axum::Error>>);

impl http_body::Body for RxBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// Runs `upstream` as a chunked stream paid from `ticket` (see the module documentation) and
/// returns the client's body. The stream runs in a task of its own, which finishes its charge
/// whatever the client does.
pub(crate) fn stream<S, C, F, K>(upstream: Body, ctx: Ctx<S, C, F, K>, ticket: Box<Ticket>) -> Body
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let (tx, rx) = mpsc::channel(1);
    let run = Run {
        id: ticket.channel_id(),
        price: ticket.max_charge(),
        ceiling: ticket.ceiling(),
        ctx,
        ticket: Some(ticket),
        tx,
        meter: StreamMeter::default(),
        buf: BytesMut::new(),
        chunk_start: 0,
        total: 0,
        last: None,
    };
    // The stream's own log lines stay in the request's span (its channel id), which outlives
    // the response head.
    tokio::spawn(tracing::Instrument::instrument(
        run.run(upstream),
        tracing::Span::current(),
    ));
    Body::new(RxBody(rx))
}

/// Why a stream stopped early.
enum Stop {
    /// The client went away.
    Gone,
    /// The stream was ended with an `x402-error` event (already sent).
    Ended,
}

struct Run<S, C, F, K> {
    id: B256,
    /// One chunk.
    price: u128,
    ctx: Ctx<S, C, F, K>,
    /// The reservation paying the current chunk; `None` while paused.
    ticket: Option<Box<Ticket>>,
    tx: mpsc::Sender<Result<Frame<Bytes>, axum::Error>>,
    meter: StreamMeter,
    /// Upstream bytes read but not sent yet: at most the line being read.
    buf: BytesMut,
    /// `meter.units()` when the current chunk began.
    chunk_start: u64,
    /// Charged for this request so far.
    total: u128,
    /// The last commit's response.
    last: Option<SettlementResponse>,
    /// The ceiling of the last voucher accepted on this stream.
    ceiling: u128,
}

impl<S, C, F, K> Run<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    async fn run(mut self, mut upstream: Body) {
        let ended = loop {
            let frame = tokio::select! {
                f = upstream.frame() => f,
                () = self.tx.closed() => break Err(Stop::Gone),
            };
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                        if let Err(s) = self.forward().await {
                            break Err(s);
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(target: "paychan_server", channel = %self.id, error = %e, "the upstream broke a chunked stream off");
                    self.charge_delivered().await;
                    let _ = self.tx.send(Err(axum::Error::new(e))).await;
                    return;
                }
                None => break Ok(()),
            }
        };
        match ended {
            Ok(()) => self.finish().await,
            Err(Stop::Gone) => {
                tracing::info!(target: "paychan_server", channel = %self.id, "the client left a chunked stream");
                self.charge_delivered().await;
            }
            Err(Stop::Ended) => {}
        }
    }

    /// Sends what is complete of `buf`, line by line, pausing for a voucher at each chunk end.
    async fn forward(&mut self) -> Result<(), Stop> {
        let mut sent = 0;
        let mut scan = 0;
        while let Some(i) = self.buf[scan..].iter().position(|&b| b == b'\n') {
            let end = scan + i + 1;
            self.meter.feed(&self.buf[scan..end]);
            let blank = matches!(&self.buf[scan..end], b"\n" | b"\r\n");
            scan = end;
            if blank && self.meter.units() - self.chunk_start >= self.ctx.terms.tokens {
                let out = self.buf.split_to(end).freeze();
                scan = 0;
                sent = 0;
                self.send(out).await?;
                self.renew().await?;
            } else {
                sent = end;
            }
        }
        // A line longer than the meter reads goes on unread (the meter counts it as a unit).
        if self.buf.len() > StreamMeter::MAX_LINE {
            self.meter.feed(&self.buf[sent..]);
            sent = self.buf.len();
        }
        if sent > 0 {
            let out = self.buf.split_to(sent).freeze();
            self.send(out).await?;
        }
        Ok(())
    }

    async fn send(&self, data: Bytes) -> Result<(), Stop> {
        self.tx
            .send(Ok(Frame::data(data)))
            .await
            .map_err(|_| Stop::Gone)
    }

    async fn event(&self, name: &str, data: &serde_json::Value) -> Result<(), Stop> {
        self.send(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
            .await
    }

    /// Ends the stream with an `x402-error` event.
    async fn error(&self, code: &str, message: &str) -> Stop {
        let _ = self
            .event("x402-error", &json!({"code": code, "message": message}))
            .await;
        Stop::Ended
    }

    /// Commits `amount` of the current chunk.
    async fn commit(&mut self, amount: u128) -> Result<SettlementResponse, Decline> {
        let Some(t) = self.ticket.take() else {
            return Err(Decline {
                rejection: Rejection::new(ErrorCode::UnexpectedSettleError, "no reservation"),
                requirements: None,
            });
        };
        let s = self.ctx.engine.commit(t, amount).await?;
        self.total = self.total.saturating_add(amount);
        self.last = Some(s.clone());
        Ok(s)
    }

    /// The delivered part of the current chunk, charged once the stream is over.
    async fn charge_delivered(&mut self) {
        let units = self.meter.units() - self.chunk_start;
        let amount = self.ctx.terms.prorate(self.price, units);
        if self.ticket.is_some()
            && let Err(d) = self.commit(amount).await
        {
            tracing::warn!(target: "paychan_server", channel = %self.id, code = d.rejection.code.as_str(), "the delivered part of a chunked stream could not be charged");
        }
    }

    /// A chunk is out: commit it, pause, and wait for the next chunk's voucher.
    async fn renew(&mut self) -> Result<(), Stop> {
        let settled = match self.commit(self.price).await {
            Ok(s) => s,
            Err(d) => {
                tracing::warn!(target: "paychan_server", channel = %self.id, code = d.rejection.code.as_str(), "a chunk could not be charged; ending the stream");
                return Err(self
                    .error(d.rejection.code.as_str(), "the chunk could not be charged")
                    .await);
            }
        };
        self.chunk_start = self.meter.units();
        let state = extra(&settled).channel_state;
        let charged = state
            .as_ref()
            .and_then(|c| c.charged_cumulative_amount)
            .unwrap_or_default();
        let balance = state.as_ref().map_or(0, |c| c.balance);
        let Some(mut waiting) = self.ctx.renewals.wait(self.id, &self.ctx.offer) else {
            return Err(self
                .error(
                    "renewal_busy",
                    "another stream of this channel is waiting for a voucher",
                )
                .await);
        };
        self.event(
            "x402-voucher-needed",
            &json!({
                "channelId": self.id.to_string(),
                "chargedCumulativeAmount": charged.to_string(),
                "balance": balance.to_string(),
                "nextMaxClaimableAmount": charged.saturating_add(self.price).to_string(),
                "voucherEndpoint": format!("{VOUCHER_PATH}{}", self.id),
            }),
        )
        .await?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.ctx.terms.voucher_wait_secs);
        let mut bad = 0;
        loop {
            let posted = tokio::select! {
                p = waiting.rx.recv() => p,
                () = tokio::time::sleep_until(deadline) => None,
                () = self.tx.closed() => return Err(Stop::Gone),
            };
            let Some(Posted { payload, reply }) = posted else {
                return Err(self
                    .error("voucher_timeout", "no voucher for the next chunk in time")
                    .await);
            };
            match self.check(&payload).await {
                Ok((ticket, accepted)) => {
                    let _ = reply.send(Ok(accepted.clone()));
                    self.ceiling = accepted.ceiling;
                    self.ticket = Some(ticket);
                    drop(waiting);
                    return self.event("x402-voucher-accepted", &accepted.json()).await;
                }
                Err(d) => {
                    let _ = reply.send(Err(d));
                    bad += 1;
                    if bad >= MAX_BAD_POSTS {
                        return Err(self
                            .error("voucher_invalid", "too many invalid vouchers")
                            .await);
                    }
                }
            }
        }
    }

    /// Checks a posted voucher (or top-up deposit) for the next chunk.
    async fn check(
        &self,
        payload: &PaymentPayload<BatchPayload>,
    ) -> Result<(Box<Ticket>, Accepted), Decline> {
        let refuse = |code, msg: &str| Decline {
            rejection: Rejection::new(code, msg.to_owned()),
            requirements: None,
        };
        if !matches!(
            payload.payload,
            BatchPayload::Voucher(_) | BatchPayload::Deposit(_)
        ) {
            return Err(refuse(
                ErrorCode::PayloadType,
                "the voucher endpoint takes a voucher or a deposit",
            ));
        }
        let ticket = match self.ctx.engine.begin(payload, &self.ctx.offer).await? {
            Begin::Serve(t) => t,
            // Not reached (only refunds complete at once), but never serve on it.
            Begin::Done(_) => {
                return Err(refuse(ErrorCode::PayloadType, "not a voucher"));
            }
        };
        if ticket.channel_id() != self.id {
            self.ctx.engine.abort(ticket);
            return Err(refuse(
                ErrorCode::InvalidPayload,
                "the voucher is for another channel",
            ));
        }
        let accepted = Accepted {
            channel_id: self.id,
            charged: ticket.charged(),
            balance: ticket.balance(),
            ceiling: ticket.ceiling(),
            topped_up: ticket.deposited(),
        };
        Ok((ticket, accepted))
    }

    /// The upstream ended: send the rest, charge the last chunk prorated, report.
    async fn finish(mut self) {
        self.meter.finish();
        if !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            if self.send(rest).await.is_err() {
                self.charge_delivered().await;
                return;
            }
        }
        let units = self.meter.units() - self.chunk_start;
        let amount = self.ctx.terms.prorate(self.price, units);
        if let Err(d) = self.commit(amount).await {
            tracing::warn!(target: "paychan_server", channel = %self.id, code = d.rejection.code.as_str(), "the last chunk of a stream could not be charged");
            let _ = self
                .error(
                    d.rejection.code.as_str(),
                    "the last chunk could not be charged",
                )
                .await;
            return;
        }
        tracing::info!(target: "paychan_server", channel = %self.id, charge = %self.total, units = self.meter.units(), "chunked stream done");
        let Some(last) = self.last.take() else {
            return;
        };
        let state = extra(&last).channel_state;
        let _ = self
            .event(
                "x402-settlement",
                &json!({
                    "channelId": self.id.to_string(),
                    "chargedCumulativeAmount": state
                        .as_ref()
                        .and_then(|c| c.charged_cumulative_amount)
                        .unwrap_or_default()
                        .to_string(),
                    "signedMaxClaimable": self.ceiling.to_string(),
                }),
            )
            .await;
        let _ = self
            .tx
            .send(Ok(Frame::trailers(trailers(last, self.total))))
            .await;
    }
}

/// The `extra` of a commit's response, read back.
fn extra(s: &SettlementResponse) -> ResponseExtra {
    s.extra
        .as_ref()
        .and_then(|e| serde_json::from_value(serde_json::Value::Object(e.clone())).ok())
        .unwrap_or_default()
}

/// The `PAYMENT-RESPONSE` trailer: the last commit's response, charged the whole request.
fn trailers(mut last: SettlementResponse, total: u128) -> HeaderMap {
    let mut e = extra(&last);
    e.charged_amount = Some(total);
    if let Ok(serde_json::Value::Object(o)) = serde_json::to_value(&e) {
        last.extra = Some(o);
    }
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&codec::encode(&last)) {
        h.insert(HeaderName::from_static("payment-response"), v);
    }
    h
}
