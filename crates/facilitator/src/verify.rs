//! `/verify`: the scheme's verification rules for `deposit`, `voucher` and `refund` payloads.
//!
//! | rule | check | code |
//! | --- | --- | --- |
//! | 1 | the config's EIP-712 hash (this chain, this escrow) is the voucher's channel id | `channel_id_mismatch` |
//! | 2–5 | receiver = `payTo`, receiver authorizer = `extra.receiverAuthorizer` (non-zero), token = `asset`, withdraw delay = `extra.withdrawDelay` (and within 15 min – 30 days) | `receiver_mismatch`, `receiver_authorizer_mismatch`, `token_mismatch`, `withdraw_delay_mismatch`, `withdraw_delay_out_of_range` |
//! | 6 | the voucher recovers to a non-zero `payerAuthorizer` (ECDSA); with a zero one, the payer validates it (ECDSA for an EOA, EIP-1271 `isValidSignature` for a contract) | `voucher_signature` |
//! | 7 | voucher / refund: the channel has a positive balance | `channel_not_found` |
//! | 8 | deposit: the payer holds the deposit | `insufficient_balance` |
//! | 9 | `maxClaimableAmount ≤ balance` (+ the deposit) | `cumulative_exceeds_balance` |
//! | 10 | voucher: `maxClaimableAmount > totalClaimed`; refund and deposit: `≥` | `cumulative_below_claimed` |
//!
//! Deposits are relayed only for an allowed receiver (`FacilitatorConfig::deposit_receivers`,
//! default: channels of the held receiver-authorizer key; `receiver_mismatch`) and from
//! `FacilitatorConfig::min_deposit` up (`deposit_below_min_deposit`), checked before any chain
//! read. Deposits also need an ERC-3009 authorization (`erc3009_authorization_required`) valid now
//! (`payload_authorization_valid_after` / `_valid_before`, with a margin), signed by the payer for
//! `receiveWithAuthorization(to = collector, nonce = keccak256(abi.encode(channelId, salt)))`
//! under the token's domain (`receive_authorization_signature`), not used yet, and a successful
//! simulation of the escrow's `deposit` (`deposit_simulation_failed`, with the decoded revert).
//! Rule 11 (the refund nonce) is checked when a refund is settled.

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    sol_types::SolCall,
};
use paychan_bindings::{BatchSettlement, convert::erc3009_collector_data};
use paychan_core::{
    ErrorCode, Rejection,
    batch::{
        BatchPayload, BatchRequirements, ChannelConfig, ChannelSnapshot, DepositPayload,
        PayloadReceiver, VoucherFields,
        eip712::{Eip712Domain, ReceiveWithAuthorization, deposit_nonce},
        malformed_payload_code, payee,
    },
    ports::Clock,
    sig::Signature,
    x402::{PaymentPayload, PaymentRequirements, VerifyResponse},
};
use paychan_store::Store;
use serde_json::Value;

use crate::{
    Facilitator, TARGET,
    facilitator::{chain_read_failed, invalid, snapshot, to_object},
};

/// What a valid deposit looks like, for settling it.
#[derive(Debug, Clone)]
pub(crate) struct DepositCheck {
    pub(crate) before: ChannelSnapshot,
}

fn rej(code: ErrorCode, msg: impl Into<std::borrow::Cow<'static, str>>) -> Rejection {
    Rejection::new(code, msg)
}

/// Types an untyped scheme payload, refusing with the code of its `type`.
pub(crate) fn typed_payload(v: &Value) -> Result<BatchPayload, Rejection> {
    serde_json::from_value(v.clone()).map_err(|e| {
        let code = malformed_payload_code(v, PayloadReceiver::Facilitator);
        rej(code, format!("payload: {e}"))
    })
}

/// The payer a payload names, for answers.
pub(crate) fn payer_of(p: &BatchPayload) -> Option<Address> {
    p.channel_and_voucher().map(|(c, _)| c.payer)
}

impl<S: Store> Facilitator<S> {
    /// `POST /verify`: checks a `deposit`, `voucher` or `refund` payload against `requirements`
    /// and the chain. A valid answer carries `payer` and, in `extra`, the channel snapshot
    /// `{channelId, balance, totalClaimed, withdrawRequestedAt, refundNonce}` (for a deposit: as
    /// it is before the deposit).
    pub async fn verify(
        &self,
        payload: &PaymentPayload<BatchPayload>,
        requirements: &PaymentRequirements,
    ) -> VerifyResponse {
        let payer = payer_of(&payload.payload);
        let r = match self.check_envelope(payload.x402_version, &payload.accepted, requirements) {
            Ok(()) => self.verify_payload(&payload.payload, requirements).await,
            Err(e) => Err(e),
        };
        self.verify_answer(payload.payload.kind(), r, payer)
    }

