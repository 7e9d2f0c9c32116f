//! Test harness: a dev chain, a funded channel, an engine over a sled store.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use alloy_primitives::B256;
use paychan_chain::{ChainConfig, ChainReader, TxKey};
use paychan_core::ports::{Clock, PaymentFacilitator, SourceError};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements,
        payer::{DepositTerms, PayerChannel, deposit_payload},
    },
    sig::LocalSigner,
    x402::{PaymentPayload, PaymentRequirements, SettlementResponse, VerifyResponse, X402_VERSION},
};
use paychan_devchain::{DevChain, ERC3009_COLLECTOR, ESCROW, Role};
use paychan_engine::{Engine, EngineConfig, NoFacilitator};
use paychan_store::JournalState;
use paychan_store::{MemStore, SledStore, SledStoreConfig};

/// A clock the test moves.
#[derive(Clone, Default)]
pub struct TestClock(pub Arc<AtomicU64>);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

pub type TestEngine<F = NoFacilitator> = Engine<SledStore, ChainReader, F, TestClock>;

/// A facilitator that relays deposits and refunds on the dev chain for real (through
/// paychan's relayer, with the dev relayer account) and counts every call. Its verify accepts
/// any deposit and leaves the checks to the engine: what is tested is what the engine lets
/// through to a facilitator.
#[derive(Clone)]
pub struct RelayingFacilitator {
    relayer: paychan_chain::Relayer<MemStore>,
    pub verifies: Arc<AtomicU64>,
    pub settles: Arc<AtomicU64>,
}

impl RelayingFacilitator {
    pub fn verifies(&self) -> u64 {
        self.verifies.load(Ordering::SeqCst)
    }
    pub fn settles(&self) -> u64 {
        self.settles.load(Ordering::SeqCst)
    }
}

impl PaymentFacilitator for RelayingFacilitator {
    async fn verify(
        &self,
        _: &PaymentPayload<BatchPayload>,
        _: &PaymentRequirements,
    ) -> Result<VerifyResponse, SourceError> {
        self.verifies.fetch_add(1, Ordering::SeqCst);
        Ok(VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: None,
            extra: None,
        })
    }

    async fn settle(
        &self,
        p: &PaymentPayload<BatchPayload>,
        _: &PaymentRequirements,
    ) -> Result<SettlementResponse, SourceError> {
        self.settles.fetch_add(1, Ordering::SeqCst);
        let (entry, amount) = match &p.payload {
            BatchPayload::Deposit(d) => (self.relayer.deposit_payload(d).await, d.deposit.amount),
            BatchPayload::Refund(r) => (
                self.relayer.refund_payload(r).await,
                r.amount.unwrap_or_default(),
            ),
            other => {
                return Err(SourceError::new(
                    "settle",
                    format!("{} not relayed here", other.kind()),
                ));
            }
        };
        let entry = entry.map_err(|e| SourceError::new("settle", e))?;
        let tx = match entry.state {
            JournalState::Confirmed { tx_hash, .. } => tx_hash,
            other => {
                return Err(SourceError::new(
                    "settle",
                    format!("not confirmed: {other:?}"),
                ));
            }
        };
        Ok(SettlementResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: None,
            transaction: tx.to_string(),
            network: p.accepted.network.clone(),
            amount: Some(amount.to_string()),
            extra: None,
        })
    }
}

pub struct Harness {
    pub chain: Arc<DevChain>,
    pub domain: BatchDomain,
    pub offer: BatchRequirements,
    pub dir: tempfile::TempDir,
    pub clock: TestClock,
    pub reader: ChainReader,
}

pub const PRICE: u128 = 1_000;

impl Harness {
    pub async fn new() -> Self {
        let chain = Arc::new(DevChain::start().await.unwrap());
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        let offer = chain.offer(PRICE);
        let clock = TestClock(Arc::new(AtomicU64::new(1_000_000)));
        let reader = ChainReader::connect(ChainConfig::new(chain.rpc_url(), chain.chain_id()))
            .await
            .unwrap();
        Self {
            chain,
            domain,
            offer,
            dir: tempfile::tempdir().unwrap(),
            clock,
            reader,
        }
    }

