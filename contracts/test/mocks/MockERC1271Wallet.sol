// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @notice A smart-contract wallet for tests: ERC-1271 accepts a hash when its owner EOA signed it, unless the
///         wallet has been switched to reject everything (models a revoked key or a rotated authorizer).
contract MockERC1271Wallet is IERC1271 {
    address public immutable owner;
    bool public rejectAll;

    constructor(address owner_) {
        owner = owner_;
    }

    function setRejectAll(bool reject) external {
        require(msg.sender == owner, "not owner");
        rejectAll = reject;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (rejectAll) return 0xffffffff;
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(hash, signature);
        return err == ECDSA.RecoverError.NoError && signer == owner ? IERC1271.isValidSignature.selector : bytes4(0);
    }
}
