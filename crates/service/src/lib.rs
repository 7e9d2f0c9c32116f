//! What every network service of paychan shares, so each listener fails closed the same way.
//!
//! | module | what |
//! | --- | --- |
//! | [`listener`] | [`serve`]: an HTTP listener with a header-read timeout, an idle timeout, a cap on connections and on requests in flight, and `503` + `Retry-After` when saturated |
//! | [`auth`] | bearer tokens kept in an owner-only file, created on first start, and the axum middleware that checks them |
//! | [`secret`] | reading key and token files, refusing any that group or others may read (as ssh does) |
//! | [`tls`] | [`Tls`]: a listener's certificate and key from PEM files (rustls, ring) |

pub mod auth;
pub mod listener;
pub mod secret;
pub mod tls;

pub use auth::{AuthError, BearerToken};
pub use listener::{Limits, serve};
pub use secret::{SecretError, read_secret_file};
pub use tls::{Tls, TlsError};
