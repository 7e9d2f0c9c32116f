//! `paychan payer …`: a payer's own channel, managed on chain with the payer's key.
//!
//! The channel is the one `paychan call` and `paychan pay-proxy` (paychan-client) use at a
//! server: its terms come from the server's 402 for `--url`, its salt from
//! [`paychan_client::PoolKey::config`] (payer, server origin, terms, `--index`), so these
//! commands open, top up, withdraw from and show the very channels the client pays with.
//!
//! Opening and topping up deposit with the payer's ERC-3009 authorization through the deposit
//! collector, sent by the payer itself (it pays the gas; a server's facilitator relays deposits
//! made inside a paid request instead). A timed withdrawal is `initiateWithdraw`, then, after
//! the channel's withdraw delay, `finalizeWithdraw`. The key comes from `--key-file` or
//! `PAYCHAN_PAYER_KEY`, never from argv, and is never printed.

use std::path::PathBuf;

use alloy_primitives::{Address, B256, U256, keccak256};
use clap::{Args, Subcommand};
use paychan_chain::{ChainReader, PayerClient, Relayer};
use paychan_client::PoolKey;
use paychan_core::{
    amount::parse_u128,
    batch::{
        BatchRequirements, ChannelConfig,
        eip712::Eip712Domain,
        payer::{Erc3009Terms, sign_erc3009_authorization},
    },
    codec,
    sig::LocalSigner,
    x402::PaymentRequired,
};
use paychan_store::{JournalState, MemStore};
use serde_json::json;

use super::{EXIT_CODES, Failure, Outcome, output, waiting};
use crate::config::PAYER_KEY_ENV;

fn amount_arg(s: &str) -> Result<u128, String> {
    parse_u128(s).map_err(|e| format!("{s:?}: {e} (an amount in the token's atomic units)"))
}

