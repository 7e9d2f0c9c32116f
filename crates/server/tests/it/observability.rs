//! The operator's Prometheus metrics and the request span, over HTTP.

use std::collections::{BTreeMap, BTreeSet};

use paychan_core::{
    codec,
    x402::{PaymentRequired, SettlementResponse},
};

use crate::support::*;

/// One sample: name, labels in order, value.
type Sample = (String, Vec<(String, String)>, f64);

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !n.starts_with(|c: char| c.is_ascii_digit())
}

/// `k="v",k2="v2"`, with the format's escapes.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert!(valid_name(&key), "label name {key:?} in {s:?}");
        assert_eq!(chars.next(), Some('"'), "label value not quoted in {s:?}");
        let mut v = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().unwrap() {
                    'n' => v.push('\n'),
                    c @ ('\\' | '"') => v.push(c),
                    c => panic!("bad escape \\{c} in {s:?}"),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        out.push((key, v));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("{c:?} after a label value in {s:?}"),
        }
    }
    out
}

/// Parses a text exposition strictly enough to catch what a Prometheus scraper would refuse:
/// every family has HELP then TYPE (once), every other line is `name{labels} value` of a declared
/// family, counters end in `_total`, no series twice.
fn parse(text: &str) -> Vec<Sample> {
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::<String, String>::new();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap();
            assert!(valid_name(name) && !h.is_empty(), "{line}");
            assert!(help.insert(name.to_owned()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(help.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "a counter without _total: {line}");
            }
            assert!(name.starts_with("paychan_"), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').unwrap())),
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "{line}");
        let family_ok = types.get(name).is_some_and(|k| k != "histogram")
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|f| types.get(f).is_some_and(|k| k == "histogram"))
            });
        assert!(family_ok, "a sample of no declared family: {line}");
        assert!(seen.insert(series.to_owned()), "series twice: {line}");
        out.push((name.to_owned(), labels, value));
    }
    out
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
        .2
}

/// Checks a histogram series (`labels` without `le`): buckets in increasing `le` order, counts
/// cumulative, `+Inf` equal to `_count`; returns `_count`.
fn histogram(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let bucket = format!("{name}_bucket");
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(n, l, _)| {
            *n == bucket
                && l.len() == labels.len() + 1
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|(_, l, v)| {
            let le = &l.iter().find(|(k, _)| k == "le").unwrap().1;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, *v)
        })
        .collect();
    assert!(buckets.len() > 2, "{name}{labels:?}: {buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{name}{labels:?} is not cumulative: {buckets:?}"
    );
    let (last_le, last) = *buckets.last().unwrap();
    assert!(last_le.is_infinite());
    let count = get(samples, &format!("{name}_count"), labels);
    assert_eq!(last, count, "{name}{labels:?}: +Inf bucket vs _count");
    assert!(get(samples, &format!("{name}_sum"), labels) >= 0.0);
    count
}

#[tokio::test]
async fn operator_metrics_are_prometheus_text_and_count_what_happened() {
    let s = Server::start(demo).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", s.url);
    let (payer, mut pc) = s.funded_channel(11, 1_000_000).await;

    // one unpaid request, three paid ones, one the upstream fails, two with a bad signature
    let r = http.post(&url).json(&chat("hi")).send().await.unwrap();
    assert_eq!(r.status(), 402);
    let mut charged = 0u128;
    for prompt in ["one", "two two", "three three three"] {
        let h = s.voucher_header(&mut pc, &payer);
        let r = http
            .post(&url)
            .header("PAYMENT-SIGNATURE", h)
            .json(&chat(prompt))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let sr: SettlementResponse =
            codec::decode(r.headers()["payment-response"].to_str().unwrap()).unwrap();
        charged += pc.apply_response(&sr, PRICE, None).unwrap();
    }
    assert!(charged > 0);
    let h = s.voucher_header(&mut pc, &payer);
    let r = http
        .post(format!("{}/v1/fail", s.url))
        .header("PAYMENT-SIGNATURE", &h)
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let mut code = None;
    for _ in 0..2 {
        let r = http
            .post(&url)
            .header("PAYMENT-SIGNATURE", bad_signature(&h))
            .json(&chat("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
        let pr: PaymentRequired =
            codec::decode(r.headers()["payment-required"].to_str().unwrap()).unwrap();
        let c = pr.error.unwrap();
        assert_eq!(code.get_or_insert_with(|| c.clone()), &c);
    }
    let code = code.unwrap();

    let r = http
        .get(format!("{}/metrics", s.operator_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let m = parse(&text);
    let outcome = |o: &str| get(&m, "paychan_requests_total", &[("outcome", o)]);
    assert_eq!(outcome("unpaid"), 1.0);
    assert_eq!(outcome("committed"), 3.0);
    assert_eq!(outcome("aborted"), 1.0);
    assert_eq!(outcome("declined"), 2.0);
    assert_eq!(outcome("refunded"), 0.0);
    assert_eq!(get(&m, "paychan_declines_total", &[("code", &code)]), 2.0);
    assert_eq!(get(&m, "paychan_payments_total", &[]), 6.0);
    assert_eq!(get(&m, "paychan_reservations_total", &[]), 4.0);
    assert_eq!(get(&m, "paychan_charges_total", &[]), 3.0);
    let asset = s.offer.asset.to_string();
    #[allow(clippy::cast_precision_loss)]
    let charged = charged as f64;
    assert_eq!(
        get(
            &m,
            "paychan_charged_atomic_units_total",
            &[("network", s.offer.network.as_str()), ("asset", &asset)]
        ),
        charged
    );
    assert_eq!(
        histogram(
            &m,
            "paychan_payment_check_duration_seconds",
            &[("kind", "voucher")]
        ),
        6.0
    );
    assert_eq!(
        histogram(
            &m,
            "paychan_payment_check_duration_seconds",
            &[("kind", "deposit")]
        ),
        0.0
    );
    assert_eq!(histogram(&m, "paychan_commit_duration_seconds", &[]), 3.0);
    assert_eq!(histogram(&m, "paychan_upstream_duration_seconds", &[]), 4.0);
    assert!(get(&m, "paychan_store_commit_seconds_total", &[]) > 0.0);
    assert_eq!(get(&m, "paychan_cached_channels", &[]), 1.0);
    // no settler or relayer here: their figures are left out, not shown as zero
    assert!(!text.contains("paychan_settlement_backlog"));
    assert!(!text.contains("paychan_relayer_balance"));

    // the JSON view moved to /metrics.json
    let j: serde_json::Value = http
        .get(format!("{}/metrics.json", s.operator_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(j["committed"], 3);
    assert_eq!(j["rejections"][&code], 2);
    // and the paid port serves neither
    for path in ["/metrics", "/metrics.json"] {
        let r = http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the paid port");
    }
    s.stop().await;
}
