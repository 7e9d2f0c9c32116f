//! Shared test setup: a dev chain, fast configurations, signed payloads, polling helpers; `RpcProxy`
//! (from paychan-devchain) plays a dead RPC node.

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
};
use paychan_chain::{ChainConfig, ChainReader, Relayer, RetryPolicy, TxKey};
use paychan_core::{
    batch::{BatchDomain, ChannelConfig, ClaimEntry, ClaimRow, ClaimVoucher},
    sig::LocalSigner,
};
use paychan_devchain::{DevChain, ESCROW, Role};
pub use paychan_devchain::{RpcProxy, eventually};
use paychan_store::{JournalEntry, JournalState, MemStore, Store};

/// A dev chain and what tests need around it.
pub struct Env {
    pub chain: DevChain,
    pub token: Address,
    pub domain: BatchDomain,
}

impl Env {
    pub async fn start() -> Env {
        // RUST_LOG=paychan::chain=debug shows what the adapter does
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let chain = DevChain::start().await.unwrap();
        let token = chain.contracts().token;
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        Env {
            chain,
            token,
            domain,
        }
    }

    /// Fast settings against `url` (the chain itself unless a proxy is in between).
    pub fn config_for(&self, url: &str) -> ChainConfig {
        ChainConfig {
            poll_interval: Duration::from_millis(20),
            bump_after: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(2),
            confirm_timeout: Some(Duration::from_secs(30)),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(25),
                max_backoff: Duration::from_millis(200),
                attempts: 6,
            },
            ..ChainConfig::dev(url)
        }
    }

    pub fn config(&self) -> ChainConfig {
        self.config_for(self.chain.rpc_url())
    }

    pub async fn reader(&self) -> ChainReader {
        ChainReader::connect(self.config()).await.unwrap()
    }

    pub fn key(&self, role: Role) -> LocalSigner {
        LocalSigner::from_bytes(&self.chain.account(role).key).unwrap()
    }

    pub fn tx_key(&self, role: Role) -> TxKey {
        TxKey::from_secret(&self.chain.account(role).key).unwrap()
    }

    pub fn addr(&self, role: Role) -> Address {
        self.chain.account(role).address
    }

    /// A relayer sending from the `Relayer` dev account.
    pub async fn relayer<S: Store>(&self, store: S) -> Relayer<S> {
        Relayer::new(self.reader().await, store, self.tx_key(Role::Relayer))
    }

    /// A channel from `payer` to the dev receiver.
    pub fn channel(&self, payer: Role, salt: u64) -> ChannelConfig {
        ChannelConfig {
            payer: self.addr(payer),
            payer_authorizer: self.addr(payer),
            receiver: self.addr(Role::Receiver),
            receiver_authorizer: self.addr(Role::ReceiverAuthorizer),
            token: self.token,
            withdraw_delay: 900,
            salt: paychan_devchain::salt(salt),
        }
    }

    /// The payer's ERC-3009 `collectorData` for depositing `amount` into `config`.
    pub async fn deposit_data(
        &self,
        payer: Role,
        config: &ChannelConfig,
        amount: u128,
        salt: u64,
    ) -> Bytes {
        self.chain
            .deposit_data(&self.key(payer), config, amount, U256::from(salt), 3600)
            .await
            .unwrap()
    }

    /// Claim rows (vouchers signed by each channel's payer up to `total`) and the receiver
    /// authorizer's batch signature.
    pub fn claim_rows(&self, claims: &[(Role, ChannelConfig, u128)]) -> (Vec<ClaimRow>, Bytes) {
        let mut rows = Vec::new();
        let mut entries = Vec::new();
        for (payer, config, total) in claims {
            let id = self.domain.channel_id(config);
            let sig = self
                .key(*payer)
                .sign_digest(&self.domain.voucher_digest(id, *total))
                .unwrap();
            rows.push(ClaimRow {
                voucher: ClaimVoucher {
                    channel: *config,
                    max_claimable_amount: *total,
                },
                signature: sig.to_bytes().to_vec().into(),
                total_claimed: *total,
            });
            entries.push(ClaimEntry {
                channel_id: id,
                max_claimable_amount: *total,
                total_claimed: *total,
            });
        }
        let batch = self
            .key(Role::ReceiverAuthorizer)
            .sign_digest(&self.domain.claim_batch_digest(&entries))
            .unwrap();
        (rows, batch.to_bytes().to_vec().into())
    }

    /// The receiver authorizer's `Refund` signature.
    pub fn refund_sig(&self, config: &ChannelConfig, nonce: U256, amount: u128) -> Bytes {
        let id = self.domain.channel_id(config);
        self.key(Role::ReceiverAuthorizer)
            .sign_digest(&self.domain.refund_digest(id, nonce, amount))
            .unwrap()
            .to_bytes()
            .to_vec()
            .into()
    }

    pub async fn balance(&self, who: Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    /// Transactions sent so far by `who` (its mined nonce).
    pub async fn nonce(&self, who: Address) -> u64 {
        self.chain
            .provider()
            .get_transaction_count(who)
            .await
            .unwrap()
    }
}

/// A fresh in-memory store.
pub fn mem() -> MemStore {
    MemStore::new()
}

/// The journal entry `id` once it is `Sent` with at least `hashes` hashes.
pub async fn sent_with<S: Store>(store: &S, id: u64, hashes: usize) -> (B256, u64, Vec<B256>) {
    eventually("a sent journal entry", 20, || async {
        match store.journal_entry(id).await.unwrap() {
            Some(JournalEntry {
                state:
                    JournalState::Sent {
                        tx_hash,
                        nonce,
                        all_hashes,
                    },
                ..
            }) if all_hashes.len() >= hashes => Some((tx_hash, nonce, all_hashes)),
            _ => None,
        }
    })
    .await
}

pub fn confirmed(e: &JournalEntry) -> (B256, u64, u64) {
    match e.state {
        JournalState::Confirmed {
            tx_hash,
            block,
            gas_used,
        } => (tx_hash, block, gas_used),
        ref other => panic!("journal entry {} is not confirmed: {other:?}", e.id),
    }
}
