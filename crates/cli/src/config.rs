//! `paychan serve` configuration: a TOML file, validated into typed settings.
//!
//! Secrets are never in the file: keys come from a key file or an environment variable, and
//! error messages never contain them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use alloy_primitives::Address;
use anyhow::{Context, Result, bail};
use paychan_core::{
    Network,
    batch::{BatchExtra, BatchRequirements, MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY, canonical},
    hexser::parse_address,
    sig::LocalSigner,
};
use paychan_store::Durability;
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// Address to listen on (default `127.0.0.1:8402`).
    pub(crate) listen: Option<String>,
    /// Directory of the channel store.
    pub(crate) data_dir: PathBuf,
    /// `fsync` (default), `flush` or `none`.
    pub(crate) durability: Option<String>,
    /// The longest a charge waits for others to share the store's log write (`fdatasync`),
    /// microseconds (default 4000; 0: write as soon as possible). A lone charge is written at
    /// once, and a few channels paying in a tight loop are written once half of them wait.
    pub(crate) group_commit_window_us: Option<u64>,
    /// Write the store's recent charges into sled (freeing a log file for reuse) at least this
    /// often, milliseconds (default 5000). Shorter: less log to replay on restart; longer: fewer
    /// sled writes of a busy channel.
    pub(crate) checkpoint_interval_ms: Option<u64>,
    /// Upstream base URL, or `demo` for the built-in demo upstream.
    pub(crate) upstream: String,
    /// File holding a token sent to the upstream as `Authorization: Bearer <token>` in place
    /// of the client's (an API key of a hosted upstream); owner-only permissions.
    pub(crate) upstream_token_file: Option<PathBuf>,
    /// Upstream read-idle timeout: no byte from the upstream for this long fails the request or
    /// ends its stream, seconds (default 120). Not a total: a long paid stream is never cut.
    pub(crate) upstream_timeout_secs: Option<u64>,
    /// Upstream connect timeout, seconds (default 10).
    pub(crate) upstream_connect_timeout_secs: Option<u64>,
    /// Where operational data (`/metrics`, `/health`) is served: an address (default
    /// `127.0.0.1:9402`, loopback) or `"off"`. Never the paid port.
    pub(crate) operator_listen: Option<String>,
    /// Serve the paid port over TLS with this PEM certificate chain (with `tls_key_file`).
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file` (owner-only file).
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Connection hygiene of the paid port.
    pub(crate) limits: Option<LimitsSection>,
    /// How old mirrored chain state may be for a local voucher check, seconds (default 30).
    pub(crate) max_onchain_age_secs: Option<u64>,
    /// How long a request waits for a busy channel, milliseconds (default 250).
    pub(crate) busy_wait_ms: Option<u64>,
    /// No new charges this many seconds before a payer can finalize a timed withdrawal (default 360).
    pub(crate) withdrawal_guard_secs: Option<u64>,
    /// Demo upstream price per token (default 10), when `upstream = "demo"`.
    pub(crate) demo_price_per_token: Option<String>,
    /// The chain.
    pub(crate) chain: ChainSection,
    /// How clients pay.
    pub(crate) payment: PaymentSection,
    /// Paid routes.
    #[serde(rename = "route", default)]
    pub(crate) routes: Vec<RouteSection>,
    /// Routes proxied without payment; every path that is neither paid nor free gets `404`.
    #[serde(rename = "free_route", default)]
    pub(crate) free_routes: Vec<FreeRouteSection>,
    /// Who executes deposits and refunds (absent: nobody; clients must open channels elsewhere).
    pub(crate) facilitator: Option<FacilitatorSection>,
    /// `[relay]`.
    #[serde(default)]
    pub(crate) relay: RelaySection,
    /// Claiming and settling on chain (absent: this server does not claim; something else must).
    pub(crate) settlement: Option<SettlementSection>,
    /// `[control]`: the gRPC control plane (on by default, on loopback).
    #[serde(default)]
    pub(crate) control: ControlSection,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlSection {
    /// Address of the gRPC control plane (default `127.0.0.1:9403`; `"off"` disables it).
    pub(crate) listen: Option<String>,
    /// The bearer token file callers must present (default `<data_dir>/control.token`, created
    /// with a fresh random token and mode 0600 if missing).
    pub(crate) token_file: Option<PathBuf>,
    /// Listen on an address other than loopback anyway, without TLS. The control plane moves
    /// money: only behind a proxy that terminates TLS and restricts who connects.
    pub(crate) allow_non_loopback: Option<bool>,
    /// Serve TLS with this PEM certificate chain (with `tls_key_file`); then any address may
    /// be used, and clients given the certificate (or its CA) connect over TLS.
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file` (owner-only file).
    pub(crate) tls_key_file: Option<PathBuf>,
}

/// The control plane's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlSettings {
    /// Where it listens.
    pub(crate) listen: SocketAddr,
    /// Its bearer token file.
    pub(crate) token_file: PathBuf,
    /// TLS: (certificate file, key file), if configured.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
}

/// The `[control]` settings of the configuration file at `path`, for the control plane's
/// clients (nothing else in the file is checked or loaded).
pub(crate) fn control_of(path: &std::path::Path) -> Result<Option<ControlSettings>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    f.control.settings(base, &base.join(&f.data_dir))
}

/// The control plane's default address.
pub(crate) const DEFAULT_CONTROL_LISTEN: &str = "127.0.0.1:9403";

impl ControlSection {
    /// Validated settings (`None`: off); relative paths are relative to `base`, the token file
    /// defaults to `data_dir/control.token`.
    pub(crate) fn settings(
        &self,
        base: &std::path::Path,
        data_dir: &std::path::Path,
    ) -> Result<Option<ControlSettings>> {
        let listen = match self.listen.as_deref().unwrap_or(DEFAULT_CONTROL_LISTEN) {
            "off" => return Ok(None),
            a => a.parse::<SocketAddr>().with_context(|| {
                format!("control.listen must be an address like {DEFAULT_CONTROL_LISTEN} or \"off\", not {a:?}")
            })?,
        };
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => bail!("control.tls_cert_file and control.tls_key_file go together"),
        };
        if !listen.ip().is_loopback() && tls.is_none() && !self.allow_non_loopback.unwrap_or(false)
        {
            bail!(
                "control.listen {listen} is not a loopback address: the control plane can claim, settle and refund; keep it on loopback, serve TLS (control.tls_cert_file and control.tls_key_file), or put a TLS-terminating proxy in front and set control.allow_non_loopback = true"
            );
        }
        let token_file = match &self.token_file {
            Some(p) => base.join(p),
            None => data_dir.join("control.token"),
        };
        Ok(Some(ControlSettings {
            listen,
            token_file,
            tls,
        }))
    }
}

