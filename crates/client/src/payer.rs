//! The [`Payer`]: its settings ([`PayerBuilder`]), its state (terms cache, pools, budgets,
//! untrusted servers), loading it from the store and writing it back.
//!
//! Paying a request is in [`crate::pay`]; refunds and withdrawals in [`crate::manage`].

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use alloy_primitives::{Address, B256};
use paychan_chain::ChainReader;
use paychan_core::{
    batch::{BatchDomain, canonical},
    sig::LocalSigner,
    x402::ResourceInfo,
};
use paychan_store::{Store, WriteBatch};

use crate::{
    channel::{Channel, ChannelStatus, PoolKey, meta_key},
    clock::{Clock, SystemClock},
    error::{Error, Result},
    policy::{Budget, Chosen, DepositPolicy, SpendPolicy},
    pool::Pool,
};

/// The `tracing` target of the client's log lines.
pub(crate) const TARGET: &str = "paychan_client";

/// Metadata key of the list of servers this payer no longer pays.
const UNTRUSTED_KEY: &str = "paychan-client/untrusted";

/// Default number of channels per pool.
pub const DEFAULT_MAX_CHANNELS: usize = 4;

/// A poisoned lock is still usable here: every update under these locks is a single insert,
/// remove or arithmetic step, never left half-done.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a paid request was charged, as the server acknowledged it and this client checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The server.
    pub origin: String,
    /// The channel that paid.
    pub channel_id: B256,
    /// What this request was charged.
    pub charged: u128,
    /// Its maximum (the offer's `amount`).
    pub max_amount: u128,
    /// The ceiling of the voucher that paid it.
    pub ceiling: u128,
    /// Everything charged on the channel so far (cumulative).
    pub channel_charged: u128,
    /// The channel's balance after the request.
    pub channel_balance: u128,
    /// The deposit made with this request, if any.
    pub deposited: Option<u128>,
    /// The deposit's transaction, if any.
    pub transaction: Option<String>,
}

/// A response and, when the request was paid, its [`Receipt`]. The response (and its
/// streaming body) is the server's, untouched.
#[derive(Debug)]
pub struct PaidResponse {
    /// The server's response.
    pub response: reqwest::Response,
    /// The payment's receipt; `None` when nothing was paid (the resource is free, or the paid
    /// request failed without charging).
    pub receipt: Option<Receipt>,
}

/// A completed cooperative refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReceipt {
    /// The channel.
    pub channel_id: B256,
    /// Tokens returned to the payer.
    pub refunded: u128,
    /// The refund transaction.
    pub transaction: String,
    /// The channel's balance after it (what the receiver has claimed).
    pub balance: u128,
    /// The charged total the refund was made at.
    pub charged: u128,
}

/// One channel as listed by [`Payer::channels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel.
    pub channel_id: B256,
    /// Its pool: server and terms.
    pub pool: PoolKey,
    /// Its index in the pool (part of its salt).
    pub index: u64,
    /// Where it stands.
    pub status: ChannelStatus,
    /// Charged so far, as agreed with the server.
    pub charged: u128,
    /// Balance as known.
    pub balance: u128,
    /// The highest voucher ceiling signed on it.
    pub max_ceiling: u128,
    /// Deposited through this client.
    pub deposited: u128,
}

impl ChannelInfo {
    fn of(ch: &Channel) -> Self {
        Self {
            channel_id: ch.id(),
            pool: ch.pool_key(),
            index: ch.meta.index,
            status: ch.meta.status.clone(),
            charged: ch.pc.charged,
            balance: ch.pc.balance,
            max_ceiling: ch.meta.max_ceiling,
            deposited: ch.meta.deposited,
        }
    }
}

/// Terms of a resource as last learned from its 402.
#[derive(Debug, Clone)]
pub(crate) struct Terms {
    pub chosen: Chosen,
    pub resource: Option<ResourceInfo>,
}

/// Terms cache key: the method and the URL without its query or fragment
/// (`scheme://host[:port]/path`).
pub(crate) type TermsKey = (reqwest::Method, String);

