//! [`ControlPlane`]: the `paychan.control.v1.ChannelControl` service over the engine and, when
//! configured, the settlement scheduler.
//!
//! Each call validates every field first (`INVALID_ARGUMENT` naming the field), then checks
//! that this server can do what is asked (`FAILED_PRECONDITION`), then that the channels exist
//! (`NOT_FOUND`), and only then reads the chain or sends anything.

use std::{collections::HashSet, pin::Pin, sync::Arc};

use alloy_primitives::{Address, B256, Bytes};
use futures_util::Stream;
use paychan_chain::{SignedRefund, StartFrom, WatcherConfig};
use paychan_core::batch::payee::{self, ChannelRecord};
use paychan_core::ports::{Clock, OnchainSource, PaymentFacilitator};
use paychan_engine::{Engine, EngineEvent};
use paychan_settle::Settler;
use paychan_store::{JournalEntry, JournalState, Store};
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

use crate::{
    TARGET, close,
    convert::{self, b256},
    error,
    events::{self, EventHub},
    parse,
    proto::{self, channel_control_server::ChannelControl},
};

/// The `ListChannels` page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest `ListChannels` page size.
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Channel ids one `ClaimNow` or `WatchEvents` call may name at most.
pub const MAX_CHANNEL_IDS: usize = 10_000;

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Events the `WatchEvents` ring holds (default 10,000); a client may resume from any of
    /// them.
    pub event_capacity: usize,
    /// Store records one `ListChannels` page examines at most (default 10,000), whatever the
    /// filters let through.
    pub max_scan: usize,
    /// Follow the escrow's events (claims, settles, withdrawals, deposits) for `WatchEvents`
    /// with a watcher of the control plane's own, its cursor in memory. Default: on, starting
    /// at the chain's head when serving starts. It needs the settlement scheduler's chain
    /// reader, so without a scheduler there are no on-chain events. `None`: off.
    pub chain_events: Option<WatcherConfig>,
    /// Receivers whose settles are reported; empty: every settle on the escrow.
    pub receivers: Vec<Address>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            event_capacity: 10_000,
            max_scan: 10_000,
            chain_events: Some(WatcherConfig {
                cursor_key: "control.watcher.cursor".into(),
                ..WatcherConfig::default()
            }),
            receivers: Vec::new(),
        }
    }
}

struct Inner<S: Store, C, F, K> {
    engine: Engine<S, C, F, K>,
    settler: Option<Settler<S, C, F, K>>,
    config: ControlConfig,
    hub: Arc<EventHub>,
    /// Subscribed at creation, so no charge between `new` and `serve` is missed.
    engine_events: std::sync::Mutex<Option<broadcast::Receiver<EngineEvent>>>,
    /// Cooperative closes run one at a time.
    closing: tokio::sync::Mutex<()>,
    /// Turns true when serving stops: streams end.
    stop: watch::Sender<bool>,
}

/// The control plane of one engine (and its settlement scheduler, if any). Cheap to clone.
pub struct ControlPlane<S: Store, C, F, K> {
    inner: Arc<Inner<S, C, F, K>>,
}

