//! The chain watcher: follows the escrow's events from a cursor kept in the store, re-reads the
//! state of every channel they touch and hands the engine a [`WatchItem`] per event.
//!
//! * **No gaps.** The cursor (last processed block and its hash) is persisted after the events of
//!   a range are handed over; a restarted watcher resumes right after it. Delivery is at least
//!   once: events of a range handed over just before a crash come again. Every event carries
//!   the channel's *current* state, so applying one twice changes nothing.
//! * **Reorgs.** The watcher keeps a checkpoint (block, hash, channels touched) per processed
//!   range for the last `max_rewind` blocks. When the cursor's block hash is no longer canonical
//!   it rewinds to the newest checkpoint still canonical, emits a [`EventKind::Reorged`] event
//!   with fresh state for every channel touched after it (their events may be gone), and
//!   processes the new branch. A reorg deeper than the checkpoints rewinds `max_rewind` blocks.
//! * **Bounded ranges.** `eth_getLogs` asks for at most `max_range` blocks at a time.
//! * The watcher writes no channel records: only its cursor (metadata key `cursor_key`).

use std::{collections::VecDeque, future::Future, time::Duration};

use alloy::{
    primitives::{Address, B256},
    providers::Provider,
    rpc::types::{Filter, Log},
    sol_types::SolEvent,
};
use paychan_bindings::BatchSettlement;
use paychan_core::batch::payee::OnchainState;
use paychan_store::{Store, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{ChainReader, Error, Result, rpc::TARGET};

/// Default metadata key of the cursor.
pub const DEFAULT_CURSOR_KEY: &str = "watcher.cursor";
const CURSOR_FORMAT: u8 = 1;
/// Checkpoints kept at most, whatever `max_rewind`.
const MAX_CHECKPOINTS: usize = 512;

/// Where a watcher without a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// At the current head: only new events.
    Head,
    /// At this block (for example the escrow's deployment block).
    Block(u64),
}

/// Watcher tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherConfig {
    /// Metadata key of the cursor.
    pub cursor_key: String,
    /// Where to start without a cursor.
    pub start: StartFrom,
    /// Blocks per `eth_getLogs`.
    pub max_range: u64,
    /// Deepest reorg handled by comparing checkpoint hashes.
    pub max_rewind: u64,
    /// Blocks to stay behind the head (0 follows the head; reorgs are handled either way).
    pub lag: u64,
    /// Poll interval when caught up; `None` uses the chain's `poll_interval`.
    pub poll_interval: Option<Duration>,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            cursor_key: DEFAULT_CURSOR_KEY.to_owned(),
            start: StartFrom::Head,
            max_range: 1_000,
            max_rewind: 128,
            lag: 0,
            poll_interval: None,
        }
    }
}

/// What happened to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// First deposit into an empty channel.
    ChannelCreated,
    /// Balance back to zero without claims.
    ChannelClosed,
    /// Tokens added.
    Deposited,
    /// Claimed total raised.
    Claimed,
    /// Cooperative refund.
    Refunded,
    /// The payer started a timed withdrawal: claim what is owed now.
    WithdrawInitiated,
    /// A timed withdrawal completed.
    WithdrawFinalized,
    /// A reorg removed blocks that touched this channel; `state` is its state now.
    Reorged,
}

/// A channel event with the channel's state re-read after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The channel.
    pub channel_id: B256,
    /// What happened.
    pub kind: EventKind,
    /// The channel's on-chain state as read after the event's range (never older than `block`).
    pub state: OnchainState,
    /// The event's block (for `Reorged`: the block the watcher rewound to).
    pub block: u64,
    /// The event's transaction (`None` for `Reorged`).
    pub tx_hash: Option<B256>,
    /// The event's index in its block (`None` for `Reorged`).
    pub log_index: Option<u64>,
}

/// A `Settled` event with the receiver's totals re-read after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledEvent {
    /// The receiver paid.
    pub receiver: Address,
    /// The token.
    pub token: Address,
    /// Amount transferred by this settle.
    pub amount: u128,
    /// `receivers(receiver, token).totalClaimed` now.
    pub total_claimed: u128,
    /// `receivers(receiver, token).totalSettled` now.
    pub total_settled: u128,
    /// The event's block.
    pub block: u64,
    /// The event's transaction.
    pub tx_hash: Option<B256>,
    /// The event's index in its block.
    pub log_index: Option<u64>,
}

