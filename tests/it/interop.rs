//! Interop with the x402 reference stack: `tests/interop/reference-stack.mjs` runs the reference
//! client (`@x402/fetch`), resource server (`@x402/express` + batch-settlement server scheme) and
//! facilitator (`@x402/core` + batch-settlement facilitator scheme) against paychan's contracts on
//! a dev chain; this test then checks on chain, independently of the script, that the money moved
//! exactly as the script reports.

use paychan_devchain::{DevChain, Role};
use serde_json::Value;

use crate::{
    node::run_script,
    reference_stack::{Balances, assert_moved_exactly_the_charges, base_env},
};

/// How the script reaches the reference facilitator.
#[derive(Debug, Clone, Copy)]
enum FacilitatorMode {
    /// In the same process, as a `FacilitatorClient` object.
    InProcess,
    /// Served over the facilitator HTTP API and reached through `HTTPFacilitatorClient`.
    Http,
}

/// Runs the script against `chain`; returns its JSON summary line.
async fn run_reference_stack(chain: &DevChain, mode: FacilitatorMode) -> Value {
    let mut env = base_env(chain);
    env.push((
        "PAYCHAN_RELAYER_KEY",
        chain.account(Role::Relayer).key.to_string(),
    ));
    env.push((
        "PAYCHAN_FACILITATOR_HTTP",
        match mode {
            FacilitatorMode::InProcess => "0",
            FacilitatorMode::Http => "1",
        }
        .to_owned(),
    ));
    run_script("reference-stack.mjs", &env, &["PAYCHAN_FACILITATOR_URL"]).await
}

async fn reference_stack_moves_exactly_the_charges(mode: FacilitatorMode) {
    let chain = DevChain::start().await.unwrap();
    let before = Balances::read(&chain).await;
    let summary = run_reference_stack(&chain, mode).await;
    // The reference facilitator's relayer is the dev relayer account.
    assert_moved_exactly_the_charges(&chain, &summary, before).await;
}

#[tokio::test]
async fn reference_stack_in_process_facilitator() {
    reference_stack_moves_exactly_the_charges(FacilitatorMode::InProcess).await;
}

#[tokio::test]
async fn reference_stack_http_facilitator() {
    reference_stack_moves_exactly_the_charges(FacilitatorMode::Http).await;
}
