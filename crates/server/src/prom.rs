//! The operator listener's `/metrics` in the Prometheus text exposition format (0.0.4).
//!
//! The encoder is written here rather than taken from `prometheus-client`: the format needs a
//! few dozen lines for counters, gauges and histograms, while that crate would bring its own
//! registry and metric types beside the engine's atomics (which stay the one source of truth,
//! shared with the JSON view and the control plane) and has no 128-bit counters for amounts.
//!
//! A scrape reads atomics and, through [`OperatorSources`], values kept up to date elsewhere;
//! it never waits for the chain.

use std::{fmt::Write as _, sync::Arc};

use alloy_primitives::Address;
use paychan_engine::{CheckKind, HistogramSnapshot, LATENCY_BUCKETS, Metrics};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads the settlement backlog: channels with unclaimed charges, and their total.
pub type BacklogFn = Arc<dyn Fn() -> (usize, u128) + Send + Sync>;

/// Reads the relayers' gas balances: address and wei.
pub type BalancesFn = Arc<dyn Fn() -> Vec<(Address, u128)> + Send + Sync>;

/// Values from outside the engine that the operator's `/metrics` shows. Each is read at scrape
/// time and must be cheap (no I/O): a figure kept in memory by whoever computes it.
#[derive(Clone, Default)]
pub struct OperatorSources {
    /// The settlement scheduler's backlog: channels with unclaimed charges and their total
    /// (atomic units).
    pub settlement_backlog: Option<BacklogFn>,
    /// The relayers' gas balances (wei), as last read from the chain.
    pub relayer_balances: Option<BalancesFn>,
}

impl std::fmt::Debug for OperatorSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorSources")
            .field("settlement_backlog", &self.settlement_backlog.is_some())
            .field("relayer_balances", &self.relayer_balances.is_some())
            .finish()
    }
}

/// A text exposition being written.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram_series(&mut self, name: &str, labels: &[(&str, &str)], s: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (i, n) in s.cumulative.iter().enumerate() {
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), ToString::to_string);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, s.sum_seconds);
        self.sample(&format!("{name}_count"), labels, s.count);
    }
}

/// What a scrape shows besides the engine's metrics.
pub(crate) struct Scrape<'a> {
    pub metrics: &'a Metrics,
    pub cached_channels: usize,
    /// `network` and `asset` labels of the charged amount, when every paid route takes the same.
    pub asset: Option<(&'a str, &'a str)>,
    pub sources: &'a OperatorSources,
}

