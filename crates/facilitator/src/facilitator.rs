//! [`Facilitator`]: the batch-settlement facilitator for one chain, its configuration,
//! `/supported`, the checks every request goes through, and the core's
//! [`PaymentFacilitator`] port.

use std::{sync::Arc, time::Duration};

use alloy::primitives::{Address, B256, Bytes};
use paychan_chain::{ChainReader, Relayer};
use paychan_core::{
    ErrorCode, Network, Rejection,
    batch::{BatchDomain, BatchPayload, ChannelSnapshot, SCHEME, payee::OnchainState},
    ports::{PaymentFacilitator, SourceError},
    redact::redact_urls,
    sig::{Backend, LocalSigner},
    x402::{
        JsonObject, PaymentPayload, PaymentRequirements, SettlementResponse, SupportedKind,
        SupportedResponse, VerifyResponse, X402_VERSION,
    },
};
use paychan_store::Store;

use crate::{Error, Result, records::Key};

/// How many settle locks serialize settles of the same action (by key hash).
const LOCK_SHARDS: usize = 64;
/// Longest `errorMessage` / `invalidMessage`, characters.
pub(crate) const MAX_MESSAGE: usize = 500;

/// Facilitator settings.
#[derive(Debug, Clone)]
pub struct FacilitatorConfig {
    /// An ERC-3009 authorization must stay valid at least this long after verification
    /// (`validBefore ≥ now + margin`), so that the deposit can still be mined (default 6 s, as
    /// the reference facilitator).
    pub valid_before_margin: Duration,
    /// Signature backend for ECDSA checks.
    pub backend: Backend,
    /// The receivers whose deposits are relayed (the relayer pays the gas of each). Empty (the
    /// default): only channels whose `receiverAuthorizer` is the key this facilitator holds, so a
    /// facilitator without a key and without a list relays no deposit at all. A non-empty list
    /// replaces that default.
    pub deposit_receivers: Vec<Address>,
    /// The smallest deposit relayed, in the token's atomic units (default
    /// [`DEFAULT_MIN_DEPOSIT`]): a deposit costs the relayer a transaction whatever its size, so
    /// dust deposits would let anyone spend its gas for almost nothing.
    pub min_deposit: u128,
}

/// The default [`FacilitatorConfig::min_deposit`]: 1,000 atomic units (0.001 of a six-decimal
/// stablecoin).
pub const DEFAULT_MIN_DEPOSIT: u128 = 1_000;

impl Default for FacilitatorConfig {
    fn default() -> Self {
        Self {
            valid_before_margin: Duration::from_secs(6),
            backend: Backend::default(),
            deposit_receivers: Vec::new(),
            min_deposit: DEFAULT_MIN_DEPOSIT,
        }
    }
}

pub(crate) struct Inner<S: Store> {
    pub(crate) reader: ChainReader,
    pub(crate) relayer: Relayer<S>,
    pub(crate) authorizer: Option<LocalSigner>,
    pub(crate) network: Network,
    pub(crate) domain: BatchDomain,
    pub(crate) config: FacilitatorConfig,
    locks: Vec<tokio::sync::Mutex<()>>,
}

/// An x402 `batch-settlement` (EVM) facilitator for one chain.
///
/// * [`verify`](Self::verify) checks `deposit`, `voucher` and `refund` payloads against the
///   spec's verification rules and the chain, and answers with the channel snapshot.
/// * [`settle`](Self::settle) executes `deposit`, `claim`, `settle` and `refund` payloads on
///   chain through the [`Relayer`] (journaled, at most once across crashes), signing missing
///   `ClaimBatch` / `Refund` authorizations when it holds the receiver-authorizer key.
/// * [`supported`](Self::supported) describes it.
///
/// Neither `verify` nor `settle` fails: every problem is an answer with the scheme's error code
/// (`isValid: false` / `success: false`) and a message. Cheap to clone. It reads wall-clock time
/// (authorization validity windows) from its relayer's clock ([`Relayer::with_clock`]).
pub struct Facilitator<S: Store> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Facilitator<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Store> std::fmt::Debug for Facilitator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facilitator")
            .field("network", &self.inner.network)
            .field("relayer", &self.inner.relayer.address())
            .field(
                "receiver_authorizer",
                &self.inner.authorizer.as_ref().map(LocalSigner::address),
            )
            .finish_non_exhaustive()
    }
}

