//! The payee (server) side of a channel: the scheme's server rules as a state machine.
//!
//! A paid request goes **check → reserve → (handler) → commit or abort**:
//!
//! 1. [`check_binding`]: the payload's channel config hashes to its channel id and matches the
//!    offer (receiver, receiver authorizer, token, withdraw delay). Needs no channel state.
//! 2. [`check_paid`] against the channel's [`ChannelRecord`]: the voucher's ceiling must equal
//!    `charged + amount` (else a corrective 402), its signature must come from the payer
//!    authorizer, and it must fit the balance and exceed the on-chain claimed total. The result is
//!    a [`Reservation`]; nothing has changed yet.
//! 3. The caller runs the handler, then [`commit`]s the actual price (≤ the offer's amount), or
//!    drops the reservation to abort: the record is untouched and the client may retry the same
//!    voucher.
//!
//! The caller serializes requests per channel; [`commit`] also refuses a reservation made against
//! a record that has changed since (an optimistic check), so a misuse cannot double-charge.
//!
//! Time (`now_ms`, unix milliseconds) and mirrored on-chain state are inputs. Nothing here does
//! I/O.

use alloy_primitives::{Address, B256, Bytes, U256};

use super::{
    BatchDomain, BatchRequirements, ChannelConfig, ChannelSnapshot, ClaimRow, ClaimVoucher,
    MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY, RefundPayload, ResponseExtra, VoucherFields,
    VoucherState,
};
use crate::{
    ErrorCode, Network, Rejection,
    sig::{Backend, Signature, SignerKey},
    x402::{PaymentRequirements, SettlementResponse},
};

/// A channel's on-chain state as last mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OnchainState {
    /// Deposited minus withdrawn and refunded.
    pub balance: u128,
    /// Claimed by the receiver so far.
    pub total_claimed: u128,
    /// Unix seconds a timed withdrawal was started, 0 if none.
    pub withdraw_requested_at: u64,
    /// Next refund nonce.
    pub refund_nonce: U256,
}

impl From<&ChannelSnapshot> for OnchainState {
    fn from(s: &ChannelSnapshot) -> Self {
        Self {
            balance: s.balance,
            total_claimed: s.total_claimed,
            withdraw_requested_at: s.withdraw_requested_at,
            refund_nonce: s.refund_nonce,
        }
    }
}

/// The payee's record of one channel (the scheme's per-channel server state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The channel.
    pub channel_id: B256,
    /// Its config.
    pub config: ChannelConfig,
    /// `chargedCumulativeAmount`: what requests have actually cost so far.
    pub charged: u128,
    /// `signedMaxClaimable`: the ceiling of the latest voucher.
    pub signed_max_claimable: u128,
    /// That voucher's signature; `None` before the first voucher.
    pub signature: Option<Signature>,
    /// Mirrored on-chain state.
    pub onchain: OnchainState,
    /// When `onchain` was refreshed, unix ms (`onchainSyncedAt`).
    pub onchain_synced_at: u64,
    /// Last paid request, unix ms (`lastRequestTimestamp`).
    pub last_request_at: u64,
}

impl ChannelRecord {
    /// A record for a channel the store has never seen: the baseline is what is claimed on chain
    /// (the scheme's rule after server state loss).
    pub fn from_chain(
        channel_id: B256,
        config: ChannelConfig,
        onchain: OnchainState,
        now_ms: u64,
    ) -> Self {
        Self {
            channel_id,
            config,
            charged: onchain.total_claimed,
            signed_max_claimable: onchain.total_claimed,
            signature: None,
            onchain,
            onchain_synced_at: now_ms,
            last_request_at: 0,
        }
    }

    /// Replaces the mirrored on-chain state. A charged total below what is claimed on chain is
    /// raised to it (someone claimed with a voucher this record did not see).
    pub fn sync_onchain(&mut self, onchain: OnchainState, now_ms: u64) {
        self.onchain = onchain;
        self.onchain_synced_at = now_ms;
        if self.charged < onchain.total_claimed {
            self.charged = onchain.total_claimed;
            self.signed_max_claimable = self.signed_max_claimable.max(onchain.total_claimed);
        }
    }

