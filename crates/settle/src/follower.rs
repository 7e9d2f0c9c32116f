//! The chain follower: runs the [`ChainWatcher`] (its cursor lives in the engine's store) and
//! mirrors every channel event into the engine with [`Engine::apply_onchain`], so the engine's
//! view of balances, claimed totals and pending withdrawals stays fresh (the engine raises
//! `NeedsClaim` itself when a withdrawal now threatens unclaimed charges). `Settled` events are
//! mirrored into the store's aggregates.

use std::future::Future;

use paychan_chain::{
    ChainReader, ChainWatcher, SettledEvent, WatchEvent, WatchItem, WatcherConfig,
};
use paychan_core::{
    batch::payee::ChannelRecord,
    ports::{Clock, OnchainSource, PaymentFacilitator},
};
use paychan_engine::Engine;
use paychan_store::{AggregateOp, Store, WriteBatch};
use tokio::sync::mpsc;

use crate::{Result, TARGET};

/// What the follower observed, after mirroring it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerUpdate {
    /// A channel event of a channel the engine knows, with its record after the mirror.
    Channel {
        /// The event.
        event: WatchEvent,
        /// The engine's record after `apply_onchain`.
        record: Box<ChannelRecord>,
    },
    /// A settle sweep (already written to the aggregates).
    Settled(SettledEvent),
}

/// Follows the escrow's events into the engine. See the module documentation.
#[derive(Debug)]
pub struct ChainFollower<S: Store, C, F, K> {
    engine: Engine<S, C, F, K>,
    watcher: ChainWatcher<S>,
}

impl<S, C, F, K> ChainFollower<S, C, F, K>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    /// A follower mirroring into `engine`, reading through `reader`, with its cursor in the
    /// engine's store.
    pub fn new(engine: Engine<S, C, F, K>, reader: ChainReader, cfg: WatcherConfig) -> Self {
        let watcher = ChainWatcher::new(reader, engine.store().clone(), cfg);
        Self { engine, watcher }
    }

    /// Follows until `shutdown` resolves, calling `observe` after each event is mirrored.
    /// Transient RPC failures are retried by the watcher; a failed mirror is logged (the next
    /// event of the channel, or the settler's fresh reads, correct it).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        mut observe: impl FnMut(FollowerUpdate) + Send,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::channel(1024);
        let watcher = tokio::spawn(self.watcher.run(tx, shutdown));
        let store = self.engine.store().clone();
        while let Some(item) = rx.recv().await {
            match item {
                WatchItem::Channel(ev) => {
                    if let Err(e) = self.engine.apply_onchain(ev.channel_id, ev.state).await {
                        tracing::warn!(target: TARGET, channel = %ev.channel_id, error = %e, "mirroring a chain event failed");
                        continue;
                    }
                    tracing::debug!(target: TARGET, channel = %ev.channel_id, kind = ?ev.kind, block = ev.block, "chain event mirrored");
                    match self.engine.channel(ev.channel_id).await {
                        Ok(Some(record)) => observe(FollowerUpdate::Channel {
                            event: ev,
                            record: Box::new(record),
                        }),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(target: TARGET, channel = %ev.channel_id, error = %e, "reading a mirrored channel failed")
                        }
                    }
                }
                WatchItem::Settled(ev) => {
                    let batch = WriteBatch {
                        aggregates: vec![(
                            ev.receiver,
                            ev.token,
                            AggregateOp::SetOnchain {
                                claimed: ev.total_claimed,
                                settled: ev.total_settled,
                            },
                        )],
                        ..WriteBatch::default()
                    };
                    if let Err(e) = store.commit(batch).await {
                        tracing::warn!(target: TARGET, receiver = %ev.receiver, error = %e, "mirroring a settle failed");
                    }
                    observe(FollowerUpdate::Settled(ev));
                }
            }
        }
        match watcher.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(crate::Error::Task(e.to_string())),
        }
    }
}
