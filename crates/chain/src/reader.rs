//! Reads of the escrow's state: a channel's four on-chain values in one `eth_call` through
//! Multicall3, batched over many channels, receiver totals, token balances and the head.

use std::sync::Arc;

use alloy::{
    eips::{BlockId, BlockNumberOrTag},
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
    rpc::types::{TransactionReceipt, TransactionRequest},
    sol,
    sol_types::SolCall,
};
use paychan_bindings::{BatchSettlement, DevStablecoin, Multicall3};
use paychan_core::{
    batch::{BatchDomain, payee::OnchainState},
    ports::{OnchainSource, SourceError},
};

/// The batched read, for errors.
const AGGREGATE3: &str = "eth_call Multicall3.aggregate3";

use crate::{ChainConfig, Error, Result, rpc::Rpc};

sol! {
    /// EIP-1271: signature validation by a contract account.
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4 magicValue);
    }
}

/// `bytes4(keccak256("isValidSignature(bytes32,bytes)"))`: what a contract returns for a valid
/// signature.
const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// Channel states read at one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatesAt {
    /// The block the states were read at.
    pub block: u64,
    /// One state per requested channel, in request order.
    pub states: Vec<OnchainState>,
}

/// Read access to the chain. Cheap to clone (one shared connection).
#[derive(Clone, Debug)]
pub struct ChainReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rpc: Rpc,
    config: ChainConfig,
    domain: BatchDomain,
}

