//! Money through the Rust bindings on a real dev chain: a payer's ERC-3009 deposit through the
//! collector, a receiver-authorized claim of a signed voucher, a settle sweep; every balance checked.

use alloy::primitives::{B256, U256};
use paychan_bindings::{BatchSettlement, convert::erc3009_collector_data};
use paychan_core::{
    batch::{
        BatchDomain, ChannelConfig, ClaimEntry, ClaimRow, ClaimVoucher,
        eip712::Eip712Domain,
        payer::{Erc3009Terms, sign_erc3009_authorization},
    },
    sig::LocalSigner,
};
use paychan_devchain::{DevChain, ERC3009_COLLECTOR, ESCROW, Role};

#[tokio::test]
async fn deposit_claim_settle_moves_exactly_the_charges() {
    let chain = DevChain::start().await.unwrap();
    let token = chain.contracts().token;
    let payer = chain.account(Role::Payer(0));
    let receiver = chain.account(Role::Receiver);
    let authorizer = chain.account(Role::ReceiverAuthorizer);
    let payer_key = LocalSigner::from_bytes(&payer.key).unwrap();
    let auth_key = LocalSigner::from_bytes(&authorizer.key).unwrap();
    let domain = BatchDomain::new(chain.chain_id(), ESCROW);
    let config = ChannelConfig {
        payer: payer.address,
        payer_authorizer: payer.address,
        receiver: receiver.address,
        receiver_authorizer: authorizer.address,
        token,
        withdraw_delay: 900,
        salt: B256::repeat_byte(0x42),
    };
    let channel_id = domain.channel_id(&config);
    let escrow = BatchSettlement::new(ESCROW, chain.provider_as(Role::Relayer).unwrap());
    assert_eq!(
        escrow.getChannelId((&config).into()).call().await.unwrap(),
        channel_id
    );

    let payer_before = chain.token_balance(payer.address).await.unwrap();
    let receiver_before = chain.token_balance(receiver.address).await.unwrap();

    // Deposit 1,000,000 through the collector, authorized by the payer's ERC-3009 signature and
    // relayed by someone else: the payer needs no ETH.
    let deposit = 1_000_000u128;
    let salt = U256::from(7);
    let valid_before = U256::from(chain.block_timestamp().await.unwrap() + 3600);
    let token_domain = Eip712Domain::new("USD Coin", "2", chain.chain_id(), token);
    let terms = Erc3009Terms {
        from: payer.address,
        collector: ERC3009_COLLECTOR,
        channel_id,
        amount: deposit,
        valid_after: U256::ZERO,
        valid_before,
        salt,
    };
    let auth = sign_erc3009_authorization(&token_domain, &terms, &payer_key).unwrap();
    let data = erc3009_collector_data(
        auth.valid_after,
        auth.valid_before,
        auth.salt,
        &auth.signature,
    );
    escrow
        .deposit((&config).into(), deposit, ERC3009_COLLECTOR, data)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let state = escrow.channels(channel_id).call().await.unwrap();
    assert_eq!((state.balance, state.totalClaimed), (deposit, 0));

    // Three requests paid by cumulative vouchers 300, 550, 725 (prices 300, 250, 175): the payee
    // claims only the latest, which covers all three.
    let last = 725u128;
    let voucher_sig = payer_key
        .sign_digest(&domain.voucher_digest(channel_id, last))
        .unwrap();
    let row = ClaimRow {
        voucher: ClaimVoucher {
            channel: config,
            max_claimable_amount: last,
        },
        signature: voucher_sig.to_bytes().to_vec().into(),
        total_claimed: last,
    };
    let batch_sig = auth_key
        .sign_digest(&domain.claim_batch_digest(&[ClaimEntry {
            channel_id,
            max_claimable_amount: last,
            total_claimed: last,
        }]))
        .unwrap();
    escrow
        .claimWithSignature(vec![(&row).into()], batch_sig.to_bytes().to_vec().into())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(
        escrow
            .channels(channel_id)
            .call()
            .await
            .unwrap()
            .totalClaimed,
        last
    );

    escrow
        .settle(receiver.address, token)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let rs = escrow
        .receivers(receiver.address, token)
        .call()
        .await
        .unwrap();
    assert_eq!((rs.totalClaimed, rs.totalSettled), (last, last));

    assert_eq!(
        chain.token_balance(receiver.address).await.unwrap(),
        receiver_before + U256::from(last)
    );
    assert_eq!(
        chain.token_balance(payer.address).await.unwrap(),
        payer_before - U256::from(deposit)
    );
    assert_eq!(
        chain.token_balance(ESCROW).await.unwrap(),
        U256::from(deposit - last)
    );

    // Replaying the same claim changes nothing (cumulative totals).
    escrow
        .claimWithSignature(vec![(&row).into()], batch_sig.to_bytes().to_vec().into())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(
        escrow
            .channels(channel_id)
            .call()
            .await
            .unwrap()
            .totalClaimed,
        last
    );
    assert_eq!(
        chain.token_balance(ESCROW).await.unwrap(),
        U256::from(deposit - last)
    );
}
