//! Starts a paychan dev chain and keeps it up until stdin closes or the process is interrupted.
//!
//! Prints one JSON line describing the chain: RPC URL, chain id, contract addresses, the anvil
//! pid, and the dev accounts by role with their keys. Those keys are anvil's public test keys,
//! worthless outside a dev chain.
//!
//! Usage: `paychan-devchain [--port N] [--chain-id N]`

use std::io::Read;

use paychan_devchain::{DevChain, DevChainConfig, Role};

fn usage() -> ! {
    eprintln!(
        "usage: paychan-devchain [--port N] [--chain-id N]\n\nStarts anvil with paychan's contracts at the canonical addresses and prints a JSON description."
    );
    std::process::exit(2)
}

fn parse_args() -> DevChainConfig {
    let mut cfg = DevChainConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number");
                usage()
            })
        };
        match a.as_str() {
            "--port" => cfg.port = u16::try_from(num("--port")).unwrap_or_else(|_| usage()),
            "--chain-id" => cfg.chain_id = num("--chain-id"),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
    }
    cfg
}

#[tokio::main]
async fn main() {
    let cfg = parse_args();
    let chain = match DevChain::start_with(cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paychan-devchain: {e}");
            std::process::exit(1);
        }
    };
    let role = |r: Role| {
        let a = chain.account(r);
        serde_json::json!({"address": a.address.to_checksum(None), "key": a.key.to_string()})
    };
    let c = chain.contracts();
    let desc = serde_json::json!({
        "rpcUrl": chain.rpc_url(),
        "chainId": chain.chain_id(),
        "network": format!("eip155:{}", chain.chain_id()),
        "anvilPid": chain.pid(),
        "contracts": {
            "escrow": c.escrow.to_checksum(None),
            "erc3009Collector": c.erc3009_collector.to_checksum(None),
            "multicall3": c.multicall3.to_checksum(None),
            "token": c.token.to_checksum(None),
        },
        "token": {"name": chain.config().token_name, "version": chain.config().token_version, "decimals": 6},
        "accounts": {
            "deployer": role(Role::Deployer),
            "receiver": role(Role::Receiver),
            "receiverAuthorizer": role(Role::ReceiverAuthorizer),
            "relayer": role(Role::Relayer),
            "payers": (0..=5).map(|i| role(Role::Payer(i))).collect::<Vec<_>>(),
        }
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{desc}");
    }
    // Stay up until stdin reaches EOF (the parent went away) or a signal arrives. stdin is read
    // on a plain thread: a blocking task would keep the runtime from shutting down after Ctrl-C.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = closed_rx => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(chain);
}
