// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IDepositCollector} from "../../src/interfaces/IDepositCollector.sol";

/// @notice Test collector that pulls with `transferFrom` (the payer approves it beforehand) and delivers to the
///         calling escrow. Unrestricted on purpose: tests only.
contract PullCollector is IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32, bytes calldata) external {
        require(IERC20(token).transferFrom(payer, msg.sender, amount), "pull failed");
    }
}

/// @notice Test collector that delivers `amount` adjusted by a signed delta taken from `collectorData`
///         (`abi.encode(int256 delta)`), to provoke the escrow's balance post-condition.
contract SkewedCollector is IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32, bytes calldata collectorData) external {
        int256 delta = abi.decode(collectorData, (int256));
        uint256 delivered = uint256(int256(amount) + delta);
        require(IERC20(token).transferFrom(payer, msg.sender, delivered), "pull failed");
    }
}

/// @notice Test collector that tries to re-enter the escrow during `collect` and records what happened.
contract ReentrantCollector is IDepositCollector {
    bytes public reentryRevertData;
    bool public reentrySucceeded;
    bytes private _reentryCall;

    function arm(bytes calldata call) external {
        _reentryCall = call;
    }

    function collect(address payer, address token, uint256 amount, bytes32, bytes calldata) external {
        (bool ok, bytes memory ret) = msg.sender.call(_reentryCall);
        reentrySucceeded = ok;
        reentryRevertData = ret;
        require(IERC20(token).transferFrom(payer, msg.sender, amount), "pull failed");
    }
}