    /// [`verify`](Self::verify) of a payload whose scheme part is still JSON (the HTTP API): a
    /// malformed scheme payload is refused with the code of its `type` (`..._deposit_payload`,
    /// ...), after the envelope checks.
    pub async fn verify_untyped(
        &self,
        payload: &PaymentPayload<Value>,
        requirements: &PaymentRequirements,
    ) -> VerifyResponse {
        if let Err(e) = self.check_envelope(payload.x402_version, &payload.accepted, requirements) {
            return self.verify_answer("?", Err(e), None);
        }
        match typed_payload(&payload.payload) {
            Ok(p) => {
                let payer = payer_of(&p);
                let r = self.verify_payload(&p, requirements).await;
                self.verify_answer(p.kind(), r, payer)
            }
            Err(e) => self.verify_answer("?", Err(e), None),
        }
    }

    fn verify_answer(
        &self,
        kind: &str,
        r: Result<ChannelSnapshot, Rejection>,
        payer: Option<Address>,
    ) -> VerifyResponse {
        match r {
            Ok(s) => {
                tracing::debug!(target: TARGET, kind, channel = %s.channel_id, "verified");
                VerifyResponse {
                    is_valid: true,
                    invalid_reason: None,
                    invalid_message: None,
                    payer: payer.map(|p| p.to_checksum(None)),
                    extra: to_object(&s),
                }
            }
            Err(e) => {
                tracing::info!(target: TARGET, kind, code = %e.code, message = %e.message, "verification refused");
                invalid(e, payer)
            }
        }
    }

    pub(crate) async fn verify_payload(
        &self,
        payload: &BatchPayload,
        requirements: &PaymentRequirements,
    ) -> Result<ChannelSnapshot, Rejection> {
        if matches!(payload, BatchPayload::Claim(_) | BatchPayload::Settle(_)) {
            return Err(rej(
                ErrorCode::PayloadType,
                format!(
                    "a {} payload is settled, not verified (verify takes deposit, voucher or refund)",
                    payload.kind()
                ),
            ));
        }
        let req = BatchRequirements::from_generic(requirements)?;
        match payload {
            BatchPayload::Deposit(d) => self.verify_deposit(d, &req).await.map(|c| c.before),
            BatchPayload::Voucher(v) => {
                self.verify_voucher(&v.channel_config, &v.voucher, false, &req)
                    .await
            }
            BatchPayload::Refund(r) => {
                if r.amount == Some(0) {
                    return Err(rej(
                        ErrorCode::RefundAmountInvalid,
                        "refund amount must be positive (omit it for a full refund)",
                    ));
                }
                self.verify_voucher(&r.channel_config, &r.voucher, true, &req)
                    .await
            }
            BatchPayload::Claim(_) | BatchPayload::Settle(_) => {
                Err(rej(ErrorCode::PayloadType, "not a client payload"))
            }
        }
    }

    /// Rules 1–7, 9, 10 for a `voucher` (`refund = false`) or `refund` payload.
    async fn verify_voucher(
        &self,
        config: &ChannelConfig,
        voucher: &VoucherFields,
        refund: bool,
        req: &BatchRequirements,
    ) -> Result<ChannelSnapshot, Rejection> {
        let id = payee::check_binding(config, voucher, &self.inner.domain, req)?;
        self.check_voucher_signature(config, id, voucher).await?;
        let state = self.inner.reader.channel_state(id).await.map_err(|e| {
            chain_read_failed(ErrorCode::ChannelStateReadFailed, "the channel state", &e)
        })?;
        if state.balance == 0 {
            return Err(rej(
                ErrorCode::ChannelNotFound,
                format!("channel {id} has no balance on chain"),
            ));
        }
        let ceiling = voucher.max_claimable_amount;
        if ceiling > state.balance {
            return Err(rej(
                ErrorCode::CumulativeExceedsBalance,
                format!(
                    "maxClaimableAmount {ceiling} exceeds the channel balance {}",
                    state.balance
                ),
            ));
        }
        let below = if refund {
            ceiling < state.total_claimed
        } else {
            ceiling <= state.total_claimed
        };
        if below {
            return Err(rej(
                ErrorCode::CumulativeBelowClaimed,
                format!(
                    "maxClaimableAmount {ceiling} is {} the claimed total {}",
                    if refund { "below" } else { "not above" },
                    state.total_claimed
                ),
            ));
        }
        Ok(snapshot(id, &state))
    }

