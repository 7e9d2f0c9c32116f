#![doc = include_str!("../README.md")]
//!
//! | module | what |
//! | --- | --- |
//! | [`payer`] | [`Payer`], [`PayerBuilder`], [`Receipt`], [`PaidResponse`], channel listing |
//! | [`pay`] | paying one request: terms cache, pool turn, policy → sign → record → send, answer checks, corrections |
//! | [`manage`] | cooperative refund, timed withdrawal |
//! | [`policy`] | [`SpendPolicy`], [`DepositPolicy`]: offer choice, deposit sizing, period budgets (pure) |
//! | [`channel`] | one channel, its derived salt ([`channel_salt`]), its stored form, [`PoolKey`] |
//! | `stream` | paid streams: trailers adopted, chunked streams renewed voucher by voucher |
//! | `pool` | the channel pool: one request per channel, grown on demand, FIFO queue |
//! | [`middleware`] | [`PayerMiddleware`] for `reqwest-middleware` |
//! | [`clock`] | [`Clock`], [`SystemClock`] |
//! | [`error`] | [`Error`], [`PolicyError`], [`Scope`] |
//! | `transport` | one request out, through a client or the rest of a middleware chain |

pub mod channel;
pub mod clock;
pub mod error;
pub mod manage;
pub mod middleware;
pub mod pay;
pub mod payer;
pub mod policy;
mod pool;
mod stream;
mod transport;

pub use channel::{ChannelStatus, PoolKey, channel_salt};
pub use clock::{Clock, SystemClock};
pub use error::{Error, PolicyError, Result, Scope};
pub use middleware::PayerMiddleware;
pub use payer::{
    ChannelInfo, DEFAULT_MAX_CHANNELS, PaidResponse, Payer, PayerBuilder, Receipt, RefundReceipt,
};
pub use policy::{DepositPolicy, SpendPolicy};