/// `paychan payer …`.
#[derive(Args, Debug)]
#[command(after_long_help = EXIT_CODES)]
pub(crate) struct PayerArgs {
    /// A paid URL of the server; its 402 gives the channel's terms (token, receiver, receiver
    /// authorizer, withdraw delay, chain).
    #[arg(long, env = "PAYCHAN_URL", value_name = "URL")]
    pub(crate) url: String,
    /// The HTTP method of the paid URL.
    #[arg(long, short = 'X', default_value = "POST")]
    pub(crate) method: String,
    /// JSON-RPC URL of the chain.
    #[arg(long, env = "PAYCHAN_RPC_URL", value_name = "URL")]
    pub(crate) rpc_url: String,
    /// File holding the payer's private key (64 hex digits), owner-only (mode 0600). Without it
    /// the key is read from PAYCHAN_PAYER_KEY. There is no way to pass the key on the command line.
    #[arg(long, env = "PAYCHAN_PAYER_KEY_FILE", value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// The channel's index among this payer's channels at the server (0: the first, the one a
    /// client pays with first).
    #[arg(long, default_value_t = 0)]
    pub(crate) index: u64,
    /// The escrow contract (default: the canonical batch-settlement address).
    #[arg(long, env = "PAYCHAN_ESCROW", value_name = "ADDRESS")]
    pub(crate) escrow: Option<Address>,
    /// The ERC-3009 deposit collector (default: the canonical address).
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) collector: Option<Address>,
    /// Confirmations before a transaction counts (default 3; 1 on chain 31337).
    #[arg(long)]
    pub(crate) confirmations: Option<u64>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: PayerCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum PayerCommand {
    /// Open the channel with a first deposit (the payer sends the transaction and pays its gas).
    Open {
        /// Tokens to deposit, atomic units.
        #[arg(long, value_parser = amount_arg)]
        amount: u128,
    },
    /// Deposit more into an open channel.
    Topup {
        /// Tokens to add, atomic units.
        #[arg(long, value_parser = amount_arg)]
        amount: u128,
    },
    /// Start a timed withdrawal: after the channel's withdraw delay, `finalize` returns what the
    /// server has not claimed by then. The server claims its charges before the delay ends.
    Withdraw {
        /// Tokens to withdraw at most (default: all that is not claimed yet).
        #[arg(long, value_parser = amount_arg)]
        amount: Option<u128>,
    },
    /// Finalize a timed withdrawal once its delay has passed.
    Finalize,
    /// The channel (and the next ones with --count) on chain, and the payer's token balance.
    Status {
        /// How many channels to show, from --index on.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
}

/// What a command works on.
struct Ctx {
    key: LocalSigner,
    reader: ChainReader,
    offer: BatchRequirements,
    pool: PoolKey,
}

impl Ctx {
    fn channel(&self, index: u64) -> (ChannelConfig, B256) {
        let config = self.pool.config(self.key.address(), index);
        let id = self.reader.domain().channel_id(&config);
        (config, id)
    }
}

fn chain_failure(e: &paychan_chain::Error) -> Failure {
    use paychan_chain::Error as E;
    let msg = paychan_core::redact::redact_urls(&e.to_string());
    let code = match e {
        _ if e.is_transport() => 3,
        E::Reverted { .. } | E::GasCeiling { .. } | E::Refused { .. } => 7,
        E::Unconfirmed { .. } | E::TxReverted { .. } | E::NonceTaken { .. } => 8,
        _ => 1,
    };
    Failure::new(code, msg)
}

/// The batch-settlement offer of the server's 402 for `url`.
async fn offer_of(method: &str, url: &str) -> Outcome<(BatchRequirements, String)> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| Failure::new(5, format!("--url {url:?}: {e}")))?;
    let method: reqwest::Method = method
        .parse()
        .map_err(|_| Failure::new(5, format!("--method {method:?} is not an HTTP method")))?;
    let resp = reqwest::Client::new()
        .request(method, parsed.clone())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .map_err(|e| {
            Failure::new(
                3,
                format!(
                    "asking {} for its terms: {e}",
                    parsed.origin().ascii_serialization()
                ),
            )
        })?;
    if resp.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
        return Err(Failure::new(
            1,
            format!(
                "{url} answered {} instead of 402: not a paid URL",
                resp.status()
            ),
        ));
    }
    let pr: PaymentRequired = resp
        .headers()
        .get(codec::PAYMENT_REQUIRED)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| codec::decode(h).ok())
        .ok_or_else(|| Failure::new(1, "the 402 carries no readable PAYMENT-REQUIRED header"))?;
    let offer = pr
        .accepts
        .iter()
        .find_map(|r| BatchRequirements::from_generic(r).ok())
        .ok_or_else(|| Failure::new(1, "the server offers no batch-settlement terms"))?;
    Ok((offer, parsed.origin().ascii_serialization()))
}

async fn context(a: &PayerArgs) -> Outcome<Ctx> {
    let key = crate::config::load_key(a.key_file.as_deref(), PAYER_KEY_ENV)
        .map_err(|e| Failure::new(4, format!("{e:#}")))?
        .ok_or_else(|| {
            Failure::new(
                4,
                format!("the payer's key is needed: pass --key-file or set {PAYER_KEY_ENV}"),
            )
        })?;
    let (offer, origin) = offer_of(&a.method, &a.url).await?;
    let mut cfg = crate::chain_config(&a.rpc_url, offer.chain_id);
    if let Some(e) = a.escrow {
        cfg.escrow = e;
    }
    if let Some(c) = a.collector {
        cfg.erc3009_collector = c;
    }
    if let Some(n) = a.confirmations {
        cfg.confirmations = n;
    }
    let reader = ChainReader::connect(cfg).await.map_err(|e| {
        let mut f = chain_failure(&e);
        f.message = format!("connecting to the chain: {}", f.message);
        f
    })?;
    let pool = PoolKey {
        origin,
        chain_id: offer.chain_id,
        asset: offer.asset,
        receiver: offer.pay_to,
        receiver_authorizer: offer.extra.receiver_authorizer,
        withdraw_delay: offer.extra.withdraw_delay,
    };
    Ok(Ctx {
        key,
        reader,
        offer,
        pool,
    })
}

