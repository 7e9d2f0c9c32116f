//! A dev chain for paychan tests and `paychan dev`.
//!
//! [`DevChain::start`] runs anvil (the native binary from the pinned npm package, or
//! `$PAYCHAN_ANVIL`), deploys paychan's contracts and places them at the canonical batch-settlement
//! addresses (the reference SDK hard-codes them), puts a Multicall3-compatible reader at its
//! canonical address, deploys the dev stablecoin and mints it to the deterministic dev accounts.
//! Dropping the [`DevChain`] kills anvil; a watchdog kills it too if the test process dies without
//! unwinding (SIGKILL, abort), so no anvil outlives its test.
//!
//! | module | what |
//! | --- | --- |
//! | [`process`] | finding, starting and reaping anvil |
//! | [`accounts`] | the deterministic dev accounts and their roles |
//! | [`rpc_proxy`] | a proxy in front of the RPC port that can play a dead node, for outage tests |

pub mod accounts;
pub mod process;
pub mod rpc_proxy;

use std::time::Duration;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256, Bytes, U256, address},
    providers::{DynProvider, Provider, ProviderBuilder, ext::AnvilApi},
};
use paychan_bindings::{
    BatchSettlement, DevStablecoin, ERC3009DepositCollector, Multicall3,
    convert::erc3009_collector_data,
};
use paychan_core::{
    Network,
    batch::{
        BatchDomain, BatchExtra, BatchPayload, BatchRequirements, ChannelConfig,
        eip712::Eip712Domain,
        payee::OnchainState,
        payer::{Erc3009Terms, PayerChannel, channel_config_for, sign_erc3009_authorization},
    },
    sig::LocalSigner,
    x402::{PaymentPayload, X402_VERSION},
};

pub use accounts::{DevAccount, Role};
pub use process::{AnvilProcess, find_anvil};
pub use rpc_proxy::{RpcProxy, eventually};

