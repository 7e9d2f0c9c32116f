//! Money controls as pure decisions: which offer of a 402 to take (`choose_offer`), how much to
//! deposit (`deposit_for`), and the per-period budgets (`Budget`). Amounts are `u128` atomic
//! units of the token; nothing here is a float, does I/O or reads a clock.

use std::{collections::HashMap, time::Duration};

use alloy_primitives::Address;
use paychan_core::{
    amount,
    batch::{BatchRequirements, SCHEME},
    x402::{PaymentRequired, PaymentRequirements},
};

use crate::error::{PolicyError, Scope};

/// What this payer may spend.
///
/// Every amount is in the token's atomic units. An offer is taken only if its token is in
/// [`allowed_assets`](Self::allowed_assets), its per-request maximum is at most
/// [`max_per_request`](Self::max_per_request), and (when a period is set) the request's maximum
/// still fits the budgets of the current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendPolicy {
    /// Tokens this payer pays with, as `(chain id, token address)`. An offer in any other token
    /// is refused.
    pub allowed_assets: Vec<(u64, Address)>,
    /// The highest per-request maximum (`amount` of an offer) accepted.
    pub max_per_request: u128,
    /// The largest single deposit (or top-up) this payer signs.
    pub max_per_deposit: u128,
    /// The length of a budget period (fixed windows of unix time, e.g. one hour).
    pub period: Duration,
    /// Per server (origin) and period, the most that may be spent, if limited.
    pub max_per_period_per_server: Option<u128>,
    /// Over all servers and per period, the most that may be spent, if limited.
    pub max_per_period_overall: Option<u128>,
}

impl SpendPolicy {
    /// A policy paying at most `max_per_request` a request and `max_per_deposit` a deposit, in
    /// no asset yet ([`allow_asset`](Self::allow_asset)), with no period budget.
    #[must_use]
    pub fn new(max_per_request: u128, max_per_deposit: u128) -> Self {
        Self {
            allowed_assets: Vec::new(),
            max_per_request,
            max_per_deposit,
            period: Duration::from_hours(1),
            max_per_period_per_server: None,
            max_per_period_overall: None,
        }
    }

    /// Allows paying with `asset` on chain `chain_id`.
    #[must_use]
    pub fn allow_asset(mut self, chain_id: u64, asset: Address) -> Self {
        self.allowed_assets.push((chain_id, asset));
        self
    }

    /// Limits spending per `period`: at most `per_server` at any one server and `overall` in
    /// total (`None`: no limit of that kind).
    #[must_use]
    pub fn per_period(
        mut self,
        period: Duration,
        per_server: Option<u128>,
        overall: Option<u128>,
    ) -> Self {
        self.period = period;
        self.max_per_period_per_server = per_server;
        self.max_per_period_overall = overall;
        self
    }

    fn period_secs(&self) -> u64 {
        self.period.as_secs().max(1)
    }
}

/// How channels are funded.
///
/// A channel that cannot pay the next request gets a deposit of
/// `max(amount, the server's minimum deposit, what the request needs)`. A channel whose balance
/// left after the next request would fall below `top_up_below` gets a top-up of
/// `max(amount, minimum deposit)` with that request, when it fits the spend policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositPolicy {
    /// The usual deposit.
    pub amount: u128,
    /// Top up when the balance left after a request would be below this.
    pub top_up_below: u128,
}

impl DepositPolicy {
    /// Deposits of `amount`, topped up when less than `top_up_below` would be left.
    #[must_use]
    pub fn new(amount: u128, top_up_below: u128) -> Self {
        Self {
            amount,
            top_up_below,
        }
    }
}

/// The minimum deposit an offer asks for: `extra.minDeposit` when present (a decimal string or
/// a number), else ten times its per-request maximum (the reference implementation's default).
pub(crate) fn min_deposit(generic: &PaymentRequirements, offer: &BatchRequirements) -> u128 {
    let stated = generic
        .extra
        .as_ref()
        .and_then(|e| e.get("minDeposit"))
        .and_then(|v| match v {
            serde_json::Value::String(s) => amount::parse_u128(s).ok(),
            serde_json::Value::Number(n) => n.as_u64().map(u128::from),
            _ => None,
        });
    stated.unwrap_or_else(|| offer.amount.saturating_mul(10))
}