impl<S: Store> Facilitator<S> {
    /// A facilitator reading through `reader`, sending through `relayer` (which must be on the
    /// same chain, escrow and collector), and signing receiver authorizations with `authorizer`
    /// when given.
    pub fn new(
        reader: ChainReader,
        relayer: Relayer<S>,
        authorizer: Option<LocalSigner>,
    ) -> Result<Self> {
        Self::with_config(reader, relayer, authorizer, FacilitatorConfig::default())
    }

    /// [`new`](Self::new) with explicit settings.
    pub fn with_config(
        reader: ChainReader,
        relayer: Relayer<S>,
        authorizer: Option<LocalSigner>,
        config: FacilitatorConfig,
    ) -> Result<Self> {
        let (a, b) = (reader.config(), relayer.reader().config());
        if a.chain_id != b.chain_id
            || a.escrow != b.escrow
            || a.erc3009_collector != b.erc3009_collector
        {
            return Err(Error::Config(format!(
                "the reader (chain {}, escrow {}, collector {}) and the relayer (chain {}, escrow {}, collector {}) disagree",
                a.chain_id,
                a.escrow,
                a.erc3009_collector,
                b.chain_id,
                b.escrow,
                b.erc3009_collector
            )));
        }
        let network = Network::eip155(reader.chain_id());
        let domain = *reader.domain();
        tracing::info!(
            target: crate::TARGET,
            %network,
            relayer = %relayer.address(),
            receiver_authorizer = ?authorizer.as_ref().map(LocalSigner::address),
            "facilitator ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                reader,
                relayer,
                authorizer,
                network,
                domain,
                config,
                locks: (0..LOCK_SHARDS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        })
    }

    /// The CAIP-2 network served.
    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    /// The address that sends transactions.
    pub fn relayer_address(&self) -> Address {
        self.inner.relayer.address()
    }

    /// The receiver authorizer whose key this facilitator holds, if any.
    pub fn receiver_authorizer(&self) -> Option<Address> {
        self.inner.authorizer.as_ref().map(LocalSigner::address)
    }

    /// The relayer.
    pub fn relayer(&self) -> &Relayer<S> {
        &self.inner.relayer
    }

    /// `GET /supported`: one kind (x402 v2, `batch-settlement`, this network; with
    /// `extra.receiverAuthorizer` when the key is held), no extensions, and the relayer as the
    /// `eip155:*` signer.
    pub fn supported(&self) -> SupportedResponse {
        let extra = self.inner.authorizer.as_ref().map(|a| {
            let mut m = JsonObject::new();
            m.insert(
                "receiverAuthorizer".into(),
                a.address().to_checksum(None).into(),
            );
            m
        });
        SupportedResponse {
            kinds: vec![SupportedKind {
                x402_version: X402_VERSION,
                scheme: SCHEME.to_owned(),
                network: self.inner.network.clone(),
                extra,
            }],
            extensions: Vec::new(),
            signers: [(
                "eip155:*".to_owned(),
                vec![self.inner.relayer.address().to_checksum(None)],
            )]
            .into_iter()
            .collect(),
        }
    }

