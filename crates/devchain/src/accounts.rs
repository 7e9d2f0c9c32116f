//! The deterministic dev accounts (anvil's default mnemonic) and the roles tests give them.
//!
//! These keys are public test keys, printed by every anvil; they hold nothing outside a dev chain.

use alloy::{
    primitives::{Address, B256, b256},
    signers::local::PrivateKeySigner,
};
use paychan_core::sig::LocalSigner;

/// How many dev accounts the chain funds.
pub const COUNT: usize = 10;

/// anvil's ten default keys (mnemonic `test test … junk`).
const KEYS: [B256; COUNT] = [
    b256!("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
    b256!("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"),
    b256!("5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"),
    b256!("7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"),
    b256!("47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"),
    b256!("8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"),
    b256!("92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e"),
    b256!("4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356"),
    b256!("dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"),
    b256!("2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"),
];

/// What a dev account is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Deploys contracts and mints the dev token (account 0).
    Deployer,
    /// The API provider's receiver, `payTo` (account 2).
    Receiver,
    /// Signs claim batches and refunds for the receiver (account 3).
    ReceiverAuthorizer,
    /// Sends transactions for the facilitator (account 4).
    Relayer,
    /// A paying agent, 0..=5 (accounts 1, 5, 6, 7, 8, 9).
    Payer(u8),
}

impl Role {
    /// The account index.
    pub fn index(self) -> usize {
        match self {
            Role::Deployer => 0,
            Role::Receiver => 2,
            Role::ReceiverAuthorizer => 3,
            Role::Relayer => 4,
            Role::Payer(0) => 1,
            Role::Payer(n) => (4 + usize::from(n)).min(COUNT - 1),
        }
    }
}

/// A dev account.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DevAccount {
    /// Its address.
    pub address: Address,
    /// Its (public, test-only) private key.
    pub key: B256,
}

impl std::fmt::Debug for DevAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevAccount")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl DevAccount {
    /// An alloy signer for it.
    pub fn signer(&self) -> PrivateKeySigner {
        // The ten keys are valid secp256k1 scalars; checked by the `keys_match_addresses` test.
        PrivateKeySigner::from_bytes(&self.key)
            .unwrap_or_else(|_| unreachable!("dev keys are valid"))
    }

    /// paychan's signer for it (vouchers, claim batches, refunds, deposit authorizations).
    pub fn local_signer(&self) -> LocalSigner {
        // valid scalars, as for `signer`
        LocalSigner::from_bytes(&self.key).unwrap_or_else(|_| unreachable!("dev keys are valid"))
    }
}

fn at(i: usize) -> DevAccount {
    let key = KEYS[i];
    let address = PrivateKeySigner::from_bytes(&key)
        .map(|s| s.address())
        .unwrap_or_default();
    DevAccount { address, key }
}

/// The account playing `role`.
pub fn account(role: Role) -> DevAccount {
    at(role.index())
}

/// A signer for `role`.
pub fn signer(role: Role) -> PrivateKeySigner {
    account(role).signer()
}

/// All dev accounts, by index.
pub fn all() -> Vec<DevAccount> {
    (0..COUNT).map(at).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::address;

    #[test]
    fn keys_match_addresses() {
        let all = all();
        assert_eq!(
            all[0].address,
            address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266")
        );
        assert_eq!(
            account(Role::Payer(0)).address,
            address!("70997970C51812dc3A010C7d01b50e0d17dc79C8")
        );
        assert_eq!(
            account(Role::Receiver).address,
            address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")
        );
        assert_eq!(
            account(Role::ReceiverAuthorizer).address,
            address!("90F79bf6EB2c4f870365E785982E1f101E93b906")
        );
        assert_eq!(
            all[9].address,
            address!("a0Ee7A142d267C1f36714E4a8F75612F20a79720")
        );
        let mut seen = std::collections::HashSet::new();
        assert!(all.iter().all(|a| seen.insert(a.address)));
    }

    #[test]
    fn local_signers_sign_for_their_account() {
        for a in all() {
            assert_eq!(a.local_signer().address(), a.address);
        }
    }
}