impl<S: Store, C, F, K> Clone for ControlPlane<S, C, F, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Store, C, F, K> std::fmt::Debug for ControlPlane<S, C, F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("stream_id", &self.inner.hub.stream_id())
            .field("settlement", &self.inner.settler.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, C, F, K> ControlPlane<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    /// The control plane of `engine`; `settler` enables `ClaimNow`, `SettleNow`,
    /// `RefundChannel` and on-chain events. Subscribes to the engine's events at once.
    pub fn new(
        engine: Engine<S, C, F, K>,
        settler: Option<Settler<S, C, F, K>>,
        config: ControlConfig,
    ) -> Self {
        let events = engine.subscribe();
        Self {
            inner: Arc::new(Inner {
                hub: Arc::new(EventHub::new(config.event_capacity)),
                engine,
                settler,
                config,
                engine_events: std::sync::Mutex::new(Some(events)),
                closing: tokio::sync::Mutex::new(()),
                stop: watch::Sender::new(false),
            }),
        }
    }

    /// The id of this process's event stream (`ChannelEvent.stream_id`).
    pub fn stream_id(&self) -> &str {
        self.inner.hub.stream_id()
    }

    /// The sequence of the last event recorded (0: none yet).
    pub fn last_sequence(&self) -> u64 {
        self.inner.hub.last_sequence()
    }

    /// Ends every `WatchEvents` stream (with `UNAVAILABLE`) and the event sources.
    pub(crate) fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// The chain watcher's settings for [`Self::run_feeds`], `None` without one. A watcher set
    /// to start at the head starts at the block after the head read now, so that a transaction
    /// mined once serving has begun is never missed: call this before accepting calls.
    pub(crate) async fn chain_watch(&self) -> Option<WatcherConfig> {
        let inner = &self.inner;
        let (Some(settler), Some(cfg)) = (&inner.settler, &inner.config.chain_events) else {
            return None;
        };
        let mut cfg = cfg.clone();
        if cfg.start == StartFrom::Head {
            match settler.relayer().reader().block_number().await {
                Ok(n) => cfg.start = StartFrom::Block(n.saturating_add(1)),
                Err(e) => {
                    tracing::warn!(target: TARGET, error = %paychan_core::redact::redact_urls(&e.to_string()), "reading the chain's head failed; chain events start at the head once the chain answers")
                }
            }
        }
        Some(cfg)
    }

    /// Feeds the event ring until [`Self::stop`]: the engine's events, and the chain's with
    /// `chain` (from [`Self::chain_watch`]).
    pub(crate) async fn run_feeds(&self, chain: Option<WatcherConfig>) {
        let inner = &self.inner;
        let events = inner
            .engine_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| inner.engine.subscribe());
        let engine = events::engine_feed(&inner.hub, events, inner.stop.subscribe());
        let chain = async {
            let (Some(settler), Some(cfg)) = (&inner.settler, chain) else {
                return;
            };
            events::chain_feed(
                &inner.hub,
                &inner.engine,
                settler.relayer().reader().clone(),
                cfg,
                &inner.config.receivers,
                inner.stop.subscribe(),
            )
            .await;
        };
        tokio::join!(engine, chain);
    }

    fn settler(&self, action: &str) -> Result<&Settler<S, C, F, K>, Status> {
        self.inner
            .settler
            .as_ref()
            .ok_or_else(|| error::no_settler(action))
    }

    async fn record(&self, field: &str, id: B256) -> Result<ChannelRecord, Status> {
        self.inner
            .engine
            .channel(id)
            .await
            .map_err(|e| error::store(&e))?
            .ok_or_else(|| error::unknown_channel(field, &id))
    }

    /// One page of `ListChannels`.
    async fn list(
        &self,
        r: proto::ListChannelsRequest,
    ) -> Result<proto::ListChannelsResponse, Status> {
        let payer = parse::optional_address("payer", &r.payer)?;
        let state = parse::state("state", r.state)?;
        let above = parse::optional_amount("unclaimed_above", &r.unclaimed_above)?;
        let size = parse::page_size("page_size", r.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let mut after = parse::page_token("page_token", &r.page_token)?;
        let store = self.inner.engine.store();
        let max_scan = self.inner.config.max_scan.max(size);
        let mut channels = Vec::new();
        let mut examined = 0usize;
        let mut more = true;
        'pages: while channels.len() < size && examined < max_scan {
            let chunk = (max_scan - examined).min(size.max(256));
            let records = store
                .channels_after(after, chunk)
                .await
                .map_err(|e| error::store(&e))?;
            let got = records.len();
            for rec in records {
                examined += 1;
                after = Some(rec.channel_id);
                if convert::matches(&rec, payer, state, above) {
                    channels.push(convert::channel(&rec));
                    if channels.len() == size {
                        break 'pages;
                    }
                }
            }
            if got < chunk {
                more = false;
                break;
            }
        }
        Ok(proto::ListChannelsResponse {
            channels,
            next_page_token: match (more, after) {
                (true, Some(id)) => b256(&id),
                _ => String::new(),
            },
        })
    }

    /// `RefundChannel`: claim what was charged, refund the rest, mirror the result.
    async fn close(
        &self,
        r: proto::RefundChannelRequest,
    ) -> Result<proto::RefundChannelResponse, Status> {
        let id = parse::channel_id("channel_id", &r.channel_id)?;
        let settler = self.settler("RefundChannel")?;
        let engine = &self.inner.engine;
        let key = engine.config().receiver_authorizer.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "RefundChannel needs the receiver-authorizer key, which this server does not hold",
            )
        })?;
        let _one_at_a_time = self.inner.closing.lock().await;
        let record = self.record("channel_id", id).await?;
        if record.config.receiver_authorizer != key.address() {
            return Err(Status::failed_precondition(format!(
                "channel_id: the channel's receiver authorizer is {}, and this server holds the key of {}",
                record.config.receiver_authorizer,
                key.address()
            )));
        }
        let relayer = settler.relayer();
        let reader = relayer.reader();
        let before = reader
            .channel_state(id)
            .await
            .map_err(|e| error::chain(&e))?;
        let plan = close::plan(&record, before)
            .map_err(|e| Status::failed_precondition(format!("channel_id: {e}")))?;
        let domain = engine.config().domain;
        let sig = key
            .sign_digest(&domain.refund_digest(id, plan.nonce, plan.refund))
            .map_err(|e| signing(&e))?;
        let refund = SignedRefund {
            config: record.config,
            amount: plan.refund,
            nonce: plan.nonce,
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        };
        tracing::info!(target: TARGET, channel = %id, refund = %plan.refund, claim = ?plan.claim.as_ref().map(|c| c.total_claimed), "cooperative close");
        let entry = match plan.claim.clone() {
            Some(row) => {
                let claim = payee::claim_payload(&domain, vec![row], Some(key))
                    .map_err(|e| signing(&e.message))?;
                let claim_sig = claim
                    .claim_authorizer_signature
                    .ok_or_else(|| signing(&"no claim signature"))?;
                relayer
                    .claim_and_refund(claim.claims, claim_sig, refund)
                    .await
                    .map_err(|e| error::chain(&e))?
                    .1
            }
            None => relayer
                .refund_with_signature(
                    &refund.config,
                    refund.amount,
                    refund.nonce,
                    refund.signature,
                )
                .await
                .map_err(|e| error::chain(&e))?,
        };
        let (tx_hash, block) = confirmed(&entry)?;
        self.inner
            .hub
            .push(Some(&id), events::refunded(plan.refund));
        // Mirror at once, so the paid port stops accepting vouchers the balance no longer covers.
        match reader.channel_state(id).await {
            Ok(after) => {
                if let Err(e) = engine.apply_onchain(id, after).await {
                    tracing::warn!(target: TARGET, channel = %id, error = %e, "mirroring a refund failed; the chain follower corrects it");
                }
            }
            Err(e) => {
                tracing::warn!(target: TARGET, channel = %id, error = %paychan_core::redact::redact_urls(&e.to_string()), "reading a channel after its refund failed; the chain follower corrects it")
            }
        }
        let after = self.record("channel_id", id).await?;
        let unclaimable = close::unclaimable(&after);
        if unclaimable > 0 {
            tracing::warn!(target: TARGET, channel = %id, %unclaimable, "charges committed while the refund was in flight are no longer covered by the balance");
        }
        Ok(proto::RefundChannelResponse {
            channel_id: b256(&id),
            refunded: plan.refund.to_string(),
            claimed: plan
                .claim
                .as_ref()
                .map(|c| c.total_claimed.to_string())
                .unwrap_or_default(),
            tx_hash: b256(&tx_hash),
            block,
            channel: Some(convert::channel(&after)),
            unclaimable: unclaimable.to_string(),
        })
    }
}

