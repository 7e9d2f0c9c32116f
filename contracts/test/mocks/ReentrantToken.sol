// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A malicious ERC-20: whenever a "trigger" contract (the escrow paying out, a collector pulling in)
///         moves its tokens while armed, it first calls back into `target` with a prepared call (for example a
///         relayable `settle`, `claimWithSignature` or `refundWithSignature` on the escrow) and records the
///         outcome. The transfer itself always proceeds, so the only thing that can stop the re-entry is the target.
contract ReentrantToken is ERC20 {
    address public target;
    bytes private _call;
    bool private _inHook;
    mapping(address caller => bool) public isTrigger;

    uint256 public reentryAttempts;
    uint256 public reentrySuccesses;
    bytes public lastRevertData;

    constructor() ERC20("Reentrant", "RNT") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setTrigger(address caller, bool on) external {
        isTrigger[caller] = on;
    }

    function arm(address target_, bytes calldata call) external {
        target = target_;
        _call = call;
    }

    function disarm() external {
        target = address(0);
        delete _call;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (target != address(0) && isTrigger[msg.sender] && !_inHook) {
            _inHook = true;
            reentryAttempts++;
            (bool ok, bytes memory ret) = target.call(_call);
            if (ok) reentrySuccesses++;
            else lastRevertData = ret;
            _inHook = false;
        }
        super._update(from, to, value);
    }
}