    /// Rule 6.
    pub(crate) async fn check_voucher_signature(
        &self,
        config: &ChannelConfig,
        channel_id: B256,
        voucher: &VoucherFields,
    ) -> Result<(), Rejection> {
        let digest = self
            .inner
            .domain
            .voucher_digest(channel_id, voucher.max_claimable_amount);
        let (ok, signer, what) = if config.payer_authorizer == Address::ZERO {
            // EIP-1271 territory: validated by the payer account, as the escrow checks it
            let ok = self
                .account_signed(config.payer, digest, &voucher.signature)
                .await
                .map_err(|e| {
                    chain_read_failed(ErrorCode::RpcReadFailed, "the payer's account", &e)
                })?;
            (ok, config.payer, "payer")
        } else {
            // the fast path: plain ECDSA by the committed EOA, no RPC
            let ok = self.ecdsa_signed(config.payer_authorizer, digest, &voucher.signature);
            (ok, config.payer_authorizer, "payerAuthorizer")
        };
        if ok {
            Ok(())
        } else {
            Err(rej(
                ErrorCode::VoucherSignature,
                format!("the voucher signature is not valid for the {what} {signer}"),
            ))
        }
    }

    fn ecdsa_signed(&self, signer: Address, digest: B256, sig: &Bytes) -> bool {
        Signature::from_bytes(sig).is_ok_and(|s| {
            self.inner
                .config
                .backend
                .recover_expecting(&digest, &s, signer)
                .is_ok()
        })
    }

    /// Whether `who` signed `digest` as the chain would check it (OpenZeppelin's
    /// `SignatureChecker`): ECDSA for an account without code, EIP-1271 for a contract.
    async fn account_signed(
        &self,
        who: Address,
        digest: B256,
        sig: &Bytes,
    ) -> Result<bool, paychan_chain::Error> {
        if self.inner.reader.code_at(who).await?.is_empty() {
            Ok(self.ecdsa_signed(who, digest, sig))
        } else {
            self.inner.reader.erc1271_valid(who, digest, sig).await
        }
    }

    /// Whether this facilitator relays a deposit of `amount` into `config`'s channel at all:
    /// only for the receivers it serves and only from the configured minimum up, because the
    /// relayer pays every deposit's gas. Checked before any chain read.
    pub(crate) fn check_deposit_policy(
        &self,
        config: &ChannelConfig,
        amount: u128,
    ) -> Result<(), Rejection> {
        let cfg = &self.inner.config;
        let allowed = if cfg.deposit_receivers.is_empty() {
            self.inner
                .authorizer
                .as_ref()
                .is_some_and(|a| a.address() == config.receiver_authorizer)
        } else {
            cfg.deposit_receivers.contains(&config.receiver)
        };
        if !allowed {
            return Err(rej(
                ErrorCode::ReceiverMismatch,
                if cfg.deposit_receivers.is_empty() {
                    format!(
                        "this facilitator relays deposits only into channels whose receiverAuthorizer is its own key, not {}",
                        config.receiver_authorizer
                    )
                } else {
                    format!(
                        "this facilitator does not relay deposits for the receiver {}",
                        config.receiver
                    )
                },
            ));
        }
        if amount < cfg.min_deposit {
            return Err(rej(
                ErrorCode::DepositBelowMinDeposit,
                format!(
                    "deposit {amount} is below this facilitator's minimum of {}",
                    cfg.min_deposit
                ),
            ));
        }
        Ok(())
    }

