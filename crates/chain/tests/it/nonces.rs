//! Several transactions in flight from one relayer: consecutive nonces, all confirmed, in one
//! block; then one claim batch over ten channels.

use alloy::providers::ext::AnvilApi;
use paychan_devchain::Role;
use paychan_store::{JournalState, Store};

use crate::support::{Env, confirmed, eventually, mem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_transactions_get_consecutive_nonces_and_all_confirm() {
    let env = Env::start().await;
    let store = mem();
    let relayer = env.relayer(store.clone()).await;
    let reader = env.reader().await;
    let n0 = env.nonce(relayer.address()).await;
    let channels: Vec<_> = (0..10u64)
        .map(|i| {
            let payer = Role::Payer(u8::try_from(i % 6).unwrap());
            (payer, env.channel(payer, 100 + i))
        })
        .collect();
    let mut data = Vec::new();
    for (i, (payer, c)) in channels.iter().enumerate() {
        data.push(env.deposit_data(*payer, c, 10_000 + i as u128, 7).await);
    }

    // Nothing is mined until all ten are in the pool.
    env.chain
        .provider()
        .anvil_set_auto_mine(false)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (i, ((_, c), d)) in channels.iter().zip(data).enumerate() {
        let r = relayer.clone();
        let c = *c;
        tasks.push(tokio::spawn(async move {
            r.deposit(&c, 10_000 + i as u128, d).await
        }));
    }
    eventually("ten transactions in flight", 20, || async {
        let open = store.open_journal().await.unwrap();
        (open.len() == 10
            && open
                .iter()
                .all(|e| matches!(e.state, JournalState::Sent { .. })))
        .then_some(())
    })
    .await;
    let mut nonces: Vec<u64> = store
        .open_journal()
        .await
        .unwrap()
        .iter()
        .map(|e| match e.state {
            JournalState::Sent { nonce, .. } => nonce,
            _ => unreachable!(),
        })
        .collect();
    nonces.sort_unstable();
    assert_eq!(nonces, (n0..n0 + 10).collect::<Vec<_>>());
    env.chain
        .provider()
        .anvil_mine(Some(1), None)
        .await
        .unwrap();

    let mut blocks = Vec::new();
    for t in tasks {
        let e = t.await.unwrap().unwrap();
        blocks.push(confirmed(&e).1);
    }
    blocks.dedup();
    assert_eq!(blocks.len(), 1, "all ten in one block");
    assert_eq!(env.nonce(relayer.address()).await, n0 + 10);
    env.chain
        .provider()
        .anvil_set_auto_mine(true)
        .await
        .unwrap();

    let ids: Vec<_> = channels
        .iter()
        .map(|(_, c)| env.domain.channel_id(c))
        .collect();
    for (i, s) in reader
        .channel_states(&ids)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(s.balance, 10_000 + i as u128);
    }

    // one claim over all ten channels
    let claims: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(i, (p, c))| (*p, *c, 100 + i as u128))
        .collect();
    let (rows, sig) = env.claim_rows(&claims);
    let batch = relayer.claim_with_signature(rows, sig).await.unwrap();
    let total: u128 = (0..10).map(|i| 100 + i as u128).sum();
    for (i, s) in reader
        .channel_states(&ids)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(s.total_claimed, 100 + i as u128);
    }
    assert_eq!(
        reader
            .receiver_state(env.addr(Role::Receiver), env.token)
            .await
            .unwrap(),
        (total, 0)
    );
    println!("gas: claim batch of 10 channels {}", confirmed(&batch).2);
}
