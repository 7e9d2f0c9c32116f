#![doc = include_str!("../README.md")]
//!
//! | module | what |
//! | --- | --- |
//! | [`proto`] | the generated `paychan.control.v1` messages, server trait and client |
//! | [`service`] | [`ControlPlane`]: the service over the engine and the settlement scheduler |
//! | [`server`] | [`serve`]: the listener, bearer-token auth, reflection, the standard health service |
//! | [`auth`] | [`RequireBearer`]: the bearer-token check in front of a gRPC service |
//! | [`client`] | [`ControlClient`]: the authenticated client with typed helpers |
//! | [`events`] | the `WatchEvents` ring: sequence numbers, resume, its sources |
//! | [`error`] | [`Error`], and the one mapping of failures to `tonic::Status` |
//! | `parse` | request fields in: `INVALID_ARGUMENT` naming the field |
//! | `convert` | records and reports out: decimal amounts, `0x` hex |
//! | `close` | the cooperative close decided from a record and fresh chain state |

pub mod auth;
pub mod client;
mod close;
mod convert;
pub mod error;
pub mod events;
mod parse;
pub mod proto;
pub mod server;
pub mod service;

pub use auth::RequireBearer;
pub use client::{BearerAuth, ControlClient};
pub use error::{Error, Result};
pub use server::{serve, serve_with};
pub use service::{ControlConfig, ControlPlane};

/// `tracing` target of this crate.
pub const TARGET: &str = "paychan_control";