/// `[settlement]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettlementSection {
    /// Claim every channel with unclaimed charges this often, seconds (default 900; 0: never
    /// periodically).
    pub(crate) interval_secs: Option<u64>,
    /// Claim a channel as soon as its unclaimed charges reach this many atomic units.
    pub(crate) threshold: Option<toml::Value>,
    /// Claim channels with a pending withdrawal at the latest this many seconds before the payer
    /// can finalize (default 300; must be below 900).
    pub(crate) withdrawal_margin_secs: Option<u64>,
    /// Channels per claim transaction at most (default 100).
    pub(crate) max_rows_per_tx: Option<usize>,
    /// `after_claims` (default), `manual`, or a number of seconds between settle sweeps.
    pub(crate) settle: Option<toml::Value>,
    /// File holding the relayer's key (sends claims and settles). Or set `PAYCHAN_RELAYER_KEY`.
    /// Shared with a local facilitator.
    pub(crate) relayer_key_file: Option<PathBuf>,
}

/// `[facilitator]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FacilitatorSection {
    /// `local` (paychan's facilitator in-process) or the http(s) URL of an x402 facilitator.
    #[serde(rename = "use")]
    pub(crate) use_: String,
    /// File holding the relayer's key (local only). Or set `PAYCHAN_RELAYER_KEY`.
    pub(crate) relayer_key_file: Option<PathBuf>,
    /// Confirmations before a transaction counts (local only; default 3, 1 on chain 31337).
    pub(crate) confirmations: Option<u64>,
    /// File holding the bearer token sent to a remote facilitator (remote only; paychan's
    /// facilitator requires one on `/verify` and `/settle`). Owner-only permissions required.
    pub(crate) token_file: Option<PathBuf>,
}

/// `[relay]`: bounds on the operations whose gas the relayer pays for a payer (deposits and
/// refunds sent through the paid server).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelaySection {
    /// Smallest deposit relayed, atomic units (default: 10 × the route's price).
    pub(crate) min_deposit: Option<toml::Value>,
    /// Smallest partial refund relayed, atomic units (default: 10 × the route's price). A
    /// refund of everything refundable is always allowed.
    pub(crate) min_refund: Option<toml::Value>,
    /// Deposits relayed per channel per minute (default 3; 0 relays none).
    pub(crate) deposits_per_minute: Option<u32>,
    /// Refunds relayed per channel per minute (default 1; 0 relays none).
    pub(crate) refunds_per_minute: Option<u32>,
}

/// Which facilitator to use.
#[derive(Debug)]
pub(crate) enum FacilitatorChoice {
    /// None.
    None,
    /// In-process, sending with this key.
    Local {
        /// The relayer's key.
        relayer: LocalSigner,
        /// Confirmations.
        confirmations: Option<u64>,
    },
    /// Over HTTP, sending this bearer token if one is configured.
    Remote {
        /// The facilitator's base URL.
        url: String,
        /// The bearer token sent on every request.
        token: Option<paychan_service::BearerToken>,
    },
}

/// `[chain]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChainSection {
    /// JSON-RPC URL.
    pub(crate) rpc_url: String,
    /// Chain id.
    pub(crate) chain_id: u64,
    /// Escrow address (default: the canonical one).
    pub(crate) escrow: Option<String>,
}

/// `[payment]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PaymentSection {
    /// Receiver (`payTo`).
    pub(crate) receiver: String,
    /// Receiver authorizer address.
    pub(crate) receiver_authorizer: String,
    /// File holding the receiver authorizer's key (hex). Or set `PAYCHAN_RECEIVER_AUTHORIZER_KEY`.
    pub(crate) receiver_authorizer_key_file: Option<PathBuf>,
    /// Token address.
    pub(crate) asset: String,
    /// Token EIP-712 name (e.g. `USD Coin`).
    pub(crate) asset_name: String,
    /// Token EIP-712 version (e.g. `2`).
    pub(crate) asset_version: String,
    /// Withdraw delay required of channels, seconds (default 900).
    pub(crate) withdraw_delay_secs: Option<u64>,
    /// `maxTimeoutSeconds` of offers (default 300).
    pub(crate) max_timeout_secs: Option<u64>,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSection {
    /// Path; a trailing `*` matches a prefix.
    pub(crate) path: String,
    /// HTTP method (any if absent).
    pub(crate) method: Option<String>,
    /// Maximum price per request, atomic units of the token (a decimal string or integer).
    pub(crate) price: toml::Value,
    /// Description shown to clients.
    pub(crate) description: Option<String>,
    /// Price per token from the answer's `usage`, within `price` (the maximum).
    pub(crate) per_token: Option<PerTokenSection>,
    /// Streams paid chunk by chunk, `price` a chunk, a voucher per chunk posted mid-stream.
    pub(crate) per_chunk: Option<PerChunkSection>,
}

/// `per_chunk = { tokens = …, voucher_wait_secs = … }` of a `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PerChunkSection {
    /// Units (tokens) a chunk.
    pub(crate) tokens: u64,
    /// How long a paused stream waits for the next voucher (default 30).
    pub(crate) voucher_wait_secs: Option<u64>,
}

/// `per_token = { input = …, output = …, fixed = …, fallback = … }` of a `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PerTokenSection {
    /// Per input (prompt) token, atomic units.
    pub(crate) input: toml::Value,
    /// Per output (completion) token, atomic units.
    pub(crate) output: toml::Value,
    /// Per request on top of the tokens (default 0).
    pub(crate) fixed: Option<toml::Value>,
    /// The price of an answer without usable usage: `"max"` (default) or an amount.
    pub(crate) fallback: Option<toml::Value>,
}

