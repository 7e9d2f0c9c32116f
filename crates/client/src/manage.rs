//! Getting money back: the cooperative refund (a `refund` payload sent to the server, which
//! claims what was charged and returns the rest on chain) and the timed withdrawal (the payer's
//! own `initiateWithdraw` / `finalizeWithdraw` transactions, for a server that does not
//! cooperate).

use alloy_primitives::B256;
use paychan_chain::PayerClient;
use paychan_core::{
    amount,
    batch::{BatchPayload, ResponseExtra, payer::PayerError},
    codec,
    x402::{PaymentPayload, SettlementResponse, X402_VERSION},
};
use paychan_store::Store;
use reqwest::{StatusCode, header::HeaderValue};

use crate::{
    channel::{Channel, ChannelStatus},
    error::{Error, Result},
    pay::{corrective_extra, read_402, refusal},
    payer::{Payer, RefundReceipt, TARGET},
    pool::Lease,
};

impl<S: Store> Payer<S> {
    /// Takes channel `id` out of service (waiting for its request in flight, if any).
    async fn take(&self, id: B256) -> Result<Lease> {
        let unknown = || Error::Channel {
            channel: id,
            reason: "not a channel of this payer",
        };
        let pool = self.pool_of(id).ok_or_else(unknown)?;
        pool.checkout_channel(id).await.ok_or_else(unknown)
    }

    /// Cooperative refund of everything left in channel `id` (balance minus charged): a
    /// zero-charge voucher is signed, recorded and sent to the server on the resource this
    /// channel last paid for; the server claims what was charged and returns the rest on chain.
    /// A corrective 402 is checked, adopted and the refund sent again, once. The channel stays
    /// usable (its next request deposits again).
    ///
    /// # Errors
    ///
    /// [`Error::Channel`] for a channel this payer does not have or never paid with,
    /// [`Error::Refused`] when the server refuses (nothing left to refund, rate limit),
    /// [`Error::ServerMisbehaved`] when its account after the refund is not the one signed, and
    /// transport, store or chain failures.
    pub async fn refund(&self, id: B256) -> Result<RefundReceipt> {
        let mut lease = self.take(id).await?;
        let mut corrections = 1u8;
        loop {
            let mut ch = lease.channel.clone().ok_or(Error::Channel {
                channel: id,
                reason: "not a channel of this payer",
            })?;
            let req = self.refund_request(&mut ch)?;
            lease.channel = Some(ch.clone());
            self.persist(&ch).await?;
            let resp = self.inner.http.execute(req).await?;
            if resp.status() == StatusCode::PAYMENT_REQUIRED {
                let pr = read_402(&resp)?;
                if corrections > 0
                    && let Some(extra) = corrective_extra(&pr, id)
                {
                    corrections -= 1;
                    let r = self.correct(&mut ch, &extra).await;
                    lease.channel = Some(ch.clone());
                    r?;
                    self.persist(&ch).await?;
                    continue;
                }
                return Err(refusal(&pr, &resp));
            }
            let r = self.refunded(&mut ch, &resp).await;
            lease.channel = Some(ch);
            return r;
        }
    }

    /// The refund request of `ch`: its zero-charge voucher (signed here), sent with the method
    /// and to the URL it last paid.
    fn refund_request(&self, ch: &mut Channel) -> Result<reqwest::Request> {
        let id = ch.id();
        let (Some(accepted), Some(url)) = (ch.meta.accepted.clone(), ch.meta.url.clone()) else {
            return Err(Error::Channel {
                channel: id,
                reason: "it never paid through this client, so there is no server resource to send its refund to",
            });
        };
        let method = ch
            .meta
            .method
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or(reqwest::Method::POST);
        let payload = ch
            .pc
            .refund_payload(&self.domain(ch.meta.chain_id), &self.inner.signer, None)
            .map_err(Error::State)?;
        let envelope = PaymentPayload {
            x402_version: X402_VERSION,
            resource: ch.meta.resource.clone(),
            accepted,
            payload: BatchPayload::Refund(payload),
            extensions: None,
        };
        let header = HeaderValue::from_str(&codec::encode(&envelope))
            .map_err(|_| Error::Protocol("refund header is not a header value".into()))?;
        Ok(self
            .inner
            .http
            .request(method, url.as_str())
            .header(codec::PAYMENT_SIGNATURE, header)
            .build()?)
    }