/// Runs `paychan payer …`.
pub(crate) async fn run(a: PayerArgs) -> Outcome {
    let ctx = context(&a).await?;
    let (config, id) = ctx.channel(a.index);
    let r = &ctx.reader;
    let state = |id| async move { r.channel_state(id).await.map_err(|e| chain_failure(&e)) };
    match a.command {
        PayerCommand::Open { amount } | PayerCommand::Topup { amount } => {
            let opening = matches!(a.command, PayerCommand::Open { .. });
            let before = state(id).await?;
            if opening && before.balance > 0 {
                return Err(Failure::new(
                    7,
                    format!(
                        "channel {id} is open already (balance {}): use `payer topup`",
                        before.balance
                    ),
                ));
            }
            if !opening && before.balance == 0 {
                return Err(Failure::new(
                    7,
                    format!("channel {id} has no balance: use `payer open`"),
                ));
            }
            let held = r
                .token_balance(ctx.offer.asset, ctx.key.address())
                .await
                .map_err(|e| chain_failure(&e))?;
            if held < U256::from(amount) {
                return Err(Failure::new(
                    7,
                    format!("the payer holds {held} of the token, less than {amount}"),
                ));
            }
            let tx = waiting("depositing", deposit(&ctx, &config, id, amount)).await?;
            let after = state(id).await?;
            if a.json {
                output::json(&json!({
                    "channel_id": format!("{id:#x}"),
                    "deposited": amount.to_string(),
                    "balance": after.balance.to_string(),
                    "tx_hash": format!("{tx:#x}"),
                }));
            } else {
                output::pairs(&[
                    ("channel", format!("{id:#x}")),
                    ("deposited", amount.to_string()),
                    ("balance", after.balance.to_string()),
                    ("tx", format!("{tx:#x}")),
                ]);
            }
        }
        PayerCommand::Withdraw { amount } => {
            let st = state(id).await?;
            let amount = amount.unwrap_or_else(|| st.balance.saturating_sub(st.total_claimed));
            if amount == 0 {
                return Err(Failure::new(
                    7,
                    format!("channel {id}: nothing unclaimed to withdraw"),
                ));
            }
            let sender = PayerClient::new(r.clone(), ctx.key.clone());
            let out = waiting(
                "starting a timed withdrawal",
                sender.initiate_withdraw(&config, amount),
            )
            .await
            .map_err(|e| chain_failure(&e))?;
            let (pending, at) = r
                .pending_withdrawal(id)
                .await
                .map_err(|e| chain_failure(&e))?;
            let deadline = at.saturating_add(config.withdraw_delay);
            if a.json {
                output::json(&json!({
                    "channel_id": format!("{id:#x}"),
                    "requested": pending.to_string(),
                    "requested_at": at,
                    "finalizable_at": deadline,
                    "tx_hash": format!("{:#x}", out.tx_hash),
                }));
            } else {
                output::pairs(&[
                    ("channel", format!("{id:#x}")),
                    ("requested", pending.to_string()),
                    (
                        "finalizable at",
                        format!("{deadline} (chain time; `payer finalize` then)"),
                    ),
                    ("tx", format!("{:#x}", out.tx_hash)),
                ]);
            }
        }
        PayerCommand::Finalize => {
            let before = state(id).await?;
            let sender = PayerClient::new(r.clone(), ctx.key.clone());
            let out = waiting(
                "finalizing the withdrawal",
                sender.finalize_withdraw(&config),
            )
            .await
            .map_err(|e| chain_failure(&e))?;
            let after = state(id).await?;
            let back = before.balance.saturating_sub(after.balance);
            if a.json {
                output::json(&json!({
                    "channel_id": format!("{id:#x}"),
                    "withdrawn": back.to_string(),
                    "balance": after.balance.to_string(),
                    "tx_hash": format!("{:#x}", out.tx_hash),
                }));
            } else {
                output::pairs(&[
                    ("channel", format!("{id:#x}")),
                    ("withdrawn", back.to_string()),
                    ("balance", after.balance.to_string()),
                    ("tx", format!("{:#x}", out.tx_hash)),
                ]);
            }
        }
        PayerCommand::Status { count } => {
            let mut rows = Vec::new();
            for index in a.index..a.index.saturating_add(count.max(1)) {
                let (cfg, id) = ctx.channel(index);
                let st = state(id).await?;
                let (pending, at) = r
                    .pending_withdrawal(id)
                    .await
                    .map_err(|e| chain_failure(&e))?;
                rows.push((index, id, st, pending, at, cfg.withdraw_delay));
            }
            let held = r
                .token_balance(ctx.offer.asset, ctx.key.address())
                .await
                .map_err(|e| chain_failure(&e))?;
            if a.json {
                let channels: Vec<_> = rows
                    .iter()
                    .map(|(index, id, st, pending, at, delay)| {
                        json!({
                            "index": index,
                            "channel_id": format!("{id:#x}"),
                            "balance": st.balance.to_string(),
                            "claimed": st.total_claimed.to_string(),
                            "withdrawal": (*at > 0).then(|| json!({
                                "amount": pending.to_string(),
                                "requested_at": at,
                                "finalizable_at": at.saturating_add(*delay),
                            })),
                        })
                    })
                    .collect();
                output::json(&json!({
                    "payer": format!("{:#x}", ctx.key.address()),
                    "server": ctx.pool.origin,
                    "token": format!("{:#x}", ctx.offer.asset),
                    "token_balance": held.to_string(),
                    "channels": channels,
                }));
            } else {
                output::pairs(&[
                    ("payer", format!("{:#x}", ctx.key.address())),
                    ("server", ctx.pool.origin.clone()),
                    ("token", format!("{:#x}", ctx.offer.asset)),
                    ("token balance", held.to_string()),
                ]);
                output::blank();
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(index, id, st, pending, at, delay)| {
                        vec![
                            index.to_string(),
                            format!("{id:#x}"),
                            st.balance.to_string(),
                            st.total_claimed.to_string(),
                            if *at > 0 {
                                format!("{pending} finalizable at {}", at.saturating_add(*delay))
                            } else {
                                "-".into()
                            },
                        ]
                    })
                    .collect();
                output::table(
                    &["INDEX", "CHANNEL", "BALANCE", "CLAIMED", "WITHDRAWAL"],
                    &table,
                );
            }
        }
    }
    Ok(())
}

