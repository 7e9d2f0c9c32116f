//! The relayer's operations: each escrow call (claims, settles, refunds, deposits, and the
//! payloads that carry them) checked, encoded and handed to the journaled pipeline with its
//! journal kinds and replay check.

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    sol_types::{SolCall, SolValue},
};
use paychan_bindings::BatchSettlement;
use paychan_core::batch::{
    BatchDomain, ChannelConfig, ClaimPayload, ClaimRow, DepositPayload, RefundPayload,
    eip712::deposit_nonce,
};
use paychan_store::{JournalEntry, JournalKind, Store};

use super::{
    Relayer,
    journal::{ClaimTarget, ReplayCheck},
};
use crate::{Error, Result};

/// A receiver authorizer's signed refund, for [`Relayer::refund_with_signature`] and
/// [`Relayer::claim_and_refund`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRefund {
    /// The channel.
    pub config: ChannelConfig,
    /// Amount signed for (the escrow caps it to what is unclaimed).
    pub amount: u128,
    /// The channel's current `refundNonce`.
    pub nonce: U256,
    /// The receiver authorizer's `Refund` signature.
    pub signature: Bytes,
}

impl<S: Store> Relayer<S> {
    /// `claimWithSignature(rows, authorizer_sig)`: anyone may send it; every row must share the
    /// receiver authorizer that signed the batch.
    pub async fn claim_with_signature(
        &self,
        rows: Vec<ClaimRow>,
        authorizer_sig: Bytes,
    ) -> Result<JournalEntry> {
        const WHAT: &str = "claimWithSignature";
        let targets = claim_targets(self.reader().domain(), WHAT, &rows)?;
        if !one_authorizer(&rows) {
            return refused(WHAT, "every row must share one receiver authorizer");
        }
        let data = BatchSettlement::claimWithSignatureCall {
            voucherClaims: rows.iter().map(Into::into).collect(),
            authorizerSignature: authorizer_sig,
        }
        .abi_encode();
        self.single(
            WHAT,
            data.into(),
            claim_kind(&targets),
            ReplayCheck::Claim { targets },
        )
        .await
    }

    /// `claim(rows)`: the sender must be the receiver or the receiver authorizer of every row.
    pub async fn claim(&self, rows: Vec<ClaimRow>) -> Result<JournalEntry> {
        const WHAT: &str = "claim";
        let targets = claim_targets(self.reader().domain(), WHAT, &rows)?;
        let me = self.address();
        if !may_claim(me, &rows) {
            return refused(
                WHAT,
                format!("sender {me} is not the receiver or receiver authorizer of every row"),
            );
        }
        let data = BatchSettlement::claimCall {
            voucherClaims: rows.iter().map(Into::into).collect(),
        }
        .abi_encode();
        self.single(
            WHAT,
            data.into(),
            claim_kind(&targets),
            ReplayCheck::Claim { targets },
        )
        .await
    }

    /// A server's `claim` payload: `claimWithSignature` when it carries the authorizer's
    /// signature, `claim` otherwise.
    pub async fn claim_payload(&self, payload: &ClaimPayload) -> Result<JournalEntry> {
        match &payload.claim_authorizer_signature {
            Some(sig) => {
                self.claim_with_signature(payload.claims.clone(), sig.clone())
                    .await
            }
            None => self.claim(payload.claims.clone()).await,
        }
    }

    /// `settle(receiver, token)`: sweeps everything claimed and not yet transferred. Permissionless
    /// and idempotent on chain (a no-op when nothing is unsettled).
    pub async fn settle(&self, receiver: Address, token: Address) -> Result<JournalEntry> {
        let data = BatchSettlement::settleCall { receiver, token }.abi_encode();
        self.single(
            "settle",
            data.into(),
            JournalKind::Settle { receiver, token },
            ReplayCheck::Settle { receiver, token },
        )
        .await
    }

    /// `refundWithSignature(config, amount, nonce, sig)`.
    pub async fn refund_with_signature(
        &self,
        config: &ChannelConfig,
        amount: u128,
        nonce: U256,
        sig: Bytes,
    ) -> Result<JournalEntry> {
        const WHAT: &str = "refundWithSignature";
        if amount == 0 {
            return refused(WHAT, "zero refund");
        }
        let channel_id = self.reader().domain().channel_id(config);
        let data = refund_call(config, amount, nonce, sig);
        self.single(
            WHAT,
            data,
            JournalKind::Refund { channel_id, amount },
            ReplayCheck::Refund { channel_id, nonce },
        )
        .await
    }