    /// The deposit rules; on success the channel as it is before the deposit.
    pub(crate) async fn verify_deposit(
        &self,
        d: &DepositPayload,
        req: &BatchRequirements,
    ) -> Result<DepositCheck, Rejection> {
        let config = &d.channel_config;
        let id = payee::check_binding(config, &d.voucher, &self.inner.domain, req)?;
        let amount = d.deposit.amount;
        if amount == 0 {
            return Err(rej(
                ErrorCode::DepositPayload,
                "deposit amount must be positive",
            ));
        }
        self.check_deposit_policy(config, amount)?;
        let permit2 = req.extra.asset_transfer_method.as_deref() == Some("permit2")
            || (d.deposit.authorization.erc3009_authorization.is_none()
                && d.deposit.authorization.permit2_authorization.is_some());
        if permit2 {
            return Err(rej(
                ErrorCode::DepositPayload,
                "Permit2 deposits are not supported by this facilitator; use eip3009",
            ));
        }
        let Some(auth) = &d.deposit.authorization.erc3009_authorization else {
            return Err(rej(
                ErrorCode::Erc3009AuthorizationRequired,
                "deposit.authorization.erc3009Authorization is missing",
            ));
        };
        // Time comes from the relayer's clock (an input, so tests can drive it).
        let now = self.inner.relayer.clock().now_ms() / 1000;
        let margin = self.inner.config.valid_before_margin.as_secs();
        if auth.valid_before < U256::from(now.saturating_add(margin)) {
            return Err(rej(
                ErrorCode::PayloadAuthorizationValidBefore,
                format!(
                    "validBefore {} is not at least {margin} s after now ({now})",
                    auth.valid_before
                ),
            ));
        }
        if auth.valid_after > U256::from(now) {
            return Err(rej(
                ErrorCode::PayloadAuthorizationValidAfter,
                format!("validAfter {} is after now ({now})", auth.valid_after),
            ));
        }
        let collector = self.inner.reader.config().erc3009_collector;
        let nonce = deposit_nonce(id, auth.salt);
        let token_domain =
            Eip712Domain::new(&req.extra.name, &req.extra.version, req.chain_id, req.asset);
        let digest = ReceiveWithAuthorization {
            from: config.payer,
            to: collector,
            value: U256::from(amount),
            valid_after: auth.valid_after,
            valid_before: auth.valid_before,
            nonce,
        }
        .digest(&token_domain);
        let signed = self
            .account_signed(config.payer, digest, &auth.signature)
            .await
            .map_err(|e| chain_read_failed(ErrorCode::RpcReadFailed, "the payer's account", &e))?;
        if !signed {
            return Err(rej(
                ErrorCode::ReceiveAuthorizationSignature,
                format!(
                    "the ERC-3009 authorization is not signed by the payer {} for receiveWithAuthorization to the collector {collector} under the token's domain ({:?}, version {:?})",
                    config.payer, req.extra.name, req.extra.version
                ),
            ));
        }
        self.check_voucher_signature(config, id, &d.voucher).await?;

        let reader = &self.inner.reader;
        let (state, payer_balance, used) = tokio::try_join!(
            reader.channel_state(id),
            reader.token_balance(config.token, config.payer),
            reader.authorization_used(config.token, config.payer, nonce),
        )
        .map_err(|e| {
            chain_read_failed(
                ErrorCode::RpcReadFailed,
                "the channel, the payer's token balance or the authorization state",
                &e,
            )
        })?;
        if payer_balance < U256::from(amount) {
            return Err(rej(
                ErrorCode::InsufficientBalance,
                format!("the payer holds {payer_balance}, less than the deposit {amount}"),
            ));
        }
        let ceiling = d.voucher.max_claimable_amount;
        let effective = state.balance.saturating_add(amount);
        if ceiling > effective {
            return Err(rej(
                ErrorCode::CumulativeExceedsBalance,
                format!(
                    "maxClaimableAmount {ceiling} exceeds the balance after the deposit {effective}"
                ),
            ));
        }
        if ceiling < state.total_claimed {
            return Err(rej(
                ErrorCode::CumulativeBelowClaimed,
                format!(
                    "maxClaimableAmount {ceiling} is below the claimed total {}",
                    state.total_claimed
                ),
            ));
        }
        if used {
            return Err(rej(
                ErrorCode::DepositSimulationFailed,
                format!("the ERC-3009 authorization {nonce} is already used on the token"),
            ));
        }
        let data = BatchSettlement::depositCall {
            config: config.into(),
            amount,
            collector,
            collectorData: erc3009_collector_data(
                auth.valid_after,
                auth.valid_before,
                auth.salt,
                &auth.signature,
            ),
        }
        .abi_encode();
        match self
            .inner
            .reader
            .simulate(
                "eth_call BatchSettlement.deposit (simulation)",
                self.inner.relayer.address(),
                self.inner.reader.config().escrow,
                data.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(paychan_chain::Error::Reverted { reason, .. }) => {
                return Err(rej(
                    ErrorCode::DepositSimulationFailed,
                    format!("deposit simulation reverted: {reason}"),
                ));
            }
            Err(e) => {
                return Err(chain_read_failed(
                    ErrorCode::RpcReadFailed,
                    "the deposit simulation",
                    &e,
                ));
            }
        }
        Ok(DepositCheck {
            before: snapshot(id, &state),
        })
    }
}
