// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {BatchSettlement} from "../src/BatchSettlement.sol";

/// @notice Property tests of single operations against a simple model of the channel rules.
contract BatchSettlementFuzzTest is Fixture {
    uint128 internal constant MAX_AMOUNT = type(uint128).max / 4;

    function testFuzz_DepositsAccumulate(uint128 a, uint128 b, bytes32 salt) public {
        a = uint128(bound(a, 1, MAX_AMOUNT));
        b = uint128(bound(b, 1, MAX_AMOUNT));
        BatchSettlement.ChannelConfig memory c = _config(salt);
        _deposit(c, a);
        _deposit(c, b);
        assertEq(_balance(c), uint256(a) + b, "balance is the sum");
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), uint256(a) + b, "escrow holds the sum");
        assertEq(usdc.balanceOf(c.payer), 0, "payer paid both");
    }

    function testFuzz_DelayRange(uint40 delay) public {
        BatchSettlement.ChannelConfig memory c = _config();
        c.withdrawDelay = delay;
        if (delay < 900 || delay > 30 days) {
            vm.expectRevert(BatchSettlement.WithdrawDelayOutOfRange.selector);
            escrow.deposit(c, 1, COLLECTOR_ADDRESS, "");
        } else {
            _deposit(c, 1);
            assertEq(_balance(c), 1, "accepted");
        }
    }

    /// @dev Two successive claims against the model: stale rows are no-ops, then ceiling, then balance.
    function testFuzz_ClaimFollowsModel(
        uint128 deposited,
        uint128 ceiling1,
        uint128 total1,
        uint128 ceiling2,
        uint128 total2
    ) public {
        deposited = uint128(bound(deposited, 1, MAX_AMOUNT));
        BatchSettlement.ChannelConfig memory c = _config();
        _deposit(c, deposited);
        _claimAndCheck(c, ceiling1, total1, deposited);
        _claimAndCheck(c, ceiling2, total2, deposited);
        assertLe(_claimed(c), deposited, "never above balance");
    }

    function _claimAndCheck(BatchSettlement.ChannelConfig memory c, uint128 ceiling, uint128 total, uint128 balance)
        internal
    {
        ceiling = uint128(bound(ceiling, 0, uint256(balance) * 2));
        total = uint128(bound(total, 0, uint256(balance) * 2));
        uint128 before = _claimed(c);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(c, ceiling, total));
        (uint128 rcBefore,) = escrow.receivers(receiver, address(usdc));
        if (total <= before) {
            vm.prank(receiver);
            escrow.claim(rows);
            assertEq(_claimed(c), before, "stale row is a no-op");
        } else if (total > ceiling) {
            vm.expectRevert(BatchSettlement.ClaimExceedsCeiling.selector);
            vm.prank(receiver);
            escrow.claim(rows);
        } else if (total > balance) {
            vm.expectRevert(BatchSettlement.ClaimExceedsBalance.selector);
            vm.prank(receiver);
            escrow.claim(rows);
        } else {
            vm.prank(receiver);
            escrow.claim(rows);
            assertEq(_claimed(c), total, "raised to the row total");
            (uint128 rc,) = escrow.receivers(receiver, address(usdc));
            assertEq(rc - rcBefore, total - before, "receiver credited with the delta");
        }
    }

    function testFuzz_RefundCapsAndAdjustsWithdrawal(
        uint128 deposited,
        uint128 claimed,
        uint128 pending,
        uint128 amount
    ) public {
        deposited = uint128(bound(deposited, 1, MAX_AMOUNT));
        claimed = uint128(bound(claimed, 0, deposited));
        BatchSettlement.ChannelConfig memory c = _config();
        bytes32 cid = _id(c);
        _deposit(c, deposited);
        if (claimed > 0) _claimAs(receiver, c, claimed);
        uint128 available = deposited - claimed;
        pending = uint128(bound(pending, 0, available));
        if (pending > 0) {
            vm.prank(payer);
            escrow.initiateWithdraw(c, pending);
        }
        amount = uint128(bound(amount, 1, type(uint128).max));

        vm.prank(receiver);
        escrow.refund(c, amount);

        uint128 refunded = amount < available ? amount : available;
        assertEq(usdc.balanceOf(payer), refunded, "refund = min(amount, unclaimed)");
        assertEq(_balance(c), deposited - refunded, "balance");
        assertEq(escrow.refundNonce(cid), 1, "nonce advanced exactly once");
        (uint128 left, uint40 startedAt) = escrow.pendingWithdrawals(cid);
        if (pending == 0 || refunded >= pending) {
            assertEq(startedAt, 0, "no withdrawal pending");
            assertEq(left, 0, "nothing pending");
        } else {
            assertEq(left, pending - refunded, "pending reduced");
            assertEq(startedAt, block.timestamp, "still pending");
        }
    }

    function testFuzz_WithdrawOnlyAfterDelay(uint128 deposited, uint128 amount, uint40 delay, uint256 wait) public {
        deposited = uint128(bound(deposited, 1, MAX_AMOUNT));
        amount = uint128(bound(amount, 1, deposited));
        delay = uint40(bound(delay, 900, 30 days));
        wait = bound(wait, 0, uint256(delay) * 2);
        BatchSettlement.ChannelConfig memory c = _config();
        c.withdrawDelay = delay;
        _deposit(c, deposited);
        vm.prank(payer);
        escrow.initiateWithdraw(c, amount);
        vm.warp(block.timestamp + wait);
        if (wait < delay) {
            vm.expectRevert(BatchSettlement.WithdrawDelayNotElapsed.selector);
            vm.prank(payer);
            escrow.finalizeWithdraw(c);
            assertEq(usdc.balanceOf(payer), 0, "nothing paid early");
        } else {
            vm.prank(payer);
            escrow.finalizeWithdraw(c);
            assertEq(usdc.balanceOf(payer), amount, "paid after the delay");
            assertEq(_balance(c), deposited - amount, "balance");
        }
    }

    /// @dev The high-s twin of every kind of signature is rejected, although raw ecrecover accepts it.
    function testFuzz_HighSSignaturesRejected(uint256 keySeed, uint128 ceiling) public {
        uint256 key = bound(keySeed, 1, SECP256K1_N - 1);
        ceiling = uint128(bound(ceiling, 1, 1000));
        BatchSettlement.ChannelConfig memory c = _config();
        c.payerAuthorizer = vm.addr(key);
        _deposit(c, 1000);
        bytes32 cid = _id(c);

        bytes memory sig = sign(key, escrow.getVoucherDigest(cid, ceiling));
        bytes memory twin = malleate(sig);
        {
            (bytes32 r, bytes32 s, uint8 v) = _split(twin);
            assertEq(
                ecrecover(escrow.getVoucherDigest(cid, ceiling), v, r, s), c.payerAuthorizer, "raw ecrecover accepts"
            );
        }
        BatchSettlement.VoucherClaim memory row;
        row.voucher = BatchSettlement.Voucher(c, ceiling);
        row.totalClaimed = ceiling;
        row.signature = twin;
        BatchSettlement.VoucherClaim[] memory rows = _one(row);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(rows);

        row.signature = sig;
        rows = _one(row);
        bytes memory batchSig = _batchSig(RECEIVER_AUTH_KEY, rows);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.claimWithSignature(rows, malleate(batchSig));
        escrow.claimWithSignature(rows, batchSig);
        assertEq(_claimed(c), ceiling, "low-s originals work");

        bytes memory refundSig = _refundSig(RECEIVER_AUTH_KEY, c, 1, 0);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.refundWithSignature(c, 1, 0, malleate(refundSig));
    }

    function testFuzz_ArbitrarySignatureBytesRejected(bytes calldata junk, uint128 total) public {
        total = uint128(bound(total, 1, 1000));
        BatchSettlement.ChannelConfig memory c = _config();
        _deposit(c, 1000);
        BatchSettlement.VoucherClaim memory row;
        row.voucher = BatchSettlement.Voucher(c, total);
        row.totalClaimed = total;
        row.signature = junk;
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));
    }

    /// @dev A voucher for one channel never verifies for another channel of the same payer authorizer.
    function testFuzz_VoucherBoundToChannel(bytes32 saltA, bytes32 saltB, uint128 ceiling) public {
        vm.assume(saltA != saltB);
        ceiling = uint128(bound(ceiling, 1, 1000));
        BatchSettlement.ChannelConfig memory a = _config(saltA);
        BatchSettlement.ChannelConfig memory b = _config(saltB);
        _deposit(a, 1000);
        _deposit(b, 1000);
        BatchSettlement.VoucherClaim memory row = _row(a, ceiling, ceiling);
        row.voucher.channel = b;
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));
    }

    function testFuzz_ChannelIdMatchesEip712(
        address p,
        address pa,
        address r,
        address ra,
        address t,
        uint40 delay,
        bytes32 salt,
        uint64 chainId
    ) public {
        vm.assume(chainId != 0);
        vm.chainId(chainId);
        BatchSettlement.ChannelConfig memory c = BatchSettlement.ChannelConfig(p, pa, r, ra, t, delay, salt);
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("x402 Batch Settlement"),
                keccak256("1"),
                uint256(chainId),
                ESCROW_ADDRESS
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
                ),
                p,
                pa,
                r,
                ra,
                t,
                delay,
                salt
            )
        );
        assertEq(escrow.getChannelId(c), keccak256(abi.encodePacked(hex"1901", domain, structHash)), "EIP-712 id");
        c.salt = bytes32(uint256(salt) ^ 1);
        assertNotEq(escrow.getChannelId(c), keccak256(abi.encodePacked(hex"1901", domain, structHash)), "salt matters");
    }

    function _split(bytes memory sig) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        assembly {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
    }
}