/// Renders a scrape.
pub(crate) fn render(s: &Scrape<'_>) -> String {
    let m = s.metrics;
    let g = Metrics::get;
    let mut t = Text(String::with_capacity(8 * 1024));
    t.single(
        "paychan_payments_total",
        "counter",
        "Payments (PAYMENT-SIGNATURE headers that decoded) checked by the engine.",
        g(&m.requests),
    );
    t.family(
        "paychan_requests_total",
        "counter",
        "Paid requests by outcome: unpaid (answered with the offer), declined (refused with an x402 code), committed (charged, any amount), aborted (not charged: the upstream failed or its answer could not be priced, or the charge could not be saved), refunded.",
    );
    for (outcome, n) in [
        ("unpaid", g(&m.unpaid)),
        ("declined", m.rejected_total()),
        ("committed", g(&m.committed)),
        ("aborted", g(&m.aborted)),
        ("refunded", g(&m.refunds)),
    ] {
        t.sample("paychan_requests_total", &[("outcome", outcome)], n);
    }
    t.family(
        "paychan_declines_total",
        "counter",
        "Refusals by x402 error code (codes never seen are left out).",
    );
    for (code, n) in m.rejections() {
        t.sample("paychan_declines_total", &[("code", &code)], n);
    }
    t.single(
        "paychan_reservations_total",
        "counter",
        "Payments accepted and handed to the upstream.",
        g(&m.reserved),
    );
    t.single(
        "paychan_charges_total",
        "counter",
        "Charges of more than zero made durable.",
        g(&m.charges),
    );
    t.family(
        "paychan_charged_atomic_units_total",
        "counter",
        "Amount charged, in the asset's atomic units (labelled with the asset when every paid route takes the same one).",
    );
    let charged = m.charged_total();
    match &s.asset {
        Some((network, asset)) => t.sample(
            "paychan_charged_atomic_units_total",
            &[("network", network), ("asset", asset)],
            charged,
        ),
        None => t.sample("paychan_charged_atomic_units_total", &[], charged),
    }
    for (name, help, v) in [
        (
            "paychan_corrective_402_total",
            "Corrective 402s sent (a voucher behind or ahead of the channel, with the state to resume from).",
            g(&m.corrective),
        ),
        (
            "paychan_channel_busy_total",
            "Payments refused because their channel was busy.",
            g(&m.busy),
        ),
        (
            "paychan_deposits_total",
            "Deposits executed.",
            g(&m.deposits),
        ),
        ("paychan_refunds_total", "Refunds executed.", g(&m.refunds)),
        (
            "paychan_rate_limited_total",
            "Deposits and refunds refused by their per-channel rate limit.",
            g(&m.rate_limited),
        ),
        (
            "paychan_chain_reads_total",
            "On-chain channel state reads.",
            g(&m.chain_reads),
        ),
        (
            "paychan_chain_reads_refused_total",
            "Chain reads refused at the cap on concurrent reads.",
            g(&m.chain_reads_refused),
        ),
        (
            "paychan_screened_out_total",
            "Payments for channels not in memory refused by the cheap checks (binding, signature).",
            g(&m.screened_out),
        ),
        (
            "paychan_negative_cache_hits_total",
            "Payments refused from the negative cache (channel recently found absent or empty).",
            g(&m.negative_hits),
        ),
    ] {
        t.single(name, "counter", help, v);
    }
    #[allow(clippy::cast_precision_loss)]
    t.single(
        "paychan_store_commit_seconds_total",
        "counter",
        "Time spent in durable charge writes.",
        g(&m.commit_nanos) as f64 / 1e9,
    );
    t.family(
        "paychan_payment_check_duration_seconds",
        "histogram",
        "Payment checks (the engine's begin), by payload kind; a deposit or refund includes its chain transaction.",
    );
    for k in CheckKind::ALL {
        t.histogram_series(
            "paychan_payment_check_duration_seconds",
            &[("kind", k.as_str())],
            &m.check(k).snapshot(),
        );
    }
    t.family(
        "paychan_commit_duration_seconds",
        "histogram",
        "Commits of a charge (the engine's commit, including the durable write).",
    );
    t.histogram_series("paychan_commit_duration_seconds", &[], &m.commit.snapshot());
    t.family(
        "paychan_upstream_duration_seconds",
        "histogram",
        "Paid requests at the upstream: from handing the request over until its response head.",
    );
    t.histogram_series(
        "paychan_upstream_duration_seconds",
        &[],
        &m.upstream.snapshot(),
    );
    t.single(
        "paychan_cached_channels",
        "gauge",
        "Channels held in memory.",
        s.cached_channels,
    );
    if let Some(backlog) = &s.sources.settlement_backlog {
        let (channels, amount) = backlog();
        t.single(
            "paychan_settlement_backlog_channels",
            "gauge",
            "Channels with charges not yet claimed on chain.",
            channels,
        );
        t.single(
            "paychan_settlement_backlog_atomic_units",
            "gauge",
            "Charges not yet claimed on chain, atomic units.",
            amount,
        );
    }
    if let Some(balances) = &s.sources.relayer_balances {
        t.family(
            "paychan_relayer_balance_wei",
            "gauge",
            "Gas balance of each relayer account, wei, as last read from the chain.",
        );
        for (address, wei) in balances() {
            t.sample(
                "paychan_relayer_balance_wei",
                &[("address", &address.to_string())],
                wei,
            );
        }
    }
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_shown_when_given() {
        let m = Metrics::default();
        m.upstream.observe(std::time::Duration::from_millis(7));
        let address = Address::repeat_byte(0xab);
        let sources = OperatorSources {
            settlement_backlog: Some(Arc::new(|| (3, 12_345))),
            relayer_balances: Some(Arc::new(move || vec![(address, 10u128.pow(20))])),
        };
        let text = render(&Scrape {
            metrics: &m,
            cached_channels: 2,
            asset: None,
            sources: &sources,
        });
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "paychan_settlement_backlog_channels 3",
            "paychan_settlement_backlog_atomic_units 12345",
            &format!("paychan_relayer_balance_wei{{address=\"{address}\"}} 100000000000000000000"),
            "paychan_cached_channels 2",
            "paychan_charged_atomic_units_total 0",
            "paychan_upstream_duration_seconds_bucket{le=\"0.005\"} 0",
            "paychan_upstream_duration_seconds_bucket{le=\"0.01\"} 1",
            "paychan_upstream_duration_seconds_bucket{le=\"+Inf\"} 1",
            "paychan_upstream_duration_seconds_count 1",
            "paychan_payment_check_duration_seconds_bucket{kind=\"refund\",le=\"0.00005\"} 0",
        ] {
            assert!(lines.contains(&want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text(String::new());
        t.sample("x", &[("a", "q\"b\\n\nz")], 1);
        assert_eq!(t.0, "x{a=\"q\\\"b\\\\n\\nz\"} 1\n");
    }
}