    /// The checks before any payload: version 2, scheme `batch-settlement` on both sides, the
    /// payload's network equal to the requirements', and that network served here.
    pub(crate) fn check_envelope(
        &self,
        version: u32,
        accepted: &PaymentRequirements,
        req: &PaymentRequirements,
    ) -> Result<(), Rejection> {
        if version != X402_VERSION {
            return Err(Rejection::new(
                ErrorCode::InvalidX402Version,
                format!("x402Version {version} is not supported (only {X402_VERSION})"),
            ));
        }
        if accepted.scheme != SCHEME || req.scheme != SCHEME {
            return Err(Rejection::new(
                ErrorCode::Scheme,
                format!(
                    "scheme {:?} / {:?} is not {SCHEME}",
                    accepted.scheme, req.scheme
                ),
            ));
        }
        if accepted.network != req.network {
            return Err(Rejection::new(
                ErrorCode::NetworkMismatch,
                format!(
                    "payload network {} does not match the requirements' {}",
                    accepted.network, req.network
                ),
            ));
        }
        if req.network != self.inner.network {
            return Err(Rejection::new(
                ErrorCode::InvalidNetwork,
                format!(
                    "this facilitator serves {}, not {}",
                    self.inner.network, req.network
                ),
            ));
        }
        Ok(())
    }

    /// Serializes settles of one action (deposit nonce, refund nonce, ...).
    pub(crate) async fn lock(&self, key: &Key) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.locks[key.shard(self.inner.locks.len())]
            .lock()
            .await
    }

    /// Signs `digest` with the receiver-authorizer key, which must be `expected`'s.
    pub(crate) fn authorize(&self, expected: Address, digest: &B256) -> Result<Bytes, Rejection> {
        let Some(a) = &self.inner.authorizer else {
            return Err(Rejection::new(
                ErrorCode::AuthorizerNotConfigured,
                "the payload lacks the receiver authorizer's signature and this facilitator holds no receiver-authorizer key",
            ));
        };
        if a.address() != expected {
            return Err(Rejection::new(
                ErrorCode::AuthorizerAddressMismatch,
                format!(
                    "the channel's receiver authorizer is {expected}; this facilitator signs for {}",
                    a.address()
                ),
            ));
        }
        a.sign_digest(digest)
            .map(|s| Bytes::copy_from_slice(&s.to_bytes()))
            .map_err(|e| Rejection::new(ErrorCode::AuthorizerNotConfigured, e.to_string()))
    }
}

/// A failed chain read as a client sees it: the code and a generic message. The details (which
/// may quote the RPC URL, and with it an API key) go to the log only, with URLs cut out.
pub(crate) fn chain_read_failed(
    code: ErrorCode,
    what: &str,
    e: &paychan_chain::Error,
) -> Rejection {
    tracing::warn!(
        target: crate::TARGET,
        code = %code,
        what,
        error = %redact_urls(&e.to_string()),
        "chain read failed"
    );
    Rejection::new(
        code,
        format!("the facilitator could not read {what} from the chain; retry later"),
    )
}

/// A channel snapshot (`extra` of `/verify`, `extra.channelState` of `/settle`).
pub(crate) fn snapshot(channel_id: B256, s: &OnchainState) -> ChannelSnapshot {
    ChannelSnapshot {
        channel_id,
        balance: s.balance,
        total_claimed: s.total_claimed,
        withdraw_requested_at: s.withdraw_requested_at,
        refund_nonce: s.refund_nonce,
        charged_cumulative_amount: None,
    }
}

pub(crate) fn to_object<T: serde::Serialize>(v: &T) -> Option<JsonObject> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// At most [`MAX_MESSAGE`] characters.
pub(crate) fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_MESSAGE) {
        s.truncate(i);
    }
    s
}

pub(crate) fn invalid(r: Rejection, payer: Option<Address>) -> VerifyResponse {
    VerifyResponse {
        is_valid: false,
        invalid_reason: Some(r.code),
        invalid_message: Some(truncate(r.message.into_owned())),
        payer: payer.map(|p| p.to_checksum(None)),
        extra: None,
    }
}

/// The in-process facilitator of paychan's own server: never fails, every problem is an answer.
impl<S: Store> PaymentFacilitator for Facilitator<S> {
    async fn verify(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<VerifyResponse, SourceError> {
        Ok(Facilitator::verify(self, payload, requirements).await)
    }

    async fn settle(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> Result<SettlementResponse, SourceError> {
        Ok(Facilitator::settle(self, payload, requirements).await)
    }
}
