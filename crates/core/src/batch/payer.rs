//! The payer (client) side of a channel: what to sign next, how to check a `PAYMENT-RESPONSE`
//! (the scheme's client verification rules), and how to recover from a corrective 402 by checking
//! the server's copy of our own last signature before adopting its state.
//!
//! Randomness (the channel salt, the deposit authorization salt) and time are inputs.

use alloy_primitives::{Address, B256, Bytes, U256};

use super::{
    BatchDomain, BatchExtra, BatchRequirements, ChannelConfig, Deposit, DepositAuthorization,
    DepositPayload, Erc3009Authorization, RefundPayload, ResponseExtra, VoucherFields,
    VoucherPayload,
    eip712::{Eip712Domain, ReceiveWithAuthorization, deposit_nonce},
};
use crate::{
    sig::{Backend, LocalSigner, SigError, Signature},
    x402::SettlementResponse,
};

/// Why the payer stopped trusting a server answer. After any of these the client must not sign
/// further vouchers on the channel (the scheme's rule) until it resynchronizes from chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayerError {
    /// The server charged more than the request's maximum.
    #[error("server charged {charged}, above the request maximum {max}")]
    ChargeAboveMaximum {
        /// Charged.
        charged: u128,
        /// Maximum.
        max: u128,
    },
    /// The server's charged total is not ours plus this charge.
    #[error("server's charged total {server} is not the expected {expected}")]
    CumulativeMismatch {
        /// The server's total.
        server: u128,
        /// Ours plus the charge.
        expected: u128,
    },
    /// The response names another channel.
    #[error("response is for channel {0}, not ours")]
    WrongChannel(B256),
    /// The server reports less balance than we know we have.
    #[error("server reports balance {server}, below the expected {expected}")]
    BalanceMismatch {
        /// Reported.
        server: u128,
        /// Expected.
        expected: u128,
    },
    /// A required field is missing or malformed.
    #[error("malformed payment response: {0}")]
    Malformed(String),
    /// The server's last-voucher proof does not hold.
    #[error("corrective state refused: {0}")]
    CorrectiveRefused(&'static str),
    /// Arithmetic would overflow.
    #[error("amount overflow")]
    Overflow,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] SigError),
}

/// The channel config a payer uses for an offer.
pub fn channel_config_for(
    req: &BatchRequirements,
    payer: Address,
    payer_authorizer: Address,
    salt: B256,
) -> ChannelConfig {
    ChannelConfig {
        payer,
        payer_authorizer,
        receiver: req.pay_to,
        receiver_authorizer: req.extra.receiver_authorizer,
        token: req.asset,
        withdraw_delay: req.extra.withdraw_delay,
        salt,
    }
}

/// The payer's record of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayerChannel {
    /// The channel.
    pub channel_id: B256,
    /// Its config.
    pub config: ChannelConfig,
    /// The charged total both sides agree on.
    pub charged: u128,
    /// The channel's balance as the payer knows it.
    pub balance: u128,
    /// Claimed on chain, as last seen.
    pub total_claimed: u128,
    /// The latest voucher this payer signed: its ceiling and signature.
    pub last_voucher: Option<(u128, Signature)>,
}

impl PayerChannel {
    /// A channel as read from chain with no local history: the charged total starts at the
    /// on-chain claimed total (the scheme's client cold start). A channel that does not exist yet
    /// reads as zero balance, zero claimed.
    pub fn from_chain(
        domain: &BatchDomain,
        config: ChannelConfig,
        balance: u128,
        total_claimed: u128,
    ) -> Self {
        Self {
            channel_id: domain.channel_id(&config),
            config,
            charged: total_claimed,
            balance,
            total_claimed,
            last_voucher: None,
        }
    }

    /// The ceiling of the voucher that pays a request of maximum `amount`.
    pub fn next_ceiling(&self, amount: u128) -> Result<u128, PayerError> {
        self.charged.checked_add(amount).ok_or(PayerError::Overflow)
    }

    /// Whether paying `amount` needs a deposit first.
    pub fn needs_deposit(&self, amount: u128) -> bool {
        self.next_ceiling(amount).map_or(true, |c| c > self.balance)
    }

    /// Signs a voucher with ceiling `ceiling` and remembers it.
    pub fn sign_voucher(
        &mut self,
        domain: &BatchDomain,
        signer: &LocalSigner,
        ceiling: u128,
    ) -> Result<VoucherFields, PayerError> {
        let sig = signer.sign_digest(&domain.voucher_digest(self.channel_id, ceiling))?;
        self.last_voucher = Some((ceiling, sig));
        Ok(VoucherFields {
            channel_id: self.channel_id,
            max_claimable_amount: ceiling,
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
        })
    }

