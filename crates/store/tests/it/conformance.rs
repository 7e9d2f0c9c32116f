//! Behaviour every [`Store`] must have.

use alloy_primitives::{Address, B256, U256, address};
use paychan_core::batch::{
    ChannelConfig,
    payee::{ChannelRecord, OnchainState},
};
use paychan_store::{
    AggregateOp, JournalEntry, JournalKind, JournalState, MemStore, PayerChannelRecord, SledStore,
    SledStoreConfig, Store, WriteBatch,
};

pub const RECEIVER: Address = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
pub const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");

pub fn record(n: u8, charged: u128) -> ChannelRecord {
    let config = ChannelConfig {
        payer: Address::repeat_byte(n),
        payer_authorizer: Address::repeat_byte(n),
        receiver: RECEIVER,
        receiver_authorizer: Address::repeat_byte(0xaa),
        token: TOKEN,
        withdraw_delay: 900,
        salt: B256::repeat_byte(n),
    };
    ChannelRecord {
        channel_id: B256::repeat_byte(n),
        config,
        charged,
        signed_max_claimable: charged,
        signature: None,
        onchain: OnchainState {
            balance: 1_000_000,
            total_claimed: 0,
            withdraw_requested_at: 0,
            refund_nonce: U256::ZERO,
        },
        onchain_synced_at: 1,
        last_request_at: 2,
    }
}

async fn suite<S: Store>(s: S) {
    // channels
    assert!(s.channel(B256::repeat_byte(1)).await.unwrap().is_none());
    s.commit(WriteBatch {
        channels: vec![record(1, 10), record(2, 20), record(3, 30)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.channel(B256::repeat_byte(2))
            .await
            .unwrap()
            .unwrap()
            .charged,
        20
    );
    // later write in the same batch wins
    s.commit(WriteBatch {
        channels: vec![record(2, 21), record(2, 22)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.channel(B256::repeat_byte(2))
            .await
            .unwrap()
            .unwrap()
            .charged,
        22
    );
    let page = s.channels_after(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.charged).collect::<Vec<_>>(),
        vec![10, 22]
    );
    let page = s
        .channels_after(Some(page[1].channel_id), 10)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.charged).collect::<Vec<_>>(), vec![30]);
    s.commit(WriteBatch {
        remove_channels: vec![B256::repeat_byte(3)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(s.channel(B256::repeat_byte(3)).await.unwrap().is_none());
    assert_eq!(s.stats().await.unwrap().channels, 2);

    // aggregates: on-chain totals as set, charged summed over the channels (10 + 22 now)
    s.commit(WriteBatch {
        aggregates: vec![(
            RECEIVER,
            TOKEN,
            AggregateOp::SetOnchain {
                claimed: 9,
                settled: 4,
            },
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    let a = s.aggregate(RECEIVER, TOKEN).await.unwrap();
    assert_eq!((a.charged, a.claimed, a.settled), (32, 9, 4));
    assert_eq!(
        s.aggregate(TOKEN, RECEIVER).await.unwrap(),
        Default::default()
    );

    // journal
    assert_eq!(s.next_journal_id().await.unwrap(), 1);
    let e = |id, state| JournalEntry {
        id,
        kind: JournalKind::Claim {
            claims: vec![(B256::repeat_byte(1), 10)],
        },
        state,
        created_at: 1,
        updated_at: 1,
    };
    s.commit(WriteBatch {
        journal: vec![
            e(1, JournalState::Prepared),
            e(
                2,
                JournalState::Confirmed {
                    tx_hash: B256::ZERO,
                    block: 5,
                    gas_used: 40_000,
                },
            ),
            e(
                300,
                JournalState::Sent {
                    tx_hash: B256::repeat_byte(4),
                    nonce: 3,
                    all_hashes: vec![],
                },
            ),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.next_journal_id().await.unwrap(), 301);
    let open: Vec<u64> = s
        .open_journal()
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(open, vec![1, 300]);
    assert_eq!(
        s.journal_after(1, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        vec![2, 300]
    );
    assert_eq!(
        s.journal_entry(2).await.unwrap().unwrap(),
        e(
            2,
            JournalState::Confirmed {
                tx_hash: B256::ZERO,
                block: 5,
                gas_used: 40_000
            }
        )
    );

    // payer channels and meta
    let p = PayerChannelRecord {
        channel_id: B256::repeat_byte(8),
        config: record(8, 0).config,
        charged: 5,
        balance: 100,
        total_claimed: 0,
        last_ceiling: Some(5),
        last_signature: None,
        server: Some("http://127.0.0.1:1".into()),
        updated_at: 3,
    };
    s.commit(WriteBatch {
        payer_channels: vec![p.clone()],
        meta: vec![("cursor".into(), vec![1, 2])],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.payer_channel(p.channel_id).await.unwrap().unwrap(), p);
    assert_eq!(s.payer_channels().await.unwrap().len(), 1);
    assert_eq!(s.meta("cursor").await.unwrap(), Some(vec![1, 2]));
    assert_eq!(s.meta("nothing").await.unwrap(), None);
    s.commit(WriteBatch {
        remove_payer_channels: vec![p.channel_id],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(s.payer_channels().await.unwrap().is_empty());
}

#[tokio::test]
async fn mem_store_conforms() {
    suite(MemStore::new()).await;
}

#[tokio::test]
async fn sled_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    suite(SledStore::open(SledStoreConfig::new(dir.path().join("db"))).unwrap()).await;
}
