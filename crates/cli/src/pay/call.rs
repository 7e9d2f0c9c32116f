//! `paychan call`: N paid requests to one URL with one body, C at a time, then a summary: how
//! many succeeded, what was spent and deposited (integers, the token's atomic units), and the
//! latency of the successful ones (p50, p99, max, in microseconds; nearest rank).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy_primitives::B256;
use anyhow::{Context, Result};
use paychan_client::Payer;
use paychan_store::SledStore;
use serde::Serialize;

use super::PayerArgs;

/// `paychan call` flags.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct CallArgs {
    /// The URL to call (http:// or https://).
    pub(crate) url: String,
    /// The HTTP method.
    #[arg(long, short = 'X', default_value = "POST")]
    pub(crate) method: String,
    /// The request body (sent with every request).
    #[arg(long, short = 'd', value_name = "BODY", conflicts_with = "data_file")]
    pub(crate) data: Option<String>,
    /// A file holding the request body.
    #[arg(long, value_name = "PATH")]
    pub(crate) data_file: Option<PathBuf>,
    /// A request header, `Name: value`; repeat for several. With a body and no Content-Type
    /// header, `Content-Type: application/json` is sent.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub(crate) headers: Vec<String>,
    /// How many requests to make.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 1)]
    pub(crate) requests: u64,
    /// How many requests are in flight at once.
    #[arg(long, short = 'c', value_name = "C", default_value_t = 1)]
    pub(crate) concurrency: usize,
    /// Print the summary as one JSON object (amounts as decimal strings) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Seconds to wait for a connection.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) connect_timeout_secs: u64,
    /// Seconds without a byte from the server before a request fails.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub(crate) read_idle_timeout_secs: u64,
    #[command(flatten)]
    pub(crate) payer: PayerArgs,
}

/// One request's outcome.
#[derive(Debug, Default)]
struct Outcome {
    ok: bool,
    status: Option<u16>,
    latency_us: u64,
    charged: u128,
    deposited: u128,
    channel: Option<B256>,
    error: Option<(&'static str, String)>,
}

/// Latency of the successful requests, microseconds.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Latency {
    p50: u64,
    p99: u64,
    max: u64,
}

/// What `paychan call` prints.
#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    requests: u64,
    ok: u64,
    errors: u64,
    /// Charged by the server, summed over the receipts (atomic units).
    spent: String,
    /// Deposited with these requests (atomic units).
    deposited: String,
    /// Distinct channels that paid.
    channels: usize,
    latency_us: Option<Latency>,
    /// Responses by HTTP status.
    statuses: BTreeMap<u16, u64>,
    /// Failures by kind.
    error_kinds: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
    elapsed_ms: u64,
}

/// The nearest-rank percentile `pct` (1..=100) of sorted `v`.
fn percentile(v: &[u64], pct: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (pct * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `{µs / 1000}.{µs % 1000} ms`, without floats.
fn ms(us: u64) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

fn summarize(url: String, outcomes: &[Outcome], elapsed: Duration) -> Summary {
    let mut lat: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.latency_us)
        .collect();
    lat.sort_unstable();
    let mut statuses = BTreeMap::new();
    let mut error_kinds = BTreeMap::new();
    for o in outcomes {
        if let Some(s) = o.status {
            *statuses.entry(s).or_default() += 1;
        }
        if let Some((k, _)) = &o.error {
            *error_kinds.entry(*k).or_default() += 1;
        }
    }
    let ok = outcomes.iter().filter(|o| o.ok).count() as u64;
    let sum = |f: fn(&Outcome) -> u128| {
        outcomes
            .iter()
            .fold(0u128, |acc, o| acc.saturating_add(f(o)))
    };
    Summary {
        url,
        requests: outcomes.len() as u64,
        ok,
        errors: outcomes.len() as u64 - ok,
        spent: sum(|o| o.charged).to_string(),
        deposited: sum(|o| o.deposited).to_string(),
        channels: outcomes
            .iter()
            .filter_map(|o| o.channel)
            .collect::<BTreeSet<_>>()
            .len(),
        latency_us: (!lat.is_empty()).then(|| Latency {
            p50: percentile(&lat, 50),
            p99: percentile(&lat, 99),
            max: lat.last().copied().unwrap_or(0),
        }),
        statuses,
        error_kinds,
        first_error: outcomes
            .iter()
            .find_map(|o| o.error.as_ref().map(|(_, m)| m.clone())),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    }
}

fn print_text(s: &Summary) -> String {
    let mut out = format!(
        "{}\n  requests {}  ok {}  errors {}\n  spent {}  deposited {}  (atomic units)  channels {}\n",
        s.url, s.requests, s.ok, s.errors, s.spent, s.deposited, s.channels
    );
    if let Some(l) = &s.latency_us {
        out.push_str(&format!(
            "  latency p50 {}  p99 {}  max {}  (successful requests)\n",
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        ));
    }
    let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    out.push_str(&format!(
        "  statuses {}  in {}.{:03} s\n",
        statuses.join(" "),
        s.elapsed_ms / 1000,
        s.elapsed_ms % 1000
    ));
    if let Some(e) = &s.first_error {
        let kinds: Vec<String> = s
            .error_kinds
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        out.push_str(&format!(
            "  errors by kind {}\n  first error: {e}\n",
            kinds.join(" ")
        ));
    }
    out
}

/// The request template: method, URL, headers and body, checked once.
struct Template {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Template {
    fn new(a: &CallArgs) -> Result<Self> {
        let url: reqwest::Url = a.url.parse().with_context(|| {
            format!(
                "{:?} is not a URL",
                paychan_core::redact::redact_urls(&a.url)
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("only http:// and https:// URLs can be called");
        }
        let method: reqwest::Method = a
            .method
            .parse()
            .ok()
            .filter(|_| !a.method.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--method {:?} is not an HTTP method", a.method))?;
        let body = match (&a.data, &a.data_file) {
            (Some(d), _) => bytes::Bytes::from(d.clone().into_bytes()),
            (None, Some(p)) => std::fs::read(p)
                .with_context(|| format!("reading --data-file {}", p.display()))?
                .into(),
            (None, None) => bytes::Bytes::new(),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for h in &a.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--header {h:?} is not `Name: value`"))?;
            let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("--header {h:?}: bad name"))?;
            let value = reqwest::header::HeaderValue::from_str(value.trim())
                .with_context(|| format!("--header {h:?}: bad value"))?;
            headers.append(name, value);
        }
        if !body.is_empty() && !headers.contains_key(reqwest::header::CONTENT_TYPE) {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/json"),
            );
        }
        Ok(Self {
            method,
            url,
            headers,
            body,
        })
    }
}

async fn one(payer: &Payer<SledStore>, http: &reqwest::Client, t: &Template) -> Outcome {
    let started = Instant::now();
    let req = http
        .request(t.method.clone(), t.url.clone())
        .headers(t.headers.clone())
        .body(t.body.clone())
        .build();
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                error: Some(("request", paychan_core::redact::redact_urls(&e.to_string()))),
                ..Outcome::default()
            };
        }
    };
    match payer.execute(req).await {
        Ok(paid) => {
            let status = paid.response.status();
            let mut o = Outcome {
                status: Some(status.as_u16()),
                ..Outcome::default()
            };
            if let Some(r) = &paid.receipt {
                o.charged = r.charged;
                o.deposited = r.deposited.unwrap_or(0);
                o.channel = Some(r.channel_id);
            }
            let body = paid.response.bytes().await;
            o.latency_us = micros(started.elapsed());
            match body {
                Ok(_) if status.is_success() => o.ok = true,
                Ok(b) => {
                    let text = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
                    o.error = Some(("http_status", format!("{status}: {text}")));
                }
                Err(e) => {
                    o.error = Some(("body", paychan_core::redact::redact_urls(&e.to_string())));
                }
            }
            o
        }
        Err(e) => Outcome {
            latency_us: micros(started.elapsed()),
            error: Some((super::kind(&e), super::describe(&e))),
            ..Outcome::default()
        },
    }
}

