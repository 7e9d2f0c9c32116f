//! Paying one request.
//!
//! 1. **Terms.** Known terms of the resource (cached per method and URL without query) are
//!    used at once: the request carries its voucher, one round trip. Unknown terms: the request
//!    goes out unpaid; a response other than 402 is returned as is (free resource); a 402's
//!    offers are checked against the spend policy and the first allowed `batch-settlement`
//!    offer is cached.
//! 2. **Channel.** A turn in the pool of (server, chain, token, receiver, receiver authorizer,
//!    withdraw delay); on the pool's first use with an empty store, its channels are searched on
//!    chain (derived salts).
//! 3. **Policy, then sign, then record, then send.** Per-request maximum, deposit (needed or
//!    top-up) and period budgets are checked; only then is anything signed. The voucher (and the
//!    in-flight marker) is committed durably to the store **before** the request leaves, so a
//!    crash never leaves a signature the store does not know.
//! 4. **Answer.** A `PAYMENT-RESPONSE` is checked by the scheme's client rules; a server that
//!    breaks them is no longer paid. A corrective 402 is checked (its voucher must be ours) and
//!    adopted, then the request is paid again, once. A 402 with a changed offer is checked
//!    against the policy again, then paid again, once.

use std::sync::Arc;

use paychan_core::{
    ErrorCode,
    batch::{
        BatchExtra, BatchPayload, BatchRequirements,
        payer::{DepositTerms, PayerError, deposit_payload},
    },
    codec,
    x402::{PaymentPayload, PaymentRequired, SettlementResponse, X402_VERSION},
};
use paychan_store::Store;
use reqwest::{Request, Response, StatusCode, header::HeaderValue};

use crate::{
    channel::{Channel, Pending, deposit_salt},
    error::{Error, PolicyError, Result},
    payer::{PaidResponse, Payer, Receipt, TARGET, Terms, TermsKey, lock},
    policy::{choose_offer, deposit_for},
    pool::{Lease, Pool},
    transport::{ClientTransport, Transport},
};

/// The `x-paychan-error` header: a paychan server's human message next to the error code.
const ERROR_HEADER: &str = "x-paychan-error";

/// What was signed and recorded for one attempt.
pub(crate) struct Prepared {
    pub(crate) amount: u128,
    pub(crate) ceiling: u128,
    pub(crate) deposit: Option<u128>,
    pub(crate) window: u64,
    pub(crate) header: HeaderValue,
}

/// How an attempt ended, when it did not end the call.
enum Next {
    /// A correction was adopted: pay again on the same channel.
    Corrected,
    /// The server's offer changed (and is allowed): pay again under it.
    NewTerms(Arc<Terms>),
}