    pub fn engine(&self) -> TestEngine {
        self.engine_with(|_| {})
    }

    pub fn engine_with(&self, f: impl FnOnce(&mut EngineConfig)) -> TestEngine {
        self.engine_on(NoFacilitator, f)
    }

    pub fn engine_on<F: PaymentFacilitator>(
        &self,
        facilitator: F,
        f: impl FnOnce(&mut EngineConfig),
    ) -> TestEngine<F> {
        let mut cfg = EngineConfig::new(self.domain);
        f(&mut cfg);
        Engine::with_clock(
            cfg,
            self.open_store(),
            self.reader.clone(),
            facilitator,
            self.clock.clone(),
        )
    }

    /// The engine's store, opened on its own (no engine may hold it).
    pub fn open_store(&self) -> SledStore {
        SledStore::open(SledStoreConfig::new(self.dir.path().join("store"))).unwrap()
    }

    /// A facilitator relaying on this chain.
    pub async fn relaying_facilitator(&self) -> RelayingFacilitator {
        let reader = ChainReader::connect(ChainConfig::dev(self.chain.rpc_url()))
            .await
            .unwrap();
        let key = TxKey::from_secret(&self.chain.account(Role::Relayer).key).unwrap();
        RelayingFacilitator {
            relayer: paychan_chain::Relayer::new(reader, MemStore::new(), key),
            verifies: Arc::default(),
            settles: Arc::default(),
        }
    }

    /// The receiver authorizer's key (it signs refunds).
    pub fn receiver_authorizer(&self) -> LocalSigner {
        LocalSigner::from_bytes(&self.chain.account(Role::ReceiverAuthorizer).key).unwrap()
    }

    /// A payer holding `tokens` and a channel it has not deposited into.
    pub async fn unfunded_channel(&self, seed: u64, tokens: u128) -> (LocalSigner, PayerChannel) {
        self.chain
            .unfunded_channel(&self.offer, seed, tokens)
            .await
            .unwrap()
    }

    /// A `deposit` payload of `amount` paying one request.
    pub async fn deposit(
        &self,
        pc: &mut PayerChannel,
        payer: &LocalSigner,
        amount: u128,
        salt: u64,
    ) -> PaymentPayload<BatchPayload> {
        let d = deposit_payload(
            pc,
            &self.domain,
            &self.offer,
            payer,
            payer,
            DepositTerms {
                amount,
                collector: ERC3009_COLLECTOR,
                salt: alloy_primitives::U256::from(salt),
                now_secs: self.chain.block_timestamp().await.unwrap(),
            },
        )
        .unwrap();
        self.envelope(BatchPayload::Deposit(d))
    }

    /// A `refund` payload (everything refundable when `amount` is `None`).
    pub fn refund(
        &self,
        pc: &mut PayerChannel,
        payer: &LocalSigner,
        amount: Option<u128>,
    ) -> PaymentPayload<BatchPayload> {
        self.envelope(BatchPayload::Refund(
            pc.refund_payload(&self.domain, payer, amount).unwrap(),
        ))
    }

    /// A channel's on-chain balance.
    pub async fn balance(&self, id: B256) -> u128 {
        self.chain.onchain_state(id).await.unwrap().balance
    }

    /// A token balance.
    pub async fn tokens(&self, who: alloy_primitives::Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    /// A payer with a channel funded with `deposit` on chain.
    pub async fn funded_channel(&self, seed: u64, deposit: u128) -> (LocalSigner, PayerChannel) {
        self.chain
            .funded_channel(&self.offer, seed, deposit)
            .await
            .unwrap()
    }

    pub fn voucher(
        &self,
        pc: &mut PayerChannel,
        payer: &LocalSigner,
    ) -> PaymentPayload<BatchPayload> {
        let v = pc
            .voucher_payload(&self.domain, payer, self.offer.amount)
            .unwrap();
        self.envelope(BatchPayload::Voucher(v))
    }

    pub fn envelope(&self, payload: BatchPayload) -> PaymentPayload<BatchPayload> {
        PaymentPayload {
            x402_version: X402_VERSION,
            resource: None,
            accepted: self.offer.to_generic(),
            payload,
            extensions: None,
        }
    }
}
