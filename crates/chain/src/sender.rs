//! The transaction engine shared by the relayer and the payer-side client: gas estimation under a
//! ceiling, EIP-1559 fees under a cap, local nonces for several transactions in flight, signing,
//! broadcasting, and the wait loop (confirmations, canonical-block checks, re-broadcast after a
//! reorg, fee bumps of a stuck transaction).
//!
//! The engine journals nothing itself: it calls a [`SentHook`] with every signed transaction
//! *before* broadcasting it, so that a crash can never leave a broadcast transaction unrecorded.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope},
    eips::{BlockNumberOrTag, eip2718::Encodable2718},
    primitives::{Address, B256, Bytes, TxKind, U256},
    providers::Provider,
    rpc::types::{TransactionReceipt, TransactionRequest},
};

use crate::{ChainConfig, ChainReader, Error, Result, TxKey, rpc::TARGET};

/// What a transaction does: a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxCall {
    pub(crate) to: Address,
    pub(crate) data: Bytes,
    pub(crate) value: U256,
}

/// EIP-1559 fees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fees {
    pub(crate) max_fee: u128,
    pub(crate) priority: u128,
}

/// One signed version of a transaction (the first, or a fee bump).
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) hash: B256,
    pub(crate) raw: Bytes,
    pub(crate) fees: Fees,
}

/// A transaction being driven to confirmation.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) call: TxCall,
    pub(crate) nonce: u64,
    pub(crate) gas_limit: u64,
    /// Signed versions at this nonce, oldest first (never empty).
    pub(crate) attempts: Vec<Attempt>,
    pub(crate) bumps: u32,
    /// Hashes of earlier transactions for the same action at other nonces (taken by others).
    pub(crate) prior_hashes: Vec<B256>,
    /// The last broadcast did not reach the node: repeat it as soon as the node answers.
    pub(crate) unsent: bool,
    /// The node refused the last broadcast (underpriced, under the base fee, ...).
    pub(crate) refused: bool,
}

impl InFlight {
    pub(crate) fn latest(&self) -> &Attempt {
        // `attempts` is never empty: built with one attempt, only ever pushed to.
        &self.attempts[self.attempts.len() - 1]
    }

    /// Every hash of the action, oldest first.
    pub(crate) fn all_hashes(&self) -> Vec<B256> {
        self.prior_hashes
            .iter()
            .copied()
            .chain(self.attempts.iter().map(|a| a.hash))
            .collect()
    }

    /// Hashes at the current nonce, newest first.
    fn current_hashes(&self) -> Vec<B256> {
        self.attempts.iter().rev().map(|a| a.hash).collect()
    }
}

/// Polls in a row that must see a transaction's nonce used by something else, with no receipt
/// for any of its hashes, before it is declared superseded.
const NONCE_TAKEN_POLLS: u32 = 3;

/// A mined and confirmed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// The transaction that was mined (after fee bumps: the version that made it).
    pub tx_hash: B256,
    /// Its nonce.
    pub nonce: u64,
    /// Its block.
    pub block: u64,
    /// That block's hash (canonical when confirmed).
    pub block_hash: B256,
    /// Gas used.
    pub gas_used: u64,
    /// Price paid per gas, wei.
    pub effective_gas_price: u128,
    /// Whether it succeeded (`false`: reverted).
    pub success: bool,
}

/// How waiting ended.
#[derive(Debug)]
pub(crate) enum WaitEnd {
    Mined(TxOutcome),
    /// The nonce was used by a transaction that is none of ours.
    NonceTaken,
    TimedOut(Duration),
}

/// Called with a transaction right after it is signed and before it is broadcast.
pub(crate) trait SentHook: Send + Sync {
    fn on_signed(&self, tx: &InFlight) -> impl Future<Output = Result<()>> + Send;
}

/// No journal (payer-side transactions, gap fillers).
pub(crate) struct NoJournal;

impl SentHook for NoJournal {
    async fn on_signed(&self, _tx: &InFlight) -> Result<()> {
        Ok(())
    }
}

/// What the node said to a broadcast.
#[derive(Debug)]
pub(crate) enum Broadcast {
    Accepted,
    AlreadyKnown,
    NonceTooLow,
    Underpriced(String),
    FeeTooLow(String),
    Rejected(String),
    Unreachable(Error),
}

