//! paychan's payee engine: serves paid requests around the protocol core ([`paychan_core`]) and
//! the store ([`paychan_store`]).
//!
//! A request is `begin` → handler → `commit` or `abort` ([`Engine`]). Requests on one channel are
//! serialized by that channel's lock (a busy channel answers `channel_busy` or waits a bounded
//! time); different channels share nothing but a short shard lock. A charge is durable before
//! the response acknowledging it exists. Mirrored on-chain state has a freshness bound; a
//! channel unknown to the store starts from its on-chain claimed total. Restart = reopen the
//! store and carry on.
//!
//! | module | what |
//! | --- | --- |
//! | [`engine`] | the engine, its settings, tickets and declines; the crash-cost table per step |
//! | [`traits`] | the ports it uses (re-exported from [`paychan_core::ports`]) and the null facilitator |
//! | [`events`] | events for the settlement side |
//! | [`limits`] | negative cache, per-channel rate limits, the chain-read cap |
//! | [`metrics`] | counters |
//! | [`slots`] | the sharded per-channel lock table |

pub mod engine;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod slots;
pub mod traits;

pub use engine::{Begin, Decline, Engine, EngineConfig, Ticket, charged_amount};
pub use events::EngineEvent;
pub use limits::RateLimit;
pub use metrics::{CheckKind, Histogram, HistogramSnapshot, LATENCY_BUCKETS, Metrics};
pub use traits::{
    Clock, NoFacilitator, OnchainSource, PaymentFacilitator, SourceError, SystemClock,
};
