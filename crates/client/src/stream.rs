//! Paid streams: an answer that is an event stream without a `PAYMENT-RESPONSE` head.
//!
//! The caller gets the stream as it comes (every byte passed on unchanged); a task in between
//! reads it for the payment and holds the request's channel (its pool turn) until it ends:
//!
//! * **A stream charged at its end** (per-token routes): its `PAYMENT-RESPONSE` trailer is
//!   checked and adopted like a response head. Without one (the server sent none, or the
//!   stream broke) the voucher stays in flight and the server's signed state settles it on the
//!   channel's next request, as for any unacknowledged request.
//! * **A stream paid chunk by chunk** (the scheme's streaming pattern): at each
//!   `x402-voucher-needed` the chunk just paid is adopted (the server may charge at most the
//!   ceiling this payer signed), the next voucher goes through the same policy, signing and
//!   durable record as a request's ([`Payer::prepare`]), and is posted to the event's
//!   `voucherEndpoint` on the same origin; `x402-voucher-accepted` is checked against it, and
//!   `x402-settlement` fixes the last, prorated chunk (between the charged total and the last
//!   ceiling, or the server is no longer trusted). When the policy says no (a budget is
//!   spent), or the server refuses the voucher, the stream is cut: the caller's body ends in
//!   an error, and the server, which paused the stream for the voucher, charges nothing more.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use paychan_core::{
    batch::{ResponseExtra, payer::PayerError},
    codec,
    x402::SettlementResponse,
};
use paychan_store::Store;
use reqwest::{Response, header};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    channel::Channel,
    error::{Error, Result},
    pay::Prepared,
    payer::{Payer, TARGET, Terms},
    pool::Lease,
};

