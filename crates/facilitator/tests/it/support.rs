//! Shared setup: a dev chain, a facilitator on it (relayer = the dev relayer account), payers and
//! their payloads built by paychan's payer side, and balance reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, Bytes, U256};
use paychan_chain::{ChainConfig, ChainReader, Relayer, RetryPolicy, TxKey};
use paychan_core::{
    ErrorCode,
    batch::{
        BatchDomain, BatchPayload, BatchRequirements, ChannelConfig, DepositPayload,
        Erc3009Authorization, VoucherFields,
        eip712::Eip712Domain,
        payee::OnchainState,
        payer::{
            DepositTerms, Erc3009Terms, PayerChannel, deposit_payload, sign_erc3009_authorization,
        },
    },
    sig::LocalSigner,
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, VerifyResponse, X402_VERSION},
};
use paychan_devchain::{DevChain, ERC3009_COLLECTOR, ESCROW, Role};
use paychan_facilitator::{Facilitator, FacilitatorConfig};
use paychan_store::MemStore;

pub const PRICE: u128 = 1_000;

/// A dev chain, the offer a server makes on it, and helpers.
pub struct Env {
    pub chain: DevChain,
    pub reader: ChainReader,
    pub domain: BatchDomain,
    pub offer: BatchRequirements,
    pub token: Address,
    pub receiver: Address,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Env {
    pub async fn start() -> Env {
        // RUST_LOG=paychan_facilitator=debug shows what the facilitator does
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let chain = DevChain::start().await.unwrap();
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let token = chain.contracts().token;
        let receiver = chain.account(Role::Receiver).address;
        let offer = chain.offer(PRICE);
        let reader = ChainReader::connect(Self::config_for(chain.rpc_url()))
            .await
            .unwrap();
        Env {
            chain,
            reader,
            domain,
            offer,
            token,
            receiver,
        }
    }

    /// Fast dev-chain settings.
    pub fn config_for(url: &str) -> ChainConfig {
        ChainConfig {
            poll_interval: Duration::from_millis(20),
            rpc_timeout: Duration::from_secs(3),
            confirm_timeout: Some(Duration::from_secs(30)),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(25),
                max_backoff: Duration::from_millis(200),
                attempts: 4,
            },
            ..ChainConfig::dev(url)
        }
    }

    pub fn key(&self, role: Role) -> LocalSigner {
        LocalSigner::from_bytes(&self.chain.account(role).key).unwrap()
    }

    pub fn authorizer(&self) -> LocalSigner {
        self.key(Role::ReceiverAuthorizer)
    }

    /// A facilitator with its own store; `authorizer` is the receiver-authorizer key it holds.
    /// One without a key relays deposits for the offer's receiver (configured, since it has no
    /// key to derive that from).
    pub fn facilitator_with(
        &self,
        store: MemStore,
        authorizer: Option<LocalSigner>,
    ) -> Facilitator<MemStore> {
        let config = FacilitatorConfig {
            deposit_receivers: if authorizer.is_some() {
                Vec::new()
            } else {
                vec![self.receiver]
            },
            ..FacilitatorConfig::default()
        };
        self.facilitator_config(store, authorizer, config)
    }

    /// A facilitator with explicit settings.
    pub fn facilitator_config(
        &self,
        store: MemStore,
        authorizer: Option<LocalSigner>,
        config: FacilitatorConfig,
    ) -> Facilitator<MemStore> {
        let relayer = Relayer::new(
            self.reader.clone(),
            store,
            TxKey::from_secret(&self.chain.account(Role::Relayer).key).unwrap(),
        );
        Facilitator::with_config(self.reader.clone(), relayer, authorizer, config).unwrap()
    }

    /// A facilitator holding the receiver-authorizer key.
    pub fn facilitator(&self) -> Facilitator<MemStore> {
        self.facilitator_with(MemStore::new(), Some(self.authorizer()))
    }

    /// A facilitator without the receiver-authorizer key (servers sign).
    pub fn facilitator_without_key(&self) -> Facilitator<MemStore> {
        self.facilitator_with(MemStore::new(), None)
    }

    pub fn requirements(&self) -> PaymentRequirements {
        self.offer.to_generic()
    }

    pub fn envelope(&self, payload: BatchPayload) -> PaymentPayload<BatchPayload> {
        PaymentPayload {
            x402_version: X402_VERSION,
            resource: None,
            accepted: self.requirements(),
            payload,
            extensions: None,
        }
    }

