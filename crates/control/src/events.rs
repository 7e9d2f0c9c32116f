//! The event ring behind `WatchEvents`: every event gets the next sequence number (from 1) and
//! joins a bounded in-memory ring; streams read the ring from their resume point and wait for
//! more.
//!
//! Sources (fed by [`serve`](crate::serve)):
//!
//! | source | events |
//! | --- | --- |
//! | the engine's broadcast ([`Engine::subscribe`](paychan_engine::Engine::subscribe)) | `charged`, `claim_needed`, `refunded` (a payer's refund through the paid port) |
//! | the control plane itself | `refunded` (`RefundChannel`) |
//! | the escrow's events, followed by a [`ChainWatcher`] of the control plane's own (cursor in memory, starting at the head when serving starts) | `claimed`, `settled`, `withdrawal_started`, `withdrawal_finalized`, `deposited`, `reorged` |
//!
//! Channel events from the chain are kept only for channels the store knows; settles only for
//! the configured receivers (all when none is configured). Refunds are taken from the engine and
//! `RefundChannel`, which know the amount, not from the chain. A source that falls behind (the
//! engine's broadcast lagging) leaves an `events_lost` event in its place.
//!
//! A stream that asks for a sequence no longer in the ring, or above the last one assigned, or
//! of another process (`stream_id`), fails with `OUT_OF_RANGE`; so does a stream whose reader is
//! so slow that the ring overtakes it. The client then resynchronizes (`ListChannels`) and
//! watches from now on.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use alloy_primitives::{Address, B256};
use futures_util::Stream;
use paychan_chain::{ChainReader, ChainWatcher, EventKind, WatchItem, WatcherConfig};
use paychan_core::ports::{Clock, OnchainSource, PaymentFacilitator};
use paychan_engine::{Engine, EngineEvent};
use paychan_store::{MemStore, Store};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::{
    TARGET,
    convert::{address, b256},
    proto::{self, ChannelEvent, channel_event::Kind},
};

/// Events a stream takes from the ring at a time.
const READ_BATCH: usize = 256;

struct Ring {
    events: VecDeque<ChannelEvent>,
    /// The sequence the next event gets.
    next: u64,
}

/// The ring and its sequence. See the module documentation.
pub(crate) struct EventHub {
    stream_id: String,
    capacity: usize,
    ring: Mutex<Ring>,
    /// The last sequence assigned, for streams waiting for more.
    last: watch::Sender<u64>,
}

impl EventHub {
    /// An empty ring holding at most `capacity` events.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            stream_id: new_stream_id(),
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next: 1,
            }),
            last: watch::Sender::new(0),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's stream id.
    pub(crate) fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The last sequence assigned (0: none yet).
    pub(crate) fn last_sequence(&self) -> u64 {
        self.ring().next - 1
    }

    /// Records an event; returns its sequence.
    pub(crate) fn push(&self, channel: Option<&B256>, kind: Kind) -> u64 {
        let mut ring = self.ring();
        let sequence = ring.next;
        ring.next += 1;
        ring.events.push_back(ChannelEvent {
            sequence,
            stream_id: self.stream_id.clone(),
            recorded_at_ms: now_ms(),
            channel_id: channel.map(b256).unwrap_or_default(),
            kind: Some(kind),
        });
        while ring.events.len() > self.capacity {
            ring.events.pop_front();
        }
        drop(ring);
        self.last.send_replace(sequence);
        sequence
    }

    /// The sequence a new stream starts at: `after + 1`, or the next one when `after` is absent.
    pub(crate) fn start(&self, after: Option<u64>, stream_id: &str) -> Result<u64, Status> {
        if !stream_id.is_empty() && stream_id != self.stream_id {
            return Err(Status::out_of_range(format!(
                "stream_id: events of stream {stream_id:?} are gone (this server's stream is {:?}; it restarted): resynchronize with ListChannels and watch from now on",
                self.stream_id
            )));
        }
        let ring = self.ring();
        let Some(after) = after else {
            return Ok(ring.next);
        };
        let from = after.saturating_add(1);
        check(&ring, from).map(|()| from)
    }

    /// Up to `max` events from sequence `from` on (none when `from` is the next sequence).
    fn read(&self, from: u64, max: usize) -> Result<Vec<ChannelEvent>, Status> {
        let ring = self.ring();
        check(&ring, from)?;
        let oldest = ring.events.front().map_or(ring.next, |e| e.sequence);
        let skip = usize::try_from(from - oldest).unwrap_or(usize::MAX);
        Ok(ring.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// A stream of events from sequence `from` on, of `channels` only (settles and lost-event
    /// markers always pass) when given; it ends when `stop` turns true.
    pub(crate) fn stream(
        self: Arc<Self>,
        from: u64,
        channels: Option<HashSet<String>>,
        stop: watch::Receiver<bool>,
    ) -> impl Stream<Item = Result<ChannelEvent, Status>> + Send + 'static {
        let state = Reader {
            last: self.last.subscribe(),
            hub: self,
            from,
            channels,
            buf: VecDeque::new(),
            stop,
            done: false,
        };
        futures_util::stream::unfold(state, Reader::next)
    }
}