    /// Whether the mirrored state is recent enough to check vouchers locally.
    pub fn is_fresh(&self, now_ms: u64, max_age_ms: u64) -> bool {
        now_ms.saturating_sub(self.onchain_synced_at) <= max_age_ms
    }

    /// Charged but not yet claimed on chain: what the payee stands to lose if it never claims.
    pub fn unclaimed(&self) -> u128 {
        self.charged.saturating_sub(self.onchain.total_claimed)
    }

    /// A timed withdrawal is pending and there is something to claim: claim now, before the
    /// delay ends, or lose it.
    pub fn needs_claim_now(&self) -> bool {
        self.onchain.withdraw_requested_at != 0 && self.unclaimed() > 0
    }

    /// When a pending withdrawal can be finalized (unix seconds), if one is pending.
    pub fn withdrawal_deadline(&self) -> Option<u64> {
        (self.onchain.withdraw_requested_at != 0).then(|| {
            self.onchain
                .withdraw_requested_at
                .saturating_add(self.config.withdraw_delay)
        })
    }

    /// The claim row that brings the on-chain claimed total up to the charged total, if any.
    pub fn claim_row(&self) -> Option<ClaimRow> {
        let sig = self.signature?;
        (self.charged > self.onchain.total_claimed).then(|| ClaimRow {
            voucher: ClaimVoucher {
                channel: self.config,
                max_claimable_amount: self.signed_max_claimable,
            },
            signature: Bytes::copy_from_slice(&sig.to_bytes()),
            total_claimed: self.charged,
        })
    }

    /// The channel snapshot sent to clients, with the charged total.
    pub fn snapshot(&self) -> ChannelSnapshot {
        ChannelSnapshot {
            channel_id: self.channel_id,
            balance: self.onchain.balance,
            total_claimed: self.onchain.total_claimed,
            withdraw_requested_at: self.onchain.withdraw_requested_at,
            refund_nonce: self.onchain.refund_nonce,
            charged_cumulative_amount: Some(self.charged),
        }
    }
}

/// Inputs to a check other than the channel.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// The escrow's EIP-712 domain on this chain.
    pub domain: &'a BatchDomain,
    /// The offer the client accepted.
    pub requirements: &'a BatchRequirements,
    /// Now, unix ms.
    pub now_ms: u64,
    /// How old mirrored on-chain state may be for a local check.
    pub max_onchain_age_ms: u64,
    /// Signature backend.
    pub backend: Backend,
}

/// Why a check did not produce a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Refuse the payment with this code.
    Reject(Rejection),
    /// The voucher's ceiling is not `charged + amount`: answer a corrective 402
    /// ([`corrective_requirements`]) so the client can resynchronize.
    Corrective,
    /// The record is missing or its mirrored on-chain state is stale: refresh and check again.
    NeedsOnchainState,
    /// The voucher cannot be checked locally (EIP-1271 payer): ask a facilitator.
    NeedsFacilitator,
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        Refusal::Reject(r)
    }
}

/// A verified voucher holding its place until the handler finishes.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The channel.
    pub channel_id: B256,
    /// `charged` of the record when checked; [`commit`] requires it unchanged.
    pub prior_charged: u128,
    /// The charged total this request builds on (equal to `prior_charged` except when adopting a
    /// client's higher base on a channel with no voucher yet).
    pub base: u128,
    /// The voucher's ceiling: `base + max_charge`.
    pub ceiling: u128,
    /// The most this request may cost (the offer's amount).
    pub max_charge: u128,
    /// The voucher signature.
    pub signature: Signature,
    /// Deposit carried by the payload, if any.
    pub deposit: Option<u128>,
    /// A signer key recovered by this check, for the caller to cache.
    pub recovered_key: Option<SignerKey>,
}