impl std::fmt::Display for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broadcast::Accepted => f.write_str("accepted"),
            Broadcast::AlreadyKnown => f.write_str("already known"),
            Broadcast::NonceTooLow => f.write_str("nonce too low"),
            Broadcast::Underpriced(m) | Broadcast::FeeTooLow(m) | Broadcast::Rejected(m) => {
                f.write_str(m)
            }
            Broadcast::Unreachable(e) => write!(f, "{e}"),
        }
    }
}

fn classify_send_error(message: &str) -> Broadcast {
    let m = message.to_ascii_lowercase();
    if m.contains("already known")
        || m.contains("known transaction")
        || m.contains("already imported")
        || m.contains("already exists")
        || m.contains("alreadyknown")
    {
        Broadcast::AlreadyKnown
    } else if m.contains("nonce too low")
        || m.contains("nonce is too low")
        || m.contains("nonce has already been used")
        || m.contains("old nonce")
        || m.contains("noncetoolow")
    {
        Broadcast::NonceTooLow
    } else if m.contains("underpriced") {
        Broadcast::Underpriced(message.to_owned())
    } else if m.contains("base fee") || m.contains("basefee") || m.contains("fee cap") {
        Broadcast::FeeTooLow(message.to_owned())
    } else {
        Broadcast::Rejected(message.to_owned())
    }
}

/// `x` raised by `bps` basis points, rounded up, by at least 1.
pub(crate) fn bumped(x: u128, bps: u128) -> u128 {
    let inc = x.saturating_mul(bps).div_ceil(10_000).max(1);
    x.saturating_add(inc)
}

/// Sends transactions from one key. Cheap to clone; clones share the nonce counter.
#[derive(Clone, Debug)]
pub(crate) struct TxSender {
    inner: Arc<SenderInner>,
}

#[derive(Debug)]
struct SenderInner {
    reader: ChainReader,
    key: TxKey,
    /// The next nonce to hand out; `None` until fetched from the node (or after a resync).
    next_nonce: tokio::sync::Mutex<Option<u64>>,
}

impl TxSender {
    pub(crate) fn new(reader: ChainReader, key: TxKey) -> Self {
        Self {
            inner: Arc::new(SenderInner {
                reader,
                key,
                next_nonce: tokio::sync::Mutex::new(None),
            }),
        }
    }

    pub(crate) fn address(&self) -> Address {
        self.inner.key.address()
    }

    pub(crate) fn reader(&self) -> &ChainReader {
        &self.inner.reader
    }

    fn cfg(&self) -> &ChainConfig {
        self.inner.reader.config()
    }

    // ---- nonces -------------------------------------------------------------------------------

    /// Hands out the next nonce, fetching the node's pending count the first time.
    pub(crate) async fn allocate_nonce(&self) -> Result<u64> {
        let mut g = self.inner.next_nonce.lock().await;
        let next = match *g {
            Some(n) => n,
            None => self.reader().nonce_pending(self.address()).await?,
        };
        *g = Some(next.saturating_add(1));
        Ok(next)
    }

    /// Forgets the local counter; the next allocation asks the node again.
    pub(crate) async fn resync_nonce(&self) {
        *self.inner.next_nonce.lock().await = None;
    }

    /// Makes sure nonces below `n` are never handed out again (they belong to journaled
    /// transactions being recovered).
    pub(crate) async fn nonce_at_least(&self, n: u64) -> Result<()> {
        let mut g = self.inner.next_nonce.lock().await;
        let cur = match *g {
            Some(c) => c,
            None => self.reader().nonce_pending(self.address()).await?,
        };
        *g = Some(cur.max(n));
        Ok(())
    }

