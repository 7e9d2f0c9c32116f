//! Decoding never panics on arbitrary input, and never accepts what it should not.

use paychan_core::{
    batch::BatchPayload,
    codec,
    x402::{PaymentPayload, PaymentRequired, SettlementResponse},
};
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9:_x]{0,70}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("batch-settlement")),
        Just(serde_json::Value::from("voucher")),
        Just(serde_json::Value::from("eip155:8453")),
        Just(serde_json::Value::from(
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        )),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("x402Version".to_owned()),
                    Just("accepted".to_owned()),
                    Just("payload".to_owned()),
                    Just("type".to_owned()),
                    Just("voucher".to_owned()),
                    Just("channelConfig".to_owned()),
                    Just("maxClaimableAmount".to_owned()),
                    Just("signature".to_owned()),
                    "[a-z]{1,8}".prop_map(|s| s)
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = codec::decode::<PaymentPayload<BatchPayload>>(&s);
        let _ = codec::decode::<PaymentRequired>(&s);
        let _ = codec::decode::<SettlementResponse>(&s);
        let _ = serde_json::from_slice::<PaymentPayload<BatchPayload>>(&bytes);
    }

    #[test]
    fn arbitrary_base64_json_never_panics(v in json_value()) {
        let h = codec::encode(&v);
        let _ = codec::decode::<PaymentPayload<BatchPayload>>(&h);
        let _ = codec::decode::<PaymentRequired>(&h);
        let _ = codec::decode::<SettlementResponse>(&h);
    }

    #[test]
    fn amounts_parse_exactly(n in any::<u128>()) {
        prop_assert_eq!(paychan_core::amount::parse_u128(&n.to_string()), Ok(n));
        let padded = format!("0{n}");
        prop_assert!(paychan_core::amount::parse_u128(&padded).is_err());
    }
}