/// An offer this payer will pay: the server's requirements as sent (what goes back as
/// `accepted`, corrective-only fields removed) and parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chosen {
    /// As sent by the server, without `channelState` / `voucherState`.
    pub generic: PaymentRequirements,
    /// Parsed.
    pub offer: BatchRequirements,
    /// The smallest deposit it takes.
    pub min_deposit: u128,
}

/// The server's requirements without the fields only a corrective 402 carries.
pub(crate) fn strip_corrective(r: &PaymentRequirements) -> PaymentRequirements {
    let mut r = r.clone();
    if let Some(extra) = r.extra.as_mut() {
        extra.remove("channelState");
        extra.remove("voucherState");
    }
    r
}

/// Checks one offer against the policy.
pub(crate) fn check_offer(
    generic: &PaymentRequirements,
    policy: &SpendPolicy,
    chain_id: Option<u64>,
) -> Result<Chosen, PolicyError> {
    let generic = strip_corrective(generic);
    let offer = BatchRequirements::from_generic(&generic)
        .map_err(|r| PolicyError::MalformedOffer(format!("{}: {}", r.code, r.message)))?;
    if chain_id.is_some_and(|c| c != offer.chain_id) {
        return Err(PolicyError::NetworkNotAllowed {
            chain_id: offer.chain_id,
        });
    }
    if !policy
        .allowed_assets
        .iter()
        .any(|&(c, a)| c == offer.chain_id && a == offer.asset)
    {
        return Err(PolicyError::AssetNotAllowed {
            chain_id: offer.chain_id,
            asset: offer.asset,
        });
    }
    if let Some(m) = offer.extra.asset_transfer_method.as_deref()
        && m != "eip3009"
    {
        return Err(PolicyError::TransferMethodUnsupported(m.to_owned()));
    }
    if offer.amount > policy.max_per_request {
        return Err(PolicyError::AmountAboveMax {
            amount: offer.amount,
            max: policy.max_per_request,
        });
    }
    let min_deposit = min_deposit(&generic, &offer);
    if min_deposit > policy.max_per_deposit {
        return Err(PolicyError::DepositAboveMax {
            deposit: min_deposit,
            max: policy.max_per_deposit,
        });
    }
    Ok(Chosen {
        generic,
        offer,
        min_deposit,
    })
}

