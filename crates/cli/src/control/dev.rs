//! What `paychan dev` adds for the control plane and for scripts: funded payer keys, and the
//! description of the running stack (stderr, and `--info-file`).

use std::{io::Write, path::Path};

use alloy::providers::ext::AnvilApi;
use alloy_primitives::{B256, U256, keccak256};
use anyhow::{Context, Result};
use paychan_core::sig::LocalSigner;
use paychan_devchain::{DevChain, ESCROW, Role};

use super::serve::Serving;

/// Payer keys `paychan dev` funds.
pub(crate) const DEV_PAYERS: u64 = 32;
/// Dev tokens each holds (1,000 tokens of 6 decimals).
pub(crate) const DEV_PAYER_TOKENS: u128 = 1_000_000_000;
/// Wei each holds for its own transactions (deposits it sends, timed withdrawals): 10 ether.
const DEV_PAYER_WEI: u128 = 10_000_000_000_000_000_000;
/// The paid path the dev stack advertises (every `/v1/*` path is paid).
pub(crate) const PAID_PATH: &str = "/v1/chat/completions";

/// A funded dev payer: its key, and the secret for the info file.
pub(crate) struct DevPayer {
    secret: B256,
    key: LocalSigner,
}

/// [`DEV_PAYERS`] payer keys, `keccak256("paychan-dev/payer/v1" ‖ n)` for n = 1, 2, … (the
/// same on every start), each minted [`DEV_PAYER_TOKENS`] and given ether for gas.
pub(crate) async fn fund_payers(chain: &DevChain) -> Result<Vec<DevPayer>> {
    let mut out = Vec::new();
    for seed in 1..=DEV_PAYERS {
        let secret = keccak256([b"paychan-dev/payer/v1".as_slice(), &seed.to_be_bytes()].concat());
        let key =
            LocalSigner::from_bytes(&secret).with_context(|| format!("dev payer key {seed}"))?;
        chain
            .mint(key.address(), DEV_PAYER_TOKENS)
            .await
            .with_context(|| format!("minting dev tokens for dev payer {seed}"))?;
        chain
            .provider()
            .anvil_set_balance(key.address(), U256::from(DEV_PAYER_WEI))
            .await
            .with_context(|| format!("giving dev payer {seed} ether"))?;
        out.push(DevPayer { secret, key });
    }
    Ok(out)
}

/// Tells where everything is: on stderr, and as JSON in `info_file` (owner-only) if given.
pub(crate) fn announce(
    chain: &DevChain,
    serving: &Serving,
    data_dir: &Path,
    price: u128,
    payers: &[DevPayer],
    info_file: Option<&Path>,
) -> Result<()> {
    let c = chain.contracts();
    let gateway = format!("http://{}", serving.addr);
    let grpc = serving.grpc_addr.map(|a| a.to_string());
    let token_file = serving
        .grpc_token_file
        .as_ref()
        .map(|p| p.display().to_string());
    eprintln!(
        "  control    {} (token file {}): paychan channel list --grpc-addr {} --token-file {}",
        grpc.as_deref().unwrap_or("off"),
        token_file.as_deref().unwrap_or("-"),
        grpc.as_deref().unwrap_or("-"),
        token_file.as_deref().unwrap_or("-"),
    );
    eprintln!(
        "  paid URL   {gateway}{PAID_PATH}\n  payers     {} funded dev keys ({} tokens, 10 ETH each){}",
        payers.len(),
        DEV_PAYER_TOKENS,
        info_file.map_or_else(String::new, |p| format!(": see {}", p.display())),
    );
    let Some(path) = info_file else {
        return Ok(());
    };
    let info = serde_json::json!({
        "rpc_url": chain.rpc_url(),
        "chain_id": chain.chain_id(),
        "network": format!("eip155:{}", chain.chain_id()),
        "token": format!("{:#x}", c.token),
        "token_name": chain.config().token_name,
        "token_version": chain.config().token_version,
        "token_decimals": 6,
        "settlement": format!("{ESCROW:#x}"),
        "collector": format!("{:#x}", c.erc3009_collector),
        "gateway_url": gateway,
        "paid_path": PAID_PATH,
        "price": price.to_string(),
        "grpc_addr": grpc,
        "grpc_token_file": token_file,
        "operator_addr": serving.operator_addr.map(|a| a.to_string()),
        "receiver": format!("{:#x}", chain.account(Role::Receiver).address),
        "receiver_authorizer": format!("{:#x}", chain.account(Role::ReceiverAuthorizer).address),
        "relayer": format!("{:#x}", chain.account(Role::Relayer).address),
        "payer_private_keys": payers
            .iter()
            .map(|p| format!("{:#x}", p.secret))
            .collect::<Vec<_>>(),
        "payer_addresses": payers
            .iter()
            .map(|p| format!("{:#x}", p.key.address()))
            .collect::<Vec<_>>(),
        "data_dir": data_dir.display().to_string(),
    });
    write_owner_only(path, &serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing the info file {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file created mode 0600, then renamed: a reader
/// never sees half a file, and the keys are never readable by others.
fn write_owner_only(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}
