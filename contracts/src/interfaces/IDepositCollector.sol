// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IDepositCollector
/// @notice A pluggable token puller used by the paychan batch-settlement escrow to fund channels.
/// @dev The escrow calls `collect` and then checks that its own token balance grew by exactly `amount`;
///      a collector therefore has to deliver the tokens to the calling escrow (`msg.sender`) before returning.
interface IDepositCollector {
    /// @notice Moves `amount` of `token` from `payer` into the calling escrow.
    /// @param payer The owner of the tokens being deposited (the channel's payer).
    /// @param token The ERC-20 token of the channel.
    /// @param amount The exact number of token units to deliver.
    /// @param channelId The id of the channel being funded (collectors bind their authorizations to it).
    /// @param collectorData Collector-specific parameters, such as a signed token authorization.
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}