/// `[[free_route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FreeRouteSection {
    /// Path; a trailing `*` matches a prefix.
    pub(crate) path: String,
    /// HTTP method (any if absent).
    pub(crate) method: Option<String>,
}

/// `[limits]`: connection hygiene of the paid port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    /// Longest wait for a complete request head, milliseconds (default 10000).
    pub(crate) header_read_timeout_ms: Option<u64>,
    /// A connection on which no byte moves for this long is closed, seconds (default 60).
    pub(crate) idle_timeout_secs: Option<u64>,
    /// Connections at once (default 4096); past it `503` + `Retry-After`.
    pub(crate) max_connections: Option<usize>,
    /// Requests in flight at once, streams included (default 1024); past it `503`.
    pub(crate) max_in_flight: Option<usize>,
    /// Largest request body, bytes (default 1048576).
    pub(crate) max_body_bytes: Option<usize>,
    /// Largest JSON answer read whole to price a per-token route, bytes (default 67108864).
    pub(crate) max_response_bytes: Option<usize>,
}

/// A paid route: (method, path, offer, description, pricing).
pub(crate) type Route = (
    Option<String>,
    String,
    BatchRequirements,
    Option<String>,
    paychan_server::Pricing,
);

/// A validated configuration.
#[derive(Debug)]
pub(crate) struct Config {
    /// Listen address.
    pub(crate) listen: SocketAddr,
    /// Store directory.
    pub(crate) data_dir: PathBuf,
    /// Durability.
    pub(crate) durability: Durability,
    /// Group-commit window of the store.
    pub(crate) group_commit_window: Duration,
    /// Checkpoint interval of the store.
    pub(crate) checkpoint_interval: Duration,
    /// Upstream: `None` = demo.
    pub(crate) upstream: Option<String>,
    /// Upstream read-idle and connect timeouts.
    pub(crate) upstream_timeouts: paychan_server::proxy::ProxyTimeouts,
    /// The upstream's bearer token, if configured (its `Debug` hides it).
    pub(crate) upstream_token: Option<paychan_service::BearerToken>,
    /// The operator listener, if any.
    pub(crate) operator_listen: Option<SocketAddr>,
    /// Free routes: (method, path).
    pub(crate) free_routes: Vec<paychan_server::RoutePattern>,
    /// Connection limits of the paid port.
    pub(crate) limits: paychan_service::Limits,
    /// Largest request body, bytes.
    pub(crate) max_body_bytes: usize,
    pub(crate) max_response_bytes: usize,
    /// Freshness bound of mirrored state.
    pub(crate) max_onchain_age: Duration,
    /// Busy wait.
    pub(crate) busy_wait: Duration,
    /// Withdrawal guard.
    pub(crate) withdrawal_guard: Duration,
    /// Demo price per token.
    pub(crate) demo_price_per_token: u128,
    /// RPC URL.
    pub(crate) rpc_url: String,
    /// Chain id.
    pub(crate) chain_id: u64,
    /// Escrow.
    pub(crate) escrow: Address,
    /// Paid routes.
    pub(crate) routes: Vec<Route>,
    /// The receiver authorizer's key, if provided.
    pub(crate) receiver_authorizer: Option<LocalSigner>,
    /// The facilitator.
    pub(crate) facilitator: FacilitatorChoice,
    /// Smallest deposit relayed (`None`: 10 × the offer's price).
    pub(crate) min_deposit: Option<u128>,
    /// Smallest partial refund relayed (`None`: 10 × the offer's price).
    pub(crate) min_refund: Option<u128>,
    /// Deposits relayed per channel per minute.
    pub(crate) deposits_per_minute: u32,
    /// Refunds relayed per channel per minute.
    pub(crate) refunds_per_minute: u32,
    /// Settlement, if this server claims and settles.
    pub(crate) settlement: Option<Settlement>,
    /// The gRPC control plane; `None`: off.
    pub(crate) control: Option<ControlSettings>,
}

/// Validated `[settlement]`.
#[derive(Debug)]
pub(crate) struct Settlement {
    /// The policy.
    pub(crate) policy: paychan_settle::SettlePolicy,
    /// The relayer's key.
    pub(crate) relayer: LocalSigner,
}

/// Environment variable holding the relayer's key.
pub(crate) const RELAYER_KEY_ENV: &str = "PAYCHAN_RELAYER_KEY";

/// Environment variable holding the payer's key when no `--key-file` is given (`paychan call`,
/// `paychan pay-proxy`, `paychan payer …`).
pub(crate) const PAYER_KEY_ENV: &str = "PAYCHAN_PAYER_KEY";

/// Environment variable holding the receiver authorizer's key.
pub(crate) const RECEIVER_AUTHORIZER_KEY_ENV: &str = "PAYCHAN_RECEIVER_AUTHORIZER_KEY";

/// Reads a key from `file` or the environment variable `env`. Errors name the source, never the
/// content.
pub(crate) fn load_key(file: Option<&std::path::Path>, env: &str) -> Result<Option<LocalSigner>> {
    let (text, source) = match file {
        // A key file that group or others may read is refused, as ssh refuses one.
        Some(p) => (
            paychan_service::read_secret_file(p)
                .map_err(|e| anyhow::anyhow!("reading key file {e}"))?,
            format!("key file {}", p.display()),
        ),
        None => match std::env::var(env) {
            Ok(v) => (v, format!("${env}")),
            Err(_) => return Ok(None),
        },
    };
    LocalSigner::from_hex(text.trim()).map(Some).map_err(|_| {
        anyhow::anyhow!("{source} does not hold a valid secp256k1 private key (64 hex digits)")
    })
}

/// A route pattern, refused when its path could never match a request (not normalised) or its
/// method is not a method.
fn pattern(method: Option<&str>, path: &str, what: &str) -> Result<paychan_server::RoutePattern> {
    if !path.starts_with('/') {
        bail!("{what} path {path:?} must start with /");
    }
    let method = match method {
        Some(m) => Some(
            m.parse::<http::Method>()
                .ok()
                .filter(|_| !m.is_empty())
                .ok_or_else(|| anyhow::anyhow!("{what} {path}: {m:?} is not an HTTP method"))?,
        ),
        None => None,
    };
    paychan_server::RoutePattern::new(method, path).map_err(|e| {
        anyhow::anyhow!("{what} path {path:?} is not in normalised form ({e}): write it as requests are routed, e.g. without // or dot segments")
    })
}