/// `from` must be within the ring: not older than its oldest event, not after the next sequence.
fn check(ring: &Ring, from: u64) -> Result<(), Status> {
    let oldest = ring.events.front().map_or(ring.next, |e| e.sequence);
    if from > ring.next {
        return Err(Status::out_of_range(format!(
            "after_sequence: {} is above the last sequence assigned, {} (another server process?): resynchronize with ListChannels and watch from now on",
            from - 1,
            ring.next - 1
        )));
    }
    if from < oldest {
        return Err(Status::out_of_range(format!(
            "after_sequence: events after {} have left the event ring (it holds {oldest} to {}): resynchronize with ListChannels and watch from now on",
            from - 1,
            ring.next - 1
        )));
    }
    Ok(())
}

/// A stream's position.
struct Reader {
    hub: Arc<EventHub>,
    from: u64,
    channels: Option<HashSet<String>>,
    buf: VecDeque<ChannelEvent>,
    last: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    done: bool,
}

impl Reader {
    fn wanted(&self, e: &ChannelEvent) -> bool {
        match &self.channels {
            None => true,
            Some(set) => e.channel_id.is_empty() || set.contains(&e.channel_id),
        }
    }

    async fn next(mut self) -> Option<(Result<ChannelEvent, Status>, Self)> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Some((Ok(e), self));
            }
            if self.done {
                return None;
            }
            if *self.stop.borrow() {
                self.done = true;
                return Some((Err(shutting_down()), self));
            }
            // Marked seen before reading: an event pushed after the read wakes the wait below.
            self.last.borrow_and_update();
            match self.hub.read(self.from, READ_BATCH) {
                Err(status) => {
                    self.done = true;
                    return Some((Err(status), self));
                }
                Ok(events) if !events.is_empty() => {
                    if let Some(e) = events.last() {
                        self.from = e.sequence + 1;
                    }
                    let wanted: Vec<_> = events.into_iter().filter(|e| self.wanted(e)).collect();
                    self.buf.extend(wanted);
                }
                Ok(_) => {
                    tokio::select! {
                        r = self.last.changed() => if r.is_err() { self.done = true },
                        r = self.stop.changed() => if r.is_err() {
                            // the server is gone without saying so
                            self.done = true;
                            return Some((Err(shutting_down()), self));
                        },
                    }
                }
            }
        }
    }
}