/// Canonical batch-settlement escrow address.
pub const ESCROW: Address = address!("4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
/// Canonical ERC-3009 deposit collector address.
pub const ERC3009_COLLECTOR: Address = address!("4020806089470a89826cB9fB1f4059150b550004");
/// Canonical Multicall3 address.
pub const MULTICALL3: Address = address!("cA11bde05977b3631167028862bE2a173976CA11");

/// Errors starting or driving the dev chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// anvil could not be found or started.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// An RPC call failed.
    #[error("dev chain RPC failed: {0}")]
    Rpc(#[from] alloy::transports::TransportError),
    /// A contract call failed.
    #[error("dev chain contract call failed: {0}")]
    Contract(#[from] alloy::contract::Error),
    /// A transaction did not confirm.
    #[error("dev chain transaction failed: {0}")]
    Pending(#[from] alloy::providers::PendingTransactionError),
    /// Deployment produced no contract.
    #[error("dev chain deployment failed: {0}")]
    Deploy(String),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start a dev chain.
#[derive(Debug, Clone)]
pub struct DevChainConfig {
    /// Chain id (default 31337, anvil's).
    pub chain_id: u64,
    /// Dev token EIP-712 name (default `USD Coin`, like USDC).
    pub token_name: String,
    /// Dev token symbol (default `USDC`).
    pub token_symbol: String,
    /// Dev token EIP-712 version (default `2`, like USDC).
    pub token_version: String,
    /// Tokens minted to every dev account, atomic units (default 1,000,000 tokens of 6 decimals).
    pub mint_per_account: u128,
    /// Port to listen on; 0 picks a free one (default).
    pub port: u16,
    /// Seconds between blocks; `None` mines a block per transaction (default).
    pub block_time: Option<u64>,
}

impl Default for DevChainConfig {
    fn default() -> Self {
        Self {
            chain_id: 31337,
            token_name: "USD Coin".into(),
            token_symbol: "USDC".into(),
            token_version: "2".into(),
            mint_per_account: 1_000_000 * 1_000_000,
            port: 0,
            block_time: None,
        }
    }
}

/// Addresses of the deployed contracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevContracts {
    /// The batch-settlement escrow.
    pub escrow: Address,
    /// The ERC-3009 deposit collector.
    pub erc3009_collector: Address,
    /// The Multicall3 reader.
    pub multicall3: Address,
    /// The dev stablecoin.
    pub token: Address,
}

/// A running dev chain with paychan's contracts deployed.
pub struct DevChain {
    process: AnvilProcess,
    config: DevChainConfig,
    contracts: DevContracts,
    provider: DynProvider,
}

impl std::fmt::Debug for DevChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevChain")
            .field("rpc_url", &self.process.rpc_url())
            .field("chain_id", &self.config.chain_id)
            .field("contracts", &self.contracts)
            .finish_non_exhaustive()
    }
}

impl DevChain {
    /// Starts a dev chain with the default configuration.
    pub async fn start() -> Result<Self> {
        Self::start_with(DevChainConfig::default()).await
    }

    /// Starts a dev chain.
    pub async fn start_with(config: DevChainConfig) -> Result<Self> {
        let mut args = vec![
            "--chain-id".to_owned(),
            config.chain_id.to_string(),
            "--accounts".to_owned(),
            accounts::COUNT.to_string(),
            "--hardfork".to_owned(),
            "prague".to_owned(),
        ];
        if let Some(bt) = config.block_time {
            args.extend(["--block-time".to_owned(), bt.to_string()]);
        }
        let process = AnvilProcess::spawn(&find_anvil()?, config.port, &args).await?;
        let url = process
            .rpc_url()
            .parse()
            .map_err(|e| Error::Deploy(format!("rpc url: {e}")))?;
        let mut wallet = EthereumWallet::from(accounts::signer(Role::Deployer));
        for a in accounts::all() {
            wallet.register_signer(a.signer());
        }
        let provider = ProviderBuilder::new()
            .wallet(wallet)
            .connect_http(url)
            .erased();
        let contracts = deploy(&provider, &config).await?;
        Ok(Self {
            process,
            config,
            contracts,
            provider,
        })
    }

    /// The JSON-RPC endpoint.
    pub fn rpc_url(&self) -> &str {
        self.process.rpc_url()
    }

    /// anvil's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.config.chain_id
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &DevChainConfig {
        &self.config
    }

    /// The deployed contracts.
    pub fn contracts(&self) -> &DevContracts {
        &self.contracts
    }

    /// A provider that signs with every dev account (pick the sender with `.from(..)`; the
    /// deployer by default).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// A provider that signs only as `role`.
    pub fn provider_as(&self, role: Role) -> Result<DynProvider> {
        let url = self
            .rpc_url()
            .parse()
            .map_err(|e| Error::Deploy(format!("rpc url: {e}")))?;
        Ok(ProviderBuilder::new()
            .wallet(accounts::signer(role))
            .connect_http(url)
            .erased())
    }

    /// The dev account playing `role`.
    pub fn account(&self, role: Role) -> DevAccount {
        accounts::account(role)
    }

    /// Token balance of `who`.
    pub async fn token_balance(&self, who: Address) -> Result<U256> {
        Ok(DevStablecoin::new(self.contracts.token, &self.provider)
            .balanceOf(who)
            .call()
            .await?)
    }

    /// Transactions mined from `who` (its account nonce).
    pub async fn nonce(&self, who: Address) -> Result<u64> {
        Ok(self.provider.get_transaction_count(who).await?)
    }

    /// Mints dev tokens to `to`.
    pub async fn mint(&self, to: Address, amount: u128) -> Result<()> {
        let token = DevStablecoin::new(self.contracts.token, &self.provider);
        token
            .mint(to, U256::from(amount))
            .send()
            .await?
            .get_receipt()
            .await?;
        Ok(())
    }

    /// Moves the chain's clock forward and mines a block.
    pub async fn increase_time(&self, seconds: u64) -> Result<()> {
        self.provider.anvil_increase_time(seconds).await?;
        self.provider.anvil_mine(Some(1), None).await?;
        Ok(())
    }

    /// Timestamp of the latest block.
    pub async fn block_timestamp(&self) -> Result<u64> {
        let b = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await?
            .ok_or_else(|| Error::Deploy("no latest block".into()))?;
        Ok(b.header.timestamp)
    }

    /// The anvil process (to stop it, or restart it for outage tests).
    pub fn process_mut(&mut self) -> &mut AnvilProcess {
        &mut self.process
    }
}

impl DevChain {
    /// A payer key derived from `seed` (not one of the funded dev accounts: it holds no ETH,
    /// which deposits relayed through the collector do not need), minted `tokens`.
    pub async fn funded_payer(&self, seed: u64, tokens: u128) -> Result<LocalSigner> {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(b"paychan!");
        secret[24..].copy_from_slice(&seed.to_be_bytes());
        let signer = LocalSigner::from_bytes(&B256::from(secret))
            .map_err(|e| Error::Deploy(format!("payer key: {e}")))?;
        if tokens > 0 {
            self.mint(signer.address(), tokens).await?;
        }
        Ok(signer)
    }

    /// Deposits `amount` into the channel `config` with the payer's ERC-3009 authorization,
    /// relayed by the relayer account (the payer needs no ETH). Returns the transaction hash.
    pub async fn deposit(
        &self,
        payer: &LocalSigner,
        config: &ChannelConfig,
        amount: u128,
    ) -> Result<B256> {
        let domain = BatchDomain::new(self.chain_id(), ESCROW);
        let channel_id = domain.channel_id(config);
        let valid_before = U256::from(self.block_timestamp().await? + 3600);
        let salt = U256::from_be_bytes(
            alloy::primitives::keccak256(
                [
                    channel_id.as_slice(),
                    &amount.to_be_bytes(),
                    &valid_before.to_be_bytes::<32>(),
                ]
                .concat(),
            )
            .0,
        );
        let data = self.collector_data(
            payer,
            payer.address(),
            channel_id,
            amount,
            salt,
            valid_before,
        )?;
        let escrow = BatchSettlement::new(ESCROW, self.provider_as(Role::Relayer)?);
        let receipt = escrow
            .deposit(config.into(), amount, ERC3009_COLLECTOR, data)
            .send()
            .await?
            .get_receipt()
            .await?;
        if !receipt.status() {
            return Err(Error::Deploy(format!(
                "deposit {} reverted",
                receipt.transaction_hash
            )));
        }
        Ok(receipt.transaction_hash)
    }

    /// The ERC-3009 `collectorData` of a deposit of `amount` into the channel `channel_id`,
    /// authorized for `from` by `signer` under the dev token's domain.
    fn collector_data(
        &self,
        signer: &LocalSigner,
        from: Address,
        channel_id: B256,
        amount: u128,
        salt: U256,
        valid_before: U256,
    ) -> Result<Bytes> {
        let token_domain = Eip712Domain::new(
            &self.config.token_name,
            &self.config.token_version,
            self.chain_id(),
            self.contracts.token,
        );
        let terms = Erc3009Terms {
            from,
            collector: ERC3009_COLLECTOR,
            channel_id,
            amount,
            valid_after: U256::ZERO,
            valid_before,
            salt,
        };
        let a = sign_erc3009_authorization(&token_domain, &terms, signer)
            .map_err(|e| Error::Deploy(format!("sign: {e}")))?;
        Ok(erc3009_collector_data(
            a.valid_after,
            a.valid_before,
            a.salt,
            &a.signature,
        ))
    }

    /// The payer's ERC-3009 `collectorData` for depositing `amount` into `config` through the
    /// collector, under the authorization salt `salt`, valid for `valid_for_secs` from the
    /// chain's current time: what a relayer passes to the escrow's `deposit`.
    pub async fn deposit_data(
        &self,
        payer: &LocalSigner,
        config: &ChannelConfig,
        amount: u128,
        salt: U256,
        valid_for_secs: u64,
    ) -> Result<Bytes> {
        let channel_id = BatchDomain::new(self.chain_id(), ESCROW).channel_id(config);
        let valid_before = U256::from(self.block_timestamp().await? + valid_for_secs);
        self.collector_data(payer, config.payer, channel_id, amount, salt, valid_before)
    }

    /// A payer (the key [`funded_payer`](Self::funded_payer) derives from `seed`, minted
    /// `tokens`) and its channel for `offer` with salt [`salt`]`(seed)`, not deposited into.
    pub async fn unfunded_channel(
        &self,
        offer: &BatchRequirements,
        seed: u64,
        tokens: u128,
    ) -> Result<(LocalSigner, PayerChannel)> {
        let payer = self.funded_payer(seed, tokens).await?;
        let config = channel_config_for(offer, payer.address(), payer.address(), salt(seed));
        let domain = BatchDomain::new(self.chain_id(), ESCROW);
        Ok((payer, PayerChannel::from_chain(&domain, config, 0, 0)))
    }

    /// [`unfunded_channel`](Self::unfunded_channel) with `deposit` minted and deposited on chain
    /// (relayed, see [`deposit`](Self::deposit)).
    pub async fn funded_channel(
        &self,
        offer: &BatchRequirements,
        seed: u64,
        deposit: u128,
    ) -> Result<(LocalSigner, PayerChannel)> {
        let payer = self.funded_payer(seed, deposit).await?;
        let config = channel_config_for(offer, payer.address(), payer.address(), salt(seed));
        self.deposit(&payer, &config, deposit).await?;
        let domain = BatchDomain::new(self.chain_id(), ESCROW);
        Ok((payer, PayerChannel::from_chain(&domain, config, deposit, 0)))
    }

    /// The batch-settlement offer of a server on this chain paid in the dev token: `payTo` the
    /// receiver account, the receiver-authorizer account, a 900 s withdraw delay, offers held
    /// 300 s, and `price` the maximum per request.
    pub fn offer(&self, price: u128) -> BatchRequirements {
        BatchRequirements {
            network: Network::eip155(self.chain_id()),
            chain_id: self.chain_id(),
            amount: price,
            asset: self.contracts.token,
            pay_to: self.account(Role::Receiver).address,
            max_timeout_seconds: 300,
            extra: BatchExtra {
                receiver_authorizer: self.account(Role::ReceiverAuthorizer).address,
                withdraw_delay: 900,
                name: self.config.token_name.clone(),
                version: self.config.token_version.clone(),
                asset_transfer_method: None,
                channel_state: None,
                voucher_state: None,
            },
        }
    }

    /// The escrow's view of a channel.
    pub async fn onchain_state(&self, id: B256) -> Result<OnchainState> {
        let escrow = BatchSettlement::new(ESCROW, &self.provider);
        let ch = escrow.channels(id).call().await?;
        let w = escrow.pendingWithdrawals(id).call().await?;
        let nonce = escrow.refundNonce(id).call().await?;
        Ok(OnchainState {
            balance: ch.balance,
            total_claimed: ch.totalClaimed,
            withdraw_requested_at: w.initiatedAt.to::<u64>(),
            refund_nonce: nonce,
        })
    }
}

/// Runtime code of a contract deployed at `at`.
async fn code_at(provider: &DynProvider, at: Address) -> Result<Bytes> {
    let code = provider.get_code_at(at).await?;
    if code.is_empty() {
        return Err(Error::Deploy(format!("no code at {at}")));
    }
    Ok(code)
}

async fn deploy(provider: &DynProvider, config: &DevChainConfig) -> Result<DevContracts> {
    let deployer = accounts::account(Role::Deployer).address;
    // Escrow and reader have no constructor state: their runtime code is placed directly.
    let escrow = BatchSettlement::deploy(provider).await?;
    provider
        .anvil_set_code(ESCROW, code_at(provider, *escrow.address()).await?)
        .await?;
    let reader = Multicall3::deploy(provider).await?;
    provider
        .anvil_set_code(MULTICALL3, code_at(provider, *reader.address()).await?)
        .await?;
    // The collector's escrow address is an immutable in its runtime code: deploy it for the
    // canonical escrow, then copy that code to the canonical collector address.
    let collector = ERC3009DepositCollector::deploy(provider, ESCROW).await?;
    provider
        .anvil_set_code(
            ERC3009_COLLECTOR,
            code_at(provider, *collector.address()).await?,
        )
        .await?;
    let token = DevStablecoin::deploy(
        provider,
        config.token_name.clone(),
        config.token_symbol.clone(),
        config.token_version.clone(),
        deployer,
    )
    .await?;
    for a in accounts::all() {
        let pending = token
            .mint(a.address, U256::from(config.mint_per_account))
            .send()
            .await?;
        pending
            .with_timeout(Some(Duration::from_secs(30)))
            .watch()
            .await?;
    }
    Ok(DevContracts {
        escrow: ESCROW,
        erc3009_collector: ERC3009_COLLECTOR,
        multicall3: MULTICALL3,
        token: *token.address(),
    })
}

/// The x402 payment payload of `payload` under `offer` (the `PAYMENT-SIGNATURE` header's
/// content, or what an engine's `begin` takes).
pub fn payment(offer: &BatchRequirements, payload: BatchPayload) -> PaymentPayload<BatchPayload> {
    PaymentPayload {
        x402_version: X402_VERSION,
        resource: None,
        accepted: offer.to_generic(),
        payload,
        extensions: None,
    }
}

/// A 32-byte value from a `u64`, for salts in tests.
pub fn salt(n: u64) -> B256 {
    B256::from(U256::from(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_payment_carries_its_payload_under_the_offer() {
        let offer = BatchRequirements {
            network: Network::eip155(31_337),
            chain_id: 31_337,
            amount: 1_000,
            asset: Address::repeat_byte(4),
            pay_to: accounts::account(Role::Receiver).address,
            max_timeout_seconds: 300,
            extra: BatchExtra {
                receiver_authorizer: accounts::account(Role::ReceiverAuthorizer).address,
                withdraw_delay: 900,
                name: "USD Coin".into(),
                version: "2".into(),
                asset_transfer_method: None,
                channel_state: None,
                voucher_state: None,
            },
        };
        let payer = accounts::account(Role::Payer(0)).local_signer();
        let domain = BatchDomain::new(31_337, ESCROW);
        let config = channel_config_for(&offer, payer.address(), payer.address(), salt(1));
        let mut pc = PayerChannel::from_chain(&domain, config, 10_000, 0);
        let v = pc.voucher_payload(&domain, &payer, offer.amount).unwrap();
        let p = payment(&offer, BatchPayload::Voucher(v.clone()));
        assert_eq!(p.x402_version, X402_VERSION);
        offer.matches_accepted(&p.accepted).unwrap();
        assert_eq!(p.payload, BatchPayload::Voucher(v));
        assert!(p.resource.is_none() && p.extensions.is_none());
    }
}
