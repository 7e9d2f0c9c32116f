//! Cooperative close (`RefundChannel`): what to send, decided from the channel's record and its
//! on-chain state read just before. A pure function; the service sends it.
//!
//! Everything charged is claimed first (the latest voucher, up to the charged total) and the
//! rest of the balance is refunded, in one `multicall` when there is something to claim.

use alloy_primitives::U256;
use paychan_core::batch::{
    ClaimRow,
    payee::{ChannelRecord, OnchainState},
};

/// What a cooperative close sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClosePlan {
    /// The claim to make first; `None` when everything charged is claimed.
    pub(crate) claim: Option<ClaimRow>,
    /// Returned to the payer: `balance − max(charged, claimed)`.
    pub(crate) refund: u128,
    /// The refund nonce to sign.
    pub(crate) nonce: U256,
    /// The charged total the plan was decided on.
    pub(crate) charged: u128,
}

/// Why there is nothing to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nothing left to refund: balance {balance}, charged {charged}, claimed {claimed} on chain")]
pub(crate) struct NothingToRefund {
    balance: u128,
    charged: u128,
    claimed: u128,
}

/// The close of `record` given its on-chain state `now`.
pub(crate) fn plan(
    record: &ChannelRecord,
    now: OnchainState,
) -> Result<ClosePlan, NothingToRefund> {
    let mut r = record.clone();
    // A charged total below the claimed one is raised to it, as the engine does.
    r.sync_onchain(now, record.onchain_synced_at);
    let refund = crate::convert::refundable(&r);
    if refund == 0 {
        return Err(NothingToRefund {
            balance: now.balance,
            charged: r.charged,
            claimed: now.total_claimed,
        });
    }
    Ok(ClosePlan {
        claim: r.claim_row(),
        refund,
        nonce: now.refund_nonce,
        charged: r.charged,
    })
}

/// Charges that the channel's balance no longer covers after a close: ones committed by the paid
/// port while the close was in flight.
pub(crate) fn unclaimable(after: &ChannelRecord) -> u128 {
    after.charged.saturating_sub(after.onchain.balance)
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Address, B256};
    use paychan_core::{
        batch::ChannelConfig,
        sig::{LocalSigner, Signature},
    };

    use super::*;

    fn record(charged: u128, signed: u128, onchain: OnchainState) -> ChannelRecord {
        let key = LocalSigner::from_bytes(&B256::repeat_byte(7)).unwrap();
        let sig: Signature = key.sign_digest(&B256::repeat_byte(1)).unwrap();
        ChannelRecord {
            channel_id: B256::repeat_byte(9),
            config: ChannelConfig {
                payer: Address::repeat_byte(1),
                payer_authorizer: Address::repeat_byte(1),
                receiver: Address::repeat_byte(2),
                receiver_authorizer: Address::repeat_byte(3),
                token: Address::repeat_byte(4),
                withdraw_delay: 900,
                salt: B256::ZERO,
            },
            charged,
            signed_max_claimable: signed,
            signature: (signed > 0).then_some(sig),
            onchain,
            onchain_synced_at: 1,
            last_request_at: 1,
        }
    }

    fn state(balance: u128, total_claimed: u128) -> OnchainState {
        OnchainState {
            balance,
            total_claimed,
            withdraw_requested_at: 0,
            refund_nonce: U256::from(2),
        }
    }

    #[test]
    fn claims_what_was_charged_and_refunds_the_rest() {
        let r = record(1_250, 2_000, state(10_000, 0));
        let p = plan(&r, state(10_000, 0)).unwrap();
        assert_eq!(
            (p.refund, p.nonce, p.charged),
            (8_750, U256::from(2), 1_250)
        );
        let claim = p.claim.unwrap();
        assert_eq!(claim.total_claimed, 1_250);
        assert_eq!(claim.voucher.max_claimable_amount, 2_000);
    }

    #[test]
    fn nothing_to_claim_after_a_claim_and_fresh_state_wins() {
        let r = record(1_250, 1_250, state(10_000, 0));
        // the chain says it was claimed meanwhile
        let p = plan(&r, state(10_000, 1_250)).unwrap();
        assert_eq!((p.claim, p.refund), (None, 8_750));
        // claimed on chain beyond what the record knows: the record is raised to it
        let p = plan(&r, state(10_000, 3_000)).unwrap();
        assert_eq!((p.claim, p.refund, p.charged), (None, 7_000, 3_000));
    }

    #[test]
    fn an_empty_or_fully_charged_channel_has_nothing_to_refund() {
        let r = record(1_000, 1_000, state(1_000, 0));
        assert!(plan(&r, state(1_000, 0)).is_err());
        assert!(plan(&r, state(0, 0)).is_err());
        // a finalized withdrawal left less than was charged
        assert!(plan(&r, state(500, 0)).is_err());
        let fresh = record(0, 0, state(5_000, 0));
        let p = plan(&fresh, state(5_000, 0)).unwrap();
        assert_eq!((p.claim, p.refund), (None, 5_000));
    }

    #[test]
    fn charges_beyond_the_balance_are_unclaimable() {
        assert_eq!(unclaimable(&record(1_250, 1_250, state(1_250, 1_250))), 0);
        assert_eq!(
            unclaimable(&record(2_250, 2_250, state(1_250, 1_250))),
            1_000
        );
    }
}
