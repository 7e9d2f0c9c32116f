//! Domain values out to protobuf messages: amounts as decimal strings, ids and addresses as
//! lowercase `0x` hex, messages from the chain redacted.

use alloy_primitives::{Address, B256};
use paychan_core::{batch::payee::ChannelRecord, redact::redact_urls};
use paychan_engine::Metrics;
use paychan_settle::{GasReport, RoundReport};

use crate::proto;

/// A 32-byte value as `0x` + 64 lowercase hex digits.
pub(crate) fn b256(v: &B256) -> String {
    format!("{v:#x}")
}

/// An address as `0x` + 40 lowercase hex digits.
pub(crate) fn address(a: &Address) -> String {
    format!("{a:#x}")
}

/// Where a channel stands, from its mirrored on-chain state.
pub(crate) fn state(r: &ChannelRecord) -> proto::ChannelState {
    if r.onchain.balance == 0 {
        proto::ChannelState::Empty
    } else if r.onchain.withdraw_requested_at != 0 {
        proto::ChannelState::Withdrawing
    } else {
        proto::ChannelState::Open
    }
}

/// What a cooperative refund would return now: `balance − max(charged, claimed)`.
pub(crate) fn refundable(r: &ChannelRecord) -> u128 {
    r.onchain
        .balance
        .saturating_sub(r.charged.max(r.onchain.total_claimed))
}

/// A channel record as the control plane shows it.
pub(crate) fn channel(r: &ChannelRecord) -> proto::Channel {
    let c = &r.config;
    proto::Channel {
        channel_id: b256(&r.channel_id),
        config: Some(proto::ChannelConfig {
            payer: address(&c.payer),
            payer_authorizer: address(&c.payer_authorizer),
            receiver: address(&c.receiver),
            receiver_authorizer: address(&c.receiver_authorizer),
            token: address(&c.token),
            withdraw_delay_seconds: c.withdraw_delay,
            salt: b256(&c.salt),
        }),
        state: state(r).into(),
        balance: r.onchain.balance.to_string(),
        charged: r.charged.to_string(),
        claimed: r.onchain.total_claimed.to_string(),
        unclaimed: r.unclaimed().to_string(),
        refundable: refundable(r).to_string(),
        last_voucher: r.signature.map(|s| proto::Voucher {
            max_claimable: r.signed_max_claimable.to_string(),
            signature: format!("0x{}", alloy_primitives::hex::encode(s.to_bytes())),
        }),
        withdrawal: r.withdrawal_deadline().map(|deadline| proto::Withdrawal {
            requested_at: r.onchain.withdraw_requested_at,
            deadline,
            claim_needed: r.needs_claim_now(),
        }),
        refund_nonce: r.onchain.refund_nonce.to_string(),
        onchain_synced_at_ms: r.onchain_synced_at,
        last_request_at_ms: r.last_request_at,
    }
}

/// Whether `r` passes the `ListChannels` filters.
pub(crate) fn matches(
    r: &ChannelRecord,
    payer: Option<Address>,
    state_filter: proto::ChannelState,
    unclaimed_above: Option<u128>,
) -> bool {
    payer.is_none_or(|p| r.config.payer == p)
        && (state_filter == proto::ChannelState::Unspecified || state(r) == state_filter)
        && unclaimed_above.is_none_or(|x| r.unclaimed() > x)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A settlement round's report; every message redacted.
pub(crate) fn round(r: &RoundReport) -> proto::RoundReport {
    proto::RoundReport {
        considered: count(r.considered),
        claims: r
            .claims
            .iter()
            .map(|c| proto::ClaimTx {
                tx_hash: b256(&c.tx_hash),
                block: c.block,
                gas_used: c.gas_used,
                claims: c
                    .claims
                    .iter()
                    .map(|(id, claimed)| proto::ChannelClaim {
                        channel_id: b256(id),
                        claimed: claimed.to_string(),
                    })
                    .collect(),
            })
            .collect(),
        already_claimed: r.already_claimed.iter().map(b256).collect(),
        in_flight: r.in_flight.iter().map(b256).collect(),
        failed: r
            .failed
            .iter()
            .map(|(id, why)| proto::ChannelFailure {
                channel_id: b256(id),
                reason: redact_urls(why),
            })
            .collect(),
        lost: r
            .lost
            .iter()
            .map(|(id, amount)| proto::ChannelLoss {
                channel_id: b256(id),
                amount: amount.to_string(),
            })
            .collect(),
        unconfirmed: r.unconfirmed.iter().map(|m| redact_urls(m)).collect(),
        settles: r
            .settles
            .iter()
            .map(|s| proto::SettleTx {
                receiver: address(&s.receiver),
                token: address(&s.token),
                amount: s.amount.to_string(),
                tx_hash: b256(&s.tx_hash),
                gas_used: s.gas_used,
            })
            .collect(),
        errors: r.errors.iter().map(|m| redact_urls(m)).collect(),
        clean: r.is_clean(),
    }
}

/// The engine's counters.
pub(crate) fn engine_stats(m: &Metrics, cached: usize, stored: u64) -> proto::EngineStats {
    let get = Metrics::get;
    proto::EngineStats {
        requests: get(&m.requests),
        reserved: get(&m.reserved),
        committed: get(&m.committed),
        aborted: get(&m.aborted),
        corrective: get(&m.corrective),
        busy: get(&m.busy),
        chain_reads: get(&m.chain_reads),
        chain_reads_refused: get(&m.chain_reads_refused),
        screened_out: get(&m.screened_out),
        negative_hits: get(&m.negative_hits),
        rate_limited: get(&m.rate_limited),
        refunds: get(&m.refunds),
        deposits: get(&m.deposits),
        charged_total: m.charged_total().to_string(),
        commit_nanos: get(&m.commit_nanos),
        rejections: m.rejections().into_iter().collect(),
        cached_channels: u64::try_from(cached).unwrap_or(u64::MAX),
        stored_channels: stored,
    }
}

/// The settlement scheduler's figures.
pub(crate) fn settlement_stats(
    g: &GasReport,
    outstanding: (usize, u128),
) -> proto::SettlementStats {
    proto::SettlementStats {
        claim_txs: g.claim_txs,
        settle_txs: g.settle_txs,
        gas_claims: g.gas_claims,
        gas_settles: g.gas_settles,
        channels_claimed: g.channels_claimed,
        other_txs: g.other_txs,
        gas_other: g.gas_other,
        paid_requests: g.paid_requests,
        gas_per_request: g.per_request,
        outstanding_channels: u64::try_from(outstanding.0).unwrap_or(u64::MAX),
        outstanding_amount: outstanding.1.to_string(),
    }
}
