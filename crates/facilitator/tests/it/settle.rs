//! `/settle`: every action on chain, checked to the unit; retries move nothing; refusals.

use alloy::providers::Provider;
use paychan_bindings::BatchSettlement;
use paychan_core::{
    ErrorCode,
    batch::{
        BatchPayload, ChannelSnapshot, ClaimPayload, ClaimRow, ClaimVoucher, RefundPayload,
        SettleActionPayload,
        payee::{self, ChannelRecord, CheckContext},
        payer::PayerChannel,
    },
    sig::{Backend, LocalSigner},
};
use paychan_devchain::{ESCROW, Role};
use paychan_store::MemStore;

use crate::support::*;

fn claim_row(env: &Env, pc: &PayerChannel, signer: &LocalSigner, total: u128) -> ClaimRow {
    ClaimRow {
        voucher: ClaimVoucher {
            channel: pc.config,
            max_claimable_amount: total,
        },
        signature: env.voucher_signed_by(pc, signer, total).signature,
        total_claimed: total,
    }
}

fn claim(rows: Vec<ClaimRow>) -> BatchPayload {
    BatchPayload::Claim(ClaimPayload {
        claims: rows,
        claim_authorizer_signature: None,
    })
}

#[tokio::test]
async fn every_action_settles_on_chain_to_the_unit_and_retries_move_nothing() {
    let env = Env::start().await;
    let store = MemStore::new();
    let f = env.facilitator_with(store.clone(), Some(env.authorizer()));
    let req = env.requirements();
    let (payer, mut pc) = env.payer(20, 50_000).await;
    let me = payer.address();
    let (p0, r0, e0) = env.balances(me).await;

    // deposit: 20,000 into a new channel, paying the first request
    let dep = env.envelope(BatchPayload::Deposit(
        env.deposit(&mut pc, &payer, 20_000, 1),
    ));
    let s = f.settle(&dep, &req).await;
    let deposit_tx = tx_of(&s);
    assert_eq!(s.amount.as_deref(), Some("20000"));
    assert_eq!(s.payer.as_deref(), Some(me.to_checksum(None).as_str()));
    let cs = channel_state(&s);
    assert_eq!(
        (cs.channel_id, cs.balance, cs.total_claimed),
        (pc.channel_id, 20_000, 0)
    );
    assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));
    let receipt = env
        .chain
        .provider()
        .get_transaction_receipt(deposit_tx)
        .await
        .unwrap()
        .unwrap();
    assert!(receipt.status());
    assert_eq!(receipt.to, Some(ESCROW));
    assert_eq!(receipt.from, env.chain.account(Role::Relayer).address);

    // retried: the same transaction, nothing moves; also after a restart on the same store
    for f in [&f, &env.facilitator_with(store.clone(), None)] {
        let again = f.settle(&dep, &req).await;
        assert_eq!(tx_of(&again), deposit_tx);
        assert_eq!(again.amount.as_deref(), Some("20000"));
        assert_eq!(channel_state(&again).balance, 20_000);
        assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));
    }
    // a facilitator that never saw it: the single-use authorization refuses a second deposit
    let fresh = env.facilitator();
    assert_eq!(
        failed(&fresh.settle(&dep, &req).await),
        ErrorCode::DepositSimulationFailed
    );
    assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));

    // three more requests paid by voucher (the server charged the deposit's voucher: 1000)
    pc.charged = PRICE;
    pc.balance = 20_000;
    for _ in 0..3 {
        let v = pc.voucher_payload(&env.domain, &payer, PRICE).unwrap();
        let r = f
            .verify(&env.envelope(BatchPayload::Voucher(v.clone())), &req)
            .await;
        assert!(r.is_valid, "{r:?}");
        // a voucher has nothing to settle on chain
        assert_eq!(
            failed(
                &f.settle(&env.envelope(BatchPayload::Voucher(v)), &req)
                    .await
            ),
            ErrorCode::PayloadType
        );
        pc.charged += PRICE;
    }
    assert_eq!(pc.charged, 4_000);

    // claim 4000, the ClaimBatch signed by the facilitator (it holds the key)
    let c = env.envelope(claim(vec![claim_row(&env, &pc, &payer, 4_000)]));
    let s = f.settle(&c, &req).await;
    let claim_tx = tx_of(&s);
    assert_eq!(s.amount.as_deref(), Some(""));
    assert_eq!(env.state(pc.channel_id).await.total_claimed, 4_000);
    assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));
    assert_eq!(tx_of(&f.settle(&c, &req).await), claim_tx);
    // without a record (another store) the claim is seen to be on chain: nothing is sent
    let s = env.facilitator().settle(&c, &req).await;
    assert!(s.success && s.transaction.is_empty(), "{s:?}");
    assert_eq!(env.state(pc.channel_id).await.total_claimed, 4_000);

    // settle: 4000 to the receiver; again: a no-op, "0"
    let sweep = env.envelope(BatchPayload::Settle(SettleActionPayload {
        receiver: env.receiver,
        token: env.token,
    }));
    let s = f.settle(&sweep, &req).await;
    tx_of(&s);
    assert_eq!(s.amount.as_deref(), Some("4000"));
    assert_eq!(
        env.balances(me).await,
        (p0 - 20_000, r0 + 4_000, e0 + 16_000)
    );
    let s = f.settle(&sweep, &req).await;
    assert!(s.success && s.transaction.is_empty(), "{s:?}");
    assert_eq!(s.amount.as_deref(), Some("0"));
    assert_eq!(
        env.balances(me).await,
        (p0 - 20_000, r0 + 4_000, e0 + 16_000)
    );

    // refund the rest; the facilitator signs the Refund (the server completed amount and nonce)
    let client = pc.refund_payload(&env.domain, &payer, None).unwrap();
    let refund = env.envelope(BatchPayload::Refund(RefundPayload {
        amount: Some(16_000),
        refund_nonce: Some(alloy::primitives::U256::ZERO),
        claims: Some(vec![]),
        ..client
    }));
    let s = f.settle(&refund, &req).await;
    let refund_tx = tx_of(&s);
    assert_eq!(s.amount.as_deref(), Some("16000"));
    let cs: ChannelSnapshot = channel_state(&s);
    assert_eq!(
        (cs.balance, cs.total_claimed, cs.refund_nonce.to::<u64>()),
        (4_000, 4_000, 1)
    );
    // the payer paid exactly what was charged, the receiver got it, the escrow holds nothing
    assert_eq!(env.balances(me).await, (p0 - 4_000, r0 + 4_000, e0));
    let again = f.settle(&refund, &req).await;
    assert_eq!(tx_of(&again), refund_tx);
    assert_eq!(again.amount.as_deref(), Some("16000"));
    assert_eq!(env.balances(me).await, (p0 - 4_000, r0 + 4_000, e0));
    assert_eq!(env.state(pc.channel_id).await.refund_nonce.to::<u64>(), 1);
}