    /// A `voucher` payload paying a request of maximum `amount`.
    pub fn voucher_payload(
        &mut self,
        domain: &BatchDomain,
        signer: &LocalSigner,
        amount: u128,
    ) -> Result<VoucherPayload, PayerError> {
        let ceiling = self.next_ceiling(amount)?;
        Ok(VoucherPayload {
            channel_config: self.config,
            voucher: self.sign_voucher(domain, signer, ceiling)?,
        })
    }

    /// A `refund` payload: a zero-charge voucher, and an optional partial amount.
    pub fn refund_payload(
        &mut self,
        domain: &BatchDomain,
        signer: &LocalSigner,
        amount: Option<u128>,
    ) -> Result<RefundPayload, PayerError> {
        let voucher = self.sign_voucher(domain, signer, self.charged)?;
        Ok(RefundPayload {
            channel_config: self.config,
            voucher,
            amount,
            refund_nonce: None,
            claims: None,
            refund_authorizer_signature: None,
            claim_authorizer_signature: None,
        })
    }

    /// Checks a `PAYMENT-RESPONSE` for a request of maximum `request_max` and adopts it.
    /// `deposited` is the amount this request deposited, if it carried a deposit. Returns what the
    /// request was charged.
    pub fn apply_response(
        &mut self,
        resp: &SettlementResponse,
        request_max: u128,
        deposited: Option<u128>,
    ) -> Result<u128, PayerError> {
        let extra: ResponseExtra = match &resp.extra {
            Some(m) => serde_json::from_value(serde_json::Value::Object(m.clone()))
                .map_err(|e| PayerError::Malformed(e.to_string()))?,
            None => return Err(PayerError::Malformed("no extra".into())),
        };
        let charged = extra
            .charged_amount
            .ok_or_else(|| PayerError::Malformed("no chargedAmount".into()))?;
        if charged > request_max {
            return Err(PayerError::ChargeAboveMaximum {
                charged,
                max: request_max,
            });
        }
        let state = extra
            .channel_state
            .ok_or_else(|| PayerError::Malformed("no channelState".into()))?;
        if state.channel_id != self.channel_id {
            return Err(PayerError::WrongChannel(state.channel_id));
        }
        let expected = self
            .charged
            .checked_add(charged)
            .ok_or(PayerError::Overflow)?;
        let server = state
            .charged_cumulative_amount
            .ok_or_else(|| PayerError::Malformed("no chargedCumulativeAmount".into()))?;
        if server != expected {
            return Err(PayerError::CumulativeMismatch { server, expected });
        }
        let expected_balance = self
            .balance
            .checked_add(deposited.unwrap_or(0))
            .ok_or(PayerError::Overflow)?;
        // A higher balance is a top-up seen by the server first; a lower one is money the server
        // says is gone that this payer did not take out.
        if state.balance < expected_balance {
            return Err(PayerError::BalanceMismatch {
                server: state.balance,
                expected: expected_balance,
            });
        }
        self.charged = expected;
        self.balance = state.balance;
        self.total_claimed = state.total_claimed;
        Ok(charged)
    }

    /// Adopts the server's state from a corrective 402, after checking it: the server's last
    /// voucher must be one this payer signed (its signature recovers to `own_authorizer`), its
    /// charged total must lie between the on-chain claimed total and that voucher's ceiling.
    /// `onchain_balance` and `onchain_total_claimed` are read from chain by the caller. Without a
    /// voucher proof the payer falls back to the on-chain baseline.
    pub fn apply_corrective(
        &mut self,
        domain: &BatchDomain,
        extra: &BatchExtra,
        own_authorizer: Address,
        onchain_balance: u128,
        onchain_total_claimed: u128,
    ) -> Result<(), PayerError> {
        let (Some(state), Some(proof)) = (&extra.channel_state, &extra.voucher_state) else {
            *self = Self::from_chain(domain, self.config, onchain_balance, onchain_total_claimed);
            return Ok(());
        };
        if state.channel_id != self.channel_id {
            return Err(PayerError::WrongChannel(state.channel_id));
        }
        let charged = state
            .charged_cumulative_amount
            .ok_or(PayerError::CorrectiveRefused(
                "channelState has no chargedCumulativeAmount",
            ))?;
        if charged > proof.signed_max_claimable {
            return Err(PayerError::CorrectiveRefused(
                "charged total above the signed ceiling",
            ));
        }
        if charged < onchain_total_claimed {
            return Err(PayerError::CorrectiveRefused(
                "charged total below the on-chain claimed total",
            ));
        }
        let sig = Signature::from_bytes(&proof.signature)
            .map_err(|_| PayerError::CorrectiveRefused("voucher signature malformed"))?;
        let digest = domain.voucher_digest(self.channel_id, proof.signed_max_claimable);
        Backend::default()
            .recover_expecting(&digest, &sig, own_authorizer)
            .map_err(|_| PayerError::CorrectiveRefused("voucher was not signed by this payer"))?;
        self.charged = charged;
        self.balance = onchain_balance;
        self.total_claimed = onchain_total_claimed;
        self.last_voucher = Some((proof.signed_max_claimable, sig));
        Ok(())
    }