/// The first `batch-settlement` offer of a 402 that the policy allows. When none is, the refusal
/// of the first `batch-settlement` offer, or [`PolicyError::UnsupportedScheme`] when there is
/// none.
pub(crate) fn choose_offer(
    pr: &PaymentRequired,
    policy: &SpendPolicy,
    chain_id: Option<u64>,
) -> Result<Chosen, PolicyError> {
    let mut first_refusal = None;
    for r in pr.accepts.iter().filter(|r| r.scheme == SCHEME) {
        match check_offer(r, policy, chain_id) {
            Ok(c) => return Ok(c),
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(
        first_refusal.unwrap_or_else(|| PolicyError::UnsupportedScheme {
            offered: pr.accepts.iter().map(|r| r.scheme.clone()).collect(),
        }),
    )
}

/// The deposit to send with a request whose voucher has ceiling `ceiling`, on a channel of
/// balance `balance`: `Ok(None)` for none, `Err` when the request needs a deposit the policy
/// refuses. A top-up that the policy refuses is skipped (the request is still paid from the
/// balance).
pub(crate) fn deposit_for(
    balance: u128,
    ceiling: u128,
    min_deposit: u128,
    deposit: &DepositPolicy,
    max_per_deposit: u128,
) -> Result<Option<u128>, PolicyError> {
    let usual = deposit.amount.max(min_deposit);
    if ceiling > balance {
        let needed = usual.max(ceiling - balance);
        if needed > max_per_deposit {
            return Err(PolicyError::DepositAboveMax {
                deposit: needed,
                max: max_per_deposit,
            });
        }
        return Ok(Some(needed));
    }
    let left = balance - ceiling;
    if left < deposit.top_up_below && usual > 0 && usual <= max_per_deposit {
        return Ok(Some(usual));
    }
    Ok(None)
}

/// Spending per period: what was spent or is reserved by requests in flight, overall and per
/// server, in fixed windows of `period` seconds. A request reserves its maximum before anything
/// is signed and gives back what it was not charged once its answer is checked; a request
/// whose outcome stays unknown keeps its reservation (the budget errs on the safe side).
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    period_secs: u64,
    per_server: Option<u128>,
    overall: Option<u128>,
    window: u64,
    spent: u128,
    by_server: HashMap<String, u128>,
}

impl Budget {
    /// An empty budget for `policy`.
    pub(crate) fn new(policy: &SpendPolicy) -> Self {
        Self {
            period_secs: policy.period_secs(),
            per_server: policy.max_per_period_per_server,
            overall: policy.max_per_period_overall,
            window: 0,
            spent: 0,
            by_server: HashMap::new(),
        }
    }

    /// The window `now_secs` falls in.
    pub(crate) fn window_of(&self, now_secs: u64) -> u64 {
        now_secs / self.period_secs
    }

    fn roll(&mut self, now_secs: u64) {
        let w = self.window_of(now_secs);
        if w != self.window {
            self.window = w;
            self.spent = 0;
            self.by_server.clear();
        }
    }

    /// Adds what a stored channel spent in `window` (on load).
    pub(crate) fn load(&mut self, origin: &str, window: u64, spent: u128, now_secs: u64) {
        self.roll(now_secs);
        if window == self.window {
            self.spent = self.spent.saturating_add(spent);
            let s = self.by_server.entry(origin.to_owned()).or_default();
            *s = s.saturating_add(spent);
        }
    }

    /// Reserves `amount` at `origin`, or says which budget it would exceed. Returns the window
    /// the reservation belongs to.
    pub(crate) fn reserve(
        &mut self,
        origin: &str,
        amount: u128,
        now_secs: u64,
    ) -> Result<u64, PolicyError> {
        self.roll(now_secs);
        let at_server = self.by_server.get(origin).copied().unwrap_or(0);
        let checks = [
            (Scope::Server(origin.to_owned()), self.per_server, at_server),
            (Scope::Overall, self.overall, self.spent),
        ];
        for (scope, limit, spent) in checks {
            if let Some(limit) = limit
                && spent.saturating_add(amount) > limit
            {
                return Err(PolicyError::PeriodBudgetExhausted {
                    scope,
                    limit,
                    spent,
                    amount,
                });
            }
        }
        self.spent = self.spent.saturating_add(amount);
        let s = self.by_server.entry(origin.to_owned()).or_default();
        *s = s.saturating_add(amount);
        Ok(self.window)
    }

    /// Gives back `amount` reserved at `origin` in `window` (nothing once that window is over).
    pub(crate) fn release(&mut self, origin: &str, amount: u128, window: u64) {
        if window != self.window {
            return;
        }
        self.spent = self.spent.saturating_sub(amount);
        if let Some(s) = self.by_server.get_mut(origin) {
            *s = s.saturating_sub(amount);
        }
    }

    /// Spent or reserved in the current window: overall, and at `origin`.
    pub(crate) fn spent(&mut self, origin: Option<&str>, now_secs: u64) -> u128 {
        self.roll(now_secs);
        match origin {
            None => self.spent,
            Some(o) => self.by_server.get(o).copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    const TOKEN: Address = address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913");

    fn offer_json(amount: &str, extra: serde_json::Value) -> PaymentRequirements {
        let mut e = serde_json::json!({
            "receiverAuthorizer": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
            "withdrawDelay": 900, "name": "USD Coin", "version": "2"
        });
        if let (Some(m), serde_json::Value::Object(x)) = (e.as_object_mut(), extra) {
            m.extend(x);
        }
        serde_json::from_value(serde_json::json!({
            "scheme": "batch-settlement", "network": "eip155:8453", "amount": amount,
            "asset": TOKEN.to_checksum(None),
            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "maxTimeoutSeconds": 300,
            "extra": e
        }))
        .unwrap()
    }

    fn required(accepts: Vec<PaymentRequirements>) -> PaymentRequired {
        PaymentRequired {
            x402_version: 2,
            error: None,
            resource: None,
            accepts,
            extensions: None,
        }
    }

    fn policy() -> SpendPolicy {
        SpendPolicy::new(1_000, 100_000).allow_asset(8453, TOKEN)
    }

    #[test]
    fn takes_the_first_allowed_batch_offer() {
        let mut exact = offer_json("1", serde_json::json!({}));
        exact.scheme = "exact".into();
        let pr = required(vec![
            exact,
            offer_json("5000", serde_json::json!({})),
            offer_json("900", serde_json::json!({})),
        ]);
        let c = choose_offer(&pr, &policy(), None).unwrap();
        assert_eq!(c.offer.amount, 900);
        assert_eq!(c.min_deposit, 9_000);
    }

    #[test]
    fn refuses_with_the_reason() {
        let mut exact = offer_json("1", serde_json::json!({}));
        exact.scheme = "exact".into();
        assert!(matches!(
            choose_offer(&required(vec![exact]), &policy(), None),
            Err(PolicyError::UnsupportedScheme { offered }) if offered == ["exact"]
        ));
        assert_eq!(
            choose_offer(
                &required(vec![offer_json("1001", serde_json::json!({}))]),
                &policy(),
                None
            ),
            Err(PolicyError::AmountAboveMax {
                amount: 1001,
                max: 1000
            })
        );
        let big_min = offer_json("10", serde_json::json!({"minDeposit": "100001"}));
        assert_eq!(
            choose_offer(&required(vec![big_min]), &policy(), None),
            Err(PolicyError::DepositAboveMax {
                deposit: 100_001,
                max: 100_000
            })
        );
        let other_asset = SpendPolicy::new(1_000, 100_000).allow_asset(8453, Address::ZERO);
        assert!(matches!(
            choose_offer(
                &required(vec![offer_json("10", serde_json::json!({}))]),
                &other_asset,
                None
            ),
            Err(PolicyError::AssetNotAllowed { .. })
        ));
        assert!(matches!(
            choose_offer(
                &required(vec![offer_json("10", serde_json::json!({}))]),
                &policy(),
                Some(1)
            ),
            Err(PolicyError::NetworkNotAllowed { chain_id: 8453 })
        ));
        let permit2 = offer_json("10", serde_json::json!({"assetTransferMethod": "permit2"}));
        assert!(matches!(
            choose_offer(&required(vec![permit2]), &policy(), None),
            Err(PolicyError::TransferMethodUnsupported(_))
        ));
    }

    #[test]
    fn accepted_is_the_offer_as_sent_without_corrective_state() {
        let o = offer_json(
            "10",
            serde_json::json!({"channelState": {"x": 1}, "future": true}),
        );
        let c = check_offer(&o, &policy(), None).unwrap();
        let extra = c.generic.extra.unwrap();
        assert!(extra.contains_key("future") && !extra.contains_key("channelState"));
    }

    #[test]
    fn deposits_cover_the_request_and_top_up_within_limits() {
        let p = DepositPolicy::new(1_000, 300);
        // needed: at least what the request needs
        assert_eq!(deposit_for(0, 100, 500, &p, 10_000), Ok(Some(1_000)));
        assert_eq!(deposit_for(0, 5_000, 500, &p, 10_000), Ok(Some(5_000)));
        assert_eq!(
            deposit_for(0, 5_000, 500, &p, 4_000),
            Err(PolicyError::DepositAboveMax {
                deposit: 5_000,
                max: 4_000
            })
        );
        // enough left: nothing
        assert_eq!(deposit_for(1_000, 600, 500, &p, 10_000), Ok(None));
        // below the threshold: top up
        assert_eq!(deposit_for(1_000, 800, 500, &p, 10_000), Ok(Some(1_000)));
        // a top-up the policy refuses is skipped
        assert_eq!(deposit_for(1_000, 800, 50_000, &p, 10_000), Ok(None));
    }

    #[test]
    fn budgets_reserve_release_and_roll_over() {
        let pol = policy().per_period(Duration::from_hours(1), Some(100), Some(150));
        let mut b = Budget::new(&pol);
        let w = b.reserve("a", 60, 10).unwrap();
        b.reserve("b", 60, 20).unwrap();
        assert!(matches!(
            b.reserve("a", 41, 30),
            Err(PolicyError::PeriodBudgetExhausted {
                scope: Scope::Server(_),
                ..
            })
        ));
        assert!(matches!(
            b.reserve("b", 31, 30),
            Err(PolicyError::PeriodBudgetExhausted {
                scope: Scope::Overall,
                ..
            })
        ));
        b.release("a", 50, w);
        assert_eq!(b.spent(Some("a"), 40), 10);
        b.reserve("b", 40, 50).unwrap();
        // a new hour starts empty; a late release of the old one changes nothing
        assert_eq!(b.spent(None, 3600), 0);
        b.release("b", 40, w);
        b.reserve("a", 100, 3601).unwrap();
        assert_eq!(b.spent(Some("a"), 3602), 100);
    }
}
