#![doc = include_str!("../README.md")]
//!
//! | module | what |
//! | --- | --- |
//! | [`facilitator`] | [`Facilitator`], its settings, `/supported`, the core's `PaymentFacilitator` port |
//! | [`verify`] | `/verify`: the scheme's verification rules for deposits, vouchers and refunds |
//! | [`settle`] | `/settle`: deposits, claims, settles and refunds on chain, idempotent |
//! | [`records`] | settlement records that make retries answer instead of act |
//! | [`http`] | the HTTP API: [`router_with`], [`serve_with`] (bearer token, hardened listener); [`router`], [`serve`] unauthenticated |
//! | [`client`] | [`HttpFacilitator`]: a client of any facilitator's HTTP API |
//! | [`error`] | [`Error`] |

pub mod client;
pub mod error;
pub mod facilitator;
pub mod http;
pub mod records;
pub mod settle;
pub mod verify;

pub use client::{HttpFacilitator, HttpFacilitatorConfig};
pub use error::{Error, Result};
pub use facilitator::{DEFAULT_MIN_DEPOSIT, Facilitator, FacilitatorConfig};
pub use http::{HttpOptions, MAX_BODY_BYTES, router, router_with, serve, serve_with};
pub use paychan_service::{BearerToken, Limits};

/// Tracing target of this crate.
pub const TARGET: &str = "paychan_facilitator";