/// Deposits `amount` into `config` with the payer's ERC-3009 authorization, sent by the payer.
async fn deposit(ctx: &Ctx, config: &ChannelConfig, id: B256, amount: u128) -> Outcome<B256> {
    let r = &ctx.reader;
    let now = r.block_timestamp().await.map_err(|e| chain_failure(&e))?;
    let valid_before = U256::from(now.saturating_add(3_600));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Unique per channel, amount and moment: two deposits never share an authorization nonce.
    let salt = U256::from_be_bytes(
        keccak256(
            [
                b"paychan-cli/deposit/v1".as_slice(),
                id.as_slice(),
                &amount.to_be_bytes(),
                &now.to_be_bytes(),
                &nanos.to_be_bytes(),
            ]
            .concat(),
        )
        .0,
    );
    let token_domain = Eip712Domain::new(
        &ctx.offer.extra.name,
        &ctx.offer.extra.version,
        ctx.offer.chain_id,
        ctx.offer.asset,
    );
    let terms = Erc3009Terms {
        from: ctx.key.address(),
        collector: r.config().erc3009_collector,
        channel_id: id,
        amount,
        valid_after: U256::ZERO,
        valid_before,
        salt,
    };
    let auth = sign_erc3009_authorization(&token_domain, &terms, &ctx.key)
        .map_err(|_| Failure::new(1, "signing the deposit authorization failed"))?;
    let data = paychan_bindings::convert::erc3009_collector_data(
        auth.valid_after,
        auth.valid_before,
        auth.salt,
        &auth.signature,
    );
    let relayer = Relayer::new(r.clone(), MemStore::new(), ctx.key.clone());
    let entry = relayer
        .deposit(config, amount, data)
        .await
        .map_err(|e| chain_failure(&e))?;
    match entry.state {
        JournalState::Confirmed { tx_hash, .. } => Ok(tx_hash),
        JournalState::Failed { reason } => Err(Failure::new(
            8,
            format!(
                "the deposit failed: {}",
                paychan_core::redact::redact_urls(&reason)
            ),
        )),
        _ => Err(Failure::new(
            8,
            "the deposit was sent but is not confirmed yet",
        )),
    }
}