    /// Gives back a nonce whose transaction the node refused. If later nonces are already out, a
    /// zero-value transaction to self fills the gap so that they are not stuck behind it.
    pub(crate) async fn release_nonce(&self, nonce: u64) {
        let gap = {
            let mut g = self.inner.next_nonce.lock().await;
            if *g == Some(nonce.saturating_add(1)) {
                *g = Some(nonce);
                false
            } else {
                true
            }
        };
        if gap {
            tracing::warn!(target: TARGET, nonce, "filling a nonce gap with a no-op transaction");
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.fill_gap(nonce).await {
                    tracing::error!(target: TARGET, nonce, error = %e, "nonce gap filler failed");
                }
            });
        }
    }

    async fn fill_gap(&self, nonce: u64) -> Result<TxOutcome> {
        let call = TxCall {
            to: self.address(),
            data: Bytes::new(),
            value: U256::ZERO,
        };
        let fees = self.market_fees().await?;
        let attempt = self.sign(&call, nonce, 21_000, fees)?;
        let mut f = InFlight {
            call,
            nonce,
            gas_limit: 21_000,
            attempts: vec![attempt],
            bumps: 0,
            prior_hashes: Vec::new(),
            unsent: false,
            refused: false,
        };
        f.unsent = matches!(
            self.broadcast(&f.latest().raw).await,
            Broadcast::Unreachable(_)
        );
        match self.wait(&mut f, &NoJournal).await? {
            WaitEnd::Mined(o) => Ok(o),
            WaitEnd::NonceTaken => Err(Error::NonceTaken {
                sender: self.address(),
                nonce,
            }),
            WaitEnd::TimedOut(waited) => Err(Error::Unconfirmed {
                journal_id: 0,
                tx_hash: f.latest().hash,
                waited,
            }),
        }
    }

    // ---- gas and fees ---------------------------------------------------------------------------

    /// Estimates gas (a revert is an error) and derives the gas limit; refuses above the ceiling.
    pub(crate) async fn gas_limit(&self, what: &'static str, call: &TxCall) -> Result<u64> {
        let tx = TransactionRequest::default()
            .from(self.address())
            .to(call.to)
            .value(call.value)
            .input(call.data.clone().into());
        let estimate = self
            .reader()
            .rpc()
            .run("eth_estimateGas", |p| {
                let tx = tx.clone();
                async move { p.estimate_gas(tx).await }
            })
            .await
            .map_err(|e| match e {
                Error::Reverted { reason, data, .. } => Error::Reverted {
                    call: what,
                    reason,
                    data,
                },
                other => other,
            })?;
        let ceiling = self.cfg().max_gas_per_tx;
        if estimate > ceiling {
            return Err(Error::GasCeiling {
                what,
                estimate,
                ceiling,
            });
        }
        let margin = estimate.saturating_mul(self.cfg().gas_margin_percent) / 100;
        Ok(estimate.saturating_add(margin).min(ceiling))
    }

    /// Fees from the node (`2 × next block's base fee + tip`), capped by the configuration.
    pub(crate) async fn market_fees(&self) -> Result<Fees> {
        let rpc = self.reader().rpc();
        let history = rpc
            .run("eth_feeHistory", |p| async move {
                p.get_fee_history(1, BlockNumberOrTag::Latest, &[]).await
            })
            .await;
        let base = match history {
            Ok(h) => h
                .next_block_base_fee()
                .max(h.latest_block_base_fee())
                .unwrap_or(0),
            // a node without eth_feeHistory: the latest block's base fee
            Err(Error::Node { .. }) => {
                let block = self.reader().latest_block().await?;
                u128::from(block.header.base_fee_per_gas.unwrap_or(0))
            }
            Err(e) => return Err(e),
        };
        let tip = match rpc
            .run("eth_maxPriorityFeePerGas", |p| async move {
                p.get_max_priority_fee_per_gas().await
            })
            .await
        {
            Ok(t) => t,
            // a node without the method: a modest default tip
            Err(Error::Node { .. }) => 100_000_000,
            Err(e) => return Err(e),
        };
        let cfg = self.cfg();
        let priority = tip.min(cfg.max_priority_fee_per_gas);
        let max_fee = base
            .saturating_mul(2)
            .saturating_add(priority)
            .min(cfg.max_fee_per_gas);
        if max_fee < base {
            tracing::warn!(
                target: TARGET,
                base_fee = base,
                cap = cfg.max_fee_per_gas,
                "base fee is above max_fee_per_gas: the transaction waits until it drops"
            );
        }
        Ok(Fees {
            max_fee,
            priority: priority.min(max_fee),
        })
    }

    /// Fees for a replacement: at least `bump_percent` above the last on both fields (what nodes
    /// require), at least the market's; `None` when the cap leaves no room.
    async fn bump_fees(&self, last: Fees) -> Result<Option<Fees>> {
        let cfg = self.cfg();
        let bps = cfg.bump_bps();
        let market = self.market_fees().await?;
        let min_max = bumped(last.max_fee, bps);
        let min_tip = bumped(last.priority, bps);
        let max_fee = min_max.max(market.max_fee).min(cfg.max_fee_per_gas);
        let priority = min_tip
            .max(market.priority)
            .min(cfg.max_priority_fee_per_gas)
            .min(max_fee);
        Ok((max_fee >= min_max && priority >= min_tip).then_some(Fees { max_fee, priority }))
    }

    // ---- signing and broadcasting ---------------------------------------------------------------

    pub(crate) fn sign(
        &self,
        call: &TxCall,
        nonce: u64,
        gas_limit: u64,
        fees: Fees,
    ) -> Result<Attempt> {
        let tx = TxEip1559 {
            chain_id: self.cfg().chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: fees.max_fee,
            max_priority_fee_per_gas: fees.priority,
            to: TxKind::Call(call.to),
            value: call.value,
            access_list: Default::default(),
            input: call.data.clone(),
        };
        let sig = self.inner.key.sign_hash(&tx.signature_hash())?;
        let envelope = TxEnvelope::from(tx.into_signed(sig));
        Ok(Attempt {
            hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
            fees,
        })
    }

    pub(crate) async fn broadcast(&self, raw: &Bytes) -> Broadcast {
        let res = self
            .reader()
            .rpc()
            .run("eth_sendRawTransaction", |p| {
                let raw = raw.clone();
                async move { p.send_raw_transaction(&raw).await.map(|_| ()) }
            })
            .await;
        match res {
            Ok(()) => Broadcast::Accepted,
            Err(Error::Node { message, .. }) => classify_send_error(&message),
            Err(Error::Reverted { reason, .. }) => classify_send_error(&reason),
            Err(e) if e.is_transport() => Broadcast::Unreachable(e),
            Err(e) => Broadcast::Rejected(e.to_string()),
        }
    }

    async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>> {
        self.reader()
            .rpc()
            .run("eth_getTransactionReceipt", |p| async move {
                p.get_transaction_receipt(hash).await
            })
            .await
    }

    /// Whether the node knows the transaction (pending or mined).
    async fn known_to_node(&self, hash: B256) -> Result<bool> {
        let tx = self
            .reader()
            .rpc()
            .run("eth_getTransactionByHash", |p| async move {
                p.get_transaction_by_hash(hash).await
            })
            .await?;
        Ok(tx.is_some())
    }

    /// The receipt of the first of `hashes` that has one.
    pub(crate) async fn find_receipt(&self, hashes: &[B256]) -> Result<Option<TransactionReceipt>> {
        for &h in hashes {
            if let Some(r) = self.receipt(h).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Estimates, prices, numbers, signs, hands the transaction to `hook`, broadcasts it. A nonce
    /// found taken by another transaction is replaced by a fresh one (a fresh send has never
    /// executed, so that is safe). Transport failures at broadcast are left to [`Self::wait`].
    pub(crate) async fn send_new<H: SentHook>(
        &self,
        what: &'static str,
        call: TxCall,
        mut prior_hashes: Vec<B256>,
        hook: &H,
        gas_limit: Option<u64>,
    ) -> Result<InFlight> {
        let gas_limit = match gas_limit {
            Some(g) => g,
            None => self.gas_limit(what, &call).await?,
        };
        let fees = self.market_fees().await?;
        let mut last_nonce = 0;
        for _ in 0..4 {
            let nonce = self.allocate_nonce().await?;
            last_nonce = nonce;
            let attempt = match self.sign(&call, nonce, gas_limit, fees) {
                Ok(a) => a,
                Err(e) => {
                    self.release_nonce(nonce).await;
                    return Err(e);
                }
            };
            let mut f = InFlight {
                call: call.clone(),
                nonce,
                gas_limit,
                attempts: vec![attempt],
                bumps: 0,
                prior_hashes: prior_hashes.clone(),
                unsent: false,
                refused: false,
            };
            if let Err(e) = hook.on_signed(&f).await {
                self.release_nonce(nonce).await;
                return Err(e);
            }
            let hash = f.latest().hash;
            match self.broadcast(&f.latest().raw).await {
                Broadcast::Accepted | Broadcast::AlreadyKnown => {
                    tracing::info!(target: TARGET, what, %hash, nonce, gas_limit, max_fee = fees.max_fee, "transaction sent");
                    return Ok(f);
                }
                Broadcast::Unreachable(e) => {
                    tracing::warn!(target: TARGET, what, %hash, nonce, error = %e, "broadcast failed; will retry while waiting");
                    f.unsent = true;
                    return Ok(f);
                }
                Broadcast::FeeTooLow(m) => {
                    tracing::warn!(target: TARGET, what, %hash, nonce, reason = %m, "fee below the base fee; will bump while waiting");
                    f.refused = true;
                    return Ok(f);
                }
                answer @ (Broadcast::NonceTooLow | Broadcast::Underpriced(_)) => {
                    if self.find_receipt(&[hash]).await?.is_some() {
                        // ours, mined already (an earlier attempt's answer was lost)
                        return Ok(f);
                    }
                    tracing::warn!(target: TARGET, what, nonce, %answer, "nonce already used; resyncing from the node");
                    self.resync_nonce().await;
                    prior_hashes = f.all_hashes();
                }
                Broadcast::Rejected(message) => {
                    self.release_nonce(nonce).await;
                    return Err(Error::Rejected {
                        tx_hash: hash,
                        nonce,
                        message,
                    });
                }
            }
        }
        Err(Error::NonceTaken {
            sender: self.address(),
            nonce: last_nonce,
        })
    }

    /// Waits for `f` to be mined with enough confirmations in a canonical block, re-broadcasting
    /// it when a reorg drops it or the node forgets it, and bumping its fees when it is stuck
    /// (`bump_after` without being mined) or refused as underpriced. RPC failures are logged and
    /// retried at the next poll; only the hook's (store) errors end the wait early.
    pub(crate) async fn wait<H: SentHook>(&self, f: &mut InFlight, hook: &H) -> Result<WaitEnd> {
        let cfg = self.cfg().clone();
        let started = Instant::now();
        // when to bump (or re-broadcast) next: at once if the node refused the first version
        let mut next_push = if f.refused {
            Instant::now()
        } else {
            Instant::now() + cfg.bump_after
        };
        let mut seen: Option<(u64, B256)> = None;
        // the first time round, check at once whether the nonce is already used (recovery)
        // How many polls in a row found the nonce used with none of our hashes mined.
        let mut taken_seen = 0u32;
        let mut first_check = true;
        loop {
            if let Some(limit) = cfg.confirm_timeout
                && started.elapsed() >= limit
            {
                return Ok(WaitEnd::TimedOut(started.elapsed()));
            }
            tokio::time::sleep(cfg.poll_interval).await;
            let receipt = match self.find_receipt(&f.current_hashes()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(target: TARGET, nonce = f.nonce, error = %e, "receipt poll failed");
                    continue;
                }
            };
            if let Some(r) = receipt
                && let (Some(block), Some(block_hash)) = (r.block_number, r.block_hash)
            {
                seen = Some((block, block_hash));
                let head = match self.reader().block_number().await {
                    Ok(h) => h,
                    Err(_) => continue,
                };
                if head.saturating_add(1) < block.saturating_add(cfg.confirmations) {
                    continue;
                }
                match self.reader().block_hash(block).await {
                    Ok(Some(h)) if h == block_hash => {
                        return Ok(WaitEnd::Mined(TxOutcome {
                            tx_hash: r.transaction_hash,
                            nonce: f.nonce,
                            block,
                            block_hash,
                            gas_used: r.gas_used,
                            effective_gas_price: r.effective_gas_price,
                            success: r.status(),
                        }));
                    }
                    Ok(_) => {
                        tracing::warn!(target: TARGET, tx = %r.transaction_hash, block, "the block of the transaction is no longer canonical; re-broadcasting");
                        seen = None;
                        next_push = self.push(f, &cfg).await;
                        continue;
                    }
                    Err(_) => continue,
                }
            }
            if let Some((block, _)) = seen.take() {
                tracing::warn!(target: TARGET, nonce = f.nonce, block, tx = %f.latest().hash, "transaction dropped by a reorg; re-broadcasting");
                next_push = self.push(f, &cfg).await;
                continue;
            }
            if f.unsent {
                // the node answers again: hand it the transaction now
                tracing::info!(target: TARGET, nonce = f.nonce, tx = %f.latest().hash, "node reachable again; re-broadcasting");
                next_push = self.push(f, &cfg).await;
                continue;
            }
            let due = Instant::now() >= next_push;
            if first_check || due || taken_seen > 0 {
                first_check = false;
                // its nonce went to another transaction?
                match self.reader().nonce_latest(self.address()).await {
                    Ok(n) if n > f.nonce => {
                        match self.find_receipt(&f.current_hashes()).await {
                            // A receipt can lag the account nonce: decide only when several
                            // polls in a row agree, or a transaction we sent is marked failed.
                            Ok(None) => {
                                taken_seen += 1;
                                if taken_seen >= NONCE_TAKEN_POLLS {
                                    return Ok(WaitEnd::NonceTaken);
                                }
                            }
                            _ => taken_seen = 0,
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => continue,
                }
            }
            if !due {
                if !f.refused
                    && let Ok(false) = self.known_to_node(f.latest().hash).await
                {
                    // neither mined nor pending: dropped by a reorg we did not see, or evicted
                    tracing::warn!(target: TARGET, nonce = f.nonce, tx = %f.latest().hash, "transaction unknown to the node; re-broadcasting");
                    next_push = self.push(f, &cfg).await;
                }
                continue;
            }
            // Stuck or refused: a version with higher fees, if the caps leave room.
            let mut bumped = false;
            if f.bumps < cfg.max_bumps {
                match self.bump_fees(f.latest().fees).await {
                    Ok(Some(fees)) => {
                        let attempt = self.sign(&f.call, f.nonce, f.gas_limit, fees)?;
                        let old = f.latest().hash;
                        f.attempts.push(attempt);
                        f.bumps += 1;
                        hook.on_signed(f).await?;
                        bumped = true;
                        tracing::info!(
                            target: TARGET,
                            nonce = f.nonce,
                            %old,
                            new = %f.latest().hash,
                            max_fee = fees.max_fee,
                            tip = fees.priority,
                            bump = f.bumps,
                            "fee-bumping a stuck transaction"
                        );
                    }
                    Ok(None) => {
                        tracing::debug!(target: TARGET, nonce = f.nonce, "fees at the cap; re-broadcasting unchanged")
                    }
                    Err(e) => {
                        tracing::debug!(target: TARGET, error = %e, "fee estimate failed; re-broadcasting unchanged")
                    }
                }
            }
            next_push = self.push(f, &cfg).await;
            if !bumped && f.refused {
                // refused and nothing better to offer: try again later, not at every poll
                next_push = Instant::now() + cfg.bump_after;
            }
        }
    }

    /// Broadcasts the latest version; returns when to bump or re-broadcast next: at once when
    /// the node refused it as underpriced (so that a bump follows), else after `bump_after`.
    async fn push(&self, f: &mut InFlight, cfg: &ChainConfig) -> Instant {
        let answer = self.broadcast(&f.latest().raw).await;
        f.unsent = matches!(answer, Broadcast::Unreachable(_));
        f.refused = matches!(
            answer,
            Broadcast::Underpriced(_) | Broadcast::FeeTooLow(_) | Broadcast::Rejected(_)
        );
        match &answer {
            Broadcast::Accepted | Broadcast::AlreadyKnown | Broadcast::NonceTooLow => {}
            other => {
                tracing::warn!(target: TARGET, nonce = f.nonce, tx = %f.latest().hash, answer = %other, "broadcast not accepted")
            }
        }
        if matches!(answer, Broadcast::Underpriced(_) | Broadcast::FeeTooLow(_))
            && f.bumps < cfg.max_bumps
        {
            Instant::now()
        } else {
            Instant::now() + cfg.bump_after
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_round_up_and_always_raise() {
        assert_eq!(bumped(1_000_000_000, 1250), 1_125_000_000);
        assert_eq!(bumped(7, 1250), 8);
        assert_eq!(bumped(0, 1250), 1);
        assert_eq!(bumped(u128::MAX, 1250), u128::MAX);
    }

    #[test]
    fn send_errors_are_classified() {
        assert!(matches!(
            classify_send_error("nonce too low: next nonce 5, tx nonce 3"),
            Broadcast::NonceTooLow
        ));
        assert!(matches!(
            classify_send_error("already known"),
            Broadcast::AlreadyKnown
        ));
        assert!(matches!(
            classify_send_error("replacement transaction underpriced"),
            Broadcast::Underpriced(_)
        ));
        assert!(matches!(
            classify_send_error("insufficient funds for gas * price + value"),
            Broadcast::Rejected(_)
        ));
    }
}