/// What the watcher hands over, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A channel event.
    Channel(WatchEvent),
    /// A settle sweep.
    Settled(SettledEvent),
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    /// The head seen.
    pub head: u64,
    /// First block processed (`None`: nothing new).
    pub from: Option<u64>,
    /// Last block processed (the new cursor).
    pub to: Option<u64>,
    /// Items handed over.
    pub items: usize,
    /// The block rewound to, if a reorg was detected.
    pub rewound_to: Option<u64>,
    /// Whether the cursor reached the head (minus `lag`).
    pub caught_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    block: u64,
    hash: B256,
    #[serde(default)]
    channels: Vec<B256>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// Processed ranges, oldest first; the last one is the cursor.
    checkpoints: VecDeque<Checkpoint>,
}

impl Cursor {
    fn tip(&self) -> Option<&Checkpoint> {
        self.checkpoints.back()
    }
}

/// Follows the escrow's events. See the module documentation.
#[derive(Debug)]
pub struct ChainWatcher<S: Store> {
    reader: ChainReader,
    store: S,
    cfg: WatcherConfig,
    cursor: Option<Cursor>,
    loaded: bool,
}

impl<S: Store> ChainWatcher<S> {
    /// A watcher reading through `reader` and keeping its cursor in `store`.
    pub fn new(reader: ChainReader, store: S, cfg: WatcherConfig) -> Self {
        Self {
            reader,
            store,
            cfg,
            cursor: None,
            loaded: false,
        }
    }

    /// The last processed block and its hash, if any.
    pub async fn cursor(&mut self) -> Result<Option<(u64, B256)>> {
        self.load().await?;
        Ok(self
            .cursor
            .as_ref()
            .and_then(Cursor::tip)
            .map(|c| (c.block, c.hash)))
    }