#[tokio::test]
async fn server_signed_refund_with_claims_is_one_multicall_and_refusals_move_nothing() {
    let env = Env::start().await;
    // the server holds the receiver-authorizer key; the facilitator does not
    let f = env.facilitator_without_key();
    let authorizer = env.authorizer();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(30, 30_000).await;
    let me = payer.address();
    env.fund(&payer, &mut pc, 10_000).await;
    // a second channel, for the claim refusals below (funded before the facilitator sends: the
    // dev chain's deposits use the relayer account too)
    let (p2, mut pc2) = env.payer(31, 10_000).await;
    env.fund(&p2, &mut pc2, 5_000).await;
    let (p0, r0, e0) = env.balances(me).await;

    // the server charged 3000 by voucher and nothing is claimed; the client asks for a refund
    pc.charged = 3_000;
    let client = pc.refund_payload(&env.domain, &payer, None).unwrap();
    let verdict = f
        .verify(&env.envelope(BatchPayload::Refund(client.clone())), &req)
        .await;
    assert!(verdict.is_valid, "{verdict:?}");
    // paychan's payee side plans and completes it (claim 3000 first, refund 7000)
    let mut record =
        ChannelRecord::from_chain(pc.channel_id, pc.config, env.state(pc.channel_id).await, 0);
    record.charged = 3_000;
    let ctx = CheckContext {
        domain: &env.domain,
        requirements: &env.offer,
        now_ms: 0,
        max_onchain_age_ms: u64::MAX,
        backend: Backend::default(),
    };
    let (plan, _) = payee::check_refund(&record, None, &client, &ctx).unwrap();
    assert_eq!((plan.amount, plan.claim.is_some()), (7_000, true));

    // unsigned, to a facilitator without the key: refused, nothing moves
    let unsigned = payee::complete_refund(&env.domain, &client, &plan, None).unwrap();
    let s = f
        .settle(&env.envelope(BatchPayload::Refund(unsigned)), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::AuthorizerNotConfigured);
    // signed for a nonce that is not the channel's (rule 11)
    let mut wrong_nonce = plan.clone();
    wrong_nonce.nonce = alloy::primitives::U256::from(1);
    let p = payee::complete_refund(&env.domain, &client, &wrong_nonce, Some(&authorizer)).unwrap();
    let s = f.settle(&env.envelope(BatchPayload::Refund(p)), &req).await;
    assert_eq!(failed(&s), ErrorCode::RefundSimulationFailed);
    assert!(s.error_message.unwrap().contains("InvalidRefundNonce"));
    // signed by another key: the simulation decodes the escrow's refusal
    let p = payee::complete_refund(&env.domain, &client, &plan, Some(&authorizer)).unwrap();
    let mut forged = p.clone();
    forged.refund_authorizer_signature = Some(alloy::primitives::Bytes::copy_from_slice(
        &env.key(Role::Payer(5))
            .sign_digest(
                &env.domain
                    .refund_digest(pc.channel_id, plan.nonce, plan.amount),
            )
            .unwrap()
            .to_bytes(),
    ));
    let s = f
        .settle(&env.envelope(BatchPayload::Refund(forged)), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::RefundSimulationFailed);
    assert!(s.error_message.unwrap().contains("InvalidSignature"));
    assert_eq!(env.balances(me).await, (p0, r0, e0));

    // signed by the server: claim + refund in one multicall
    let s = f
        .settle(&env.envelope(BatchPayload::Refund(p.clone())), &req)
        .await;
    let tx = tx_of(&s);
    assert_eq!(s.amount.as_deref(), Some("7000"));
    let cs = channel_state(&s);
    assert_eq!(
        (cs.balance, cs.total_claimed, cs.refund_nonce.to::<u64>()),
        (3_000, 3_000, 1)
    );
    let receipt = env
        .chain
        .provider()
        .get_transaction_receipt(tx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.to, Some(ESCROW));
    let claimed: Vec<_> = receipt
        .logs()
        .iter()
        .filter_map(|l| l.log_decode::<BatchSettlement::Claimed>().ok())
        .collect();
    let refunded: Vec<_> = receipt
        .logs()
        .iter()
        .filter_map(|l| l.log_decode::<BatchSettlement::Refunded>().ok())
        .collect();
    assert_eq!(claimed.len(), 1, "one Claimed in the refund transaction");
    assert_eq!(claimed[0].inner.data.newTotalClaimed, 3_000);
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].inner.data.amount, 7_000);
    // payer got 7000 back; the 3000 stay in the escrow, claimed for the receiver
    assert_eq!(env.balances(me).await, (p0 + 7_000, r0, e0 - 7_000));
    assert_eq!(
        env.reader
            .receiver_state(env.receiver, env.token)
            .await
            .unwrap(),
        (3_000, 0)
    );
    // retried: same transaction, nothing moves
    let again = f.settle(&env.envelope(BatchPayload::Refund(p)), &req).await;
    assert_eq!(tx_of(&again), tx);
    assert_eq!(env.balances(me).await, (p0 + 7_000, r0, e0 - 7_000));

    // nothing left: a refund for the next nonce has nothing to return
    record.sync_onchain(env.state(pc.channel_id).await, 0);
    let next = RefundPayload {
        amount: Some(1),
        refund_nonce: Some(alloy::primitives::U256::from(1)),
        claims: Some(vec![]),
        ..pc.refund_payload(&env.domain, &payer, None).unwrap()
    };
    let s = f
        .settle(&env.envelope(BatchPayload::Refund(next)), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::RefundNoBalance);

    // claim refusals: no key and no signature; mixed authorizers; no rows; a key for someone else
    let row = claim_row(&env, &pc2, &p2, 2_000);
    let s = f
        .settle(&env.envelope(claim(vec![row.clone()])), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::AuthorizerNotConfigured);
    let mut other_cfg = pc2.config;
    other_cfg.receiver_authorizer = env.chain.account(Role::Payer(5)).address;
    let other = claim_row(&env, &env.channel_for(other_cfg), &p2, 1);
    let s = f
        .settle(&env.envelope(claim(vec![row.clone(), other])), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::ClaimPayload);
    assert_eq!(
        failed(&f.settle(&env.envelope(claim(vec![])), &req).await),
        ErrorCode::ClaimPayload
    );
    let wrong_key = env.facilitator_with(MemStore::new(), Some(env.key(Role::Payer(5))));
    let s = wrong_key
        .settle(&env.envelope(claim(vec![row.clone()])), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::AuthorizerAddressMismatch);
    // a voucher the payer did not sign: refused before anything is signed or simulated
    let mut forged = row.clone();
    forged.signature = env
        .voucher_signed_by(&pc2, &env.key(Role::Payer(5)), 2_000)
        .signature;
    let s = env
        .facilitator()
        .settle(&env.envelope(claim(vec![forged])), &req)
        .await;
    assert_eq!(failed(&s), ErrorCode::VoucherSignature);
    assert!(s.error_message.unwrap().contains("claim row 0"));
    // the server's own ClaimBatch signature is used as given
    let domain = &env.domain;
    let digest =
        domain.claim_batch_digest(&payee::claim_entries(domain, std::slice::from_ref(&row)));
    let signed = BatchPayload::Claim(ClaimPayload {
        claims: vec![row],
        claim_authorizer_signature: Some(alloy::primitives::Bytes::copy_from_slice(
            &authorizer.sign_digest(&digest).unwrap().to_bytes(),
        )),
    });
    tx_of(&f.settle(&env.envelope(signed), &req).await);
    assert_eq!(env.state(pc2.channel_id).await.total_claimed, 2_000);
}

