//! What the commands print on stdout: aligned tables and key/value blocks for people, JSON for
//! scripts (`--json`; amounts stay decimal strings, as on the wire). Progress and errors go to
//! stderr.
#![allow(clippy::print_stdout)]

use paychan_control::proto::{self, channel_event::Kind};
use serde::Serialize;

/// `v` as pretty JSON on stdout.
pub(crate) fn json<T: Serialize + ?Sized>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("paychan: cannot print JSON: {e}"),
    }
}

/// `rows` under `headers`, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// An empty line.
pub(crate) fn blank() {
    println!();
}

/// `key: value` lines, keys aligned.
pub(crate) fn pairs(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$}  {v}");
    }
}

fn state_name(v: i32) -> &'static str {
    match proto::ChannelState::try_from(v) {
        Ok(proto::ChannelState::Open) => "open",
        Ok(proto::ChannelState::Withdrawing) => "withdrawing",
        Ok(proto::ChannelState::Empty) => "empty",
        _ => "?",
    }
}

pub(crate) fn list(page: &proto::ListChannelsResponse, as_json: bool) {
    if as_json {
        return json(page);
    }
    let rows: Vec<Vec<String>> = page
        .channels
        .iter()
        .map(|c| {
            vec![
                c.channel_id.clone(),
                c.config
                    .as_ref()
                    .map(|c| c.payer.clone())
                    .unwrap_or_default(),
                state_name(c.state).to_owned(),
                c.balance.clone(),
                c.charged.clone(),
                c.claimed.clone(),
                c.unclaimed.clone(),
                c.refundable.clone(),
            ]
        })
        .collect();
    table(
        &[
            "CHANNEL",
            "PAYER",
            "STATE",
            "BALANCE",
            "CHARGED",
            "CLAIMED",
            "UNCLAIMED",
            "REFUNDABLE",
        ],
        &rows,
    );
    eprintln!("{} channel(s)", page.channels.len());
    if !page.next_page_token.is_empty() {
        eprintln!(
            "more: --page-token {} (or --all-pages)",
            page.next_page_token
        );
    }
}

pub(crate) fn channel(c: &proto::Channel, as_json: bool) {
    if as_json {
        return json(c);
    }
    let mut rows = vec![
        ("channel", c.channel_id.clone()),
        ("state", state_name(c.state).to_owned()),
        ("balance", c.balance.clone()),
        ("charged", c.charged.clone()),
        ("claimed", c.claimed.clone()),
        ("unclaimed", c.unclaimed.clone()),
        ("refundable", c.refundable.clone()),
        ("refund nonce", c.refund_nonce.clone()),
    ];
    if let Some(cfg) = &c.config {
        rows.extend([
            ("payer", cfg.payer.clone()),
            ("payer authorizer", cfg.payer_authorizer.clone()),
            ("receiver", cfg.receiver.clone()),
            ("receiver authorizer", cfg.receiver_authorizer.clone()),
            ("token", cfg.token.clone()),
            (
                "withdraw delay",
                format!("{} s", cfg.withdraw_delay_seconds),
            ),
            ("salt", cfg.salt.clone()),
        ]);
    }
    match &c.last_voucher {
        Some(v) => rows.extend([
            ("last voucher", format!("max claimable {}", v.max_claimable)),
            ("  signature", v.signature.clone()),
        ]),
        None => rows.push(("last voucher", "none".into())),
    }
    match &c.withdrawal {
        Some(w) => rows.push((
            "withdrawal",
            format!(
                "requested at {}, finalizable at {}{}",
                w.requested_at,
                w.deadline,
                if w.claim_needed { ", CLAIM NEEDED" } else { "" }
            ),
        )),
        None => rows.push(("withdrawal", "none".into())),
    }
    rows.push(("synced at", format!("{} ms", c.onchain_synced_at_ms)));
    rows.push(("last request at", format!("{} ms", c.last_request_at_ms)));
    pairs(&rows);
}

pub(crate) fn report(r: &proto::RoundReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    println!("considered {} channel(s)", r.considered);
    for t in &r.claims {
        println!(
            "claim tx {} (block {}, gas {}): {} channel(s)",
            t.tx_hash,
            t.block,
            t.gas_used,
            t.claims.len()
        );
        for c in &t.claims {
            println!("  {}  claimed {}", c.channel_id, c.claimed);
        }
    }
    for s in &r.settles {
        println!(
            "settle tx {} (gas {}): {} of {} to {}",
            s.tx_hash, s.gas_used, s.amount, s.token, s.receiver
        );
    }
    let list = |what: &str, v: &[String]| {
        for x in v {
            println!("{what}: {x}");
        }
    };
    list("already claimed", &r.already_claimed);
    list("in flight", &r.in_flight);
    for f in &r.failed {
        println!("failed: {} ({})", f.channel_id, f.reason);
    }
    for l in &r.lost {
        println!("lost: {} ({} no longer claimable)", l.channel_id, l.amount);
    }
    list("unconfirmed", &r.unconfirmed);
    list("error", &r.errors);
    if r.claims.is_empty() && r.settles.is_empty() {
        println!("nothing was sent");
    }
}

