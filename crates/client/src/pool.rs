//! A pool of channels for one [`PoolKey`]: at most one request in flight per channel, grown on
//! demand up to a limit, and a fair (FIFO) queue when every channel is busy.
//!
//! The pool holds one semaphore permit per channel it may have. A request takes a permit first
//! (tokio's semaphore serves waiters in order), then an idle channel, or, when none is idle, a
//! new channel index: with `max` permits and each busy channel holding one, there is always one
//! or the other. The [`Lease`] gives the channel back when dropped, whatever state it is in, so a
//! cancelled request leaves the channel as far as it got (the store agrees: it is written before
//! anything is sent).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
};

use alloy_primitives::B256;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::channel::{Channel, PoolKey};

/// The pool's mutable part.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    /// Open channels not in use.
    pub idle: Vec<Channel>,
    /// Channels that sign nothing more (halted, withdrawing, closed).
    pub retired: Vec<Channel>,
    /// Ids of open channels, idle or leased.
    pub open: BTreeSet<B256>,
    /// Indices taken by any channel of this pool, open or retired.
    pub indices: BTreeSet<u64>,
}

/// One pool.
#[derive(Debug)]
pub(crate) struct Pool {
    pub key: PoolKey,
    permits: Arc<Semaphore>,
    max: usize,
    state: Mutex<PoolState>,
    returned: Notify,
    /// Set once the chain was searched for this pool's channels (or there was nothing to search).
    pub recovered: tokio::sync::OnceCell<()>,
}

/// What a checkout got: a channel, or an index to open a new channel at.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<Pool>,
    /// The channel; `None` until a new one is made for `fresh`.
    pub channel: Option<Channel>,
    /// The index reserved for a new channel.
    pub fresh: Option<u64>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// An empty pool of at most `max` channels.
    pub(crate) fn new(key: PoolKey, max: usize) -> Self {
        let max = max.max(1);
        Self {
            key,
            permits: Arc::new(Semaphore::new(max)),
            max,
            state: Mutex::new(PoolState::default()),
            returned: Notify::new(),
            recovered: tokio::sync::OnceCell::new(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock cannot leave the lists half-updated (each update is
        // one push, remove or insert), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a channel (loaded from the store or found on chain).
    pub(crate) fn add(&self, ch: Channel) {
        let mut st = self.state();
        st.indices.insert(ch.meta.index);
        if ch.meta.status.is_open() && st.open.len() < self.max {
            st.open.insert(ch.id());
            st.idle.push(ch);
        } else {
            st.retired.push(ch);
        }
    }

    /// Whether the pool has no channel at all.
    pub(crate) fn is_empty(&self) -> bool {
        let st = self.state();
        st.indices.is_empty()
    }

    /// Waits for a turn (FIFO), then takes the idle channel with the most left to pay with (one
    /// that can pay `amount` without a deposit, if any), or reserves a new index.
    pub(crate) async fn checkout(self: &Arc<Self>, amount: u128) -> Option<Lease> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let mut st = self.state();
        if let Some(i) = pick(&st.idle, amount) {
            let ch = st.idle.swap_remove(i);
            drop(st);
            return Some(Lease {
                pool: self.clone(),
                channel: Some(ch),
                fresh: None,
                _permit: permit,
            });
        }
        let index = (0..u64::MAX).find(|i| !st.indices.contains(i))?;
        st.indices.insert(index);
        drop(st);
        Some(Lease {
            pool: self.clone(),
            channel: None,
            fresh: Some(index),
            _permit: permit,
        })
    }

    /// Waits until channel `id` is idle (or retired) and takes it out of service for the lease.
    /// `None` if the pool has no such channel.
    pub(crate) async fn checkout_channel(self: &Arc<Self>, id: B256) -> Option<Lease> {
        loop {
            let notified = self.returned.notified();
            let mut returned = std::pin::pin!(notified);
            returned.as_mut().enable();
            let retired = {
                let mut st = self.state();
                let found = st.retired.iter().position(|c| c.id() == id);
                if found.is_none() && !st.open.contains(&id) {
                    return None;
                }
                found.map(|i| st.retired.swap_remove(i))
            };
            if let Some(ch) = retired {
                // A retired channel holds no permit; this lease borrows one to give back.
                let permit = self.permits.clone().acquire_owned().await.ok()?;
                return Some(Lease {
                    pool: self.clone(),
                    channel: Some(ch),
                    fresh: None,
                    _permit: permit,
                });
            }
            let permit = self.permits.clone().acquire_owned().await.ok()?;
            {
                let mut st = self.state();
                if let Some(i) = st.idle.iter().position(|c| c.id() == id) {
                    let ch = st.idle.swap_remove(i);
                    return Some(Lease {
                        pool: self.clone(),
                        channel: Some(ch),
                        fresh: None,
                        _permit: permit,
                    });
                }
            }
            drop(permit);
            returned.await;
        }
    }

    fn give_back(&self, ch: Option<Channel>, fresh: Option<u64>) {
        let mut st = self.state();
        match ch {
            Some(ch) => {
                if ch.meta.status.is_open() {
                    st.open.insert(ch.id());
                    st.idle.push(ch);
                } else {
                    st.open.remove(&ch.id());
                    st.retired.push(ch);
                }
            }
            None => {
                if let Some(i) = fresh {
                    st.indices.remove(&i);
                }
            }
        }
        drop(st);
        self.returned.notify_waiters();
    }
}

/// The idle channel to use for a request of maximum `amount`: among those that can pay it from
/// their balance, the one with the least left (so that the others keep theirs, and fewer
/// channels need top-ups); otherwise the one with the most left.
fn pick(idle: &[Channel], amount: u128) -> Option<usize> {
    let can_pay = idle
        .iter()
        .enumerate()
        .filter(|(_, c)| c.remaining() >= amount)
        .min_by_key(|(_, c)| c.remaining())
        .map(|(i, _)| i);
    can_pay.or_else(|| {
        idle.iter()
            .enumerate()
            .max_by_key(|(_, c)| c.remaining())
            .map(|(i, _)| i)
    })
}

impl Drop for Lease {
    fn drop(&mut self) {
        let ch = self.channel.take();
        if let Some(c) = &ch {
            let mut st = self.pool.state();
            st.indices.insert(c.meta.index);
            drop(st);
        }
        self.pool.give_back(ch, self.fresh);
    }
}