#[tokio::test]
async fn an_unconfirmed_deposit_is_pending_and_a_retry_reconciles_it() {
    use alloy::providers::ext::AnvilApi;
    use paychan_chain::{ChainConfig, ChainReader, Relayer, TxKey};
    let env = Env::start().await;
    // a facilitator that gives up waiting for a receipt after half a second
    let config = ChainConfig {
        confirm_timeout: Some(std::time::Duration::from_millis(500)),
        ..Env::config_for(env.chain.rpc_url())
    };
    let reader = ChainReader::connect(config).await.unwrap();
    let relayer = Relayer::new(
        reader.clone(),
        MemStore::new(),
        TxKey::from_secret(&env.chain.account(Role::Relayer).key).unwrap(),
    );
    let f = paychan_facilitator::Facilitator::with_config(
        reader,
        relayer,
        None,
        paychan_facilitator::FacilitatorConfig {
            deposit_receivers: vec![env.receiver],
            ..Default::default()
        },
    )
    .unwrap();
    let req = env.requirements();
    let (payer, mut pc) = env.payer(70, 50_000).await;
    let me = payer.address();
    let (p0, r0, e0) = env.balances(me).await;
    let dep = env.envelope(BatchPayload::Deposit(
        env.deposit(&mut pc, &payer, 20_000, 1),
    ));

    // the chain stops mining: the deposit is sent but not confirmed in time
    let provider = env.chain.provider();
    provider.anvil_set_auto_mine(false).await.unwrap();
    let s = f.settle(&dep, &req).await;
    assert_eq!(failed(&s), ErrorCode::SettlementPending);
    let pending: alloy::primitives::B256 = s.transaction.parse().unwrap();
    // a retry while it is still unmined sends nothing new and is still pending, same transaction
    let s = f.settle(&dep, &req).await;
    assert_eq!(failed(&s), ErrorCode::SettlementPending);
    assert_eq!(
        s.transaction.parse::<alloy::primitives::B256>().unwrap(),
        pending
    );
    assert_eq!(env.balances(me).await, (p0, r0, e0));

    // mined: the retry reconciles with the relayer's journal and answers the deposit
    provider.anvil_mine(Some(1), None).await.unwrap();
    provider.anvil_set_auto_mine(true).await.unwrap();
    let s = f.settle(&dep, &req).await;
    assert_eq!(tx_of(&s), pending);
    assert_eq!(s.amount.as_deref(), Some("20000"));
    assert_eq!(channel_state(&s).balance, 20_000);
    assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));
    // and from then on it is a plain replay
    assert_eq!(tx_of(&f.settle(&dep, &req).await), pending);
    assert_eq!(env.balances(me).await, (p0 - 20_000, r0, e0 + 20_000));
}
