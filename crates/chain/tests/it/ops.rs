//! Reads against what deposits, claims, settles, refunds and withdrawals did, to the unit; every
//! operation journaled with its gas.

use alloy::{
    primitives::{Address, B256, U256},
    providers::Provider,
};
use paychan_chain::{ChainConfig, ChainReader, Error, PayerClient, SignedRefund};
use paychan_core::batch::payee::OnchainState;
use paychan_devchain::{ESCROW, Role};
use paychan_store::{JournalKind, Store};

use crate::support::{Env, confirmed, mem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_match_deposits_claims_settles_refunds_and_withdrawals() {
    let env = Env::start().await;
    let reader = env.reader().await;
    let store = mem();
    let relayer = env.relayer(store.clone()).await;
    let (p0, p1) = (Role::Payer(0), Role::Payer(1));
    let (a, b) = (env.channel(p0, 1), env.channel(p1, 2));
    let (ida, idb) = (env.domain.channel_id(&a), env.domain.channel_id(&b));
    let receiver = env.addr(Role::Receiver);
    let unknown = B256::repeat_byte(0xee);
    assert_eq!(
        reader.channel_state(ida).await.unwrap(),
        OnchainState::default()
    );
    let p0_before = env.balance(a.payer).await;
    let p1_before = env.balance(b.payer).await;
    let receiver_before = env.balance(receiver).await;

    let dep_a = relayer
        .deposit(&a, 1_000_000, env.deposit_data(p0, &a, 1_000_000, 1).await)
        .await
        .unwrap();
    let dep_b = relayer
        .deposit(&b, 500_000, env.deposit_data(p1, &b, 500_000, 2).await)
        .await
        .unwrap();
    assert_eq!(
        dep_a.kind,
        JournalKind::Deposit {
            channel_id: ida,
            amount: 1_000_000
        }
    );

    let (rows, sig) = env.claim_rows(&[(p0, a, 725)]);
    let claim1 = relayer.claim_with_signature(rows, sig).await.unwrap();
    assert_eq!(
        claim1.kind,
        JournalKind::Claim {
            claims: vec![(ida, 725)]
        }
    );
    let (rows, sig) = env.claim_rows(&[(p0, a, 800), (p1, b, 300)]);
    let claim2 = relayer.claim_with_signature(rows, sig).await.unwrap();

    let states = reader.channel_states(&[ida, idb, unknown]).await.unwrap();
    assert_eq!(
        states,
        vec![
            OnchainState {
                balance: 1_000_000,
                total_claimed: 800,
                withdraw_requested_at: 0,
                refund_nonce: U256::ZERO
            },
            OnchainState {
                balance: 500_000,
                total_claimed: 300,
                withdraw_requested_at: 0,
                refund_nonce: U256::ZERO
            },
            OnchainState::default(),
        ]
    );
    let at = reader.channel_states_at(&[ida]).await.unwrap();
    assert_eq!(at.block, reader.block_number().await.unwrap());
    assert_eq!(
        reader.receiver_state(receiver, env.token).await.unwrap(),
        (1_100, 0)
    );

    let settle = relayer.settle(receiver, env.token).await.unwrap();
    assert_eq!(
        reader.receiver_state(receiver, env.token).await.unwrap(),
        (1_100, 1_100)
    );
    assert_eq!(env.balance(receiver).await, receiver_before + 1_100);

    let refund = relayer
        .refund_with_signature(
            &b,
            100_000,
            U256::ZERO,
            env.refund_sig(&b, U256::ZERO, 100_000),
        )
        .await
        .unwrap();
    let sb = reader.channel_state(idb).await.unwrap();
    assert_eq!(
        (sb.balance, sb.total_claimed, sb.refund_nonce),
        (400_000, 300, U256::from(1))
    );
    assert_eq!(reader.refund_nonce(idb).await.unwrap(), U256::from(1));
    assert_eq!(env.balance(b.payer).await, p1_before - 500_000 + 100_000);

    // claim + refund in one multicall: two journal entries, one transaction
    let (rows, sig) = env.claim_rows(&[(p0, a, 900)]);
    let (c, r) = relayer
        .claim_and_refund(
            rows,
            sig,
            SignedRefund {
                config: a,
                amount: 50_000,
                nonce: U256::ZERO,
                signature: env.refund_sig(&a, U256::ZERO, 50_000),
            },
        )
        .await
        .unwrap();
    assert_eq!(confirmed(&c), confirmed(&r));
    assert_eq!(
        c.kind,
        JournalKind::Claim {
            claims: vec![(ida, 900)]
        }
    );
    assert_eq!(
        r.kind,
        JournalKind::Refund {
            channel_id: ida,
            amount: 50_000
        }
    );
    let sa = reader.channel_state(ida).await.unwrap();
    assert_eq!(
        (sa.balance, sa.total_claimed, sa.refund_nonce),
        (950_000, 900, U256::from(1))
    );

    // the payer's timed withdrawal
    let payer = PayerClient::new(reader.clone(), env.tx_key(p0));
    let init = payer.initiate_withdraw(&a, 10_000).await.unwrap();
    let block = env
        .chain
        .provider()
        .get_block_by_number(init.block.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reader.pending_withdrawal(ida).await.unwrap(),
        (10_000, block.header.timestamp)
    );
    assert_eq!(
        reader
            .channel_state(ida)
            .await
            .unwrap()
            .withdraw_requested_at,
        block.header.timestamp
    );
    let nonce_before = env.nonce(payer.address()).await;
    let err = payer.finalize_withdraw(&a).await.unwrap_err();
    assert!(
        matches!(&err, Error::Reverted { reason, .. } if reason.contains("WithdrawDelayNotElapsed")),
        "{err}"
    );
    assert_eq!(
        env.nonce(payer.address()).await,
        nonce_before,
        "a call that reverts is not sent"
    );
    env.chain.increase_time(901).await.unwrap();
    let fin = payer.finalize_withdraw(&a).await.unwrap();
    assert_eq!(reader.pending_withdrawal(ida).await.unwrap(), (0, 0));
    assert_eq!(reader.channel_state(ida).await.unwrap().balance, 940_000);
    assert_eq!(
        env.balance(a.payer).await,
        p0_before - 1_000_000 + 50_000 + 10_000
    );
    assert_eq!(
        reader.token_balance(env.token, ESCROW).await.unwrap(),
        U256::from(1_500_000u128 - 1_100 - 100_000 - 50_000 - 10_000)
    );

    // every journaled action is confirmed with its gas
    for e in [&dep_a, &dep_b, &claim1, &claim2, &settle, &refund, &c] {
        assert!(confirmed(e).2 > 21_000);
        assert_eq!(store.journal_entry(e.id).await.unwrap().as_ref(), Some(e));
    }
    assert!(store.open_journal().await.unwrap().is_empty());
    println!(
        "gas: deposit (first, ERC-3009) {}, deposit (second channel) {}, claim 1 row {}, claim 2 rows {}, settle {}, refundWithSignature {}, multicall(claim+refund) {}, initiateWithdraw {}, finalizeWithdraw {}",
        confirmed(&dep_a).2,
        confirmed(&dep_b).2,
        confirmed(&claim1).2,
        confirmed(&claim2).2,
        confirmed(&settle).2,
        confirmed(&refund).2,
        confirmed(&c).2,
        init.gas_used,
        fin.gas_used
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_send_nothing_and_journal_nothing() {
    let env = Env::start().await;
    let store = mem();
    let relayer = env.relayer(store.clone()).await;
    let p0 = Role::Payer(0);
    let a = env.channel(p0, 1);
    let me = relayer.address();
    let n0 = env.nonce(me).await;

    // the relayer is neither receiver nor receiver authorizer: `claim` is refused locally
    let (rows, sig) = env.claim_rows(&[(p0, a, 10)]);
    assert!(matches!(
        relayer.claim(rows.clone()).await,
        Err(Error::Refused { what: "claim", .. })
    ));
    // nothing deposited: the escrow would revert, so nothing is sent
    let err = relayer
        .claim_with_signature(rows.clone(), sig.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Reverted { reason, .. } if reason == "ClaimExceedsBalance"),
        "{err}"
    );
    // above the gas ceiling
    let tight = ChainReader::connect(ChainConfig {
        max_gas_per_tx: 30_000,
        ..env.config()
    })
    .await
    .unwrap();
    let tight = paychan_chain::Relayer::new(tight, store.clone(), env.tx_key(Role::Relayer));
    let err = tight
        .deposit(&a, 1_000, env.deposit_data(p0, &a, 1_000, 9).await)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::GasCeiling {
                ceiling: 30_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(env.nonce(me).await, n0);
    assert!(store.journal_after(0, 10).await.unwrap().is_empty());

    // a node on another chain, or without the escrow, is refused at connect
    let err = ChainReader::connect(ChainConfig {
        chain_id: 8453,
        ..env.config()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongChain {
                expected: 8453,
                actual: 31337,
                ..
            }
        ),
        "{err}"
    );
    let err = ChainReader::connect(ChainConfig {
        escrow: Address::repeat_byte(0x42),
        ..env.config()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::NoCode { what: "escrow", .. }), "{err}");
    // an unreachable node: a clear, bounded error naming the call
    let started = std::time::Instant::now();
    let err = ChainReader::connect(env.config_for("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rpc {
                call: "eth_chainId",
                attempts: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