    /// Claims then refunds in one transaction (`multicall`), as the reference facilitator does.
    /// Journals two entries (a `Claim` and a `Refund`) served by the same transaction; both carry
    /// its hash and gas (count gas once per transaction hash). Returns `(claim, refund)`.
    pub async fn claim_and_refund(
        &self,
        rows: Vec<ClaimRow>,
        claim_sig: Bytes,
        refund: SignedRefund,
    ) -> Result<(JournalEntry, JournalEntry)> {
        const WHAT: &str = "multicall(claimWithSignature, refundWithSignature)";
        let targets = claim_targets(self.reader().domain(), WHAT, &rows)?;
        if refund.amount == 0 {
            return refused(WHAT, "zero refund");
        }
        let channel_id = self.reader().domain().channel_id(&refund.config);
        let claim = BatchSettlement::claimWithSignatureCall {
            voucherClaims: rows.iter().map(Into::into).collect(),
            authorizerSignature: claim_sig,
        }
        .abi_encode();
        let refund_data = refund_call(
            &refund.config,
            refund.amount,
            refund.nonce,
            refund.signature,
        );
        let data = BatchSettlement::multicallCall {
            data: vec![claim.into(), refund_data],
        }
        .abi_encode();
        let kinds = vec![
            claim_kind(&targets),
            JournalKind::Refund {
                channel_id,
                amount: refund.amount,
            },
        ];
        let check = ReplayCheck::ClaimAndRefund {
            targets,
            channel_id,
            nonce: refund.nonce,
        };
        let mut entries = self.execute(WHAT, data.into(), kinds, check).await?;
        match (entries.pop(), entries.pop()) {
            (Some(refund), Some(claim)) => Ok((claim, refund)),
            _ => Err(Error::Journal {
                journal_id: 0,
                reason: "claim_and_refund journaled fewer than two entries".into(),
            }),
        }
    }

    /// A server-completed `refund` payload: `claim_and_refund` when it carries claims, else
    /// `refund_with_signature`. The payload must carry `amount`, `refundNonce` and the
    /// authorizer's signatures.
    pub async fn refund_payload(&self, p: &RefundPayload) -> Result<JournalEntry> {
        const WHAT: &str = "refund payload";
        let (Some(amount), Some(nonce), Some(sig)) = (
            p.amount,
            p.refund_nonce,
            p.refund_authorizer_signature.clone(),
        ) else {
            return refused(
                WHAT,
                "needs amount, refundNonce and refundAuthorizerSignature",
            );
        };
        let refund = SignedRefund {
            config: p.channel_config,
            amount,
            nonce,
            signature: sig,
        };
        match (&p.claims, &p.claim_authorizer_signature) {
            (Some(rows), Some(csig)) if !rows.is_empty() => self
                .claim_and_refund(rows.clone(), csig.clone(), refund)
                .await
                .map(|(_, r)| r),
            (Some(rows), None) if !rows.is_empty() => {
                refused(WHAT, "claims without claimAuthorizerSignature")
            }
            _ => {
                self.refund_with_signature(&refund.config, amount, nonce, refund.signature)
                    .await
            }
        }
    }

    /// `deposit(config, amount, erc3009_collector, collector_data)`: relays a payer's deposit
    /// through the configured ERC-3009 collector.
    pub async fn deposit(
        &self,
        config: &ChannelConfig,
        amount: u128,
        collector_data: Bytes,
    ) -> Result<JournalEntry> {
        let collector = self.reader().config().erc3009_collector;
        self.deposit_via(config, amount, collector, collector_data)
            .await
    }

    /// `deposit` through any collector. For the ERC-3009 collector, the authorization's nonce is
    /// remembered so that recovery can tell whether the deposit already happened.
    pub async fn deposit_via(
        &self,
        config: &ChannelConfig,
        amount: u128,
        collector: Address,
        collector_data: Bytes,
    ) -> Result<JournalEntry> {
        const WHAT: &str = "deposit";
        if amount == 0 {
            return refused(WHAT, "zero deposit");
        }
        let channel_id = self.reader().domain().channel_id(config);
        let authorization_nonce = (collector == self.reader().config().erc3009_collector)
            .then(|| erc3009_authorization_nonce(channel_id, &collector_data))
            .flatten();
        let data = BatchSettlement::depositCall {
            config: config.into(),
            amount,
            collector,
            collectorData: collector_data,
        }
        .abi_encode();
        self.single(
            WHAT,
            data.into(),
            JournalKind::Deposit { channel_id, amount },
            ReplayCheck::Deposit {
                channel_id,
                token: config.token,
                payer: config.payer,
                authorization_nonce,
            },
        )
        .await
    }

    /// A client's `deposit` payload (ERC-3009 authorization) relayed through the collector.
    pub async fn deposit_payload(&self, p: &DepositPayload) -> Result<JournalEntry> {
        let Some(auth) = &p.deposit.authorization.erc3009_authorization else {
            return refused(
                "deposit",
                "only ERC-3009 deposit authorizations are supported",
            );
        };
        let data = paychan_bindings::convert::erc3009_collector_data(
            auth.valid_after,
            auth.valid_before,
            auth.salt,
            &auth.signature,
        );
        self.deposit(&p.channel_config, p.deposit.amount, data)
            .await
    }
}

fn claim_kind(targets: &[ClaimTarget]) -> JournalKind {
    JournalKind::Claim {
        claims: targets
            .iter()
            .map(|t| (t.channel_id, t.total_claimed))
            .collect(),
    }
}

