// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixture} from "../utils/Fixture.sol";
import {BatchSettlement} from "../../src/BatchSettlement.sol";
import {EscrowHandler} from "./EscrowHandler.sol";

/// @notice Invariants of the escrow under random sequences of deposits, claims (direct and signed), settles,
///         refunds (direct and signed), timed withdrawals, time warps, replay and high-s attempts, and a
///         malicious re-entering token. See EscrowHandler for the actors.
contract BatchSettlementInvariantTest is Fixture {
    EscrowHandler internal handler;

    function setUp() public override {
        super.setUp();
        vm.chainId(31_337);
        handler = new EscrowHandler(escrow, collector);

        bytes4[] memory selectors = new bytes4[](16);
        selectors[0] = EscrowHandler.deposit.selector;
        selectors[1] = EscrowHandler.claim.selector;
        selectors[2] = EscrowHandler.claimWithSignature.selector;
        selectors[3] = EscrowHandler.claimOverLimit.selector;
        selectors[4] = EscrowHandler.settle.selector;
        selectors[5] = EscrowHandler.refund.selector;
        selectors[6] = EscrowHandler.refundWithSignature.selector;
        selectors[7] = EscrowHandler.initiateWithdraw.selector;
        selectors[8] = EscrowHandler.finalizeWithdraw.selector;
        selectors[9] = EscrowHandler.warp.selector;
        selectors[10] = EscrowHandler.replayVoucher.selector;
        selectors[11] = EscrowHandler.replayClaimBatch.selector;
        selectors[12] = EscrowHandler.replayRefund.selector;
        selectors[13] = EscrowHandler.highS.selector;
        selectors[14] = EscrowHandler.armReentry.selector;
        selectors[15] = EscrowHandler.deposit.selector; // deposits twice as likely: keeps channels funded
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// @dev Sum over the given channels of the unclaimed escrow in `token`.
    function _unclaimed(BatchSettlement e, bytes32[12] memory channelIds, address token)
        internal
        view
        returns (uint256 total)
    {
        for (uint256 i; i < 12; ++i) {
            if (handler.config(i).token != token) continue;
            (uint128 bal, uint128 claimed) = e.channels(channelIds[i]);
            total += bal - claimed;
        }
    }

    /// @dev Sum over receivers of the claimed-but-unsettled funds in `token`.
    function _unsettled(BatchSettlement e, address token) internal view returns (uint256 total) {
        for (uint256 r; r < 2; ++r) {
            (uint128 claimed, uint128 settled) = e.receivers(handler.receiverOf(r), token);
            total += claimed - settled;
        }
    }

    function _ids() internal view returns (bytes32[12] memory a, bytes32[12] memory b, bytes32[12] memory c) {
        for (uint256 i; i < 12; ++i) {
            a[i] = handler.ids(i);
            b[i] = handler.ids2(i);
            c[i] = handler.idsOtherChain(i);
        }
    }

    function _solvent(address token) internal view {
        (bytes32[12] memory main, bytes32[12] memory second, bytes32[12] memory otherChain) = _ids();
        BatchSettlement escrow2 = handler.escrow2();
        // The canonical escrow holds the channels of both chain ids (the same storage answers both).
        uint256 owed =
            _unclaimed(escrow, main, token) + _unclaimed(escrow, otherChain, token) + _unsettled(escrow, token);
        assertEq(_balanceOf(token, ESCROW_ADDRESS), owed, "escrow balance == unclaimed + unsettled");
        uint256 owed2 = _unclaimed(escrow2, second, token) + _unsettled(escrow2, token);
        assertEq(_balanceOf(token, address(escrow2)), owed2, "second escrow");
    }

    function _balanceOf(address token, address who) internal view returns (uint256 bal) {
        (bool ok, bytes memory ret) = token.staticcall(abi.encodeWithSignature("balanceOf(address)", who));
        require(ok, "balanceOf failed");
        bal = abi.decode(ret, (uint256));
    }

    /// (a) The escrow's token balance always equals what it owes.
    function invariant_a_TokenBalanceEqualsLiabilities() public view {
        _solvent(address(handler.usdc()));
        _solvent(address(handler.evil()));
    }

    /// (b) Nothing is ever claimed above a voucher's ceiling or a channel's balance.
    function invariant_b_ClaimsWithinCeilingAndBalance() public view {
        assertEq(handler.claimAboveLimitAccepted(), 0, "a claim above its voucher or balance was accepted");
        (bytes32[12] memory main, bytes32[12] memory second, bytes32[12] memory otherChain) = _ids();
        for (uint256 i; i < 12; ++i) {
            (uint128 bal, uint128 claimed) = escrow.channels(main[i]);
            assertLe(claimed, bal, "claimed <= balance");
            assertLe(claimed, handler.maxCeilingSigned(main[i]), "claimed <= highest signed ceiling");
            (, claimed) = handler.escrow2().channels(second[i]);
            assertEq(claimed, 0, "nothing legitimately claimable on the second escrow");
            (, claimed) = escrow.channels(otherChain[i]);
            assertEq(claimed, 0, "nothing legitimately claimable under the other chain id");
        }
        for (uint256 r; r < 2; ++r) {
            (uint128 c0, uint128 s0) = escrow.receivers(handler.receiverOf(r), address(handler.usdc()));
            (uint128 c1, uint128 s1) = escrow.receivers(handler.receiverOf(r), address(handler.evil()));
            assertLe(s0, c0, "settled <= claimed");
            assertLe(s1, c1, "settled <= claimed");
        }
    }

    /// (c) No withdrawal completes before its delay, nor pays more than requested.
    function invariant_c_NoEarlyWithdrawal() public view {
        assertEq(handler.earlyFinalizeAccepted(), 0, "a withdrawal was finalized early");
        assertEq(handler.finalizeOverpaid(), 0, "a withdrawal paid more than requested");
        for (uint256 i; i < 12; ++i) {
            (uint128 amount, uint40 startedAt) = escrow.pendingWithdrawals(handler.ids(i));
            assertLe(startedAt, block.timestamp, "initiated in the past");
            assertEq(amount == 0, startedAt == 0, "a pending withdrawal has a non-zero amount");
        }
    }

    /// (d) Voucher, claim-batch and refund signatures do not replay across channels, escrows or chain ids.
    function invariant_d_NoSignatureReplay() public view {
        assertEq(handler.replayAccepted(), 0, "a replayed signature was accepted");
    }

    /// (e) High-s (malleated) signatures are rejected.
    function invariant_e_HighSRejected() public view {
        assertEq(handler.highSAccepted(), 0, "a high-s signature was accepted");
    }

    /// (f) A re-entering token can neither nest escrow calls nor unbalance the books.
    function invariant_f_ReentrancyBlocked() public view {
        assertEq(handler.evil().reentrySuccesses(), 0, "a nested escrow call succeeded");
        _solvent(address(handler.evil()));
    }

    /// Legitimate operations built by the handler must succeed, and failed attempts must fail for the
    /// expected reason (so the checks above are not vacuous).
    function invariant_g_OutcomesAsExpected() public view {
        assertEq(handler.unexpectedOutcomes(), 0, "an operation reverted unexpectedly (see lastUnexpected)");
    }

    /// A fixed walk through the handler proving that each guarded path is really exercised (so the invariants
    /// above are not vacuous): replays and high-s attempts reach the signature check, the malicious token
    /// really re-enters, and early finalization is really attempted.
    function test_HandlerExercisesEveryCheck() public {
        for (uint256 i; i < 12; ++i) {
            handler.deposit(i, 1e9);
        }
        for (uint256 i; i < 12; ++i) {
            handler.claim(i, 1e6, 10, i % 2 == 0);
        }
        handler.claimWithSignature(0, 63, 1e5);
        handler.claimWithSignature(1, 63, 1e5);
        for (uint256 i; i < 12; ++i) {
            for (uint256 mode; mode < 3; ++mode) {
                handler.replayVoucher(i, mode);
                handler.replayClaimBatch(i, mode);
                handler.replayRefund(i, mode, 1e6);
                handler.highS(i, mode);
            }
            handler.claimOverLimit(i, 5, true);
            handler.claimOverLimit(i, 5, false);
        }
        assertEq(handler.replayBlocked(), 12 * 9, "every replay reached the signature check");
        assertEq(handler.highSBlocked(), 12 * 3, "every high-s signature reached the check");

        handler.initiateWithdraw(1, 1e6);
        handler.finalizeWithdraw(1); // too early
        handler.warp(1 days);
        handler.armReentry(0, 0); // channel 1 (malicious token): nested settle
        handler.finalizeWithdraw(1); // pays the payer in the malicious token
        handler.armReentry(0, 1); // nested signed claim batch
        handler.settle(0, true);
        handler.armReentry(0, 2); // nested signed refund
        handler.refund(1, 1e6, false);
        handler.deposit(1, 1e6); // pull collector moves the malicious token: nested call during deposit
        assertGe(handler.evil().reentryAttempts(), 4, "the token re-entered");

        assertEq(handler.unexpectedOutcomes(), 0, "all outcomes as expected");
        invariant_a_TokenBalanceEqualsLiabilities();
        invariant_b_ClaimsWithinCeilingAndBalance();
        invariant_c_NoEarlyWithdrawal();
        invariant_d_NoSignatureReplay();
        invariant_e_HighSRejected();
        invariant_f_ReentrancyBlocked();
    }
}