impl ChainReader {
    /// Connects to the node and checks it: the chain id must be the configured one, and the
    /// escrow and Multicall3 must have code there.
    pub async fn connect(config: ChainConfig) -> Result<Self> {
        config.validate()?;
        let rpc = Rpc::connect(&config)?;
        let actual = rpc
            .run("eth_chainId", |p| async move { p.get_chain_id().await })
            .await?;
        if actual != config.chain_id {
            return Err(Error::WrongChain {
                expected: config.chain_id,
                actual,
                rpc_url: rpc.url().to_owned(),
            });
        }
        for (what, address) in [("escrow", config.escrow), ("multicall3", config.multicall3)] {
            let code = rpc
                .run(
                    "eth_getCode",
                    |p| async move { p.get_code_at(address).await },
                )
                .await?;
            if code.is_empty() {
                return Err(Error::NoCode { what, address });
            }
        }
        tracing::info!(
            target: crate::rpc::TARGET,
            rpc = rpc.url(),
            chain_id = actual,
            escrow = %config.escrow,
            "connected to chain"
        );
        let domain = BatchDomain::new(config.chain_id, config.escrow);
        Ok(Self {
            inner: Arc::new(Inner {
                rpc,
                config,
                domain,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ChainConfig {
        &self.inner.config
    }

    /// The chain id (checked against the node at connect).
    pub fn chain_id(&self) -> u64 {
        self.inner.config.chain_id
    }

    /// The escrow's EIP-712 domain on this chain.
    pub fn domain(&self) -> &BatchDomain {
        &self.inner.domain
    }

    pub(crate) fn rpc(&self) -> &Rpc {
        &self.inner.rpc
    }

    /// The chain id the node reports now.
    pub async fn node_chain_id(&self) -> Result<u64> {
        self.rpc()
            .run("eth_chainId", |p| async move { p.get_chain_id().await })
            .await
    }

    /// The latest block number.
    pub async fn block_number(&self) -> Result<u64> {
        self.rpc()
            .run(
                "eth_blockNumber",
                |p| async move { p.get_block_number().await },
            )
            .await
    }

    /// The latest block's timestamp, unix seconds.
    pub async fn block_timestamp(&self) -> Result<u64> {
        Ok(self.latest_block().await?.header.timestamp)
    }

    /// The latest block (header only).
    pub(crate) async fn latest_block(&self) -> Result<alloy::rpc::types::Block> {
        self.rpc()
            .run("eth_getBlockByNumber(latest)", |p| async move {
                p.get_block_by_number(BlockNumberOrTag::Latest).await
            })
            .await?
            .ok_or_else(|| Error::BadResponse {
                call: "eth_getBlockByNumber(latest)",
                detail: "no latest block".into(),
            })
    }

    /// The hash of block `number`, or `None` if the chain is shorter.
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        let block = self
            .rpc()
            .run("eth_getBlockByNumber", |p| async move {
                p.get_block_by_number(BlockNumberOrTag::Number(number))
                    .await
            })
            .await?;
        Ok(block.map(|b| b.header.hash))
    }

    /// `eth_call` of `data` on `to` at the latest block.
    pub(crate) async fn call(&self, what: &'static str, to: Address, data: Bytes) -> Result<Bytes> {
        self.call_at(what, to, data, None).await
    }

    /// `eth_call` of `data` on `to` at `block` (latest if `None`).
    async fn call_at(
        &self,
        what: &'static str,
        to: Address,
        data: Bytes,
        block: Option<u64>,
    ) -> Result<Bytes> {
        let tx = TransactionRequest::default().to(to).input(data.into());
        let block = block.map_or(BlockId::latest(), BlockId::number);
        self.rpc()
            .run(what, |p| {
                let tx = tx.clone();
                async move { p.call(tx).block(block).await }
            })
            .await
    }

    /// One channel's state (`channels`, `pendingWithdrawals`, `refundNonce`) in one `eth_call`
    /// (Multicall3 `aggregate3`) at the latest block.
    pub async fn channel_state(&self, id: B256) -> Result<OnchainState> {
        let mut states = self.read_states(&[id], None).await?;
        states.pop().ok_or_else(|| Error::BadResponse {
            call: AGGREGATE3,
            detail: "no state returned".into(),
        })
    }

    /// Many channels' states, `max_channels_per_call` channels per `eth_call`. With more than one
    /// call, all read the same block.
    pub async fn channel_states(&self, ids: &[B256]) -> Result<Vec<OnchainState>> {
        if ids.len() <= self.inner.config.max_channels_per_call {
            self.read_states(ids, None).await
        } else {
            Ok(self.channel_states_at(ids).await?.states)
        }
    }

    /// Many channels' states at the current head, with its number.
    pub async fn channel_states_at(&self, ids: &[B256]) -> Result<StatesAt> {
        let block = self.block_number().await?;
        Ok(StatesAt {
            block,
            states: self.read_states(ids, Some(block)).await?,
        })
    }

    async fn read_states(&self, ids: &[B256], block: Option<u64>) -> Result<Vec<OnchainState>> {
        let escrow = self.inner.config.escrow;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.inner.config.max_channels_per_call) {
            let mut calls = Vec::with_capacity(chunk.len() * 3);
            for &id in chunk {
                for call_data in [
                    BatchSettlement::channelsCall { channelId: id }.abi_encode(),
                    BatchSettlement::pendingWithdrawalsCall { channelId: id }.abi_encode(),
                    BatchSettlement::refundNonceCall { channelId: id }.abi_encode(),
                ] {
                    calls.push(Multicall3::Call3 {
                        target: escrow,
                        allowFailure: false,
                        callData: call_data.into(),
                    });
                }
            }
            let data = Multicall3::aggregate3Call { calls }.abi_encode();
            let ret = self
                .call_at(AGGREGATE3, self.inner.config.multicall3, data.into(), block)
                .await?;
            let results = Multicall3::aggregate3Call::abi_decode_returns(&ret)
                .map_err(|e| bad(AGGREGATE3, e))?;
            if results.len() != chunk.len() * 3 {
                return Err(bad(AGGREGATE3, "wrong number of results"));
            }
            for r in results.chunks(3) {
                let [ch, pw, rn] = r else {
                    return Err(bad(AGGREGATE3, "wrong number of results"));
                };
                if !(ch.success && pw.success && rn.success) {
                    return Err(bad(AGGREGATE3, "a read of the escrow failed"));
                }
                let ch = BatchSettlement::channelsCall::abi_decode_returns(&ch.returnData)
                    .map_err(|e| bad(AGGREGATE3, e))?;
                let pw =
                    BatchSettlement::pendingWithdrawalsCall::abi_decode_returns(&pw.returnData)
                        .map_err(|e| bad(AGGREGATE3, e))?;
                let nonce = BatchSettlement::refundNonceCall::abi_decode_returns(&rn.returnData)
                    .map_err(|e| bad(AGGREGATE3, e))?;
                out.push(OnchainState {
                    balance: ch.balance,
                    total_claimed: ch.totalClaimed,
                    withdraw_requested_at: pw.initiatedAt.to::<u64>(),
                    refund_nonce: nonce,
                });
            }
        }
        Ok(out)
    }

    /// `(totalClaimed, totalSettled)` of `receiver` in `token`.
    pub async fn receiver_state(&self, receiver: Address, token: Address) -> Result<(u128, u128)> {
        const CALL: &str = "eth_call BatchSettlement.receivers";
        let data = BatchSettlement::receiversCall { receiver, token }.abi_encode();
        let ret = self
            .call(CALL, self.inner.config.escrow, data.into())
            .await?;
        let r =
            BatchSettlement::receiversCall::abi_decode_returns(&ret).map_err(|e| bad(CALL, e))?;
        Ok((r.totalClaimed, r.totalSettled))
    }

    /// `(amount, initiatedAt)` of a channel's pending timed withdrawal; `initiatedAt == 0` if none.
    pub async fn pending_withdrawal(&self, id: B256) -> Result<(u128, u64)> {
        const CALL: &str = "eth_call BatchSettlement.pendingWithdrawals";
        let data = BatchSettlement::pendingWithdrawalsCall { channelId: id }.abi_encode();
        let ret = self
            .call(CALL, self.inner.config.escrow, data.into())
            .await?;
        let r = BatchSettlement::pendingWithdrawalsCall::abi_decode_returns(&ret)
            .map_err(|e| bad(CALL, e))?;
        Ok((r.amount, r.initiatedAt.to::<u64>()))
    }

    /// The nonce the next refund signature of a channel must carry.
    pub async fn refund_nonce(&self, id: B256) -> Result<U256> {
        const CALL: &str = "eth_call BatchSettlement.refundNonce";
        let data = BatchSettlement::refundNonceCall { channelId: id }.abi_encode();
        let ret = self
            .call(CALL, self.inner.config.escrow, data.into())
            .await?;
        BatchSettlement::refundNonceCall::abi_decode_returns(&ret).map_err(|e| bad(CALL, e))
    }

    /// ERC-20 balance of `who`.
    pub async fn token_balance(&self, token: Address, who: Address) -> Result<U256> {
        const CALL: &str = "eth_call ERC20.balanceOf";
        let data = DevStablecoin::balanceOfCall { account: who }.abi_encode();
        let ret = self.call(CALL, token, data.into()).await?;
        DevStablecoin::balanceOfCall::abi_decode_returns(&ret).map_err(|e| bad(CALL, e))
    }

    /// Whether an ERC-3009 authorization nonce of `authorizer` is used (or cancelled) on `token`.
    pub async fn authorization_used(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool> {
        const CALL: &str = "eth_call ERC3009.authorizationState";
        let data = DevStablecoin::authorizationStateCall { authorizer, nonce }.abi_encode();
        let ret = self.call(CALL, token, data.into()).await?;
        DevStablecoin::authorizationStateCall::abi_decode_returns(&ret).map_err(|e| bad(CALL, e))
    }

    /// The native (gas) balance of `who` at the latest block, wei.
    pub async fn native_balance(&self, who: Address) -> Result<U256> {
        self.rpc()
            .run(
                "eth_getBalance",
                |p| async move { p.get_balance(who).await },
            )
            .await
    }

    /// The sender's transaction count at the latest block (its next nonce once everything
    /// pending is mined).
    pub async fn nonce_latest(&self, who: Address) -> Result<u64> {
        self.rpc()
            .run("eth_getTransactionCount(latest)", |p| async move {
                p.get_transaction_count(who).latest().await
            })
            .await
    }

    /// The sender's transaction count including the node's pending pool.
    pub async fn nonce_pending(&self, who: Address) -> Result<u64> {
        self.rpc()
            .run("eth_getTransactionCount(pending)", |p| async move {
                p.get_transaction_count(who).pending().await
            })
            .await
    }

    /// The code deployed at `who` (empty for an account without code).
    pub async fn code_at(&self, who: Address) -> Result<Bytes> {
        self.rpc()
            .run("eth_getCode", |p| async move { p.get_code_at(who).await })
            .await
    }

    /// Simulates a write: `eth_call` of `data` on `to` from `from` at the latest block, named
    /// `call` in errors. A revert is [`Error::Reverted`] with the decoded reason.
    pub async fn simulate(
        &self,
        call: &'static str,
        from: Address,
        to: Address,
        data: Bytes,
    ) -> Result<Bytes> {
        let tx = TransactionRequest::default()
            .from(from)
            .to(to)
            .input(data.into());
        self.rpc()
            .run(call, |p| {
                let tx = tx.clone();
                async move { p.call(tx).await }
            })
            .await
    }

    /// A transaction's receipt, `None` if the node does not know it.
    pub async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>> {
        self.rpc()
            .run("eth_getTransactionReceipt", |p| async move {
                p.get_transaction_receipt(hash).await
            })
            .await
    }

    /// Whether `signature` over `digest` is valid for the contract account `who` (EIP-1271). A
    /// revert or a wrong magic value is `false`; only failures to ask are errors.
    pub async fn erc1271_valid(
        &self,
        who: Address,
        digest: B256,
        signature: &Bytes,
    ) -> Result<bool> {
        let data = IERC1271::isValidSignatureCall {
            hash: digest,
            signature: signature.clone(),
        }
        .abi_encode();
        match self
            .simulate("eth_call isValidSignature", Address::ZERO, who, data.into())
            .await
        {
            Ok(ret) => Ok(IERC1271::isValidSignatureCall::abi_decode_returns(&ret)
                .is_ok_and(|m| m.0 == ERC1271_MAGIC)),
            Err(Error::Reverted { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The reader as the core's [`OnchainSource`] port: what the engine reads a channel through.
impl OnchainSource for ChainReader {
    async fn channel_state(&self, id: B256) -> std::result::Result<OnchainState, SourceError> {
        ChainReader::channel_state(self, id)
            .await
            .map_err(|e| SourceError::new("channel state", e))
    }
}

fn bad(call: &'static str, e: impl std::fmt::Display) -> Error {
    Error::BadResponse {
        call,
        detail: e.to_string(),
    }
}
