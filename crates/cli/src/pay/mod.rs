//! The payer side on the command line, over `paychan-client`:
//!
//! | module | what |
//! | --- | --- |
//! | [`proxy`] | `paychan pay-proxy`: a loopback HTTP proxy to one upstream that pays for each request |
//! | [`call`] | `paychan call`: N paid requests at concurrency C, and a summary |
//! | this file | [`PayerArgs`]: key, store, chain and spend limits shared by both; building the payer |
//!
//! The payer's key comes from `--key-file` (owner-only) or `PAYCHAN_PAYER_KEY`, never from argv,
//! and is never printed. Amounts are integers in the token's atomic units.

pub(crate) mod call;
pub(crate) mod proxy;

use std::{path::PathBuf, str::FromStr, time::Duration};

use alloy_primitives::Address;
use anyhow::{Context, Result};
use paychan_chain::ChainReader;
use paychan_client::{DepositPolicy, Payer, SpendPolicy};
use paychan_store::{SledStore, SledStoreConfig};

use crate::config::PAYER_KEY_ENV;

/// A per-period limit: an amount, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit(pub(crate) Option<u128>);

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self(None));
        }
        paychan_core::amount::parse_u128(s)
            .map(|v| Self(Some(v)))
            .map_err(|_| format!("{s:?} is neither an amount in atomic units nor `none`"))
    }
}

/// Who pays, with what, and within which limits. Every amount is an integer in the token's
/// atomic units (a 6-decimal token such as USDC: 1_000_000 is one token).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct PayerArgs {
    /// File holding the payer's private key (64 hex digits), readable by its owner only (mode
    /// 0600). Without it the key is read from the PAYCHAN_PAYER_KEY environment variable. There is
    /// deliberately no way to pass the key itself on the command line.
    #[arg(long, env = "PAYCHAN_PAYER_KEY_FILE", value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// Directory of the payer's store (sled): channels, signed vouchers and spending per period,
    /// kept across runs so that channels are reused instead of opened again. One process at a
    /// time may use it.
    #[arg(
        long,
        value_name = "DIR",
        env = "PAYCHAN_PAYER_DATA_DIR",
        default_value = "paychan-payer-data"
    )]
    pub(crate) data_dir: PathBuf,
    /// Chain id of the allowed assets (the offer's network must be eip155:<chain id>).
    #[arg(long, env = "PAYCHAN_CHAIN_ID")]
    pub(crate) chain_id: u64,
    /// A token this payer pays with, by contract address on --chain-id; repeat for several.
    /// Offers in any other token are refused before anything is signed.
    #[arg(long = "asset", value_name = "ADDRESS", required = true)]
    pub(crate) assets: Vec<Address>,
    /// JSON-RPC URL of the chain (optional, recommended). With it the payer finds its channels on
    /// chain when its store is lost, checks balances after corrections and refunds, and dates
    /// deposit authorizations by the chain's clock.
    #[arg(long, env = "PAYCHAN_RPC_URL", value_name = "URL")]
    pub(crate) rpc_url: Option<String>,
    /// The escrow contract (default: the canonical batch-settlement address).
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) escrow: Option<Address>,
    /// The ERC-3009 deposit collector (default: the canonical address).
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) collector: Option<Address>,
    /// The highest per-request price (an offer's `amount`, its maximum) accepted; a dearer offer
    /// is refused before anything is signed.
    #[arg(long, value_name = "AMOUNT", default_value_t = 100_000)]
    pub(crate) max_per_request: u128,
    /// The largest single deposit or top-up signed; a server asking for more is refused.
    #[arg(long, value_name = "AMOUNT", default_value_t = 10_000_000)]
    pub(crate) max_per_deposit: u128,
    /// The usual deposit when a channel is opened or refilled (raised to the server's minimum
    /// deposit, within --max-per-deposit).
    #[arg(long, value_name = "AMOUNT", default_value_t = 1_000_000)]
    pub(crate) deposit: u128,
    /// Top a channel up (with a request) when less than this would be left after the request;
    /// 0 deposits only when a request needs it.
    #[arg(long, value_name = "AMOUNT", default_value_t = 0)]
    pub(crate) top_up_below: u128,
    /// Length of a spending period in seconds (fixed windows of unix time).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub(crate) period_secs: u64,
    /// The most spent per period over all servers (each request counts at its maximum until its
    /// charge is known), or `none`.
    #[arg(long, value_name = "AMOUNT|none", default_value = "20000000")]
    pub(crate) max_per_period: Limit,
    /// The most spent per period at any one server (origin), or `none`.
    #[arg(long, value_name = "AMOUNT|none", default_value = "none")]
    pub(crate) max_per_period_per_server: Limit,
    /// Channels per server at most: that many requests to one server may be in flight at once;
    /// more wait their turn, in order.
    #[arg(long, value_name = "N", default_value_t = paychan_client::DEFAULT_MAX_CHANNELS)]
    pub(crate) max_channels: usize,
}