fn shutting_down() -> Status {
    Status::unavailable(
        "the control plane is shutting down: reconnect and resume with after_sequence",
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 16 hex digits that differ between processes: the start time and the process id, mixed.
fn new_stream_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = alloy_primitives::keccak256(
        [
            nanos.to_be_bytes().as_slice(),
            &std::process::id().to_be_bytes(),
        ]
        .concat(),
    );
    alloy_primitives::hex::encode(&mixed[..8])
}

/// The engine's events into the ring, until `stop` turns true or the engine is gone.
pub(crate) async fn engine_feed(
    hub: &EventHub,
    mut events: broadcast::Receiver<EngineEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        };
        match ev {
            Ok(EngineEvent::Charged {
                channel_id,
                amount,
                charged_cumulative,
                unclaimed,
            }) => {
                hub.push(
                    Some(&channel_id),
                    Kind::Charged(proto::Charged {
                        amount: amount.to_string(),
                        charged: charged_cumulative.to_string(),
                        unclaimed: unclaimed.to_string(),
                    }),
                );
            }
            Ok(EngineEvent::NeedsClaim {
                channel_id,
                deadline,
                unclaimed,
            }) => {
                hub.push(
                    Some(&channel_id),
                    Kind::ClaimNeeded(proto::ClaimNeeded {
                        deadline,
                        unclaimed: unclaimed.to_string(),
                    }),
                );
            }
            Ok(EngineEvent::Refunded { channel_id, amount }) => {
                hub.push(Some(&channel_id), refunded(amount));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(target: TARGET, missed = n, "the control plane fell behind the engine's events");
                hub.push(
                    None,
                    Kind::EventsLost(proto::EventsLost {
                        source: "engine".into(),
                        count: n,
                    }),
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// A `refunded` event.
pub(crate) fn refunded(amount: u128) -> Kind {
    Kind::Refunded(proto::Refunded {
        amount: amount.to_string(),
    })
}

/// The escrow's events into the ring, through a watcher of the control plane's own (its cursor
/// in memory), until `stop` turns true.
pub(crate) async fn chain_feed<S, C, F, K>(
    hub: &EventHub,
    engine: &Engine<S, C, F, K>,
    reader: ChainReader,
    config: WatcherConfig,
    receivers: &[Address],
    stop: watch::Receiver<bool>,
) where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let watcher = ChainWatcher::new(reader, MemStore::new(), config);
    let (tx, mut rx) = mpsc::channel::<WatchItem>(1024);
    let mut stop_watcher = stop.clone();
    let run = async move {
        let shutdown = async move {
            let _ = stop_watcher.wait_for(|s| *s).await;
        };
        if let Err(e) = watcher.run(tx, shutdown).await {
            tracing::warn!(target: TARGET, error = %paychan_core::redact::redact_urls(&e.to_string()), "the control plane's chain watcher stopped");
        }
    };
    let consume = async {
        while let Some(item) = rx.recv().await {
            if let Some((channel, kind)) = chain_event(engine, receivers, item).await {
                hub.push(channel.as_ref(), kind);
            }
        }
    };
    tokio::join!(run, consume);
}

/// The ring's event for a chain item, if it is one of ours and of a kind the ring takes.
async fn chain_event<S, C, F, K>(
    engine: &Engine<S, C, F, K>,
    receivers: &[Address],
    item: WatchItem,
) -> Option<(Option<B256>, Kind)>
where
    S: Store,
    C: OnchainSource,
    F: PaymentFacilitator,
    K: Clock,
{
    let ev = match item {
        WatchItem::Settled(s) => {
            if !receivers.is_empty() && !receivers.contains(&s.receiver) {
                return None;
            }
            return Some((
                None,
                Kind::Settled(proto::Settled {
                    receiver: address(&s.receiver),
                    token: address(&s.token),
                    amount: s.amount.to_string(),
                    total_claimed: s.total_claimed.to_string(),
                    total_settled: s.total_settled.to_string(),
                    tx_hash: s.tx_hash.as_ref().map(b256).unwrap_or_default(),
                    block: s.block,
                }),
            ));
        }
        WatchItem::Channel(ev) => ev,
    };
    let record = match engine.channel(ev.channel_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(target: TARGET, channel = %ev.channel_id, error = %e, "reading a channel for its chain event failed");
            return None;
        }
    };
    let tx_hash = ev.tx_hash.as_ref().map(b256).unwrap_or_default();
    let (balance, claimed) = (
        ev.state.balance.to_string(),
        ev.state.total_claimed.to_string(),
    );
    let kind = match ev.kind {
        EventKind::Claimed => Kind::Claimed(proto::Claimed {
            claimed,
            balance,
            tx_hash,
            block: ev.block,
        }),
        EventKind::WithdrawInitiated => Kind::WithdrawalStarted(proto::WithdrawalStarted {
            requested_at: ev.state.withdraw_requested_at,
            deadline: ev
                .state
                .withdraw_requested_at
                .saturating_add(record.config.withdraw_delay),
            balance,
            claimed,
            tx_hash,
            block: ev.block,
        }),
        EventKind::WithdrawFinalized => Kind::WithdrawalFinalized(proto::WithdrawalFinalized {
            balance,
            tx_hash,
            block: ev.block,
        }),
        EventKind::Deposited => Kind::Deposited(proto::Deposited {
            balance,
            tx_hash,
            block: ev.block,
        }),
        EventKind::Reorged => Kind::Reorged(proto::Reorged {
            balance,
            claimed,
            block: ev.block,
        }),
        // Refunds are reported by whoever made them here, with the amount. A first deposit
        // emits `ChannelCreated` beside its `Deposited`: one event is reported, not two.
        EventKind::Refunded | EventKind::ChannelClosed | EventKind::ChannelCreated => return None,
    };
    Some((Some(ev.channel_id), kind))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tonic::Code;

    use super::*;

    fn charged(n: u128) -> Kind {
        Kind::Charged(proto::Charged {
            amount: n.to_string(),
            charged: n.to_string(),
            unclaimed: n.to_string(),
        })
    }

    #[test]
    fn sequences_start_at_one_and_the_ring_keeps_the_newest() {
        let hub = EventHub::new(3);
        assert_eq!(hub.last_sequence(), 0);
        for n in 1..=5 {
            assert_eq!(hub.push(None, charged(n)), u64::try_from(n).unwrap());
        }
        assert_eq!(hub.last_sequence(), 5);
        // 3, 4, 5 are held: resuming after 2 works, after 1 does not
        assert_eq!(hub.start(Some(2), "").unwrap(), 3);
        assert_eq!(hub.start(Some(5), "").unwrap(), 6);
        assert_eq!(hub.start(None, "").unwrap(), 6);
        for bad in [Some(0), Some(1), Some(6), Some(u64::MAX)] {
            assert_eq!(
                hub.start(bad, "").unwrap_err().code(),
                Code::OutOfRange,
                "{bad:?}"
            );
        }
        let id = hub.stream_id().to_owned();
        assert_eq!(hub.start(Some(3), &id).unwrap(), 4);
        assert_eq!(
            hub.start(Some(3), "other").unwrap_err().code(),
            Code::OutOfRange
        );
        let seqs: Vec<u64> = hub
            .read(3, 10)
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert!(hub.read(6, 10).unwrap().is_empty());
        assert_ne!(EventHub::new(1).stream_id(), "", "stream ids are set");
    }

    #[tokio::test]
    async fn a_stream_resumes_filters_waits_and_ends_on_shutdown() {
        let hub = Arc::new(EventHub::new(100));
        let a = B256::repeat_byte(1);
        let b = B256::repeat_byte(2);
        hub.push(Some(&a), charged(1));
        hub.push(Some(&b), charged(2));
        hub.push(None, refunded(3));
        let (stop_tx, stop) = watch::channel(false);
        let only_a = HashSet::from([b256(&a)]);
        let mut s = Box::pin(hub.clone().stream(1, Some(only_a), stop));
        assert_eq!(s.next().await.unwrap().unwrap().sequence, 1);
        // b's event is skipped, the channel-less one passes
        assert_eq!(s.next().await.unwrap().unwrap().sequence, 3);
        // waits for the next one
        let h = hub.clone();
        let pusher = tokio::spawn(async move { h.push(Some(&a), charged(4)) });
        assert_eq!(s.next().await.unwrap().unwrap().sequence, 4);
        pusher.await.unwrap();
        stop_tx.send(true).unwrap();
        assert_eq!(
            s.next().await.unwrap().unwrap_err().code(),
            Code::Unavailable
        );
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_reader_overtaken_by_the_ring_ends_out_of_range() {
        let hub = Arc::new(EventHub::new(2));
        hub.push(None, charged(1));
        let (_stop_tx, stop) = watch::channel(false);
        let mut s = Box::pin(hub.clone().stream(1, None, stop));
        assert_eq!(s.next().await.unwrap().unwrap().sequence, 1);
        for n in 2..=5 {
            hub.push(None, charged(n));
        }
        assert_eq!(
            s.next().await.unwrap().unwrap_err().code(),
            Code::OutOfRange
        );
        assert!(s.next().await.is_none());
    }
}
