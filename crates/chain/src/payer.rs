//! The payer's own transactions: timed withdrawal (`initiateWithdraw`, `finalizeWithdraw`). Sent
//! with the payer's key through the same engine as the relayer (nonces, gas ceiling, fee cap,
//! bumps, confirmations, reorgs), but not journaled: they are the payer's business, and both
//! calls are safe to repeat (a second `initiateWithdraw` reverts `WithdrawalAlreadyPending`, a
//! second `finalizeWithdraw` reverts `WithdrawalNotPending`).

use alloy::{
    primitives::{Address, Bytes, U256},
    sol_types::SolCall,
};
use paychan_bindings::BatchSettlement;
use paychan_core::batch::ChannelConfig;

use crate::{
    ChainReader, Error, Result, TxKey,
    sender::{NoJournal, TxCall, TxOutcome, TxSender, WaitEnd},
};

/// Sends a payer's transactions.
#[derive(Clone, Debug)]
pub struct PayerClient {
    sender: TxSender,
}

impl PayerClient {
    /// A client sending from `key` (the channel's payer or payer authorizer).
    pub fn new(reader: ChainReader, key: impl Into<TxKey>) -> Self {
        Self {
            sender: TxSender::new(reader, key.into()),
        }
    }

    /// The sender address.
    pub fn address(&self) -> Address {
        self.sender.address()
    }

    /// `initiateWithdraw(config, amount)`: starts the timed withdrawal of up to `amount`.
    pub async fn initiate_withdraw(
        &self,
        config: &ChannelConfig,
        amount: u128,
    ) -> Result<TxOutcome> {
        const WHAT: &str = "initiateWithdraw";
        self.check_sender(WHAT, config)?;
        if amount == 0 {
            return Err(Error::Refused {
                what: WHAT,
                reason: "zero amount".into(),
            });
        }
        let data = BatchSettlement::initiateWithdrawCall {
            config: config.into(),
            amount,
        }
        .abi_encode();
        self.send(WHAT, data.into()).await
    }

    /// `finalizeWithdraw(config)`: completes the withdrawal once its delay has passed.
    pub async fn finalize_withdraw(&self, config: &ChannelConfig) -> Result<TxOutcome> {
        const WHAT: &str = "finalizeWithdraw";
        self.check_sender(WHAT, config)?;
        let data = BatchSettlement::finalizeWithdrawCall {
            config: config.into(),
        }
        .abi_encode();
        self.send(WHAT, data.into()).await
    }

    fn check_sender(&self, what: &'static str, config: &ChannelConfig) -> Result<()> {
        let me = self.address();
        if me != config.payer && me != config.payer_authorizer {
            return Err(Error::Refused {
                what,
                reason: format!("sender {me} is neither the payer nor the payer authorizer"),
            });
        }
        Ok(())
    }

    async fn send(&self, what: &'static str, data: Bytes) -> Result<TxOutcome> {
        let call = TxCall {
            to: self.sender.reader().config().escrow,
            data,
            value: U256::ZERO,
        };
        let mut f = self
            .sender
            .send_new(what, call, Vec::new(), &NoJournal, None)
            .await?;
        match self.sender.wait(&mut f, &NoJournal).await? {
            WaitEnd::Mined(o) if o.success => Ok(o),
            WaitEnd::Mined(o) => Err(Error::TxReverted {
                journal_id: 0,
                tx_hash: o.tx_hash,
                block: o.block,
                gas_used: o.gas_used,
            }),
            WaitEnd::NonceTaken => {
                self.sender.resync_nonce().await;
                Err(Error::NonceTaken {
                    sender: self.address(),
                    nonce: f.nonce,
                })
            }
            WaitEnd::TimedOut(waited) => Err(Error::Unconfirmed {
                journal_id: 0,
                tx_hash: f.latest().hash,
                waited,
            }),
        }
    }
}