pub(crate) struct Inner<S> {
    pub signer: LocalSigner,
    pub store: S,
    pub chain: Option<ChainReader>,
    pub http: reqwest::Client,
    pub spend: SpendPolicy,
    pub deposit: DepositPolicy,
    pub max_channels: usize,
    pub escrow: Address,
    pub collector: Address,
    pub clock: Arc<dyn Clock>,
    pub terms: Mutex<HashMap<TermsKey, Arc<Terms>>>,
    pub pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    pub budget: Mutex<Budget>,
    pub untrusted: Mutex<BTreeSet<String>>,
    pub directory: Mutex<HashMap<B256, ChannelInfo>>,
}

/// Pays x402 `batch-settlement` servers for HTTP requests. Cheap to clone (shared state).
///
/// Build one with [`Payer::builder`]; send requests with [`Payer::execute`], or wrap it in a
/// [`PayerMiddleware`](crate::PayerMiddleware) for a `reqwest_middleware::ClientWithMiddleware`.
pub struct Payer<S> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S> Clone for Payer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Payer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payer")
            .field("address", &self.inner.signer.address())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Payer`]. `signer`, `store` and `spend_policy` are required.
pub struct PayerBuilder<S> {
    signer: Option<LocalSigner>,
    store: Option<S>,
    chain: Option<ChainReader>,
    http: Option<reqwest::Client>,
    spend: Option<SpendPolicy>,
    deposit: DepositPolicy,
    max_channels: usize,
    escrow: Address,
    collector: Address,
    clock: Arc<dyn Clock>,
}

impl<S> std::fmt::Debug for PayerBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayerBuilder")
            .field("signer", &self.signer)
            .field("spend", &self.spend)
            .field("deposit", &self.deposit)
            .field("max_channels", &self.max_channels)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Payer<S> {
    /// Starts the settings of a payer.
    #[must_use]
    pub fn builder() -> PayerBuilder<S> {
        PayerBuilder {
            signer: None,
            store: None,
            chain: None,
            http: None,
            spend: None,
            deposit: DepositPolicy::new(0, 0),
            max_channels: DEFAULT_MAX_CHANNELS,
            escrow: canonical::ESCROW,
            collector: canonical::ERC3009_COLLECTOR,
            clock: Arc::new(SystemClock),
        }
    }
}

impl<S: Store> PayerBuilder<S> {
    /// The key that deposits and signs vouchers (it is both the channels' payer and payer
    /// authorizer). Load it from a file or the environment; it is never logged.
    #[must_use]
    pub fn signer(mut self, signer: LocalSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Where channels are kept (a [`paychan_store::SledStore`] in practice, so that channels
    /// outlive the process).
    #[must_use]
    pub fn store(mut self, store: S) -> Self {
        self.store = Some(store);
        self
    }

    /// A chain reader: used to find this payer's channels on chain when the store has none
    /// (cold start), to check balances after corrections and refunds, and for withdrawals. Its
    /// escrow and collector addresses replace the builder's.
    #[must_use]
    pub fn chain(mut self, reader: ChainReader) -> Self {
        self.chain = Some(reader);
        self
    }

    /// The HTTP client of [`Payer::execute`] and refunds (default: `reqwest::Client::new()`).
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// What may be spent.
    #[must_use]
    pub fn spend_policy(mut self, policy: SpendPolicy) -> Self {
        self.spend = Some(policy);
        self
    }

    /// How channels are funded (default: the server's minimum deposit, no early top-up).
    #[must_use]
    pub fn deposit_policy(mut self, policy: DepositPolicy) -> Self {
        self.deposit = policy;
        self
    }

    /// Channels per pool at most (default [`DEFAULT_MAX_CHANNELS`]): that many requests to one
    /// server can be in flight at once; more wait their turn.
    #[must_use]
    pub fn max_channels(mut self, n: usize) -> Self {
        self.max_channels = n.max(1);
        self
    }

    /// The escrow contract (default: the canonical address), when no chain reader is given.
    #[must_use]
    pub fn escrow(mut self, escrow: Address) -> Self {
        self.escrow = escrow;
        self
    }

    /// The ERC-3009 deposit collector (default: the canonical address), when no chain reader is
    /// given.
    #[must_use]
    pub fn collector(mut self, collector: Address) -> Self {
        self.collector = collector;
        self
    }

    /// The clock of budget periods and deposit authorizations (default: the system clock; the
    /// chain's time is used for authorizations when a chain reader is given).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Checks the settings and loads the payer's channels from the store.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for missing or contradictory settings, [`Error::Store`] when the
    /// store cannot be read.
    pub async fn build(self) -> Result<Payer<S>> {
        let signer = self.signer.ok_or(Error::Config("a signer is required"))?;
        let store = self.store.ok_or(Error::Config("a store is required"))?;
        let spend = self
            .spend
            .ok_or(Error::Config("a spend policy is required"))?;
        if spend.allowed_assets.is_empty() {
            return Err(Error::Config("the spend policy allows no asset"));
        }
        if self.deposit.amount > spend.max_per_deposit {
            return Err(Error::Config(
                "the deposit policy's amount is above the spend policy's maximum deposit",
            ));
        }
        let (escrow, collector) = match &self.chain {
            Some(r) => (r.config().escrow, r.config().erc3009_collector),
            None => (self.escrow, self.collector),
        };
        let budget = Budget::new(&spend);
        let payer = Payer {
            inner: Arc::new(Inner {
                signer,
                store,
                chain: self.chain,
                http: self.http.unwrap_or_default(),
                spend,
                deposit: self.deposit,
                max_channels: self.max_channels,
                escrow,
                collector,
                clock: self.clock,
                terms: Mutex::default(),
                pools: Mutex::default(),
                budget: Mutex::new(budget),
                untrusted: Mutex::default(),
                directory: Mutex::default(),
            }),
        };
        payer.load().await?;
        Ok(payer)
    }
}

impl<S: Store> Payer<S> {
    /// Loads channels, budgets and untrusted servers from the store.
    async fn load(&self) -> Result<()> {
        let inner = &self.inner;
        let me = inner.signer.address();
        let now = inner.clock.now_secs();
        let mut loaded = 0usize;
        for rec in inner.store.payer_channels().await? {
            if rec.config.payer != me {
                continue;
            }
            let meta = inner.store.meta(&meta_key(&rec.channel_id)).await?;
            let Some(ch) = Channel::from_stored(&rec, meta.as_deref()) else {
                tracing::warn!(target: TARGET, channel = %rec.channel_id, "stored payer channel without readable client fields; skipped");
                continue;
            };
            lock(&inner.budget).load(&ch.meta.origin, ch.meta.window, ch.meta.window_spent, now);
            lock(&inner.directory).insert(ch.id(), ChannelInfo::of(&ch));
            let pool = self.pool(&ch.pool_key());
            // The store knows this pool: nothing to search on chain.
            let _ = pool.recovered.set(());
            pool.add(ch);
            loaded += 1;
        }
        if let Some(v) = inner.store.meta(UNTRUSTED_KEY).await? {
            let list: Vec<String> = serde_json::from_slice(&v).unwrap_or_default();
            lock(&inner.untrusted).extend(list);
        }
        tracing::info!(target: TARGET, payer = %me, channels = loaded, "payer loaded");
        Ok(())
    }

    /// The pool of `key`, made if new.
    pub(crate) fn pool(&self, key: &PoolKey) -> Arc<Pool> {
        lock(&self.inner.pools)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Pool::new(key.clone(), self.inner.max_channels)))
            .clone()
    }

    /// The pool holding channel `id`.
    pub(crate) fn pool_of(&self, id: B256) -> Option<Arc<Pool>> {
        let key = lock(&self.inner.directory).get(&id)?.pool.clone();
        lock(&self.inner.pools).get(&key).cloned()
    }

    /// The escrow's domain on `chain_id`.
    pub(crate) fn domain(&self, chain_id: u64) -> BatchDomain {
        BatchDomain::new(chain_id, self.inner.escrow)
    }

    /// Writes a channel (record and client fields, one atomic batch), durably, and lists it.
    pub(crate) async fn persist(&self, ch: &Channel) -> Result<()> {
        self.persist_with(ch, Vec::new()).await
    }

    async fn persist_with(&self, ch: &Channel, mut meta: Vec<(String, Vec<u8>)>) -> Result<()> {
        let now_ms = self.inner.clock.now_secs().saturating_mul(1000);
        meta.push((meta_key(&ch.id()), ch.meta_bytes()));
        let batch = WriteBatch {
            payer_channels: vec![ch.record(now_ms)],
            meta,
            ..WriteBatch::default()
        };
        self.inner.store.commit(batch).await?;
        lock(&self.inner.directory).insert(ch.id(), ChannelInfo::of(ch));
        Ok(())
    }

    /// Halts `ch` (it signs nothing more) and stops paying its server, both durably.
    pub(crate) async fn halt(&self, ch: &mut Channel, reason: String) -> Result<()> {
        tracing::warn!(target: TARGET, origin = %ch.meta.origin, channel = %ch.id(), %reason, "server misbehaved; channel halted, server no longer paid");
        ch.meta.status = ChannelStatus::Halted { reason };
        let list = {
            let mut u = lock(&self.inner.untrusted);
            u.insert(ch.meta.origin.clone());
            serde_json::to_vec(&*u).unwrap_or_default()
        };
        self.persist_with(ch, vec![(UNTRUSTED_KEY.to_owned(), list)])
            .await
    }

    /// Refuses `origin` when it misbehaved before.
    pub(crate) fn check_trusted(&self, origin: &str) -> Result<()> {
        if lock(&self.inner.untrusted).contains(origin) {
            return Err(Error::Untrusted {
                origin: origin.to_owned(),
            });
        }
        Ok(())
    }

    /// The store the payer keeps its channels in.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The address that pays.
    #[must_use]
    pub fn address(&self) -> Address {
        self.inner.signer.address()
    }

    /// Every channel this payer knows, by server and index.
    #[must_use]
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let mut v: Vec<_> = lock(&self.inner.directory).values().cloned().collect();
        v.sort_by(|a, b| (&a.pool.origin, a.index).cmp(&(&b.pool.origin, b.index)));
        v
    }

    /// Everything charged on this payer's channels, as agreed with the servers.
    #[must_use]
    pub fn total_charged(&self) -> u128 {
        lock(&self.inner.directory)
            .values()
            .fold(0u128, |acc, c| acc.saturating_add(c.charged))
    }

    /// Spent or reserved in the current budget period: at `origin`, or overall for `None`.
    #[must_use]
    pub fn period_spent(&self, origin: Option<&str>) -> u128 {
        let now = self.inner.clock.now_secs();
        lock(&self.inner.budget).spent(origin, now)
    }

    /// Servers this payer no longer pays because they misbehaved.
    #[must_use]
    pub fn untrusted_servers(&self) -> Vec<String> {
        lock(&self.inner.untrusted).iter().cloned().collect()
    }

    /// Pays `origin` again (its halted channels stay halted; new ones are opened).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the change cannot be saved.
    pub async fn trust_again(&self, origin: &str) -> Result<()> {
        let list = {
            let mut u = lock(&self.inner.untrusted);
            u.remove(origin);
            serde_json::to_vec(&*u).unwrap_or_default()
        };
        let batch = WriteBatch {
            meta: vec![(UNTRUSTED_KEY.to_owned(), list)],
            ..WriteBatch::default()
        };
        Ok(self.inner.store.commit(batch).await?)
    }

    /// Forgets every cached offer: the next request to each resource probes it again.
    pub fn forget_terms(&self) {
        lock(&self.inner.terms).clear();
    }
}
