//! Test harness: a dev chain, a funded channel, an engine over a sled store.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use alloy_primitives::B256;
use paychan_chain::{ChainConfig, ChainReader};
use paychan_core::{
    batch::{
        BatchDomain, BatchPayload, BatchRequirements,
        payer::{PayerChannel, channel_config_for},
    },
    sig::LocalSigner,
    x402::{PaymentPayload, X402_VERSION},
};
use paychan_devchain::{DevChain, ESCROW};
use paychan_engine::{Clock, Engine, EngineConfig, NoFacilitator};
use paychan_store::{SledStore, SledStoreConfig};

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

pub type TestEngine = Engine<SledStore, ChainReader, NoFacilitator, TestClock>;

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
        let mut cfg = EngineConfig::new(self.domain);
        f(&mut cfg);
        let store = SledStore::open(SledStoreConfig::new(self.dir.path().join("store"))).unwrap();
        Engine::with_clock(
            cfg,
            store,
            self.reader.clone(),
            NoFacilitator,
            self.clock.clone(),
        )
    }

    /// A payer with a channel funded with `deposit` on chain.
    pub async fn funded_channel(&self, seed: u64, deposit: u128) -> (LocalSigner, PayerChannel) {
        let payer = self.chain.funded_payer(seed, deposit).await.unwrap();
        let config = channel_config_for(
            &self.offer,
            payer.address(),
            payer.address(),
            B256::from(alloy_primitives::U256::from(seed)),
        );
        self.chain.deposit(&payer, &config, deposit).await.unwrap();
        let pc = PayerChannel::from_chain(&self.domain, config, deposit, 0);
        (payer, pc)
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