    /// A payer holding `tokens` and its (not yet funded) channel for the offer.
    pub async fn payer(&self, seed: u64, tokens: u128) -> (LocalSigner, PayerChannel) {
        self.chain
            .unfunded_channel(&self.offer, seed, tokens)
            .await
            .unwrap()
    }

    /// A channel for a config other than the offer's (same payer key signing).
    pub fn channel_for(&self, config: ChannelConfig) -> PayerChannel {
        PayerChannel::from_chain(&self.domain, config, 0, 0)
    }

    /// A `deposit` payload of `amount` paying one request, built by paychan's payer side.
    pub fn deposit(
        &self,
        pc: &mut PayerChannel,
        payer: &LocalSigner,
        amount: u128,
        salt: u64,
    ) -> DepositPayload {
        deposit_payload(
            pc,
            &self.domain,
            &self.offer,
            payer,
            payer,
            DepositTerms {
                amount,
                collector: ERC3009_COLLECTOR,
                salt: U256::from(salt),
                now_secs: now_secs(),
            },
        )
        .unwrap()
    }

    /// An ERC-3009 authorization with explicit validity, signed by `signer` for `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn authorization(
        &self,
        signer: &LocalSigner,
        from: Address,
        to: Address,
        channel_id: B256,
        amount: u128,
        salt: u64,
        valid_after: u64,
        valid_before: u64,
    ) -> Erc3009Authorization {
        let token_domain = Eip712Domain::new("USD Coin", "2", self.chain.chain_id(), self.token);
        let terms = Erc3009Terms {
            from,
            collector: to,
            channel_id,
            amount,
            valid_after: U256::from(valid_after),
            valid_before: U256::from(valid_before),
            salt: U256::from(salt),
        };
        sign_erc3009_authorization(&token_domain, &terms, signer).unwrap()
    }

    /// A voucher for `ceiling` on `pc`, signed by `signer`.
    pub fn voucher_signed_by(
        &self,
        pc: &PayerChannel,
        signer: &LocalSigner,
        ceiling: u128,
    ) -> VoucherFields {
        let sig = signer
            .sign_digest(&self.domain.voucher_digest(pc.channel_id, ceiling))
            .unwrap();
        VoucherFields {
            channel_id: pc.channel_id,
            max_claimable_amount: ceiling,
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        }
    }

    /// Funds `pc` with `amount` on chain (the dev chain's own relayed deposit).
    pub async fn fund(&self, payer: &LocalSigner, pc: &mut PayerChannel, amount: u128) {
        self.chain.deposit(payer, &pc.config, amount).await.unwrap();
        pc.balance += amount;
    }

    pub async fn balance(&self, who: Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    /// (payer, receiver, escrow) token balances.
    pub async fn balances(&self, payer: Address) -> (u128, u128, u128) {
        (
            self.balance(payer).await,
            self.balance(self.receiver).await,
            self.balance(ESCROW).await,
        )
    }

    pub async fn state(&self, id: B256) -> OnchainState {
        self.chain.onchain_state(id).await.unwrap()
    }
}

/// The refusal code of a verify answer (panics on a valid one).
#[track_caller]
pub fn refused(r: &VerifyResponse) -> ErrorCode {
    assert!(!r.is_valid, "expected a refusal, got {r:?}");
    assert!(
        r.invalid_message.as_deref().is_some_and(|m| !m.is_empty()),
        "refusal without a message: {r:?}"
    );
    r.invalid_reason.clone().unwrap()
}

/// The failure code of a settle answer (panics on a success).
#[track_caller]
pub fn failed(r: &SettlementResponse) -> ErrorCode {
    assert!(!r.success, "expected a failure, got {r:?}");
    assert!(
        r.error_message.as_deref().is_some_and(|m| !m.is_empty()),
        "failure without a message: {r:?}"
    );
    r.error_reason.clone().unwrap()
}

/// A successful settle answer's transaction.
#[track_caller]
pub fn tx_of(r: &SettlementResponse) -> B256 {
    assert!(r.success, "settle failed: {r:?}");
    r.transaction.parse().unwrap()
}

/// `extra.channelState` of a settle answer.
#[track_caller]
pub fn channel_state(r: &SettlementResponse) -> paychan_core::batch::ChannelSnapshot {
    serde_json::from_value(r.extra.as_ref().unwrap()["channelState"].clone()).unwrap()
}