    async fn load(&mut self) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        let key = &self.cfg.cursor_key;
        self.cursor = match self.store.meta(key).await? {
            None => None,
            Some(bytes) => match bytes.split_first() {
                Some((&CURSOR_FORMAT, json)) => {
                    Some(serde_json::from_slice(json).map_err(|e| corrupt(key, e))?)
                }
                _ => return Err(corrupt(key, "unknown cursor format")),
            },
        };
        self.loaded = true;
        Ok(())
    }

    async fn save(&mut self) -> Result<()> {
        let Some(cursor) = &self.cursor else {
            return Ok(());
        };
        let mut bytes = vec![CURSOR_FORMAT];
        serde_json::to_writer(&mut bytes, cursor).map_err(|e| corrupt(&self.cfg.cursor_key, e))?;
        self.store
            .commit(WriteBatch {
                meta: vec![(self.cfg.cursor_key.clone(), bytes)],
                ..WriteBatch::default()
            })
            .await?;
        Ok(())
    }

    /// Processes what is new since the cursor: reorg check, then one range of at most
    /// `max_range` blocks. Hands every item to `sink`, then persists the cursor.
    pub async fn poll_once(&mut self, sink: &mpsc::Sender<WatchItem>) -> Result<PollReport> {
        self.load().await?;
        let head = self.reader.block_number().await?;
        let target = head.saturating_sub(self.cfg.lag);
        let mut report = PollReport {
            head,
            ..PollReport::default()
        };

        if let Some(tip) = self.cursor.as_ref().and_then(Cursor::tip).cloned() {
            let canonical = self.reader.block_hash(tip.block).await?;
            if canonical != Some(tip.hash) {
                let to = self.rewind(sink).await?;
                report.rewound_to = Some(to);
            }
        }

        let from = match self.cursor.as_ref().and_then(Cursor::tip) {
            Some(c) => c.block.saturating_add(1),
            None => match self.cfg.start {
                StartFrom::Block(n) => n,
                StartFrom::Head => {
                    let hash = self.hash_of(target).await?;
                    self.cursor = Some(Cursor {
                        checkpoints: VecDeque::from([Checkpoint {
                            block: target,
                            hash,
                            channels: Vec::new(),
                        }]),
                    });
                    self.save().await?;
                    report.to = Some(target);
                    report.caught_up = true;
                    return Ok(report);
                }
            },
        };
        if from > target {
            report.caught_up = true;
            return Ok(report);
        }
        let to = target.min(from.saturating_add(self.cfg.max_range.max(1) - 1));
        // The range's last hash first, then the logs: if a reorg slips in between, the next poll
        // sees that hash is gone and rewinds.
        let hash_to = self.hash_of(to).await?;
        let logs = self.logs(from, to).await?;
        if logs
            .iter()
            .any(|l| l.block_number == Some(to) && l.block_hash != Some(hash_to))
        {
            tracing::debug!(target: TARGET, to, "chain moved during the poll; retrying");
            return Ok(report);
        }
        let (items, channels) = self.items(&logs).await?;
        report.items = items.len();
        for item in items {
            sink.send(item).await.map_err(|_| Error::Refused {
                what: "watcher",
                reason: "the watch item receiver was dropped".into(),
            })?;
        }
        let max_rewind = self.cfg.max_rewind;
        let cursor = self.cursor.get_or_insert_with(|| Cursor {
            checkpoints: VecDeque::new(),
        });
        cursor.checkpoints.push_back(Checkpoint {
            block: to,
            hash: hash_to,
            channels,
        });
        while cursor.checkpoints.len() > 1
            && (cursor.checkpoints.len() > MAX_CHECKPOINTS
                || cursor
                    .checkpoints
                    .front()
                    .is_some_and(|c| c.block.saturating_add(max_rewind) < to))
        {
            cursor.checkpoints.pop_front();
        }
        self.save().await?;
        report.from = Some(from);
        report.to = Some(to);
        report.caught_up = to >= target;
        Ok(report)
    }

    /// Polls until `shutdown` resolves or the receiver is dropped. Transient errors are logged
    /// and retried with backoff; the watcher never gives up on its own.
    pub async fn run(
        mut self,
        sink: mpsc::Sender<WatchItem>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let interval = self
            .cfg
            .poll_interval
            .unwrap_or(self.reader.config().poll_interval);
        let max_backoff = self.reader.config().retry.max_backoff.max(interval);
        let mut backoff = interval;
        tokio::pin!(shutdown);
        loop {
            let wait = match self.poll_once(&sink).await {
                Ok(r) => {
                    backoff = interval;
                    if r.caught_up {
                        interval
                    } else {
                        Duration::ZERO
                    }
                }
                Err(_) if sink.is_closed() => return Ok(()),
                Err(e) => {
                    tracing::warn!(target: TARGET, error = %e, retry_in = ?backoff, "watcher poll failed");
                    let w = backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    w
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Rewinds to the newest checkpoint still canonical and reports the channels touched after
    /// it with their current state. Returns the block rewound to.
    async fn rewind(&mut self, sink: &mpsc::Sender<WatchItem>) -> Result<u64> {
        let Some(mut cursor) = self.cursor.take() else {
            return Ok(0);
        };
        let old_tip = cursor.tip().map(|c| c.block).unwrap_or(0);
        let mut touched: Vec<B256> = Vec::new();
        let mut fork: Option<Checkpoint> = None;
        while let Some(cp) = cursor.checkpoints.pop_back() {
            if self.reader.block_hash(cp.block).await? == Some(cp.hash) {
                fork = Some(cp);
                break;
            }
            for id in cp.channels {
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
        }
        let fork = match fork {
            Some(cp) => cp,
            None => {
                // deeper than the checkpoints: rewind max_rewind blocks below the old tip
                let block = old_tip.saturating_sub(self.cfg.max_rewind);
                Checkpoint {
                    block,
                    hash: self.hash_of(block).await?,
                    channels: Vec::new(),
                }
            }
        };
        let block = fork.block;
        cursor.checkpoints.push_back(fork);
        tracing::warn!(target: TARGET, from = old_tip, to = block, channels = touched.len(), "reorg detected; rewinding");
        if !touched.is_empty() {
            let states = self.reader.channel_states(&touched).await?;
            for (channel_id, state) in touched.into_iter().zip(states) {
                sink.send(WatchItem::Channel(WatchEvent {
                    channel_id,
                    kind: EventKind::Reorged,
                    state,
                    block,
                    tx_hash: None,
                    log_index: None,
                }))
                .await
                .map_err(|_| Error::Refused {
                    what: "watcher",
                    reason: "the watch item receiver was dropped".into(),
                })?;
            }
        }
        self.cursor = Some(cursor);
        self.save().await?;
        Ok(block)
    }

    async fn hash_of(&self, block: u64) -> Result<B256> {
        self.reader
            .block_hash(block)
            .await?
            .ok_or_else(|| Error::BadResponse {
                call: "eth_getBlockByNumber",
                detail: format!("block {block} not found"),
            })
    }

    async fn logs(&self, from: u64, to: u64) -> Result<Vec<Log>> {
        let filter = Filter::new()
            .address(self.reader.config().escrow)
            .from_block(from)
            .to_block(to)
            .event_signature(vec![
                BatchSettlement::ChannelCreated::SIGNATURE_HASH,
                BatchSettlement::ChannelClosed::SIGNATURE_HASH,
                BatchSettlement::Deposited::SIGNATURE_HASH,
                BatchSettlement::Claimed::SIGNATURE_HASH,
                BatchSettlement::Settled::SIGNATURE_HASH,
                BatchSettlement::Refunded::SIGNATURE_HASH,
                BatchSettlement::WithdrawInitiated::SIGNATURE_HASH,
                BatchSettlement::WithdrawFinalized::SIGNATURE_HASH,
            ]);
        let mut logs = self
            .reader
            .rpc()
            .run("eth_getLogs", |p| {
                let filter = filter.clone();
                async move { p.get_logs(&filter).await }
            })
            .await?;
        logs.retain(|l| !l.removed);
        logs.sort_by_key(|l| (l.block_number, l.log_index));
        Ok(logs)
    }

    /// Decodes `logs` into items carrying fresh state; also returns the channels touched.
    async fn items(&self, logs: &[Log]) -> Result<(Vec<WatchItem>, Vec<B256>)> {
        enum Raw {
            Channel(B256, EventKind),
            Settled(Address, Address, u128),
        }
        let mut raw = Vec::with_capacity(logs.len());
        let mut channels: Vec<B256> = Vec::new();
        let mut receivers: Vec<(Address, Address)> = Vec::new();
        for log in logs {
            let Some(&t0) = log.topic0() else { continue };
            let kind = match t0 {
                BatchSettlement::ChannelCreated::SIGNATURE_HASH => EventKind::ChannelCreated,
                BatchSettlement::ChannelClosed::SIGNATURE_HASH => EventKind::ChannelClosed,
                BatchSettlement::Deposited::SIGNATURE_HASH => EventKind::Deposited,
                BatchSettlement::Claimed::SIGNATURE_HASH => EventKind::Claimed,
                BatchSettlement::Refunded::SIGNATURE_HASH => EventKind::Refunded,
                BatchSettlement::WithdrawInitiated::SIGNATURE_HASH => EventKind::WithdrawInitiated,
                BatchSettlement::WithdrawFinalized::SIGNATURE_HASH => EventKind::WithdrawFinalized,
                BatchSettlement::Settled::SIGNATURE_HASH => {
                    match BatchSettlement::Settled::decode_log(&log.inner) {
                        Ok(ev) => {
                            let pair = (ev.receiver, ev.token);
                            if !receivers.contains(&pair) {
                                receivers.push(pair);
                            }
                            raw.push((log, Raw::Settled(ev.receiver, ev.token, ev.amount)));
                        }
                        Err(e) => {
                            tracing::warn!(target: TARGET, error = %e, "undecodable Settled log skipped")
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(&channel_id) = log.topics().get(1) else {
                tracing::warn!(target: TARGET, "channel event without a channel id skipped");
                continue;
            };
            if !channels.contains(&channel_id) {
                channels.push(channel_id);
            }
            raw.push((log, Raw::Channel(channel_id, kind)));
        }
        let states = self.reader.channel_states(&channels).await?;
        let mut totals = Vec::with_capacity(receivers.len());
        for &(r, t) in &receivers {
            totals.push(self.reader.receiver_state(r, t).await?);
        }
        let items = raw
            .into_iter()
            .filter_map(|(log, r)| {
                let block = log.block_number.unwrap_or(0);
                Some(match r {
                    Raw::Channel(channel_id, kind) => {
                        let i = channels.iter().position(|c| *c == channel_id)?;
                        WatchItem::Channel(WatchEvent {
                            channel_id,
                            kind,
                            state: *states.get(i)?,
                            block,
                            tx_hash: log.transaction_hash,
                            log_index: log.log_index,
                        })
                    }
                    Raw::Settled(receiver, token, amount) => {
                        let i = receivers.iter().position(|p| *p == (receiver, token))?;
                        let (total_claimed, total_settled) = *totals.get(i)?;
                        WatchItem::Settled(SettledEvent {
                            receiver,
                            token,
                            amount,
                            total_claimed,
                            total_settled,
                            block,
                            tx_hash: log.transaction_hash,
                            log_index: log.log_index,
                        })
                    }
                })
            })
            .collect();
        Ok((items, channels))
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(paychan_store::Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
