//! Rebuild the bindings when a committed artifact changes.
fn main() {
    for name in [
        "BatchSettlement",
        "ERC3009DepositCollector",
        "DevStablecoin",
        "Multicall3",
    ] {
        println!("cargo:rerun-if-changed=../../contracts/artifacts/{name}.json");
    }
}