/// The origin (`scheme://host[:port]`) of a URL.
pub(crate) fn origin_of(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

fn terms_key(req: &Request) -> TermsKey {
    let url = req.url();
    (
        req.method().clone(),
        format!("{}{}", origin_of(url), url.path()),
    )
}

/// A copy of the request to send, or the request itself when its body cannot be copied (then
/// there is no second attempt).
fn next_attempt(req: &mut Option<Request>) -> Result<Request> {
    if let Some(copy) = req.as_ref().and_then(Request::try_clone) {
        return Ok(copy);
    }
    req.take().ok_or(Error::BodyNotReplayable)
}

/// The `PAYMENT-REQUIRED` of a 402.
pub(crate) fn read_402(resp: &Response) -> Result<PaymentRequired> {
    let raw = resp
        .headers()
        .get(codec::PAYMENT_REQUIRED)
        .ok_or_else(|| Error::Protocol("402 without PAYMENT-REQUIRED".into()))?
        .to_str()
        .map_err(|_| Error::Protocol("PAYMENT-REQUIRED is not ASCII".into()))?;
    let pr: PaymentRequired =
        codec::decode(raw).map_err(|e| Error::Protocol(format!("PAYMENT-REQUIRED: {e}")))?;
    if pr.x402_version != X402_VERSION {
        return Err(Error::Protocol(format!(
            "x402Version {} (only 2 is spoken)",
            pr.x402_version
        )));
    }
    Ok(pr)
}

/// The refusal a 402 states.
pub(crate) fn refusal(pr: &PaymentRequired, resp: &Response) -> Error {
    Error::Refused {
        code: pr
            .error_code()
            .unwrap_or_else(|| ErrorCode::Other("none".into())),
        message: resp
            .headers()
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// The `extra` of a corrective 402's offer for channel `id`.
pub(crate) fn corrective_extra(
    pr: &PaymentRequired,
    id: alloy_primitives::B256,
) -> Option<BatchExtra> {
    if !pr.error_code().is_some_and(|c| c.is_corrective()) {
        return None;
    }
    pr.accepts
        .iter()
        .filter_map(|r| BatchRequirements::from_generic(r).ok())
        .map(|r| r.extra)
        .find(|e| e.channel_state.as_ref().is_some_and(|s| s.channel_id == id))
}

impl<S: Store> Payer<S> {
    /// Sends `req`, paying for it if the server asks (x402 v2, `batch-settlement`). Returns the
    /// server's response untouched, with the payment's receipt.
    ///
    /// # Errors
    ///
    /// [`Error::Policy`] when the offer is outside the policy (nothing signed),
    /// [`Error::ServerMisbehaved`] / [`Error::Untrusted`] for a server that broke the client
    /// rules, [`Error::Refused`] when the server refused the payment, and transport, store or
    /// chain failures.
    pub async fn execute(&self, req: Request) -> Result<PaidResponse> {
        let http = self.inner.http.clone();
        self.execute_via(req, &mut ClientTransport(&http)).await
    }

    /// Builds and sends `req` (see [`execute`](Self::execute)).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and when the request cannot be built.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<PaidResponse> {
        self.execute(req.build()?).await
    }

    pub(crate) async fn execute_via<T: Transport>(
        &self,
        req: Request,
        t: &mut T,
    ) -> Result<PaidResponse> {
        let origin = origin_of(req.url());
        self.check_trusted(&origin)?;
        let key = terms_key(&req);
        let mut req = Some(req);
        let cached = lock(&self.inner.terms).get(&key).cloned();
        let terms = if let Some(t) = cached {
            t
        } else {
            let probe = next_attempt(&mut req)?;
            let resp = t.send(probe).await?;
            if resp.status() != StatusCode::PAYMENT_REQUIRED {
                return Ok(PaidResponse {
                    response: resp,
                    receipt: None,
                });
            }
            let pr = read_402(&resp)?;
            let terms = Arc::new(self.select(&pr)?);
            lock(&self.inner.terms).insert(key.clone(), terms.clone());
            terms
        };
        self.pay(req, &key, terms, &origin, t).await
    }

    /// The offer of a 402 this payer takes.
    fn select(&self, pr: &PaymentRequired) -> Result<Terms> {
        let chain_id = self
            .inner
            .chain
            .as_ref()
            .map(paychan_chain::ChainReader::chain_id);
        Ok(Terms {
            chosen: choose_offer(pr, &self.inner.spend, chain_id)?,
            resource: pr.resource.clone(),
        })
    }

    async fn pay<T: Transport>(
        &self,
        mut req: Option<Request>,
        key: &TermsKey,
        mut terms: Arc<Terms>,
        origin: &str,
        t: &mut T,
    ) -> Result<PaidResponse> {
        let (mut corrections, mut offer_changes) = (1u8, 1u8);
        let mut kept: Option<Lease> = None;
        loop {
            let mut attempt = next_attempt(&mut req)?;
            let mut lease = if let Some(l) = kept.take() {
                l
            } else {
                let pool = self.pool_for(origin, &terms.chosen.offer).await?;
                self.lease(&pool, terms.chosen.offer.amount).await?
            };
            let prepared = self.prepare(&mut lease, &terms, &attempt).await?;
            attempt
                .headers_mut()
                .insert(codec::PAYMENT_SIGNATURE, prepared.header.clone());
            // A streamed answer's charge comes as a trailer, sent only to those who take them.
            attempt
                .headers_mut()
                .insert(reqwest::header::TE, HeaderValue::from_static("trailers"));
            let meta = Request::new(attempt.method().clone(), attempt.url().clone());
            // A transport error leaves the voucher in flight (recorded as pending): the next
            // request on the channel finds out what the server made of it.
            let resp = t.send(attempt).await?;
            if crate::stream::is_paid_stream(&resp) {
                let response =
                    self.paid_stream(lease, terms, prepared, meta, origin.to_owned(), resp);
                return Ok(PaidResponse {
                    response,
                    receipt: None,
                });
            }
            let next = match self.outcome(&mut lease, &terms, &prepared, resp).await {
                Ok(Ok(paid)) => return Ok(paid),
                Ok(Err(next)) => next,
                Err(e @ Error::Policy(_)) => {
                    // The server's offer is now outside the policy: ask again next time.
                    lock(&self.inner.terms).remove(key);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            match next {
                Next::Corrected if corrections > 0 => {
                    corrections -= 1;
                    kept = Some(lease);
                }
                Next::NewTerms(new) if offer_changes > 0 => {
                    offer_changes -= 1;
                    lock(&self.inner.terms).insert(key.clone(), new.clone());
                    terms = new;
                }
                Next::Corrected => {
                    return Err(Error::Refused {
                        code: ErrorCode::CumulativeAmountMismatch,
                        message: Some("the server corrected the channel twice in a row".into()),
                    });
                }
                Next::NewTerms(_) => {
                    return Err(Error::Refused {
                        code: ErrorCode::InvalidPaymentRequirements,
                        message: Some("the server changed its offer twice in a row".into()),
                    });
                }
            }
        }
    }

    /// The pool for `offer` at `origin`, its channels searched on chain on first use.
    async fn pool_for(&self, origin: &str, offer: &BatchRequirements) -> Result<Arc<Pool>> {
        let key = crate::channel::PoolKey {
            origin: origin.to_owned(),
            chain_id: offer.chain_id,
            asset: offer.asset,
            receiver: offer.pay_to,
            receiver_authorizer: offer.extra.receiver_authorizer,
            withdraw_delay: offer.extra.withdraw_delay,
        };
        let pool = self.pool(&key);
        pool.recovered
            .get_or_try_init(|| self.recover(&pool))
            .await?;
        Ok(pool)
    }

    /// Cold start: a pool the store knows nothing of may still have channels on chain (the
    /// store was lost). Their ids are recomputed from the derived salts and read in one batch;
    /// those holding tokens are adopted with the on-chain claimed total as their charged total,
    /// and the server's corrective 402 tells the rest.
    async fn recover(&self, pool: &Pool) -> Result<()> {
        let Some(reader) = &self.inner.chain else {
            return Ok(());
        };
        if !pool.is_empty() {
            return Ok(());
        }
        let me = self.inner.signer.address();
        let domain = self.domain(pool.key.chain_id);
        let max = u64::try_from(self.inner.max_channels).unwrap_or(u64::MAX);
        let ids: Vec<_> = (0..max)
            .map(|i| domain.channel_id(&pool.key.config(me, i)))
            .collect();
        let states = reader.channel_states(&ids).await?;
        let mut found = 0usize;
        for (index, st) in (0..max).zip(states) {
            if st.balance > 0 {
                let ch = crate::channel::Channel::new(
                    &pool.key,
                    &domain,
                    me,
                    index,
                    (st.balance, st.total_claimed),
                );
                pool.add(ch);
                found += 1;
            }
        }
        if found > 0 {
            tracing::info!(target: TARGET, origin = %pool.key.origin, channels = found, "channels recovered from chain");
        }
        Ok(())
    }

    /// A turn on a channel of `pool`, a new channel made when the pool grows.
    async fn lease(&self, pool: &Arc<Pool>, amount: u128) -> Result<Lease> {
        let mut lease = pool
            .checkout(amount)
            .await
            .ok_or(Error::Config("the channel pool is closed"))?;
        if lease.channel.is_none()
            && let Some(index) = lease.fresh
        {
            let domain = self.domain(pool.key.chain_id);
            let ch = Channel::new(
                &pool.key,
                &domain,
                self.inner.signer.address(),
                index,
                (0, 0),
            );
            tracing::debug!(target: TARGET, origin = %pool.key.origin, channel = %ch.id(), index, "new channel");
            lease.channel = Some(ch);
        }
        Ok(lease)
    }

    /// Now on chain (for authorization validity), or by the clock without a chain reader.
    async fn chain_now(&self) -> Result<u64> {
        match &self.inner.chain {
            Some(r) => Ok(r.block_timestamp().await?),
            None => Ok(self.inner.clock.now_secs()),
        }
    }

    /// The last deposit on `ch` got no answer (a transport error, or an answer without
    /// `PAYMENT-RESPONSE`): the server may have relayed it all the same. With a chain reader the
    /// channel's balance is read back before anything is signed, so a relayed deposit is used
    /// instead of paid for a second time; the server's corrective 402 then brings the charged
    /// total. Without one the next payment deposits again (the money stays in the channel and
    /// comes back with the refund).
    async fn find_lost_deposit(&self, ch: &mut Channel, lost: u128) -> Result<()> {
        let Some(reader) = &self.inner.chain else {
            return Ok(());
        };
        let s = reader.channel_state(ch.id()).await?;
        if s.balance > ch.pc.balance {
            tracing::info!(target: TARGET, origin = %ch.meta.origin, channel = %ch.id(), before = ch.pc.balance, after = s.balance, "a deposit whose answer was lost is on chain");
            ch.meta.deposited = ch
                .meta
                .deposited
                .saturating_add(lost.min(s.balance - ch.pc.balance));
            ch.pc.balance = s.balance;
            ch.pc.total_claimed = ch.pc.total_claimed.max(s.total_claimed);
        }
        Ok(())
    }

    /// Policy checks, then the signed payload, recorded durably before it is returned.
    pub(crate) async fn prepare(
        &self,
        lease: &mut Lease,
        terms: &Terms,
        req: &Request,
    ) -> Result<Prepared> {
        let inner = &self.inner;
        let offer = &terms.chosen.offer;
        let amount = offer.amount;
        if amount > inner.spend.max_per_request {
            return Err(PolicyError::AmountAboveMax {
                amount,
                max: inner.spend.max_per_request,
            }
            .into());
        }
        let mut ch = lease
            .channel
            .clone()
            .ok_or(Error::Config("a lease without a channel"))?;
        if let Some(lost) = ch.meta.pending.as_ref().and_then(|p| p.deposit) {
            self.find_lost_deposit(&mut ch, lost).await?;
        }
        let ceiling = ch.pc.next_ceiling(amount).map_err(Error::State)?;
        let deposit = deposit_for(
            ch.pc.balance,
            ceiling,
            terms.chosen.min_deposit,
            &inner.deposit,
            inner.spend.max_per_deposit,
        )?;
        let chain_now = match deposit {
            Some(_) => Some(self.chain_now().await?),
            None => None,
        };
        let window =
            lock(&inner.budget).reserve(&ch.meta.origin, amount, inner.clock.now_secs())?;
        // Everything below signs; the policy has said yes.
        let domain = self.domain(offer.chain_id);
        let payload = match (deposit, chain_now) {
            (Some(d), Some(now)) => {
                let salt = deposit_salt(ch.id(), ch.meta.deposits, ch.pc.balance, now);
                ch.meta.deposits += 1;
                let terms = DepositTerms {
                    amount: d,
                    collector: inner.collector,
                    salt,
                    now_secs: now,
                };
                BatchPayload::Deposit(
                    deposit_payload(
                        &mut ch.pc,
                        &domain,
                        offer,
                        &inner.signer,
                        &inner.signer,
                        terms,
                    )
                    .map_err(Error::State)?,
                )
            }
            _ => BatchPayload::Voucher(
                ch.pc
                    .voucher_payload(&domain, &inner.signer, amount)
                    .map_err(Error::State)?,
            ),
        };
        ch.meta.max_ceiling = ch.meta.max_ceiling.max(ceiling);
        ch.meta.pending = Some(Pending {
            ceiling,
            amount,
            deposit,
        });
        if ch.meta.window != window {
            ch.meta.window = window;
            ch.meta.window_spent = 0;
        }
        ch.meta.window_spent = ch.meta.window_spent.saturating_add(amount);
        ch.meta.accepted = Some(terms.chosen.generic.clone());
        ch.meta.resource.clone_from(&terms.resource);
        ch.meta.method = Some(req.method().as_str().to_owned());
        ch.meta.url = Some(req.url().as_str().to_owned());
        let envelope = PaymentPayload {
            x402_version: X402_VERSION,
            resource: terms.resource.clone(),
            accepted: terms.chosen.generic.clone(),
            payload,
            extensions: None,
        };
        let header = HeaderValue::from_str(&codec::encode(&envelope))
            .map_err(|_| Error::Protocol("payment header is not a header value".into()))?;
        // Memory first (a cancelled call leaves the lease with what may have been sent), then
        // the store, durably, then the wire.
        lease.channel = Some(ch.clone());
        self.persist(&ch).await?;
        Ok(Prepared {
            amount,
            ceiling,
            deposit,
            window,
            header,
        })
    }

    /// Gives back the reservation of an attempt the server did not charge.
    fn not_charged(&self, ch: &mut Channel, p: &Prepared) {
        ch.meta.pending = None;
        self.give_back(ch, p, p.amount);
    }

    /// Gives back `unused` of an attempt's reservation.
    fn give_back(&self, ch: &mut Channel, p: &Prepared, unused: u128) {
        self.release(ch, unused, p.window);
    }

    /// Gives back `unused` of a reservation made in budget window `window`.
    pub(crate) fn release(&self, ch: &mut Channel, unused: u128, window: u64) {
        lock(&self.inner.budget).release(&ch.meta.origin, unused, window);
        if ch.meta.window == window {
            ch.meta.window_spent = ch.meta.window_spent.saturating_sub(unused);
        }
    }

    /// What the server's answer means for the channel, the budget and the call.
    async fn outcome(
        &self,
        lease: &mut Lease,
        terms: &Terms,
        p: &Prepared,
        resp: Response,
    ) -> Result<Result<PaidResponse, Next>> {
        let mut ch = lease
            .channel
            .clone()
            .ok_or(Error::Config("a lease without a channel"))?;
        let result = if resp.status() == StatusCode::PAYMENT_REQUIRED {
            // A 402 serves nothing and charges nothing.
            self.not_charged(&mut ch, p);
            self.on_402(&mut ch, terms, &resp).await
        } else if let Some(h) = resp.headers().get(codec::PAYMENT_RESPONSE) {
            let settlement = h
                .to_str()
                .ok()
                .and_then(|s| codec::decode::<SettlementResponse>(s).ok());
            self.on_payment_response(&mut ch, p, settlement, resp).await
        } else {
            // Served (or failed) without an acknowledgement: the voucher stays in flight and
            // its reservation stays counted; the server settles it on the next request.
            tracing::debug!(target: TARGET, channel = %ch.id(), status = %resp.status(), "paid request answered without PAYMENT-RESPONSE");
            Ok(Ok(PaidResponse {
                response: resp,
                receipt: None,
            }))
        };
        lease.channel = Some(ch.clone());
        match &result {
            // Halting wrote the channel already.
            Err(Error::ServerMisbehaved { .. }) => {}
            // The server charged and answered: the answer is the caller's even if the store
            // cannot take the new total now (the channel's in-flight marker then stays on disk,
            // and the server's state settles it after a restart).
            Ok(Ok(_)) => {
                if let Err(e) = self.persist(&ch).await {
                    tracing::warn!(target: TARGET, channel = %ch.id(), error = %e, "acknowledged charge not saved");
                }
            }
            _ => self.persist(&ch).await?,
        }
        result
    }

    async fn on_402(
        &self,
        ch: &mut Channel,
        terms: &Terms,
        resp: &Response,
    ) -> Result<Result<PaidResponse, Next>> {
        let pr = read_402(resp)?;
        if let Some(extra) = corrective_extra(&pr, ch.id()) {
            self.correct(ch, &extra).await?;
            return Ok(Err(Next::Corrected));
        }
        // Not a correction: the offer may have changed. It is judged again by the policy.
        match self.select(&pr) {
            Ok(new)
                if new.chosen.offer != terms.chosen.offer
                    || new.chosen.generic != terms.chosen.generic =>
            {
                tracing::debug!(target: TARGET, origin = %ch.meta.origin, amount = new.chosen.offer.amount, "the server's offer changed");
                Ok(Err(Next::NewTerms(Arc::new(new))))
            }
            Ok(_) => Err(refusal(&pr, resp)),
            Err(e) => Err(e),
        }
    }

    /// Adopts a corrective 402's state after checking it: the server's last voucher must be
    /// one this payer signed and its charged total within it; the balance and claimed total come
    /// from chain when a reader is configured, else from the server's snapshot. A proof that does
    /// not hold halts the channel.
    pub(crate) async fn correct(&self, ch: &mut Channel, extra: &BatchExtra) -> Result<()> {
        let (balance, claimed) = match (&self.inner.chain, &extra.channel_state) {
            (Some(r), _) => {
                let s = r.channel_state(ch.id()).await?;
                (s.balance, s.total_claimed)
            }
            (None, Some(s)) => (s.balance, s.total_claimed),
            (None, None) => (ch.pc.balance, ch.pc.total_claimed),
        };
        let domain = self.domain(ch.meta.chain_id);
        let before = ch.pc.charged;
        match ch.pc.apply_corrective(
            &domain,
            extra,
            self.inner.signer.address(),
            balance,
            claimed,
        ) {
            Ok(()) => {
                ch.meta.pending = None;
                ch.meta.max_ceiling = ch
                    .meta
                    .max_ceiling
                    .max(ch.pc.last_voucher.map_or(0, |(c, _)| c));
                tracing::info!(target: TARGET, origin = %ch.meta.origin, channel = %ch.id(), before, after = ch.pc.charged, "channel corrected by the server's signed state");
                Ok(())
            }
            Err(reason) => self.misbehaved(ch, reason).await,
        }
    }

    /// Halts `ch`, stops paying its server, and says why.
    pub(crate) async fn misbehaved<T>(&self, ch: &mut Channel, reason: PayerError) -> Result<T> {
        self.halt(ch, reason.to_string()).await?;
        Err(Error::ServerMisbehaved {
            origin: ch.meta.origin.clone(),
            channel: ch.id(),
            reason,
        })
    }

    async fn on_payment_response(
        &self,
        ch: &mut Channel,
        p: &Prepared,
        settlement: Option<SettlementResponse>,
        resp: Response,
    ) -> Result<Result<PaidResponse, Next>> {
        let Some(settlement) = settlement else {
            return self
                .misbehaved(ch, PayerError::Malformed("PAYMENT-RESPONSE".into()))
                .await;
        };
        if !settlement.success {
            // Not charged by the server's own account; the voucher stays in flight.
            return Err(Error::Refused {
                code: settlement
                    .error_reason
                    .unwrap_or_else(|| ErrorCode::Other("none".into())),
                message: settlement.error_message,
            });
        }
        let charged = match ch.pc.apply_response(&settlement, p.amount, p.deposit) {
            Ok(c) => c,
            Err(reason) => return self.misbehaved(ch, reason).await,
        };
        ch.meta.pending = None;
        if let Some(d) = p.deposit {
            ch.meta.deposited = ch.meta.deposited.saturating_add(d);
        }
        self.give_back(ch, p, p.amount - charged);
        let receipt = Receipt {
            origin: ch.meta.origin.clone(),
            channel_id: ch.id(),
            charged,
            max_amount: p.amount,
            ceiling: p.ceiling,
            channel_charged: ch.pc.charged,
            channel_balance: ch.pc.balance,
            deposited: p.deposit,
            transaction: (!settlement.transaction.is_empty())
                .then(|| settlement.transaction.clone()),
        };
        Ok(Ok(PaidResponse {
            response: resp,
            receipt: Some(receipt),
        }))
    }
}