    /// Checks a refund's `PAYMENT-RESPONSE` and adopts the channel's state after it.
    async fn refunded(&self, ch: &mut Channel, resp: &reqwest::Response) -> Result<RefundReceipt> {
        let id = ch.id();
        let settlement = resp
            .headers()
            .get(codec::PAYMENT_RESPONSE)
            .and_then(|h| h.to_str().ok())
            .and_then(|s| codec::decode::<SettlementResponse>(s).ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "refund answered {} without a readable PAYMENT-RESPONSE",
                    resp.status()
                ))
            })?;
        if !settlement.success {
            return Err(Error::Refused {
                code: settlement
                    .error_reason
                    .unwrap_or_else(|| paychan_core::ErrorCode::Other("none".into())),
                message: settlement.error_message,
            });
        }
        let refunded = settlement
            .amount
            .as_deref()
            .and_then(|a| amount::parse_u128(a).ok())
            .unwrap_or(0);
        let state = settlement
            .extra
            .clone()
            .and_then(|m| serde_json::from_value::<ResponseExtra>(m.into()).ok())
            .and_then(|e| e.channel_state);
        // The server's account after the refund must be the one the refund was signed at.
        if let Some(s) = &state
            && (s.channel_id != id
                || s.charged_cumulative_amount
                    .is_some_and(|c| c != ch.pc.charged))
        {
            let reason = PayerError::CumulativeMismatch {
                server: s.charged_cumulative_amount.unwrap_or_default(),
                expected: ch.pc.charged,
            };
            return self.misbehaved(ch, reason).await;
        }
        let (balance, claimed) = match (&self.inner.chain, &state) {
            (Some(r), _) => {
                let s = r.channel_state(id).await?;
                (s.balance, s.total_claimed)
            }
            (None, Some(s)) => (s.balance, s.total_claimed),
            (None, None) => (ch.pc.balance.saturating_sub(refunded), ch.pc.total_claimed),
        };
        ch.pc.balance = balance;
        ch.pc.total_claimed = claimed;
        self.persist(ch).await?;
        tracing::info!(target: TARGET, channel = %id, refunded, balance, "refunded");
        Ok(RefundReceipt {
            channel_id: id,
            refunded,
            transaction: settlement.transaction,
            balance,
            charged: ch.pc.charged,
        })
    }

    /// Cooperative refund of every channel at `origin` that has something left.
    ///
    /// # Errors
    ///
    /// The first refund's error, as [`refund`](Self::refund).
    pub async fn refund_server(&self, origin: &str) -> Result<Vec<RefundReceipt>> {
        let ids: Vec<B256> = self
            .channels()
            .into_iter()
            .filter(|c| c.pool.origin == origin && c.balance > c.charged)
            .map(|c| c.channel_id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.refund(id).await?);
        }
        Ok(out)
    }

    fn sender(&self) -> Result<(&paychan_chain::ChainReader, PayerClient)> {
        let reader = self
            .inner
            .chain
            .as_ref()
            .ok_or(Error::Config("a timed withdrawal needs a chain reader"))?;
        Ok((
            reader,
            PayerClient::new(reader.clone(), self.inner.signer.clone()),
        ))
    }

    /// Starts the timed withdrawal of everything unclaimed in channel `id`, sent from the payer's
    /// key (which pays the gas). The channel signs nothing from now on (recorded before the
    /// transaction is sent). Returns the amount requested.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a chain reader, [`Error::Channel`] for an unknown channel or
    /// nothing to withdraw, [`Error::Chain`] when the transaction fails.
    pub async fn initiate_withdraw(&self, id: B256) -> Result<u128> {
        let (reader, sender) = self.sender()?;
        let mut lease = self.take(id).await?;
        let mut ch = lease.channel.clone().ok_or(Error::Channel {
            channel: id,
            reason: "not a channel of this payer",
        })?;
        ch.meta.status = ChannelStatus::Withdrawing;
        lease.channel = Some(ch.clone());
        self.persist(&ch).await?;
        let st = reader.channel_state(id).await?;
        let amount = st.balance.saturating_sub(st.total_claimed);
        if amount == 0 {
            return Err(Error::Channel {
                channel: id,
                reason: "nothing unclaimed to withdraw",
            });
        }
        sender.initiate_withdraw(&ch.pc.config, amount).await?;
        tracing::info!(target: TARGET, channel = %id, amount, "timed withdrawal started");
        Ok(amount)
    }

    /// Finalizes the timed withdrawal of channel `id` once its delay has passed; the channel is
    /// closed. Returns what came back to the payer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a chain reader, [`Error::Channel`] when no withdrawal was
    /// started, [`Error::Chain`] when the transaction fails (the delay has not passed, say).
    pub async fn finalize_withdraw(&self, id: B256) -> Result<u128> {
        let (reader, sender) = self.sender()?;
        let mut lease = self.take(id).await?;
        let mut ch = lease.channel.clone().ok_or(Error::Channel {
            channel: id,
            reason: "not a channel of this payer",
        })?;
        if ch.meta.status != ChannelStatus::Withdrawing {
            return Err(Error::Channel {
                channel: id,
                reason: "no timed withdrawal was started on it",
            });
        }
        let before = reader.channel_state(id).await?;
        sender.finalize_withdraw(&ch.pc.config).await?;
        let after = reader.channel_state(id).await?;
        ch.pc.balance = after.balance;
        ch.pc.total_claimed = after.total_claimed;
        ch.pc.charged = ch.pc.charged.max(after.total_claimed);
        ch.meta.status = ChannelStatus::Closed;
        lease.channel = Some(ch.clone());
        self.persist(&ch).await?;
        let back = before.balance.saturating_sub(after.balance);
        tracing::info!(target: TARGET, channel = %id, withdrawn = back, "timed withdrawal finalized");
        Ok(back)
    }
}