/// A signing failure: `INTERNAL`, the detail in the log only.
fn signing(e: &dyn std::fmt::Display) -> Status {
    tracing::warn!(target: TARGET, error = %e, "signing a refund failed");
    Status::internal("signing the refund failed; see the server's log")
}

/// The transaction and block of a confirmed journal entry.
fn confirmed(e: &JournalEntry) -> Result<(B256, u64), Status> {
    match &e.state {
        JournalState::Confirmed { tx_hash, block, .. } => Ok((*tx_hash, *block)),
        JournalState::Failed { reason } => Err(Status::aborted(format!(
            "journal entry {}: {}",
            e.id,
            paychan_core::redact::redact_urls(reason)
        ))),
        _ => Err(Status::deadline_exceeded(format!(
            "journal entry {} was sent but is not confirmed yet; it is finished in the background",
            e.id
        ))),
    }
}

/// The stream type of `WatchEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::ChannelEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<S, C, F, K> ChannelControl for ControlPlane<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    async fn list_channels(
        &self,
        request: Request<proto::ListChannelsRequest>,
    ) -> Result<Response<proto::ListChannelsResponse>, Status> {
        self.list(request.into_inner()).await.map(Response::new)
    }

    async fn get_channel(
        &self,
        request: Request<proto::GetChannelRequest>,
    ) -> Result<Response<proto::GetChannelResponse>, Status> {
        let id = parse::channel_id("channel_id", &request.get_ref().channel_id)?;
        let record = self.record("channel_id", id).await?;
        Ok(Response::new(proto::GetChannelResponse {
            channel: Some(convert::channel(&record)),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let channels = if r.channel_ids.is_empty() {
            None
        } else {
            let ids = parse::channel_ids("channel_ids", &r.channel_ids, MAX_CHANNEL_IDS)?;
            Some(ids.iter().map(b256).collect::<HashSet<_>>())
        };
        let hub = &self.inner.hub;
        let from = hub.start(r.after_sequence, &r.stream_id)?;
        let stream = hub
            .clone()
            .stream(from, channels, self.inner.stop.subscribe());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn claim_now(
        &self,
        request: Request<proto::ClaimNowRequest>,
    ) -> Result<Response<proto::ClaimNowResponse>, Status> {
        let r = request.into_inner();
        let ids = parse::channel_ids("channel_ids", &r.channel_ids, MAX_CHANNEL_IDS)?;
        match (r.all, ids.is_empty()) {
            (true, false) => {
                return Err(error::invalid(
                    "channel_ids",
                    "must be empty when `all` is set",
                ));
            }
            (false, true) => {
                return Err(error::invalid(
                    "channel_ids",
                    "name at least one channel, or set `all`",
                ));
            }
            _ => {}
        }
        let settler = self.settler("ClaimNow")?;
        for (i, id) in ids.iter().enumerate() {
            self.record(&format!("channel_ids[{i}]"), *id).await?;
        }
        let report = if r.all {
            settler.claim_now().await
        } else {
            settler.claim_channels(&ids).await
        }
        .map_err(|e| error::settle(&e))?;
        Ok(Response::new(proto::ClaimNowResponse {
            report: Some(convert::round(&report)),
        }))
    }

    async fn settle_now(
        &self,
        _request: Request<proto::SettleNowRequest>,
    ) -> Result<Response<proto::SettleNowResponse>, Status> {
        let report = self
            .settler("SettleNow")?
            .settle_now()
            .await
            .map_err(|e| error::settle(&e))?;
        Ok(Response::new(proto::SettleNowResponse {
            report: Some(convert::round(&report)),
        }))
    }

    async fn refund_channel(
        &self,
        request: Request<proto::RefundChannelRequest>,
    ) -> Result<Response<proto::RefundChannelResponse>, Status> {
        self.close(request.into_inner()).await.map(Response::new)
    }

    async fn get_stats(
        &self,
        _request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        let engine = &self.inner.engine;
        let stored = engine
            .store()
            .stats()
            .await
            .map_err(|e| error::store(&e))?
            .channels;
        Ok(Response::new(proto::GetStatsResponse {
            engine: Some(convert::engine_stats(
                engine.metrics(),
                engine.cached_channels(),
                stored,
            )),
            settlement: self
                .inner
                .settler
                .as_ref()
                .map(|s| convert::settlement_stats(&s.gas_report(), s.outstanding())),
            stream_id: self.stream_id().to_owned(),
            last_sequence: self.last_sequence(),
        }))
    }

    async fn health(
        &self,
        _request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        let mut h = proto::HealthResponse {
            serving: !*self.inner.stop.borrow(),
            settlement: self.inner.settler.is_some(),
            stream_id: self.stream_id().to_owned(),
            last_sequence: self.last_sequence(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        if let Some(s) = &self.inner.settler {
            match s.relayer().reader().block_number().await {
                Ok(n) => {
                    h.chain_reachable = true;
                    h.chain_head = n;
                }
                Err(e) => h.chain_error = paychan_core::redact::redact_urls(&e.to_string()),
            }
        }
        Ok(Response::new(h))
    }
}