fn addr(what: &str, s: &str) -> Result<Address> {
    parse_address(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn price(v: &toml::Value, path: &str) -> Result<u128> {
    let s = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) if *i >= 0 => i.to_string(),
        _ => bail!("{path} must be a non-negative integer (atomic units), as a string or number"),
    };
    paychan_core::amount::parse_u128(&s).map_err(|e| anyhow::anyhow!("{path} {s:?}: {e}"))
}

/// A route's pricing: fixed unless it has `per_token` or `per_chunk` (not both).
fn pricing(
    p: Option<&PerTokenSection>,
    chunks: Option<&PerChunkSection>,
    path: &str,
) -> Result<paychan_server::Pricing> {
    use paychan_server::{ChunkTerms, Fallback, Pricing, TokenPrices};
    if let Some(c) = chunks {
        if p.is_some() {
            bail!("route {path}: per_token and per_chunk exclude each other");
        }
        if c.tokens == 0 {
            bail!("route {path}: per_chunk.tokens must be at least 1");
        }
        let wait = c.voucher_wait_secs.unwrap_or(30);
        if !(1..=600).contains(&wait) {
            bail!("route {path}: per_chunk.voucher_wait_secs must be 1 to 600");
        }
        return Ok(Pricing::Chunked(ChunkTerms {
            tokens: c.tokens,
            voucher_wait_secs: wait,
        }));
    }
    let Some(p) = p else {
        return Ok(Pricing::Fixed);
    };
    let at = |k: &str| format!("route {path}: per_token.{k}");
    let fallback = match &p.fallback {
        None => Fallback::Max,
        Some(toml::Value::String(s)) if s == "max" => Fallback::Max,
        Some(v) => Fallback::Fixed(
            price(v, &at("fallback"))
                .with_context(|| format!("{} is \"max\" or an amount", at("fallback")))?,
        ),
    };
    Ok(Pricing::PerToken(TokenPrices {
        input: price(&p.input, &at("input"))?,
        output: price(&p.output, &at("output"))?,
        fixed: p
            .fixed
            .as_ref()
            .map(|v| price(v, &at("fixed")))
            .transpose()?
            .unwrap_or(0),
        fallback,
    }))
}