/// Refuses new charges on a channel whose payer can finalize a timed withdrawal within `guard_ms`
/// of `now_ms`: a voucher accepted then could not be claimed before the escrow drains, so the
/// server would serve unpaid. Earlier in the withdrawal window requests are still served (and
/// claimed at once by the settlement side).
pub fn check_withdrawal_window(
    record: &ChannelRecord,
    now_ms: u64,
    guard_ms: u64,
) -> Result<(), Rejection> {
    match record.withdrawal_deadline() {
        Some(deadline_s) if now_ms.saturating_add(guard_ms) >= deadline_s.saturating_mul(1000) => {
            Err(Rejection::new(
                ErrorCode::WithdrawalPending,
                format!(
                    "the payer can finalize a timed withdrawal at unix time {deadline_s}; open a new channel"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A committed charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The channel.
    pub channel_id: B256,
    /// What this request cost.
    pub amount: u128,
    /// The charged total after it.
    pub charged_cumulative: u128,
}

fn rej(code: ErrorCode, msg: impl Into<std::borrow::Cow<'static, str>>) -> Refusal {
    Refusal::Reject(Rejection::new(code, msg))
}

/// The config's terms match the offer: receiver, receiver authorizer, token, withdraw delay and
/// its bounds. Cheap (no hashing).
pub fn check_offer_terms(config: &ChannelConfig, req: &BatchRequirements) -> Result<(), Rejection> {
    if config.receiver != req.pay_to {
        return Err(Rejection::code(ErrorCode::ReceiverMismatch));
    }
    if config.receiver_authorizer != req.extra.receiver_authorizer
        || config.receiver_authorizer == Address::ZERO
    {
        return Err(Rejection::code(ErrorCode::ReceiverAuthorizerMismatch));
    }
    if config.token != req.asset {
        return Err(Rejection::code(ErrorCode::TokenMismatch));
    }
    if config.withdraw_delay != req.extra.withdraw_delay {
        return Err(Rejection::code(ErrorCode::WithdrawDelayMismatch));
    }
    if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&config.withdraw_delay) {
        return Err(Rejection::code(ErrorCode::WithdrawDelayOutOfRange));
    }
    Ok(())
}

/// Step 1: the payload's config hashes to its channel id and matches the offer. Returns the
/// channel id.
pub fn check_binding(
    config: &ChannelConfig,
    voucher: &VoucherFields,
    domain: &BatchDomain,
    req: &BatchRequirements,
) -> Result<B256, Rejection> {
    let id = domain.channel_id(config);
    if id != voucher.channel_id {
        return Err(Rejection::code(ErrorCode::ChannelIdMismatch));
    }
    check_offer_terms(config, req)?;
    Ok(id)
}

/// Verifies a voucher signature locally against the channel's payer authorizer, using and
/// returning the cached key. EIP-1271 payers (zero authorizer) need a facilitator.
fn verify_voucher_sig(
    record: &ChannelRecord,
    cached: Option<&SignerKey>,
    voucher: &VoucherFields,
    ctx: &CheckContext<'_>,
) -> Result<(Signature, Option<SignerKey>), Refusal> {
    let authorizer = record.config.payer_authorizer;
    if authorizer == Address::ZERO {
        return Err(Refusal::NeedsFacilitator);
    }
    let sig = Signature::from_bytes(&voucher.signature)
        .map_err(|e| rej(ErrorCode::VoucherSignature, e.to_string()))?;
    let digest = ctx
        .domain
        .voucher_digest(record.channel_id, voucher.max_claimable_amount);
    match cached.filter(|k| k.address() == authorizer) {
        Some(key) => {
            ctx.backend
                .verify(&digest, &sig, key)
                .map_err(|e| rej(ErrorCode::VoucherSignature, e.to_string()))?;
            Ok((sig, None))
        }
        None => {
            let key = ctx
                .backend
                .recover_expecting(&digest, &sig, authorizer)
                .map_err(|e| rej(ErrorCode::VoucherSignature, e.to_string()))?;
            Ok((sig, Some(key)))
        }
    }
}

/// Step 2 for a paid payload (`voucher`, or `deposit` with `deposit` = its amount): decides
/// whether to serve the request against `record`. Call [`check_binding`] first.
pub fn check_paid(
    record: &ChannelRecord,
    cached: Option<&SignerKey>,
    voucher: &VoucherFields,
    deposit: Option<u128>,
    ctx: &CheckContext<'_>,
) -> Result<Reservation, Refusal> {
    // A deposit's state comes from the facilitator's verify; a voucher needs fresh local state.
    if deposit.is_none() && !record.is_fresh(ctx.now_ms, ctx.max_onchain_age_ms) {
        return Err(Refusal::NeedsOnchainState);
    }
    let amount = ctx.requirements.amount;
    let ceiling = voucher.max_claimable_amount;
    let expected = record.charged.checked_add(amount).ok_or_else(|| {
        rej(
            ErrorCode::CumulativeExceedsBalance,
            "charged total would overflow",
        )
    })?;
    let base = if ceiling == expected {
        record.charged
    } else if record.signature.is_none() && ceiling > expected {
        // No voucher seen on this channel yet (new, or state was lost) and the client builds on
        // a higher charged total than the on-chain claimed baseline. It can only have got there
        // by paying this server before; accepting costs the client nothing it did not sign and
        // keeps both sides in step. A lower base is never adopted.
        ceiling - amount
    } else {
        return Err(Refusal::Corrective);
    };
    let (signature, recovered_key) = verify_voucher_sig(record, cached, voucher, ctx)?;
    let balance = match deposit {
        Some(d) => record.onchain.balance.saturating_add(d),
        None => record.onchain.balance,
    };
    if balance == 0 {
        return Err(rej(ErrorCode::ChannelNotFound, "channel has no balance"));
    }
    if ceiling > balance {
        return Err(rej(
            ErrorCode::CumulativeExceedsBalance,
            format!("voucher ceiling {ceiling} exceeds channel balance {balance}"),
        ));
    }
    // Paid vouchers must raise the claimable total; a deposit's may equal it.
    let below = if deposit.is_some() {
        ceiling < record.onchain.total_claimed
    } else {
        ceiling <= record.onchain.total_claimed
    };
    if below {
        return Err(rej(
            ErrorCode::CumulativeBelowClaimed,
            "voucher ceiling is not above the claimed total",
        ));
    }
    Ok(Reservation {
        channel_id: record.channel_id,
        prior_charged: record.charged,
        base,
        ceiling,
        max_charge: amount,
        signature,
        deposit,
        recovered_key,
    })
}

/// Step 3: commits the handler's actual price. `actual` must not exceed the offer's amount.
/// On error nothing changes; a zero price changes nothing either (see the body).
pub fn commit(
    record: &mut ChannelRecord,
    res: &Reservation,
    actual: u128,
    now_ms: u64,
) -> Result<Charge, Rejection> {
    if record.channel_id != res.channel_id || record.charged != res.prior_charged {
        return Err(Rejection::new(
            ErrorCode::ChannelBusy,
            "channel changed since the voucher was checked",
        ));
    }
    if actual > res.max_charge {
        return Err(Rejection::new(
            ErrorCode::ChargeExceedsSignedCumulative,
            format!(
                "charge {actual} exceeds the request maximum {}",
                res.max_charge
            ),
        ));
    }
    if actual == 0 {
        // A free request consumes nothing: the record stays as it was, exactly as on abort, and
        // the client's next voucher carries the same ceiling. This is what keeps "one voucher
        // backs at most one charge": every real charge raises `charged`, after which a ceiling
        // already used can never equal `charged + amount` again.
        return Ok(Charge {
            channel_id: res.channel_id,
            amount: 0,
            charged_cumulative: record.charged,
        });
    }
    // base + actual ≤ base + max_charge = ceiling, which was checked not to overflow.
    let charged = res.base + actual;
    record.charged = charged;
    record.signed_max_claimable = res.ceiling;
    record.signature = Some(res.signature);
    record.last_request_at = now_ms;
    Ok(Charge {
        channel_id: res.channel_id,
        amount: actual,
        charged_cumulative: charged,
    })
}

/// What a cooperative refund will do on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPlan {
    /// The channel.
    pub channel_id: B256,
    /// Tokens to return to the payer.
    pub amount: u128,
    /// The refund nonce to sign for.
    pub nonce: U256,
    /// The claim to make first, so the refund cannot take charged funds; `None` when nothing is
    /// unclaimed.
    pub claim: Option<ClaimRow>,
    /// The zero-charge voucher signature (the new latest voucher).
    pub signature: Signature,
    /// Whether this empties the channel's unclaimed balance.
    pub full: bool,
}

/// Checks a `refund` payload: its voucher must be zero-charge (ceiling = charged total) and
/// signed by the payer authorizer, and there must be something to refund. A requested amount
/// above what is refundable is capped, as the escrow caps it.
pub fn check_refund(
    record: &ChannelRecord,
    cached: Option<&SignerKey>,
    payload: &RefundPayload,
    ctx: &CheckContext<'_>,
) -> Result<(RefundPlan, Option<SignerKey>), Refusal> {
    if !record.is_fresh(ctx.now_ms, ctx.max_onchain_age_ms) {
        return Err(Refusal::NeedsOnchainState);
    }
    if payload.voucher.max_claimable_amount != record.charged {
        return Err(Refusal::Corrective);
    }
    let (signature, key) = verify_voucher_sig(record, cached, &payload.voucher, ctx)?;
    let refundable = record
        .onchain
        .balance
        .saturating_sub(record.charged.max(record.onchain.total_claimed));
    if refundable == 0 {
        return Err(rej(ErrorCode::RefundNoBalance, "nothing left to refund"));
    }
    let amount = match payload.amount {
        None => refundable,
        Some(0) => {
            return Err(rej(
                ErrorCode::RefundAmountInvalid,
                "refund amount must be positive",
            ));
        }
        Some(a) => a.min(refundable),
    };
    let claim = (record.charged > record.onchain.total_claimed).then(|| ClaimRow {
        voucher: ClaimVoucher {
            channel: record.config,
            max_claimable_amount: record.charged,
        },
        signature: Bytes::copy_from_slice(&signature.to_bytes()),
        total_claimed: record.charged,
    });
    Ok((
        RefundPlan {
            channel_id: record.channel_id,
            amount,
            nonce: record.onchain.refund_nonce,
            claim,
            signature,
            full: amount == refundable,
        },
        key,
    ))
}

/// Applies a completed refund: the zero-charge voucher becomes the latest, and the mirrored state
/// is what the chain reported after the refund.
pub fn apply_refund(
    record: &mut ChannelRecord,
    plan: &RefundPlan,
    after: OnchainState,
    now_ms: u64,
) {
    record.signed_max_claimable = record.charged;
    record.signature = Some(plan.signature);
    record.sync_onchain(after, now_ms);
    record.last_request_at = now_ms;
}

/// The corrective 402 offer for `record`: the offer plus `extra.channelState` and, once a voucher
/// exists, `extra.voucherState`, so the client can check its own last signature and resume.
pub fn corrective_requirements(
    req: &BatchRequirements,
    record: &ChannelRecord,
) -> PaymentRequirements {
    let mut r = req.without_corrective_state();
    r.extra.channel_state = Some(record.snapshot());
    r.extra.voucher_state = record.signature.map(|s| VoucherState {
        signed_max_claimable: record.signed_max_claimable,
        signature: Bytes::copy_from_slice(&s.to_bytes()),
    });
    r.to_generic()
}

/// `extra` as its JSON object: what `serde_json::to_value` makes of it, built directly (this runs
/// for every paid request; the serializer's detour through `Value` cost ~1.5% of an accept).
fn response_extra(extra: &ResponseExtra) -> Option<crate::x402::JsonObject> {
    use serde_json::Value;
    let dec = |v: u128| Value::String(v.to_string());
    let mut m = crate::x402::JsonObject::new();
    if let Some(a) = extra.charged_amount {
        m.insert("chargedAmount".into(), dec(a));
    }
    if let Some(c) = &extra.channel_state {
        let mut o = crate::x402::JsonObject::new();
        o.insert("channelId".into(), Value::String(c.channel_id.to_string()));
        o.insert("balance".into(), dec(c.balance));
        o.insert("totalClaimed".into(), dec(c.total_claimed));
        o.insert(
            "withdrawRequestedAt".into(),
            Value::from(c.withdraw_requested_at),
        );
        o.insert(
            "refundNonce".into(),
            Value::String(c.refund_nonce.to_string()),
        );
        if let Some(v) = c.charged_cumulative_amount {
            o.insert("chargedCumulativeAmount".into(), dec(v));
        }
        m.insert("channelState".into(), Value::Object(o));
    }
    Some(m)
}

/// The `PAYMENT-RESPONSE` of a request paid by voucher: nothing on chain, the charge and the
/// channel after it.
pub fn voucher_response(
    record: &ChannelRecord,
    charge: &Charge,
    network: &Network,
) -> SettlementResponse {
    SettlementResponse {
        success: true,
        error_reason: None,
        error_message: None,
        // Lowercase, as the reference server writes it here (and no keccak per response).
        payer: Some(alloy_primitives::hex::encode_prefixed(record.config.payer)),
        transaction: String::new(),
        network: network.clone(),
        amount: Some(String::new()),
        extra: response_extra(&ResponseExtra {
            charged_amount: Some(charge.amount),
            channel_state: Some(record.snapshot()),
        }),
    }
}

/// The `PAYMENT-RESPONSE` of a request paid with a deposit: the deposit transaction and amount,
/// the charge and the channel after it.
pub fn deposit_response(
    record: &ChannelRecord,
    charge: &Charge,
    network: &Network,
    transaction: B256,
    deposited: u128,
) -> SettlementResponse {
    let mut r = voucher_response(record, charge, network);
    r.transaction = transaction.to_string();
    r.amount = Some(deposited.to_string());
    r
}

/// The `PAYMENT-RESPONSE` of a refund: the refund transaction and amount, the channel after it.
pub fn refund_response(
    record: &ChannelRecord,
    network: &Network,
    transaction: B256,
    refunded: u128,
) -> SettlementResponse {
    SettlementResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(record.config.payer.to_checksum(None)),
        transaction: transaction.to_string(),
        network: network.clone(),
        amount: Some(refunded.to_string()),
        extra: response_extra(&ResponseExtra {
            charged_amount: None,
            channel_state: Some(record.snapshot()),
        }),
    }
}

/// The `ClaimBatch` entries of claim rows (channel ids recomputed from the configs).
pub fn claim_entries(domain: &BatchDomain, rows: &[ClaimRow]) -> Vec<super::ClaimEntry> {
    rows.iter()
        .map(|r| super::ClaimEntry {
            channel_id: domain.channel_id(&r.voucher.channel),
            max_claimable_amount: r.voucher.max_claimable_amount,
            total_claimed: r.total_claimed,
        })
        .collect()
}

/// A `claim` payload for `rows`, signed by the receiver authorizer when the server holds its key
/// (otherwise a facilitator holding it signs). All rows must share that receiver authorizer.
pub fn claim_payload(
    domain: &BatchDomain,
    rows: Vec<ClaimRow>,
    authorizer: Option<&crate::sig::LocalSigner>,
) -> Result<super::ClaimPayload, Rejection> {
    if let Some((a, r)) = authorizer.and_then(|a| {
        rows.iter()
            .find(|r| r.voucher.channel.receiver_authorizer != a.address())
            .map(|r| (a, r))
    }) {
        return Err(Rejection::new(
            ErrorCode::AuthorizerAddressMismatch,
            format!(
                "claim row for receiver authorizer {} signed by {}",
                r.voucher.channel.receiver_authorizer,
                a.address()
            ),
        ));
    }
    let claim_authorizer_signature = match authorizer {
        Some(a) => Some(sign_bytes(
            a,
            &domain.claim_batch_digest(&claim_entries(domain, &rows)),
        )?),
        None => None,
    };
    Ok(super::ClaimPayload {
        claims: rows,
        claim_authorizer_signature,
    })
}

fn sign_bytes(signer: &crate::sig::LocalSigner, digest: &B256) -> Result<Bytes, Rejection> {
    signer
        .sign_digest(digest)
        .map(|s| Bytes::copy_from_slice(&s.to_bytes()))
        .map_err(|e| Rejection::new(ErrorCode::AuthorizerNotConfigured, e.to_string()))
}

/// The refund payload a facilitator receives: the client's payload completed with the amount,
/// the refund nonce, the claim to make first, and, when the server holds the receiver
/// authorizer's key, its `Refund` and `ClaimBatch` signatures.
pub fn complete_refund(
    domain: &BatchDomain,
    client: &RefundPayload,
    plan: &RefundPlan,
    authorizer: Option<&crate::sig::LocalSigner>,
) -> Result<RefundPayload, Rejection> {
    let claims: Vec<ClaimRow> = plan.claim.iter().cloned().collect();
    let (refund_sig, claim_sig) = match authorizer {
        Some(a) => {
            if a.address() != client.channel_config.receiver_authorizer {
                return Err(Rejection::new(
                    ErrorCode::AuthorizerAddressMismatch,
                    "the configured receiver authorizer key is not this channel's",
                ));
            }
            let refund = sign_bytes(
                a,
                &domain.refund_digest(plan.channel_id, plan.nonce, plan.amount),
            )?;
            let claim = if claims.is_empty() {
                None
            } else {
                Some(sign_bytes(
                    a,
                    &domain.claim_batch_digest(&claim_entries(domain, &claims)),
                )?)
            };
            (Some(refund), claim)
        }
        None => (None, None),
    };
    Ok(RefundPayload {
        channel_config: client.channel_config,
        voucher: client.voucher.clone(),
        amount: Some(plan.amount),
        refund_nonce: Some(plan.nonce),
        claims: Some(claims),
        refund_authorizer_signature: refund_sig,
        claim_authorizer_signature: claim_sig,
    })
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{B256, U256};
    use proptest::prelude::*;

    use super::{ChannelSnapshot, ResponseExtra, response_extra};

    proptest! {
        #[test]
        fn response_extra_is_what_serde_makes_of_it(
            charged in proptest::option::of(any::<u128>()),
            state in proptest::option::of((
                any::<[u8; 32]>(), any::<u128>(), any::<u128>(), any::<u64>(), any::<[u8; 32]>(),
                proptest::option::of(any::<u128>()),
            )),
        ) {
            let extra = ResponseExtra {
                charged_amount: charged,
                channel_state: state.map(|(id, balance, claimed, at, nonce, cum)| ChannelSnapshot {
                    channel_id: B256::from(id),
                    balance,
                    total_claimed: claimed,
                    withdraw_requested_at: at,
                    refund_nonce: U256::from_be_bytes(nonce),
                    charged_cumulative_amount: cum,
                }),
            };
            let by_serde = match serde_json::to_value(&extra).unwrap() {
                serde_json::Value::Object(m) => m,
                other => panic!("not an object: {other}"),
            };
            prop_assert_eq!(response_extra(&extra), Some(by_serde));
        }
    }
}