/// Whether `resp` is a paid stream this module takes over: a success, an event stream, and no
/// `PAYMENT-RESPONSE` head.
pub(crate) fn is_paid_stream(resp: &Response) -> bool {
    resp.status().is_success()
        && !resp.headers().contains_key(codec::PAYMENT_RESPONSE)
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Needed {
    channel_id: String,
    charged_cumulative_amount: String,
    balance: String,
    voucher_endpoint: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    new_charged_cumulative_amount: String,
    balance: String,
    signed_max_claimable: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settled {
    charged_cumulative_amount: String,
}

fn amount(s: &str) -> std::result::Result<u128, PayerError> {
    s.parse()
        .map_err(|_| PayerError::Malformed(format!("amount {s:?}")))
}

/// One stream's payment state.
struct Run<S> {
    payer: Payer<S>,
    lease: Lease,
    terms: Arc<Terms>,
    prepared: Prepared,
    /// The request, for the record of each renewal (method and URL).
    request: reqwest::Request,
    origin: String,
    /// A chunk renewal was seen: the trailer is not this module's to adopt.
    chunked: bool,
    /// The deposit of `prepared`, if any, is in the channel's balance already.
    deposit_counted: bool,
    settled: bool,
    tx: mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
}

impl<S: Store> Payer<S> {
    /// Takes over a paid stream (see the module documentation) and returns the caller's copy.
    pub(crate) fn paid_stream(
        &self,
        lease: Lease,
        terms: Arc<Terms>,
        prepared: Prepared,
        request: reqwest::Request,
        origin: String,
        resp: Response,
    ) -> Response {
        let (tx, rx) = mpsc::channel(1);
        let mut head = http::Response::builder()
            .status(resp.status())
            .version(resp.version());
        if let Some(h) = head.headers_mut() {
            h.clone_from(resp.headers());
        }
        let run = Run {
            payer: self.clone(),
            lease,
            terms,
            prepared,
            request,
            origin,
            chunked: false,
            deposit_counted: false,
            settled: false,
            tx,
        };
        let upstream: http::Response<reqwest::Body> = resp.into();
        tokio::spawn(run.run(upstream.into_body()));
        let rx = tokio_stream_of(rx);
        let body = reqwest::Body::wrap_stream(rx);
        head.body(body).map_or_else(
            |_| Response::from(http::Response::new(reqwest::Body::from(""))),
            Response::from,
        )
    }
}

fn tokio_stream_of<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

impl<S: Store> Run<S> {
    async fn run(mut self, mut body: reqwest::Body) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = self.tx.closed() => return self.end().await,
            };
            match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if self.tx.send(Ok(data)).await.is_err() {
                            return self.end().await;
                        }
                        if let Err(e) = self.events(&mut buf).await {
                            tracing::info!(target: TARGET, channel = %self.channel_id(), error = %e, "paid stream cut");
                            let _ = self
                                .tx
                                .send(Err(std::io::Error::other(e.to_string())))
                                .await;
                            return self.end().await;
                        }
                    }
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            self.trailers(&t).await;
                        }
                    }
                },
                Some(Err(e)) => {
                    let _ = self
                        .tx
                        .send(Err(std::io::Error::other(e.to_string())))
                        .await;
                    return self.end().await;
                }
                None => return self.end().await,
            }
        }
    }

    fn channel_id(&self) -> alloy_primitives::B256 {
        self.lease
            .channel
            .as_ref()
            .map(Channel::id)
            .unwrap_or_default()
    }

    /// The stream is over: the channel goes back to its pool (as the lease drops).
    async fn end(self) {
        if !self.settled {
            tracing::debug!(target: TARGET, channel = %self.channel_id(), "paid stream ended without its charge; the voucher stays in flight");
        }
    }

    /// Handles the complete events in `buf`, keeping a partial one.
    async fn events(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        while let Some(end) = event_end(buf) {
            let raw: Vec<u8> = buf.drain(..end).collect();
            let text = String::from_utf8_lossy(&raw);
            let (mut name, mut data) = ("message", String::new());
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            let name = name.to_owned();
            match name.as_str() {
                "x402-voucher-needed" => self.needed(&data).await?,
                "x402-voucher-accepted" => self.accepted(&data).await?,
                "x402-settlement" => self.settlement(&data).await?,
                "x402-error" => {
                    return Err(Error::Protocol(format!(
                        "the server ended the stream: {data}"
                    )));
                }
                _ => {}
            }
        }
        // An unterminated line longer than any event this module reads is dropped from view.
        if buf.len() > 1 << 20 {
            buf.clear();
        }
        Ok(())
    }

    fn channel(&mut self) -> Result<&mut Channel> {
        self.lease
            .channel
            .as_mut()
            .ok_or(Error::Config("a lease without a channel"))
    }

    async fn halt<T>(&mut self, reason: PayerError) -> Result<T> {
        let mut ch = self.channel()?.clone();
        let r = self.payer.misbehaved(&mut ch, reason).await;
        self.lease.channel = Some(ch);
        r
    }

    /// Counts the deposit of `self.prepared` (once) into the channel's balance: the server's
    /// `balance` if it says one (never below what this payer knows plus the deposit: a lower
    /// one is money the server says is gone), else what this payer knows plus the deposit.
    async fn count_deposit(&mut self, balance: Option<u128>) -> Result<()> {
        let deposit = if self.deposit_counted {
            0
        } else {
            self.prepared.deposit.unwrap_or(0)
        };
        let expected = self.channel()?.pc.balance.saturating_add(deposit);
        let balance = balance.unwrap_or(expected);
        if balance < expected {
            return self
                .halt(PayerError::BalanceMismatch {
                    server: balance,
                    expected,
                })
                .await;
        }
        let ch = self.channel()?;
        ch.pc.balance = balance;
        ch.meta.deposited = ch.meta.deposited.saturating_add(deposit);
        self.deposit_counted = true;
        Ok(())
    }

    /// Adopts `charged` as the channel's total after the attempt `self.prepared`, if the
    /// server may have charged it: between the total before and the ceiling signed.
    async fn adopt(&mut self, charged: u128, balance: Option<u128>) -> Result<()> {
        let p = &self.prepared;
        let (ceiling, amount, window) = (p.ceiling, p.amount, p.window);
        let before = self.channel()?.pc.charged;
        if charged < before || charged > ceiling {
            return self
                .halt(PayerError::CumulativeMismatch {
                    server: charged,
                    expected: ceiling,
                })
                .await;
        }
        self.count_deposit(balance).await?;
        let payer = self.payer.clone();
        let ch = self.channel()?;
        ch.pc.charged = charged;
        ch.meta.pending = None;
        let unused = amount - (charged - before).min(amount);
        payer.release(ch, unused, window);
        let ch = ch.clone();
        payer.persist(&ch).await
    }

    async fn needed(&mut self, data: &str) -> Result<()> {
        self.chunked = true;
        let n: Needed = serde_json::from_str(data)
            .map_err(|e| Error::Protocol(format!("x402-voucher-needed: {e}")))?;
        if !n
            .channel_id
            .eq_ignore_ascii_case(&self.channel_id().to_string())
        {
            return self
                .halt(PayerError::Malformed(
                    "a voucher asked for another channel".into(),
                ))
                .await;
        }
        let (charged, balance) = match (amount(&n.charged_cumulative_amount), amount(&n.balance)) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(e), _) | (_, Err(e)) => return self.halt(e).await,
        };
        self.adopt(charged, Some(balance)).await?;
        // The endpoint is a path on the server this payer already pays, never another host.
        if !n.voucher_endpoint.starts_with('/') || n.voucher_endpoint.starts_with("//") {
            return self
                .halt(PayerError::Malformed(
                    "voucherEndpoint is not a path".into(),
                ))
                .await;
        }
        let url = format!("{}{}", self.origin, n.voucher_endpoint);
        // Policy, signing and the durable record, as for a request.
        let prepared = self
            .payer
            .prepare(&mut self.lease, &self.terms, &self.request)
            .await?;
        let resp = self
            .payer
            .inner
            .http
            .post(&url)
            .header(codec::PAYMENT_SIGNATURE, prepared.header.clone())
            .send()
            .await?;
        self.prepared = prepared;
        self.deposit_counted = false;
        if !resp.status().is_success() {
            let status = resp.status();
            let pr = crate::pay::read_402(&resp).ok();
            return Err(match pr {
                Some(pr) => crate::pay::refusal(&pr, &resp),
                None => Error::Protocol(format!("the voucher endpoint answered {status}")),
            });
        }
        Ok(())
    }

    async fn accepted(&mut self, data: &str) -> Result<()> {
        let a: Accepted = serde_json::from_str(data)
            .map_err(|e| Error::Protocol(format!("x402-voucher-accepted: {e}")))?;
        let (charged, signed, balance) = match (
            amount(&a.new_charged_cumulative_amount),
            amount(&a.signed_max_claimable),
            amount(&a.balance),
        ) {
            (Ok(c), Ok(s), Ok(b)) => (c, s, b),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return self.halt(e).await,
        };
        let mine = self.channel()?.pc.charged;
        if charged != mine || signed != self.prepared.ceiling {
            return self
                .halt(PayerError::CumulativeMismatch {
                    server: charged,
                    expected: mine,
                })
                .await;
        }
        self.count_deposit(Some(balance)).await
    }

    async fn settlement(&mut self, data: &str) -> Result<()> {
        let s: Settled = serde_json::from_str(data)
            .map_err(|e| Error::Protocol(format!("x402-settlement: {e}")))?;
        let charged = match amount(&s.charged_cumulative_amount) {
            Ok(c) => c,
            Err(e) => return self.halt(e).await,
        };
        self.adopt(charged, None).await?;
        self.settled = true;
        Ok(())
    }

    /// A stream charged at its end: its trailer, checked as a response head would be.
    async fn trailers(&mut self, t: &http::HeaderMap) {
        if self.chunked || self.settled {
            return;
        }
        let Some(settlement) = t
            .get(codec::PAYMENT_RESPONSE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| codec::decode::<SettlementResponse>(s).ok())
        else {
            return;
        };
        let extra: Option<ResponseExtra> = settlement
            .extra
            .as_ref()
            .and_then(|e| serde_json::from_value(serde_json::Value::Object(e.clone())).ok());
        if !settlement.success || extra.is_none() {
            return;
        }
        let (amount, deposit, window) = (
            self.prepared.amount,
            self.prepared.deposit,
            self.prepared.window,
        );
        let payer = self.payer.clone();
        let Some(ch) = self.lease.channel.as_mut() else {
            return;
        };
        match ch.pc.apply_response(&settlement, amount, deposit) {
            Ok(charged) => {
                ch.meta.pending = None;
                if let Some(d) = deposit {
                    ch.meta.deposited = ch.meta.deposited.saturating_add(d);
                }
                payer.release(ch, amount - charged, window);
                let ch = ch.clone();
                if let Err(e) = payer.persist(&ch).await {
                    tracing::warn!(target: TARGET, channel = %ch.id(), error = %e, "acknowledged stream charge not saved");
                }
                self.settled = true;
            }
            Err(reason) => {
                let _ = self.halt::<()>(reason).await;
            }
        }
    }
}

/// The end (exclusive) of the first complete event in `buf`: after its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(n) = buf[i..].iter().position(|&b| b == b'\n') {
        let line_end = i + n + 1;
        // a blank line: "\n" or "\r\n" right after the previous line's end
        if n == 0 || (n == 1 && buf[i] == b'\r') {
            return Some(line_end);
        }
        i = line_end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::event_end;

    #[test]
    fn events_end_at_their_blank_line_in_either_line_ending() {
        assert_eq!(event_end(b"data: a\n\nrest"), Some(9));
        assert_eq!(event_end(b"event: x\r\ndata: a\r\n\r\n"), Some(21));
        assert_eq!(event_end(b"data: a\ndata: b\n"), None);
        assert_eq!(event_end(b"\n"), Some(1));
    }
}