impl Config {
    /// Reads and validates the file at `path`.
    pub(crate) fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let file: File =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        Self::from_file(file, path.parent().unwrap_or(std::path::Path::new(".")))
    }

    /// Validates a parsed file; relative paths are resolved against `base`.
    pub(crate) fn from_file(f: File, base: &std::path::Path) -> Result<Self> {
        let listen: SocketAddr = f
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:8402")
            .parse()
            .context("listen must be an address like 127.0.0.1:8402")?;
        let durability = match f.durability.as_deref() {
            None => Durability::Fsync,
            Some(d) => d.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        };
        let upstream = match f.upstream.as_str() {
            "demo" => None,
            u if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_owned()),
            u => bail!("upstream must be an http(s) URL or \"demo\", not {u:?}"),
        };
        let network = Network::eip155(f.chain.chain_id);
        let escrow = match &f.chain.escrow {
            Some(e) => addr("chain.escrow", e)?,
            None => canonical::ESCROW,
        };
        let p = &f.payment;
        let withdraw_delay = p.withdraw_delay_secs.unwrap_or(MIN_WITHDRAW_DELAY);
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&withdraw_delay) {
            bail!(
                "payment.withdraw_delay_secs must be between {MIN_WITHDRAW_DELAY} and {MAX_WITHDRAW_DELAY}"
            );
        }
        let receiver_authorizer = addr("payment.receiver_authorizer", &p.receiver_authorizer)?;
        if receiver_authorizer == Address::ZERO {
            bail!("payment.receiver_authorizer must not be the zero address");
        }
        let key_file = p
            .receiver_authorizer_key_file
            .as_ref()
            .map(|k| base.join(k));
        let key = load_key(key_file.as_deref(), RECEIVER_AUTHORIZER_KEY_ENV)?;
        if let Some(k) = &key
            && k.address() != receiver_authorizer
        {
            bail!(
                "the receiver authorizer key is for {}, but payment.receiver_authorizer is {}",
                k.address(),
                receiver_authorizer
            );
        }
        let extra = BatchExtra {
            receiver_authorizer,
            withdraw_delay,
            name: p.asset_name.clone(),
            version: p.asset_version.clone(),
            asset_transfer_method: None,
            channel_state: None,
            voucher_state: None,
        };
        let template = BatchRequirements {
            network,
            chain_id: f.chain.chain_id,
            amount: 0,
            asset: addr("payment.asset", &p.asset)?,
            pay_to: addr("payment.receiver", &p.receiver)?,
            max_timeout_seconds: p.max_timeout_secs.unwrap_or(300),
            extra,
        };
        if f.routes.is_empty() {
            bail!("no [[route]]: nothing would be paid for");
        }
        let mut routes = Vec::new();
        for r in &f.routes {
            pattern(r.method.as_deref(), &r.path, "route")?;
            let amount = price(&r.price, &format!("route {}: price", r.path))?;
            if amount == 0 {
                bail!("route {}: price must be positive", r.path);
            }
            if let Some(m) = &r.method
                && (m.is_empty() || m.parse::<http::Method>().is_err())
            {
                bail!("route {}: {m:?} is not an HTTP method", r.path);
            }
            routes.push((
                r.method.clone(),
                r.path.clone(),
                BatchRequirements {
                    amount,
                    ..template.clone()
                },
                r.description.clone(),
                pricing(r.per_token.as_ref(), r.per_chunk.as_ref(), &r.path)?,
            ));
        }
        let free_routes = f
            .free_routes
            .iter()
            .map(|r| pattern(r.method.as_deref(), &r.path, "free_route"))
            .collect::<Result<Vec<_>>>()?;
        let operator_listen = match f.operator_listen.as_deref().unwrap_or("127.0.0.1:9402") {
            "off" => None,
            a => Some(a.parse::<SocketAddr>().with_context(|| {
                format!(
                    "operator_listen must be an address like 127.0.0.1:9402 or \"off\", not {a:?}"
                )
            })?),
        };
        let l = f.limits.as_ref();
        let defaults = paychan_service::Limits::default();
        let positive = |v: Option<usize>, d: usize, what: &str| match v {
            Some(0) => bail!("limits.{what} must be at least 1"),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        let limits = paychan_service::Limits {
            header_read_timeout: l
                .and_then(|l| l.header_read_timeout_ms)
                .map_or(defaults.header_read_timeout, Duration::from_millis),
            idle_timeout: l
                .and_then(|l| l.idle_timeout_secs)
                .map_or(defaults.idle_timeout, Duration::from_secs),
            max_connections: positive(
                l.and_then(|l| l.max_connections),
                defaults.max_connections,
                "max_connections",
            )?,
            max_in_flight: positive(
                l.and_then(|l| l.max_in_flight),
                defaults.max_in_flight,
                "max_in_flight",
            )?,
            tls: match (&f.tls_cert_file, &f.tls_key_file) {
                (Some(c), Some(k)) => Some(
                    paychan_service::Tls::from_pem_files(&base.join(c), &base.join(k))
                        .map_err(|e| anyhow::anyhow!("tls_cert_file / tls_key_file: {e}"))?,
                ),
                (None, None) => None,
                _ => bail!("tls_cert_file and tls_key_file go together"),
            },
            ..defaults
        };
        if limits.header_read_timeout.is_zero() || limits.idle_timeout.is_zero() {
            bail!("limits.header_read_timeout_ms and limits.idle_timeout_secs must be positive");
        }
        let max_body_bytes = positive(
            l.and_then(|l| l.max_body_bytes),
            paychan_server::PaidOptions::default().max_body_bytes,
            "max_body_bytes",
        )?;
        let max_response_bytes = positive(
            l.and_then(|l| l.max_response_bytes),
            paychan_server::PaidOptions::default().max_response_bytes,
            "max_response_bytes",
        )?;
        let demo_price_per_token = match &f.demo_price_per_token {
            Some(s) => paychan_core::amount::parse_u128(s)
                .map_err(|e| anyhow::anyhow!("demo_price_per_token: {e}"))?,
            None => 10,
        };
        let facilitator = match &f.facilitator {
            None => FacilitatorChoice::None,
            Some(fs) if fs.use_ == "local" => {
                if fs.token_file.is_some() {
                    bail!(
                        "facilitator.token_file only applies to a remote facilitator (use = an http(s) URL)"
                    );
                }
                let file = fs.relayer_key_file.as_ref().map(|k| base.join(k));
                let relayer = load_key(file.as_deref(), RELAYER_KEY_ENV)?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "facilitator.use = \"local\" needs the relayer's key: set facilitator.relayer_key_file or {RELAYER_KEY_ENV}"
                    )
                })?;
                FacilitatorChoice::Local {
                    relayer,
                    confirmations: fs.confirmations,
                }
            }
            Some(fs) if fs.use_.starts_with("http://") || fs.use_.starts_with("https://") => {
                if fs.relayer_key_file.is_some() || fs.confirmations.is_some() {
                    bail!(
                        "facilitator.relayer_key_file and confirmations only apply to use = \"local\""
                    );
                }
                let token = match &fs.token_file {
                    None => None,
                    Some(t) => {
                        let path = base.join(t);
                        Some(
                            paychan_service::BearerToken::load(&path)
                                .with_context(|| "facilitator.token_file".to_owned())?,
                        )
                    }
                };
                FacilitatorChoice::Remote {
                    url: fs.use_.clone(),
                    token,
                }
            }
            Some(fs) => bail!(
                "facilitator.use must be \"local\" or an http(s) URL, not {:?}",
                fs.use_
            ),
        };
        let relay = &f.relay;
        let min_deposit = relay
            .min_deposit
            .as_ref()
            .map(|v| price(v, "relay.min_deposit"))
            .transpose()?;
        let min_refund = relay
            .min_refund
            .as_ref()
            .map(|v| price(v, "relay.min_refund"))
            .transpose()?;
        let settlement = match &f.settlement {
            None => None,
            Some(ss) => {
                if key.is_none() {
                    bail!(
                        "[settlement] needs the receiver authorizer's key to sign claims: set payment.receiver_authorizer_key_file or {RECEIVER_AUTHORIZER_KEY_ENV}"
                    );
                }
                let file = ss.relayer_key_file.as_ref().map(|k| base.join(k));
                let relayer = match (load_key(file.as_deref(), RELAYER_KEY_ENV)?, &facilitator) {
                    (Some(k), _) => k,
                    (None, FacilitatorChoice::Local { relayer, .. }) => relayer.clone(),
                    (None, _) => bail!(
                        "[settlement] needs the relayer's key to send claims: set settlement.relayer_key_file or {RELAYER_KEY_ENV}"
                    ),
                };
                let mut policy = paychan_settle::SettlePolicy::default();
                if let Some(s) = ss.interval_secs {
                    policy.interval = (s > 0).then(|| Duration::from_secs(s));
                }
                if let Some(t) = &ss.threshold {
                    policy.threshold = Some(price(t, "settlement.threshold")?);
                }
                if let Some(m) = ss.withdrawal_margin_secs {
                    policy.withdrawal_margin = Duration::from_secs(m);
                }
                if let Some(r) = ss.max_rows_per_tx {
                    policy.max_rows_per_tx = r;
                }
                policy.settle = match &ss.settle {
                    None => paychan_settle::SettleMode::AfterClaims,
                    Some(toml::Value::String(s)) if s == "after_claims" => {
                        paychan_settle::SettleMode::AfterClaims
                    }
                    Some(toml::Value::String(s)) if s == "manual" => {
                        paychan_settle::SettleMode::Manual
                    }
                    Some(toml::Value::Integer(n)) if *n > 0 => paychan_settle::SettleMode::Every(
                        Duration::from_secs(u64::try_from(*n).unwrap_or(u64::MAX)),
                    ),
                    Some(other) => bail!(
                        "settlement.settle must be \"after_claims\", \"manual\" or a number of seconds, not {other}"
                    ),
                };
                policy
                    .validate()
                    .map_err(|e| anyhow::anyhow!("[settlement]: {e}"))?;
                Some(Settlement { policy, relayer })
            }
        };
        let data_dir = base.join(&f.data_dir);
        let control = f.control.settings(base, &data_dir)?;
        Ok(Self {
            settlement,
            control,
            facilitator,
            listen,
            data_dir,
            durability,
            // Every commit under load may wait this long: beyond 100 ms it is a typo, not a choice.
            group_commit_window: match f.group_commit_window_us.unwrap_or(4000) {
                us @ 0..=100_000 => Duration::from_micros(us),
                us => bail!("group_commit_window_us must be at most 100000 (100 ms), not {us}"),
            },
            checkpoint_interval: match f.checkpoint_interval_ms.unwrap_or(5000) {
                0 => bail!("checkpoint_interval_ms must be at least 1"),
                ms => Duration::from_millis(ms),
            },
            upstream_token: f
                .upstream_token_file
                .as_ref()
                .map(|p| {
                    let p = base.join(p);
                    paychan_service::BearerToken::load(&p)
                        .map_err(|e| anyhow::anyhow!("upstream_token_file: {e}"))
                })
                .transpose()?,
            upstream,
            upstream_timeouts: paychan_server::proxy::ProxyTimeouts {
                connect: Duration::from_secs(f.upstream_connect_timeout_secs.unwrap_or(10)),
                read_idle: Duration::from_secs(f.upstream_timeout_secs.unwrap_or(120)),
            },
            operator_listen,
            free_routes,
            limits,
            max_body_bytes,
            max_response_bytes,
            max_onchain_age: Duration::from_secs(f.max_onchain_age_secs.unwrap_or(30)),
            busy_wait: Duration::from_millis(f.busy_wait_ms.unwrap_or(250)),
            withdrawal_guard: Duration::from_secs(f.withdrawal_guard_secs.unwrap_or(360)),
            demo_price_per_token,
            rpc_url: f.chain.rpc_url,
            chain_id: f.chain.chain_id,
            escrow,
            routes,
            receiver_authorizer: key,
            min_deposit,
            min_refund,
            deposits_per_minute: relay.deposits_per_minute.unwrap_or(3),
            refunds_per_minute: relay.refunds_per_minute.unwrap_or(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::from_file(toml::from_str(text)?, std::path::Path::new("/base"))
    }

    const GOOD: &str = r#"
data_dir = "d"
upstream = "demo"
[chain]
rpc_url = "http://127.0.0.1:8545"
chain_id = 31337
[payment]
receiver = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
receiver_authorizer = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
asset = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
asset_name = "USD Coin"
asset_version = "2"
[[route]]
path = "/v1/*"
price = 5000
"#;

    #[test]
    fn the_example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../paychan.example.toml");
        // its [facilitator] and [settlement] need keys: give them key files
        let relayer = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";
        let authorizer = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "# relayer_key_file = \"relayer.key\"",
                &format!(
                    "relayer_key_file = \"{}\"",
                    write_temp_key("example-relayer", relayer).display()
                ),
            )
            .replace(
                "max_timeout_secs = 300",
                &format!(
                    "max_timeout_secs = 300\nreceiver_authorizer_key_file = \"{}\"",
                    write_temp_key("example-authorizer", authorizer).display()
                ),
            );
        let c = Config::from_file(toml::from_str(&text).unwrap(), path.parent().unwrap()).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].2.amount, 10_000);
        assert!(matches!(&c.routes[0].4, paychan_server::Pricing::PerToken(p) if p.output == 8));
        assert_eq!(c.routes[1].4, paychan_server::Pricing::Fixed);
        assert_eq!(c.free_routes.len(), 1);
        assert_eq!(c.operator_listen, Some("127.0.0.1:9402".parse().unwrap()));
        let control = c.control.as_ref().unwrap();
        assert_eq!(control.listen, "127.0.0.1:9403".parse().unwrap());
        assert!(control.token_file.ends_with("paychan-data/control.token"));
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.max_response_bytes, 16 * 1_048_576);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.group_commit_window, Duration::from_millis(4));
        assert_eq!(c.checkpoint_interval, Duration::from_secs(5));
        assert!(matches!(c.facilitator, FacilitatorChoice::Local { .. }));
        let s = c.settlement.as_ref().unwrap();
        assert_eq!(s.policy.interval, Some(Duration::from_secs(900)));
        assert_eq!(
            s.relayer.address(),
            parse_address("0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65").unwrap()
        );
    }

    #[test]
    fn the_group_commit_window_defaults_to_four_milliseconds_and_can_be_set() {
        let window = |c: Config| c.group_commit_window;
        assert_eq!(window(parse(GOOD).unwrap()), Duration::from_millis(4));
        let set = parse(&GOOD.replace("data_dir = ", "group_commit_window_us = 250\ndata_dir = "))
            .unwrap();
        assert_eq!(window(set), Duration::from_micros(250));
        assert!(
            parse(&GOOD.replace("data_dir = ", "group_commit_window_us = -1\ndata_dir = "))
                .is_err()
        );
        let err = format!(
            "{:#}",
            parse(&GOOD.replace(
                "data_dir = ",
                "group_commit_window_us = 5000000\ndata_dir = "
            ))
            .unwrap_err()
        );
        assert!(err.contains("must be at most 100000"), "{err}");
    }

    #[test]
    fn the_checkpoint_interval_defaults_to_five_seconds_and_must_not_be_zero() {
        let set = |line: &str| parse(&GOOD.replace("data_dir = ", &format!("{line}\ndata_dir = ")));
        assert_eq!(
            parse(GOOD).unwrap().checkpoint_interval,
            Duration::from_secs(5)
        );
        assert_eq!(
            set("checkpoint_interval_ms = 20")
                .unwrap()
                .checkpoint_interval,
            Duration::from_millis(20)
        );
        let err = format!("{:#}", set("checkpoint_interval_ms = 0").unwrap_err());
        assert!(
            err.contains("checkpoint_interval_ms must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn facilitator_and_settlement_need_their_keys() {
        let with = |extra: &str| parse(&format!("{GOOD}\n{extra}"));
        let err = format!(
            "{:#}",
            with("[facilitator]\nuse = \"local\"\nrelayer_key_file = \"/nonexistent/key\"")
                .unwrap_err()
        );
        assert!(err.contains("reading key file /nonexistent/key"), "{err}");
        assert_eq!(err.matches("No such file").count(), 1, "{err}");
        let err = format!(
            "{:#}",
            with("[facilitator]\nuse = \"ftp://x\"").unwrap_err()
        );
        assert!(err.contains("\"local\" or an http(s) URL"), "{err}");
        let c = with("[facilitator]\nuse = \"https://facilitator.example\"").unwrap();
        assert!(
            matches!(c.facilitator, FacilitatorChoice::Remote { ref url, token: None } if url == "https://facilitator.example")
        );
        let err = format!(
            "{:#}",
            with("[settlement]\ninterval_secs = 60").unwrap_err()
        );
        assert!(err.contains("receiver authorizer's key"), "{err}");
    }

    #[test]
    fn per_chunk_routes_are_read_and_checked() {
        let c = parse(&format!(
            "{GOOD}per_chunk = {{ tokens = 100, voucher_wait_secs = 5 }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.routes[0].4,
            paychan_server::Pricing::Chunked(paychan_server::ChunkTerms {
                tokens: 100,
                voucher_wait_secs: 5
            })
        );
        let c = parse(&format!("{GOOD}per_chunk = {{ tokens = 7 }}\n")).unwrap();
        assert!(
            matches!(c.routes[0].4, paychan_server::Pricing::Chunked(t) if t.voucher_wait_secs == 30)
        );
        for (extra, says) in [
            ("per_chunk = { tokens = 0 }", "at least 1"),
            (
                "per_chunk = { tokens = 5, voucher_wait_secs = 0 }",
                "1 to 600",
            ),
            ("per_chunk = { tokens = 5, chunk = 1 }", "unknown field"),
            (
                "per_chunk = { tokens = 5 }\nper_token = { input = 1, output = 1 }",
                "exclude each other",
            ),
        ] {
            let e = format!("{:#}", parse(&format!("{GOOD}{extra}\n")).unwrap_err());
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn per_token_routes_are_read_and_checked() {
        use paychan_server::{Fallback, Pricing, TokenPrices};
        let with = |extra: &str| {
            parse(&GOOD.replacen(
                "[[route]]\npath = \"/v1/*\"",
                &format!("[[route]]\npath = \"/v1/*\"\n{extra}"),
                1,
            ))
        };
        let c = with(r#"per_token = { input = 2, output = "8", fixed = 100, fallback = 5000 }"#)
            .unwrap();
        assert_eq!(
            c.routes[0].4,
            Pricing::PerToken(TokenPrices {
                input: 2,
                output: 8,
                fixed: 100,
                fallback: Fallback::Fixed(5000)
            })
        );
        let c = with(r#"per_token = { input = 0, output = 1 }"#).unwrap();
        assert_eq!(
            c.routes[0].4,
            Pricing::PerToken(TokenPrices {
                input: 0,
                output: 1,
                fixed: 0,
                fallback: Fallback::Max
            })
        );
        // routes without per_token stay fixed
        assert_eq!(parse(GOOD).unwrap().routes[0].4, Pricing::Fixed);
        for bad in [
            r#"per_token = { input = -1, output = 1 }"#,
            r#"per_token = { input = 1 }"#,
            r#"per_token = { input = 1, output = 1.5 }"#,
            r#"per_token = { input = 1, output = 1, fallback = "min" }"#,
            r#"per_token = { input = 1, output = 1, surprise = 1 }"#,
        ] {
            let e = with(bad).unwrap_err();
            assert!(
                format!("{e:#}").contains("per_token") || format!("{e:#}").contains("route"),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn relay_bounds_and_the_remote_facilitator_token() {
        use std::os::unix::fs::PermissionsExt;
        let with = |extra: &str| parse(&format!("{GOOD}\n{extra}"));
        // defaults: minimums follow each offer's price (None), 3 deposits and 1 refund a minute
        let c = parse(GOOD).unwrap();
        assert_eq!((c.min_deposit, c.min_refund), (None, None));
        assert_eq!((c.deposits_per_minute, c.refunds_per_minute), (3, 1));
        let c = with("[relay]\nmin_deposit = \"1000000\"\nmin_refund = 250000\ndeposits_per_minute = 0\nrefunds_per_minute = 5").unwrap();
        assert_eq!(
            (c.min_deposit, c.min_refund),
            (Some(1_000_000), Some(250_000))
        );
        assert_eq!((c.deposits_per_minute, c.refunds_per_minute), (0, 5));
        for (bad, what) in [
            ("min_deposit = -5", "relay.min_deposit"),
            ("min_refund = \"1.5\"", "relay.min_refund"),
        ] {
            let err = format!("{:#}", with(&format!("[relay]\n{bad}")).unwrap_err());
            assert!(err.contains(what), "{bad}: {err}");
        }
        assert!(
            with("[relay]\nmax_deposit = 1").is_err(),
            "unknown keys are refused"
        );

        // the token sent to a remote facilitator comes from an owner-only file
        let secret = "ab".repeat(32);
        let dir = std::env::temp_dir().join(format!("paychan-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("facilitator.token");
        write_owner_only(&file, &secret);
        let remote = |f: &std::path::Path| {
            with(&format!(
                "[facilitator]\nuse = \"https://f.example\"\ntoken_file = \"{}\"",
                f.display()
            ))
        };
        let c = remote(&file).unwrap();
        match &c.facilitator {
            FacilitatorChoice::Remote { token: Some(t), .. } => assert_eq!(t.secret(), secret),
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", remote(&file).unwrap_err());
        assert!(
            err.contains("facilitator.token_file") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains(&secret), "the token leaked: {err}");
        let err = format!(
            "{:#}",
            with("[facilitator]\nuse = \"local\"\ntoken_file = \"t\"").unwrap_err()
        );
        assert!(
            err.contains("only applies to a remote facilitator"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn write_temp_key(name: &str, key: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("paychan-{name}-{}.key", std::process::id()));
        write_owner_only(&p, key);
        p
    }

    fn write_owner_only(p: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn routes_must_be_normalised_and_limits_positive() {
        let with = |extra: &str| parse(&format!("{GOOD}\n{extra}"));
        for bad in ["/v1//x", "/v1/./x", "/v1/%63hat", "v1/x", "/v1/a;b"] {
            let err = format!(
                "{:#}",
                with(&format!("[[free_route]]\npath = \"{bad}\"")).unwrap_err()
            );
            assert!(err.contains("free_route"), "{bad}: {err}");
        }
        let err = format!(
            "{:#}",
            with("[[free_route]]\npath = \"/ok\"\nmethod = \"G T\"").unwrap_err()
        );
        assert!(err.contains("not an HTTP method"), "{err}");
        let c = with("[[free_route]]\npath = \"/v1/models*\"\nmethod = \"GET\"").unwrap();
        assert_eq!(c.free_routes.len(), 1);
        assert!(c.operator_listen.is_some_and(|a| a.ip().is_loopback()));
        let c =
            parse(&GOOD.replace("upstream = ", "operator_listen = \"off\"\nupstream = ")).unwrap();
        assert!(c.operator_listen.is_none());
        for (k, v) in [
            ("max_connections", "0"),
            ("max_in_flight", "0"),
            ("max_body_bytes", "0"),
            ("idle_timeout_secs", "0"),
        ] {
            let err = format!("{:#}", with(&format!("[limits]\n{k} = {v}")).unwrap_err());
            assert!(err.contains(k) || err.contains("positive"), "{k}: {err}");
        }
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8402");
        assert_eq!(c.data_dir, std::path::Path::new("/base/d"));
        assert!(c.upstream.is_none());
        assert_eq!(c.escrow, canonical::ESCROW);
        assert_eq!(c.routes[0].2.extra.withdraw_delay, 900);
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let cases = [
            (
                GOOD.replace("price = 5000", "price = -1"),
                "non-negative integer",
            ),
            (
                GOOD.replace("price = 5000", "price = \"1.5\""),
                "not a non-negative decimal",
            ),
            (
                GOOD.replace("price = 5000", "price = 0"),
                "must be positive",
            ),
            (
                GOOD.replace("upstream = \"demo\"", "upstream = \"ftp://x\""),
                "http(s) URL",
            ),
            (
                GOOD.replace(
                    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                    "0x3c44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                ),
                "checksum",
            ),
            (
                GOOD.replace("path = \"/v1/*\"", "path = \"v1\""),
                "must start with /",
            ),
            (
                GOOD.replace("[chain]", "surprise = 1\n[chain]"),
                "unknown field",
            ),
            (
                GOOD.replace(
                    "data_dir = \"d\"",
                    "data_dir = \"d\"\ndurability = \"sometimes\"",
                ),
                "fsync, flush or none",
            ),
            (
                GOOD.replace(
                    "asset_version = \"2\"",
                    "asset_version = \"2\"\nwithdraw_delay_secs = 60",
                ),
                "between 900",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(want), "expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn key_files_are_read_and_never_echoed() {
        let dir = std::env::temp_dir().join(format!("paychan-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.key");
        write_owner_only(&bad, "0xsupersecretnotakey");
        let err = format!("{:#}", load_key(Some(&bad), "UNUSED_ENV").unwrap_err());
        assert!(
            err.contains("bad.key") && !err.contains("supersecret"),
            "{err}"
        );
        let good = dir.join("good.key");
        let key_text = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6\n";
        // readable by others: refused with the fix, and the key is not echoed
        std::fs::write(&good, key_text).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let err = format!("{:#}", load_key(Some(&good), "UNUSED_ENV").unwrap_err());
        assert!(
            err.contains("too open") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("7c852118"), "{err}");
        write_owner_only(&good, key_text);
        let k = load_key(Some(&good), "UNUSED_ENV").unwrap().unwrap();
        assert_eq!(
            k.address(),
            parse_address("0x90F79bf6EB2c4f870365E785982E1f101E93b906").unwrap()
        );
        // a key that does not match the configured authorizer is refused
        let text = GOOD
            .replace(
                "asset_version = \"2\"",
                &format!(
                    "asset_version = \"2\"\nreceiver_authorizer_key_file = \"{}\"",
                    good.display()
                ),
            )
            .replace(
                "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
                "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
            );
        assert!(
            format!("{:#}", parse(&text).unwrap_err())
                .contains("the receiver authorizer key is for")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_control_plane_is_on_loopback_by_default_and_refuses_to_be_exposed() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.control,
            Some(ControlSettings {
                listen: DEFAULT_CONTROL_LISTEN.parse().unwrap(),
                token_file: "/base/d/control.token".into(),
                tls: None,
            })
        );
        let with = |section: &str| parse(&format!("{GOOD}\n[control]\n{section}\n"));
        assert_eq!(with("listen = \"off\"").unwrap().control, None);
        let c = with("listen = \"[::1]:7000\"\ntoken_file = \"t/control.token\"").unwrap();
        assert_eq!(
            c.control.unwrap(),
            ControlSettings {
                listen: "[::1]:7000".parse().unwrap(),
                token_file: "/base/t/control.token".into(),
                tls: None,
            }
        );
        for open in ["0.0.0.0:9403", "192.168.1.5:9403", "[::]:9403"] {
            let err = format!("{:#}", with(&format!("listen = \"{open}\"")).unwrap_err());
            assert!(err.contains("not a loopback address"), "{err}");
            let c = with(&format!("listen = \"{open}\"\nallow_non_loopback = true")).unwrap();
            assert_eq!(c.control.unwrap().listen, open.parse().unwrap());
        }
        assert!(with("listen = \"localhost\"").is_err());
        assert!(with("tls = true").is_err(), "unknown fields are refused");
        // with TLS any address may be used; the two files go together
        let c =
            with("listen = \"0.0.0.0:9403\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"")
                .unwrap();
        assert_eq!(
            c.control.unwrap().tls,
            Some(("/base/c.pem".into(), "/base/k.pem".into()))
        );
        let err = format!("{:#}", with("tls_cert_file = \"c.pem\"").unwrap_err());
        assert!(err.contains("go together"), "{err}");
        // the paid port's TLS: both files, and they must load
        let top = |line: &str| parse(&GOOD.replace("upstream = ", &format!("{line}\nupstream = ")));
        let err = format!("{:#}", top("tls_key_file = \"k.pem\"").unwrap_err());
        assert!(err.contains("go together"), "{err}");
        let err = format!(
            "{:#}",
            top("tls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"")
                .unwrap_err()
        );
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
