//! A streamed answer of a per-token route, passed through chunk by chunk and charged when it
//! ends (the plain streaming mode, which every x402 client handles: the voucher reserved the
//! request's maximum, the charge is fixed at the end).
//!
//! Every data frame goes out as it arrives (no buffering: time to first byte is the
//! upstream's) and is read on the way by a [`StreamMeter`]. Then:
//!
//! * **the stream ends**: the charge follows the last usage seen (the route's fallback if the
//!   upstream sent none); it is made durable, then sent as the `PAYMENT-RESPONSE` trailer (the
//!   response head announces it with `Trailer: payment-response`). Over HTTP/1.1 trailers go
//!   only to a client that sent `TE: trailers` (HTTP/2 always carries them); a client that did
//!   not learns the charge from the server's signed channel state in the corrective `402` its
//!   next voucher gets (the scheme's recovery path), and signs again.
//! * **the upstream breaks it off** (an error frame, a read-idle timeout): the charge is what
//!   was delivered ([`TokenPrices::delivered`], or the usage if it came), committed in a task of
//!   its own; the client sees the stream end in an error.
//! * **the client goes away** (the body is dropped unfinished): the same, from the drop.
//!
//! A commit is cancellation-safe (the engine runs it in a task that owns the channel lock), so a
//! charge decided here is never half made.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::body::{Body, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use paychan_core::{codec, x402::SettlementResponse};
use paychan_engine::{Clock, Decline, Engine, OnchainSource, PaymentFacilitator, Ticket};
use paychan_store::Store;

use crate::pricing::{RequestTerms, StreamMeter, TokenPrices};

type Commit = Pin<Box<dyn Future<Output = Result<SettlementResponse, Decline>> + Send>>;

/// What is charged for a stream, and how it is decided.
pub(crate) struct Terms {
    pub(crate) prices: TokenPrices,
    pub(crate) request: RequestTerms,
    pub(crate) max: u128,
}

/// The metered body (see the module documentation). The bounds are on the type so that its
/// `Drop` can commit.
pub(crate) struct Metered<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    inner: Body,
    meter: StreamMeter,
    ticket: Option<Box<Ticket>>,
    engine: Engine<S, C, F, K>,
    terms: Terms,
    committing: Option<Commit>,
    done: bool,
}

impl<S, C, F, K> Metered<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    pub(crate) fn new(
        inner: Body,
        engine: Engine<S, C, F, K>,
        ticket: Box<Ticket>,
        terms: Terms,
    ) -> Self {
        Self {
            inner,
            meter: StreamMeter::default(),
            ticket: Some(ticket),
            engine,
            terms,
            committing: None,
            done: false,
        }
    }

    /// The charge for what was delivered of a stream that did not end cleanly.
    fn delivered(&self) -> u128 {
        let t = &self.terms;
        match self.meter.usage {
            Some(u) => t.prices.charge(Some(u), &t.request, t.max),
            None => t
                .prices
                .delivered(self.meter.content_chunks, &t.request, t.max),
        }
    }

    /// The charge for a stream that ended cleanly.
    fn complete(&self) -> u128 {
        let t = &self.terms;
        t.prices.charge(self.meter.usage, &t.request, t.max)
    }

    fn commit(&mut self, amount: u128) -> Option<Commit> {
        let ticket = self.ticket.take()?;
        let engine = self.engine.clone();
        let channel = ticket.channel_id();
        Some(Box::pin(async move {
            let r = engine.commit(ticket, amount).await;
            if let Err(d) = &r {
                tracing::warn!(target: "paychan_server", channel = %channel, code = d.rejection.code.as_str(), "the charge of a streamed answer could not be made durable");
            }
            r
        }))
    }

    /// Commits what was delivered in a task of its own (the stream is over, nobody waits).
    fn commit_detached(&mut self) {
        let amount = self.delivered();
        if let Some(c) = self.commit(amount) {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(c);
                }
                // No runtime (only at shutdown): the ticket is dropped, which aborts; the
                // payer keeps what it reserved.
                Err(_) => drop(c),
            }
        }
    }
}

fn trailers(settlement: &SettlementResponse) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&codec::encode(settlement)) {
        h.insert(HeaderName::from_static("payment-response"), v);
    }
    h
}

impl<S, C, F, K> http_body::Body for Metered<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(c) = &mut this.committing {
                let r = ready!(c.as_mut().poll(cx));
                this.committing = None;
                this.done = true;
                return match r {
                    Ok(s) => Poll::Ready(Some(Ok(Frame::trailers(trailers(&s))))),
                    // Already logged; the answer was delivered, the payer's voucher stays
                    // unspent for this request.
                    Err(_) => Poll::Ready(None),
                };
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // The upstream's own trailers are not passed on.
                    if let Ok(data) = frame.into_data() {
                        this.meter.feed(&data);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Some(Err(e)) => {
                    this.commit_detached();
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    let amount = this.complete();
                    this.committing = this.commit(amount);
                    if this.committing.is_none() {
                        this.done = true;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.committing.is_none()
    }
}

impl<S, C, F, K> Drop for Metered<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    fn drop(&mut self) {
        // The client went away before the end (or the server is dropping the response): charge
        // what was delivered.
        if self.ticket.is_some() {
            self.commit_detached();
        }
    }
}
