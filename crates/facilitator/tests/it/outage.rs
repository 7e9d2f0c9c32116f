//! A dead RPC node: every verify and settle answers with a read-failure code and a message.

use paychan_core::{
    ErrorCode,
    batch::{
        BatchPayload, ClaimPayload, ClaimRow, ClaimVoucher, RefundPayload, SettleActionPayload,
    },
};

use crate::support::*;

#[tokio::test]
async fn rpc_failures_are_answers_not_panics() {
    let mut env = Env::start().await;
    let f = env.facilitator();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(60, 50_000).await;
    env.fund(&payer, &mut pc, 5_000).await;
    let deposit = env.deposit(&mut pc.clone(), &payer, 1_000, 2);
    let voucher = pc.voucher_payload(&env.domain, &payer, PRICE).unwrap();
    let claim = ClaimPayload {
        claims: vec![ClaimRow {
            voucher: ClaimVoucher {
                channel: pc.config,
                max_claimable_amount: PRICE,
            },
            signature: voucher.voucher.signature.clone(),
            total_claimed: PRICE,
        }],
        claim_authorizer_signature: None,
    };
    let refund = RefundPayload {
        amount: Some(1),
        refund_nonce: Some(alloy::primitives::U256::ZERO),
        claims: None,
        ..pc.refund_payload(&env.domain, &payer, None).unwrap()
    };
    let sweep = SettleActionPayload {
        receiver: env.receiver,
        token: env.token,
    };

    // the node's address stands in for an RPC URL with an API key: it must reach no answer
    let rpc = env.chain.rpc_url().to_owned();
    let node = rpc
        .split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    env.chain.process_mut().kill();

    let verify = async |p: BatchPayload| {
        let v = f.verify(&env.envelope(p), &req).await;
        let m = v.invalid_message.clone().unwrap_or_default();
        assert!(!m.contains(&node), "{m}");
        refused(&v)
    };
    assert_eq!(
        verify(BatchPayload::Voucher(voucher.clone())).await,
        ErrorCode::ChannelStateReadFailed
    );
    assert_eq!(
        verify(BatchPayload::Deposit(deposit.clone())).await,
        ErrorCode::RpcReadFailed
    );
    assert_eq!(
        verify(BatchPayload::Refund(refund.clone())).await,
        ErrorCode::ChannelStateReadFailed
    );
    let settle = async |p: BatchPayload| {
        let s = f.settle(&env.envelope(p), &req).await;
        let m = s.error_message.clone().unwrap_or_default();
        assert!(!m.contains(&node), "{m}");
        failed(&s)
    };
    assert_eq!(
        settle(BatchPayload::Deposit(deposit)).await,
        ErrorCode::RpcReadFailed
    );
    assert_eq!(
        settle(BatchPayload::Claim(claim)).await,
        ErrorCode::ChannelStateReadFailed
    );
    assert_eq!(
        settle(BatchPayload::Settle(sweep)).await,
        ErrorCode::RpcReadFailed
    );
    assert_eq!(
        settle(BatchPayload::Refund(refund)).await,
        ErrorCode::ChannelStateReadFailed
    );
}