    /// Adopts a refund: `refunded` left the channel.
    pub fn apply_refund(&mut self, refunded: u128) {
        self.balance = self.balance.saturating_sub(refunded);
    }
}

/// Inputs for an ERC-3009 deposit.
#[derive(Debug, Clone, Copy)]
pub struct DepositTerms {
    /// Tokens to deposit.
    pub amount: u128,
    /// The deposit collector that will call `receiveWithAuthorization`.
    pub collector: Address,
    /// Random salt for the authorization nonce.
    pub salt: U256,
    /// Now, unix seconds.
    pub now_secs: u64,
}

/// What an ERC-3009 deposit authorization allows: `from` lets the deposit `collector` move
/// `amount` of the token into channel `channel_id`, within (`valid_after`, `valid_before`), under
/// the nonce `keccak256(abi.encode(channelId, salt))` that binds it to the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erc3009Terms {
    /// The token holder (the channel's payer).
    pub from: Address,
    /// The deposit collector that will call `receiveWithAuthorization`.
    pub collector: Address,
    /// The channel the deposit goes into.
    pub channel_id: B256,
    /// Tokens to move.
    pub amount: u128,
    /// Valid after this unix time (seconds).
    pub valid_after: U256,
    /// Valid before this unix time (seconds).
    pub valid_before: U256,
    /// The salt of the authorization nonce.
    pub salt: U256,
}

/// Signs an ERC-3009 `ReceiveWithAuthorization` under the token's EIP-712 domain: the
/// `erc3009Authorization` of a deposit payload (and, ABI-encoded, the collector's
/// `collectorData`). The one place a deposit authorization is built.
pub fn sign_erc3009_authorization(
    token_domain: &Eip712Domain,
    terms: &Erc3009Terms,
    signer: &LocalSigner,
) -> Result<Erc3009Authorization, SigError> {
    let auth = ReceiveWithAuthorization {
        from: terms.from,
        to: terms.collector,
        value: U256::from(terms.amount),
        valid_after: terms.valid_after,
        valid_before: terms.valid_before,
        nonce: deposit_nonce(terms.channel_id, terms.salt),
    };
    let sig = signer.sign_digest(&auth.digest(token_domain))?;
    Ok(Erc3009Authorization {
        valid_after: terms.valid_after,
        valid_before: terms.valid_before,
        salt: terms.salt,
        signature: Bytes::copy_from_slice(&sig.to_bytes()),
    })
}

/// Builds a `deposit` payload: an ERC-3009 authorization (signed by the payer, valid from now for
/// the offer's timeout) plus the voucher paying for this request.
pub fn deposit_payload(
    channel: &mut PayerChannel,
    domain: &BatchDomain,
    req: &BatchRequirements,
    payer: &LocalSigner,
    voucher_signer: &LocalSigner,
    terms: DepositTerms,
) -> Result<DepositPayload, PayerError> {
    let token_domain =
        Eip712Domain::new(&req.extra.name, &req.extra.version, req.chain_id, req.asset);
    let authorization = sign_erc3009_authorization(
        &token_domain,
        &Erc3009Terms {
            from: payer.address(),
            collector: terms.collector,
            channel_id: channel.channel_id,
            amount: terms.amount,
            valid_after: U256::ZERO,
            valid_before: U256::from(terms.now_secs.saturating_add(req.max_timeout_seconds)),
            salt: terms.salt,
        },
        payer,
    )?;
    let ceiling = channel.next_ceiling(req.amount)?;
    let voucher = channel.sign_voucher(domain, voucher_signer, ceiling)?;
    Ok(DepositPayload {
        channel_config: channel.config,
        voucher,
        deposit: Deposit {
            amount: terms.amount,
            authorization: DepositAuthorization {
                erc3009_authorization: Some(authorization),
                permit2_authorization: None,
            },
        },
    })
}
