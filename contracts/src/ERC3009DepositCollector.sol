// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IDepositCollector} from "./interfaces/IDepositCollector.sol";
import {IERC3009} from "./interfaces/IERC3009.sol";

/// @title ERC3009DepositCollector
/// @notice Funds paychan channels from a payer's EIP-3009 `ReceiveWithAuthorization` signature, so the payer
///         needs no transaction and no allowance.
/// @dev `receiveWithAuthorization` only pays out to its caller, so a signature addressed to this collector
///      cannot be front-run into a plain transfer; the tokens land here and are forwarded to the escrow in the
///      same call. The authorization nonce is `keccak256(abi.encode(channelId, salt))`, which ties the payer's
///      signature to one channel of the one escrow this collector serves.
///
///      The escrow address is an immutable embedded in the runtime code, so copying that code to another address
///      (as dev chains do with `anvil_setCode`) keeps serving the same escrow.
contract ERC3009DepositCollector is IDepositCollector {
    using SafeERC20 for IERC20;

    /// @notice The escrow that is allowed to call `collect` and receives the tokens.
    address public immutable batchSettlement;

    /// @notice `collect` was called by someone other than the escrow.
    error CallerNotBatchSettlement(address caller);

    /// @notice The constructor was given the zero address as escrow.
    error ZeroBatchSettlement();

    /// @param batchSettlement_ The escrow this collector serves.
    constructor(address batchSettlement_) {
        if (batchSettlement_ == address(0)) revert ZeroBatchSettlement();
        batchSettlement = batchSettlement_;
    }

    /// @notice Pulls `amount` of `token` from `payer` with `receiveWithAuthorization` and forwards it to the escrow.
    /// @param payer The signer of the authorization (`from`).
    /// @param token An EIP-3009 token with the `bytes signature` overload (USDC v2.2 style).
    /// @param amount The authorized value.
    /// @param channelId The channel being funded.
    /// @param collectorData `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)`.
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != batchSettlement) revert CallerNotBatchSettlement(msg.sender);
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009(token)
            .receiveWithAuthorization(payer, address(this), amount, validAfter, validBefore, nonce, signature);
        IERC20(token).safeTransfer(msg.sender, amount);
    }
}