/// Runs `paychan call`. Fails (after printing the summary) when any request failed.
pub(crate) async fn run(a: CallArgs) -> Result<()> {
    let template = Arc::new(Template::new(&a)?);
    if a.requests == 0 {
        anyhow::bail!("--requests must be at least 1");
    }
    let http = super::http_client(
        Duration::from_secs(a.connect_timeout_secs.max(1)),
        Duration::from_secs(a.read_idle_timeout_secs.max(1)),
    )?;
    let payer = a.payer.build(http.clone()).await?;
    let next = Arc::new(AtomicU64::new(0));
    let workers = u64::try_from(a.concurrency.max(1))
        .unwrap_or(u64::MAX)
        .min(a.requests);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (payer, http, t, next, n) = (
            payer.clone(),
            http.clone(),
            template.clone(),
            next.clone(),
            a.requests,
        );
        set.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                out.push(one(&payer, &http, &t).await);
            }
            out
        });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = set.join_next().await {
        outcomes.extend(r.context("a request task failed")?);
    }
    // Shown without user info or query (they may hold credentials).
    let shown = format!(
        "{}{}",
        template.url.origin().ascii_serialization(),
        template.url.path()
    );
    let s = summarize(shown, &outcomes, started.elapsed());
    #[allow(clippy::print_stdout)]
    {
        if a.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            print!("{}", print_text(&s));
        }
    }
    if s.errors > 0 {
        anyhow::bail!("{} of {} requests failed", s.errors, s.requests);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 50), percentile(&v, 99)), (50, 99));
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2, 3], 50), 2);
        assert_eq!(percentile(&[1, 2, 3], 99), 3);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn summary_sums_money_as_integers_and_counts_failures() {
        let id = B256::repeat_byte(1);
        let outcomes = vec![
            Outcome {
                ok: true,
                status: Some(200),
                latency_us: 1500,
                charged: u128::from(u64::MAX),
                deposited: 1_000_000,
                channel: Some(id),
                error: None,
            },
            Outcome {
                ok: true,
                status: Some(200),
                latency_us: 500,
                charged: u128::from(u64::MAX),
                channel: Some(id),
                ..Outcome::default()
            },
            Outcome {
                error: Some(("spend_policy", "refused".into())),
                ..Outcome::default()
            },
        ];
        let s = summarize("u".into(), &outcomes, Duration::from_millis(3));
        assert_eq!((s.requests, s.ok, s.errors, s.channels), (3, 2, 1, 1));
        assert_eq!(s.spent, (2 * u128::from(u64::MAX)).to_string());
        assert_eq!(s.deposited, "1000000");
        assert_eq!(
            s.latency_us,
            Some(Latency {
                p50: 500,
                p99: 1500,
                max: 1500
            })
        );
        assert_eq!(s.error_kinds.get("spend_policy"), Some(&1));
        assert_eq!(ms(1500), "1.500 ms");
    }
}