impl PayerArgs {
    /// The spend policy these flags describe.
    fn spend_policy(&self) -> SpendPolicy {
        let mut p = SpendPolicy::new(self.max_per_request, self.max_per_deposit).per_period(
            Duration::from_secs(self.period_secs.max(1)),
            self.max_per_period_per_server.0,
            self.max_per_period.0,
        );
        for a in &self.assets {
            p = p.allow_asset(self.chain_id, *a);
        }
        p
    }

    /// Loads the key, opens the store, connects the chain (if configured) and builds the payer,
    /// sending through `http`.
    pub(crate) async fn build(&self, http: reqwest::Client) -> Result<Payer<SledStore>> {
        let key = crate::config::load_key(self.key_file.as_deref(), PAYER_KEY_ENV)?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the payer's key is needed: pass --key-file <PATH> (mode 0600) or set {PAYER_KEY_ENV}"
                )
            })?;
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let store = SledStore::open(SledStoreConfig::new(&self.data_dir)).with_context(|| {
            format!(
                "opening the payer's store at {} (is another paychan process using it?)",
                self.data_dir.display()
            )
        })?;
        let mut b = Payer::builder()
            .signer(key)
            .store(store)
            .spend_policy(self.spend_policy())
            .deposit_policy(DepositPolicy::new(self.deposit, self.top_up_below))
            .max_channels(self.max_channels)
            .http_client(http);
        if let Some(e) = self.escrow {
            b = b.escrow(e);
        }
        if let Some(c) = self.collector {
            b = b.collector(c);
        }
        if let Some(url) = &self.rpc_url {
            let mut cfg = crate::chain_config(url, self.chain_id);
            if let Some(e) = self.escrow {
                cfg.escrow = e;
            }
            if let Some(c) = self.collector {
                cfg.erc3009_collector = c;
            }
            let reader = ChainReader::connect(cfg).await.with_context(|| {
                format!(
                    "connecting to the chain at {}",
                    paychan_core::redact::redact_urls(url)
                )
            })?;
            b = b.chain(reader);
        }
        let payer = b.build().await.context("starting the payer")?;
        tracing::info!(target: "paychan", payer = %payer.address(), channels = payer.channels().len(), data_dir = %self.data_dir.display(), "payer ready");
        Ok(payer)
    }
}

/// The HTTP client payments go out through: connect and read-idle timeouts (no total, so a long
/// streamed answer is not cut), and no redirects (a redirect would send the request, and its
/// payment, somewhere else).
pub(crate) fn http_client(connect: Duration, read_idle: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .read_timeout(read_idle)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")
}

/// The words of a client error for a person: its message, URLs redacted.
pub(crate) fn describe(e: &paychan_client::Error) -> String {
    paychan_core::redact::redact_urls(&e.to_string())
}

/// A short, stable name for the kind of a client error (for summaries and error bodies).
pub(crate) fn kind(e: &paychan_client::Error) -> &'static str {
    use paychan_client::Error as E;
    match e {
        E::Policy(_) => "spend_policy",
        E::ServerMisbehaved { .. } => "server_misbehaved",
        E::Untrusted { .. } => "server_untrusted",
        E::Refused { .. } => "payment_refused",
        E::Protocol(_) => "protocol",
        E::BodyNotReplayable => "body_not_replayable",
        E::Channel { .. } => "channel",
        E::Config(_) => "config",
        E::Http(_) => "http",
        E::Store(_) => "store",
        E::Chain(_) => "chain",
        E::Sign(_) | E::State(_) => "payer_state",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_amounts_and_none_only() {
        assert_eq!("none".parse::<Limit>(), Ok(Limit(None)));
        assert_eq!("NONE".parse::<Limit>(), Ok(Limit(None)));
        assert_eq!("20000000".parse::<Limit>(), Ok(Limit(Some(20_000_000))));
        for bad in ["", "-1", "1.5", "1e6", "lots", " 5"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad:?}");
        }
    }
}