fn refund_call(config: &ChannelConfig, amount: u128, nonce: U256, sig: Bytes) -> Bytes {
    BatchSettlement::refundWithSignatureCall {
        config: config.into(),
        amount,
        nonce,
        receiverAuthorizerSignature: sig,
    }
    .abi_encode()
    .into()
}

fn refused<T>(what: &'static str, reason: impl Into<String>) -> Result<T> {
    Err(Error::Refused {
        what,
        reason: reason.into(),
    })
}

/// The claim targets of `rows` (channel id, claimed total after the claim); no rows is refused.
fn claim_targets(
    domain: &BatchDomain,
    what: &'static str,
    rows: &[ClaimRow],
) -> Result<Vec<ClaimTarget>> {
    if rows.is_empty() {
        return refused(what, "no claim rows");
    }
    Ok(rows
        .iter()
        .map(|r| ClaimTarget {
            channel_id: domain.channel_id(&r.voucher.channel),
            total_claimed: r.total_claimed,
        })
        .collect())
}

/// Whether every row shares the first row's receiver authorizer (one `ClaimBatch` signature
/// covers one authorizer).
fn one_authorizer(rows: &[ClaimRow]) -> bool {
    rows.first().is_none_or(|first| {
        rows.iter().all(|r| {
            r.voucher.channel.receiver_authorizer == first.voucher.channel.receiver_authorizer
        })
    })
}

/// Whether `sender` may send `claim(rows)` without an authorizer signature: it is the receiver
/// or the receiver authorizer of every row.
fn may_claim(sender: Address, rows: &[ClaimRow]) -> bool {
    rows.iter().all(|r| {
        r.voucher.channel.receiver == sender || r.voucher.channel.receiver_authorizer == sender
    })
}

/// The ERC-3009 authorization nonce of a deposit through the ERC-3009 collector, from its
/// `collectorData` (`validAfter, validBefore, salt, signature`); `None` if it does not decode.
fn erc3009_authorization_nonce(channel_id: B256, collector_data: &[u8]) -> Option<B256> {
    <(U256, U256, U256, Bytes)>::abi_decode_params(collector_data)
        .ok()
        .map(|(_, _, salt, _)| deposit_nonce(channel_id, salt))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use paychan_bindings::convert::erc3009_collector_data;
    use paychan_core::batch::ClaimVoucher;

    use super::*;

    fn row(receiver: u8, authorizer: u8, salt: u8, total: u128) -> ClaimRow {
        ClaimRow {
            voucher: ClaimVoucher {
                channel: ChannelConfig {
                    payer: Address::repeat_byte(1),
                    payer_authorizer: Address::repeat_byte(1),
                    receiver: Address::repeat_byte(receiver),
                    receiver_authorizer: Address::repeat_byte(authorizer),
                    token: Address::repeat_byte(4),
                    withdraw_delay: 900,
                    salt: B256::repeat_byte(salt),
                },
                max_claimable_amount: total,
            },
            signature: Bytes::new(),
            total_claimed: total,
        }
    }

    #[test]
    fn claim_targets_name_each_channel_and_refuse_no_rows() {
        let domain = BatchDomain::new(31_337, Address::repeat_byte(0xee));
        let rows = vec![row(2, 3, 1, 10), row(2, 3, 2, 20)];
        let t = claim_targets(&domain, "claim", &rows).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].channel_id, domain.channel_id(&rows[0].voucher.channel));
        assert_eq!(t[1].channel_id, domain.channel_id(&rows[1].voucher.channel));
        assert_ne!(t[0].channel_id, t[1].channel_id);
        assert_eq!((t[0].total_claimed, t[1].total_claimed), (10, 20));
        assert!(matches!(
            claim_targets(&domain, "claim", &[]),
            Err(Error::Refused { what: "claim", .. })
        ));
    }

    #[test]
    fn a_signed_batch_needs_one_authorizer() {
        assert!(one_authorizer(&[]));
        assert!(one_authorizer(&[row(2, 3, 1, 1), row(5, 3, 2, 1)]));
        assert!(!one_authorizer(&[row(2, 3, 1, 1), row(2, 4, 2, 1)]));
    }

    #[test]
    fn an_unsigned_claim_needs_the_receiver_or_its_authorizer_on_every_row() {
        let me = Address::repeat_byte(2);
        assert!(may_claim(me, &[row(2, 3, 1, 1), row(9, 2, 2, 1)]));
        assert!(!may_claim(me, &[row(2, 3, 1, 1), row(9, 8, 2, 1)]));
    }

    #[test]
    fn the_authorization_nonce_comes_from_the_collector_data() {
        let id = B256::repeat_byte(7);
        let salt = U256::from(42);
        let data = erc3009_collector_data(U256::ZERO, U256::from(99), salt, &[0xaa; 65]);
        assert_eq!(
            erc3009_authorization_nonce(id, &data),
            Some(deposit_nonce(id, salt))
        );
        assert_ne!(
            erc3009_authorization_nonce(B256::repeat_byte(8), &data),
            Some(deposit_nonce(id, salt))
        );
        assert_eq!(erc3009_authorization_nonce(id, &[1, 2, 3]), None);
    }
}