pub(crate) fn refund(r: &proto::RefundChannelResponse, as_json: bool) {
    if as_json {
        return json(r);
    }
    let mut rows = vec![
        ("channel", r.channel_id.clone()),
        ("refunded", r.refunded.clone()),
        (
            "claimed",
            if r.claimed.is_empty() {
                "nothing needed claiming".into()
            } else {
                r.claimed.clone()
            },
        ),
        ("tx", format!("{} (block {})", r.tx_hash, r.block)),
    ];
    if let Some(c) = &r.channel {
        rows.push(("balance now", c.balance.clone()));
    }
    if r.unclaimable != "0" {
        rows.push(("unclaimable", r.unclaimable.clone()));
    }
    pairs(&rows);
}

/// `paychan stats`: both answers.
#[derive(Serialize)]
struct Stats<'a> {
    stats: &'a proto::GetStatsResponse,
    health: &'a proto::HealthResponse,
}

pub(crate) fn stats(s: &proto::GetStatsResponse, h: &proto::HealthResponse, as_json: bool) {
    if as_json {
        return json(&Stats {
            stats: s,
            health: h,
        });
    }
    let mut rows = vec![
        ("version", h.version.clone()),
        ("serving", h.serving.to_string()),
        ("settlement", h.settlement.to_string()),
        (
            "chain",
            if h.chain_reachable {
                format!("reachable, head {}", h.chain_head)
            } else if h.chain_error.is_empty() {
                "not asked".into()
            } else {
                format!("unreachable: {}", h.chain_error)
            },
        ),
        (
            "event stream",
            format!("{} (last sequence {})", s.stream_id, s.last_sequence),
        ),
    ];
    if let Some(e) = &s.engine {
        rows.extend([
            ("requests", e.requests.to_string()),
            ("committed", e.committed.to_string()),
            ("aborted", e.aborted.to_string()),
            ("corrective 402s", e.corrective.to_string()),
            ("busy", e.busy.to_string()),
            ("charged total", e.charged_total.clone()),
            ("deposits", e.deposits.to_string()),
            ("refunds", e.refunds.to_string()),
            ("chain reads", e.chain_reads.to_string()),
            ("channels cached", e.cached_channels.to_string()),
            ("channels stored", e.stored_channels.to_string()),
        ]);
        let mut rej: Vec<_> = e.rejections.iter().collect();
        rej.sort();
        for (code, n) in rej {
            rows.push(("rejected", format!("{code}: {n}")));
        }
    }
    if let Some(t) = &s.settlement {
        rows.extend([
            (
                "claim txs",
                format!("{} (gas {})", t.claim_txs, t.gas_claims),
            ),
            (
                "settle txs",
                format!("{} (gas {})", t.settle_txs, t.gas_settles),
            ),
            ("channels claimed", t.channels_claimed.to_string()),
            (
                "gas per request",
                t.gas_per_request
                    .map_or_else(|| "-".into(), |g| format!("{g:.1}")),
            ),
            (
                "outstanding",
                format!(
                    "{} in {} channel(s)",
                    t.outstanding_amount, t.outstanding_channels
                ),
            ),
        ]);
    }
    pairs(&rows);
}

/// One event: a JSON line, or a line for people.
pub(crate) fn event(e: &proto::ChannelEvent, as_json: bool) {
    if as_json {
        match serde_json::to_string(e) {
            Ok(s) => println!("{s}"),
            Err(err) => eprintln!("paychan: cannot print JSON: {err}"),
        }
        return;
    }
    let what = match &e.kind {
        Some(Kind::Charged(c)) => format!(
            "charged {} (total {}, unclaimed {})",
            c.amount, c.charged, c.unclaimed
        ),
        Some(Kind::ClaimNeeded(c)) => format!(
            "claim needed: {} at stake before {}",
            c.unclaimed, c.deadline
        ),
        Some(Kind::Claimed(c)) => format!(
            "claimed, total {} (balance {}) tx {}",
            c.claimed, c.balance, c.tx_hash
        ),
        Some(Kind::Settled(s)) => format!(
            "settled {} to {} (settled total {}) tx {}",
            s.amount, s.receiver, s.total_settled, s.tx_hash
        ),
        Some(Kind::Refunded(r)) => format!("refunded {}", r.amount),
        Some(Kind::WithdrawalStarted(w)) => format!(
            "withdrawal started, finalizable at {} (balance {}, claimed {}) tx {}",
            w.deadline, w.balance, w.claimed, w.tx_hash
        ),
        Some(Kind::WithdrawalFinalized(w)) => format!(
            "withdrawal finalized (balance {}) tx {}",
            w.balance, w.tx_hash
        ),
        Some(Kind::Deposited(d)) => format!("deposited (balance {}) tx {}", d.balance, d.tx_hash),
        Some(Kind::Reorged(r)) => format!(
            "reorg to block {} (balance {}, claimed {})",
            r.block, r.balance, r.claimed
        ),
        Some(Kind::EventsLost(l)) => format!(
            "events lost from {} ({}): resynchronize with `channel list`",
            l.source, l.count
        ),
        None => "(unknown event)".into(),
    };
    let channel = if e.channel_id.is_empty() {
        "-"
    } else {
        &e.channel_id
    };
    println!("{} {} {channel} {what}", e.stream_id, e.sequence);
}
