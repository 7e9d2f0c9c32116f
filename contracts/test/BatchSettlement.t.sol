// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {Vm} from "./utils/Vm.sol";
import {BatchSettlement} from "../src/BatchSettlement.sol";
import {DevStablecoin} from "../src/dev/DevStablecoin.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MockERC1271Wallet} from "./mocks/MockERC1271Wallet.sol";
import {MockERC20} from "./mocks/MockERC20.sol";
import {PullCollector, SkewedCollector, ReentrantCollector} from "./mocks/TestCollectors.sol";
import {ReentrantToken} from "./mocks/ReentrantToken.sol";

/// @notice Unit tests of BatchSettlement: every external function, every custom error, and the events.
contract BatchSettlementTest is Fixture {
    // Re-declared so expectEmit can match them.
    event ChannelCreated(bytes32 indexed channelId, BatchSettlement.ChannelConfig config);
    event ChannelClosed(bytes32 indexed channelId, BatchSettlement.ChannelConfig config);
    event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);
    event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);
    event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);

    BatchSettlement.ChannelConfig internal cfg;
    bytes32 internal id;

    function setUp() public override {
        super.setUp();
        cfg = _config();
        id = _id(cfg);
    }

    // =========================================================================================================
    // Constants and views
    // =========================================================================================================

    function test_Constants() public view {
        assertEq(escrow.MIN_WITHDRAW_DELAY(), 900, "min delay");
        assertEq(escrow.MAX_WITHDRAW_DELAY(), 30 days, "max delay");
        assertEq(
            escrow.CHANNEL_CONFIG_TYPEHASH(),
            keccak256(
                "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
            ),
            "config typehash"
        );
        assertEq(
            escrow.VOUCHER_TYPEHASH(), keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)"), "voucher"
        );
        assertEq(
            escrow.REFUND_TYPEHASH(), keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)"), "refund"
        );
        assertEq(
            escrow.CLAIM_ENTRY_TYPEHASH(),
            keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"),
            "entry"
        );
        assertEq(
            escrow.CLAIM_BATCH_TYPEHASH(),
            keccak256(
                "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
            ),
            "batch"
        );
    }

    function test_DomainSeparatorFollowsChainIdAndAddress() public {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("x402 Batch Settlement"),
                keccak256("1"),
                block.chainid,
                ESCROW_ADDRESS
            )
        );
        assertEq(escrow.DOMAIN_SEPARATOR(), expected, "domain now");
        vm.chainId(8453);
        assertNotEq(escrow.DOMAIN_SEPARATOR(), expected, "domain after chain id change");
        assertNotEq(_id(cfg), id, "channel id after chain id change");
    }

    function test_ChannelIdIsTypedDataHash() public view {
        bytes32 structHash = keccak256(abi.encode(escrow.CHANNEL_CONFIG_TYPEHASH(), cfg));
        assertEq(id, keccak256(abi.encodePacked(hex"1901", escrow.DOMAIN_SEPARATOR(), structHash)), "EIP-712 hash");
    }

    /// @dev A config with dirty high bits in an address or in withdrawDelay is not a second encoding of a channel.
    function test_ChannelId_RejectsNonCanonicalCalldata() public {
        bytes memory data = abi.encodeCall(BatchSettlement.getChannelId, (cfg));
        (bool ok, bytes memory ret) = ESCROW_ADDRESS.staticcall(data);
        assertTrue(ok, "canonical call works");
        assertEq(abi.decode(ret, (bytes32)), id, "same id");
        uint256[2] memory offsets = [uint256(4), 4 + 5 * 32]; // payer word, withdrawDelay word
        for (uint256 k; k < 2; ++k) {
            bytes memory dirty = bytes.concat(data);
            dirty[offsets[k]] = 0x01; // most significant byte of the word
            (ok,) = ESCROW_ADDRESS.staticcall(dirty);
            assertFalse(ok, "dirty word rejected");
        }
        // The same holds where it matters: a claim row with a dirty payerAuthorizer word.
        _deposit(cfg, 100);
        bytes memory claimData = abi.encodeCall(BatchSettlement.claim, (_one(_row(cfg, 10, 10))));
        (ok,) = _callAs(receiver, claimData);
        assertTrue(ok, "canonical claim works");
        claimData = abi.encodeCall(BatchSettlement.claim, (_one(_row(cfg, 20, 20))));
        // selector, array offset, array length, row offset, then the row: its config starts at 4 + 3 * 32.
        claimData[4 + 4 * 32] = 0x01; // payerAuthorizer word
        (ok,) = _callAs(receiver, claimData);
        assertFalse(ok, "dirty claim rejected");
        assertEq(_claimed(cfg), 10, "unchanged");
    }

    function _callAs(address who, bytes memory data) internal returns (bool ok, bytes memory ret) {
        vm.prank(who);
        (ok, ret) = ESCROW_ADDRESS.call(data);
    }

    function test_EmptyStateGetters() public view {
        (uint128 bal, uint128 claimed) = escrow.channels(id);
        assertEq(bal, 0, "balance");
        assertEq(claimed, 0, "claimed");
        assertEq(escrow.refundNonce(id), 0, "nonce");
        (uint128 amount, uint40 startedAt) = escrow.pendingWithdrawals(id);
        assertEq(amount, 0, "pending amount");
        assertEq(startedAt, 0, "pending at");
        (uint128 rc, uint128 rs) = escrow.receivers(receiver, address(usdc));
        assertEq(rc, 0, "receiver claimed");
        assertEq(rs, 0, "receiver settled");
    }

    // =========================================================================================================
    // deposit
    // =========================================================================================================

    function test_Deposit_FirstCreatesChannel() public {
        usdc.mint(payer, 1000e6);
        bytes memory data = _collectorData(cfg, 1000e6, PAYER_KEY);
        vm.expectEmit(ESCROW_ADDRESS);
        emit ChannelCreated(id, cfg);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Deposited(id, relayer, 1000e6, 1000e6);
        vm.prank(relayer);
        escrow.deposit(cfg, 1000e6, COLLECTOR_ADDRESS, data);

        assertEq(_balance(cfg), 1000e6, "balance");
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), 1000e6, "escrow holds the tokens");
        assertEq(usdc.balanceOf(payer), 0, "payer debited");
        assertEq(usdc.balanceOf(COLLECTOR_ADDRESS), 0, "collector keeps nothing");
    }

    function test_Deposit_TopUpDoesNotRecreate() public {
        _deposit(cfg, 100);
        usdc.mint(payer, 50);
        bytes memory data = _collectorData(cfg, 50, PAYER_KEY);
        vm.recordLogs();
        vm.expectEmit(ESCROW_ADDRESS);
        emit Deposited(id, relayer, 50, 150);
        vm.prank(relayer);
        escrow.deposit(cfg, 50, COLLECTOR_ADDRESS, data);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_count(logs, Deposited.selector), 1, "one Deposited");
        assertEq(_count(logs, ChannelCreated.selector), 0, "no ChannelCreated on top-up");
        assertEq(_balance(cfg), 150, "balance");
    }

    function test_Deposit_RecreatedAfterEmptied() public {
        _deposit(cfg, 100);
        vm.prank(receiver);
        escrow.refund(cfg, 100);
        usdc.mint(payer, 7);
        bytes memory data = _collectorData(cfg, 7, PAYER_KEY);
        vm.expectEmit(ESCROW_ADDRESS);
        emit ChannelCreated(id, cfg);
        vm.prank(relayer);
        escrow.deposit(cfg, 7, COLLECTOR_ADDRESS, data);
    }

    function test_Deposit_BoundaryDelaysAccepted() public {
        BatchSettlement.ChannelConfig memory c = _config(bytes32("min"));
        c.withdrawDelay = 900;
        _deposit(c, 1);
        c = _config(bytes32("max"));
        c.withdrawDelay = 30 days;
        _deposit(c, 1);
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), 2, "both deposits landed");
    }

    function test_Deposit_RevertsOnZeroConfigFields() public {
        BatchSettlement.ChannelConfig memory c;
        for (uint256 field; field < 4; ++field) {
            c = _config();
            if (field == 0) c.payer = address(0);
            if (field == 1) c.receiver = address(0);
            if (field == 2) c.receiverAuthorizer = address(0);
            if (field == 3) c.token = address(0);
            vm.expectRevert(BatchSettlement.InvalidChannel.selector);
            escrow.deposit(c, 1, COLLECTOR_ADDRESS, "");
        }
    }

    function test_Deposit_ZeroPayerAuthorizerIsAllowed() public {
        BatchSettlement.ChannelConfig memory c = _config();
        c.payerAuthorizer = address(0);
        _deposit(c, 10);
        assertEq(_balance(c), 10, "balance");
    }

    function test_Deposit_RevertsOnDelayOutOfRange() public {
        BatchSettlement.ChannelConfig memory c = _config();
        c.withdrawDelay = 899;
        vm.expectRevert(BatchSettlement.WithdrawDelayOutOfRange.selector);
        escrow.deposit(c, 1, COLLECTOR_ADDRESS, "");
        c.withdrawDelay = 30 days + 1;
        vm.expectRevert(BatchSettlement.WithdrawDelayOutOfRange.selector);
        escrow.deposit(c, 1, COLLECTOR_ADDRESS, "");
    }

    function test_Deposit_RevertsOnZeroAmount() public {
        vm.expectRevert(BatchSettlement.ZeroDeposit.selector);
        escrow.deposit(cfg, 0, COLLECTOR_ADDRESS, "");
    }

    function test_Deposit_RevertsOnInvalidCollector() public {
        vm.expectRevert(BatchSettlement.InvalidCollector.selector);
        escrow.deposit(cfg, 1, address(0), "");
        vm.expectRevert(BatchSettlement.InvalidCollector.selector);
        escrow.deposit(cfg, 1, address(0xC0FFEE), ""); // no code
    }

    function test_Deposit_RevertsOnOverflow() public {
        MockERC20 token = new MockERC20("Big", "BIG");
        PullCollector pull = new PullCollector();
        BatchSettlement.ChannelConfig memory c = _config();
        c.token = address(token);
        token.mint(payer, uint256(type(uint128).max) + 1);
        vm.prank(payer);
        token.approve(address(pull), type(uint256).max);
        escrow.deposit(c, type(uint128).max, address(pull), "");
        vm.expectRevert(BatchSettlement.DepositOverflow.selector);
        escrow.deposit(c, 1, address(pull), "");
    }

    function test_Deposit_RevertsWhenCollectorDeliversWrongAmount() public {
        MockERC20 token = new MockERC20("T", "T");
        SkewedCollector skewed = new SkewedCollector();
        BatchSettlement.ChannelConfig memory c = _config();
        c.token = address(token);
        token.mint(payer, 1000);
        vm.prank(payer);
        token.approve(address(skewed), type(uint256).max);
        vm.expectRevert(BatchSettlement.DepositCollectionFailed.selector);
        escrow.deposit(c, 100, address(skewed), abi.encode(int256(-1)));
        vm.expectRevert(BatchSettlement.DepositCollectionFailed.selector);
        escrow.deposit(c, 100, address(skewed), abi.encode(int256(1)));
        escrow.deposit(c, 100, address(skewed), abi.encode(int256(0)));
        assertEq(_balance(c), 100, "exact delivery accepted");
    }

    function test_Deposit_AuthorizationCannotBeReplayed() public {
        usdc.mint(payer, 200);
        bytes memory data = _collectorData(cfg, 100, PAYER_KEY);
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
        vm.expectRevert(); // the token rejects the used authorization nonce
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
        assertEq(_balance(cfg), 100, "only the first deposit counted");
    }

    function test_Deposit_AuthorizationIsBoundToChannel() public {
        BatchSettlement.ChannelConfig memory other = _config(bytes32("other"));
        usdc.mint(payer, 100);
        bytes memory data = _collectorData(cfg, 100, PAYER_KEY);
        // The collector derives the ERC-3009 nonce from the channel id, so the signature does not match.
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        escrow.deposit(other, 100, COLLECTOR_ADDRESS, data);
    }

    function test_Deposit_AuthorizationIsBoundToAmount() public {
        usdc.mint(payer, 200);
        bytes memory data = _collectorData(cfg, 100, PAYER_KEY);
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        escrow.deposit(cfg, 200, COLLECTOR_ADDRESS, data);
    }

    function test_Deposit_ReentrancyFromCollectorBlocked() public {
        MockERC20 token = new MockERC20("T", "T");
        ReentrantCollector evil = new ReentrantCollector();
        BatchSettlement.ChannelConfig memory c = _config();
        c.token = address(token);
        token.mint(payer, 1000);
        vm.prank(payer);
        token.approve(address(evil), type(uint256).max);
        evil.arm(abi.encodeCall(BatchSettlement.deposit, (c, 100, address(evil), "")));
        escrow.deposit(c, 100, address(evil), "");
        assertFalse(evil.reentrySucceeded(), "nested deposit must fail");
        assertEq(
            evil.reentryRevertData(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector),
            "blocked by the guard"
        );
        assertEq(_balance(c), 100, "counted once");
        assertEq(token.balanceOf(ESCROW_ADDRESS), 100, "held once");
    }

    // =========================================================================================================
    // claim
    // =========================================================================================================

    function test_Claim_ByReceiverAndAuthorizer() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 300, 200));
        vm.expectEmit(ESCROW_ADDRESS);
        emit Claimed(id, receiver, 200, 200);
        vm.prank(receiver);
        escrow.claim(rows);

        rows = _one(_row(cfg, 300, 300));
        vm.expectEmit(ESCROW_ADDRESS);
        emit Claimed(id, receiverAuthorizer, 100, 300);
        vm.prank(receiverAuthorizer);
        escrow.claim(rows);

        assertEq(_claimed(cfg), 300, "cumulative total");
        (uint128 rc, uint128 rs) = escrow.receivers(receiver, address(usdc));
        assertEq(rc, 300, "receiver credited");
        assertEq(rs, 0, "nothing settled yet");
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), 1000, "claims move no tokens");
    }

    function test_Claim_RevertsOnEmptyBatch() public {
        vm.expectRevert(BatchSettlement.EmptyBatch.selector);
        vm.prank(receiver);
        escrow.claim(new BatchSettlement.VoucherClaim[](0));
    }

    function test_Claim_RevertsForOtherCallers() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 300, 200));
        address[3] memory callers = [payer, payerAuthorizer, relayer];
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(BatchSettlement.NotAuthorizedToClaim.selector);
            vm.prank(callers[i]);
            escrow.claim(rows);
        }
    }

    function test_Claim_RevertsWhenAnyRowIsForeign() public {
        BatchSettlement.ChannelConfig memory foreign = _config(bytes32("foreign"));
        foreign.receiver = address(0xF00);
        foreign.receiverAuthorizer = address(0xF01);
        _deposit(cfg, 1000);
        _deposit(foreign, 1000);
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](2);
        rows[0] = _row(cfg, 10, 10);
        rows[1] = _row(foreign, 10, 10);
        vm.expectRevert(BatchSettlement.NotAuthorizedToClaim.selector);
        vm.prank(receiver);
        escrow.claim(rows);
        assertEq(_claimed(cfg), 0, "whole batch reverted");
    }

    function test_Claim_RevertsAboveCeiling() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 300, 301));
        vm.expectRevert(BatchSettlement.ClaimExceedsCeiling.selector);
        vm.prank(receiver);
        escrow.claim(rows);
    }

    function test_Claim_RevertsAboveBalance() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 2000, 1001));
        vm.expectRevert(BatchSettlement.ClaimExceedsBalance.selector);
        vm.prank(receiver);
        escrow.claim(rows);
        // Exactly the balance is fine.
        rows = _one(_row(cfg, 2000, 1000));
        vm.prank(receiver);
        escrow.claim(rows);
        assertEq(_claimed(cfg), 1000, "claimed all");
    }

    function test_Claim_OnUnfundedChannelReverts() public {
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 10, 1));
        vm.expectRevert(BatchSettlement.ClaimExceedsBalance.selector);
        vm.prank(receiver);
        escrow.claim(rows);
    }

    function test_Claim_RevertsOnWrongSigner() public {
        _deposit(cfg, 1000);
        // The payer itself is not the committed payerAuthorizer, so its signature does not count.
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, PAYER_KEY, 100, 100));
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(rows);
        rows = _one(_row(cfg, STRANGER_KEY, 100, 100));
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(rows);
    }

    function test_Claim_RevertsOnSignatureForOtherCeiling() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim memory row = _row(cfg, 100, 100);
        row.voucher.maxClaimableAmount = 500; // signature was for 100
        row.totalClaimed = 500;
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));
    }

    function test_Claim_RevertsOnMalformedAndHighSSignatures() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim memory row = _row(cfg, 100, 100);
        bytes memory good = row.signature;

        row.signature = malleate(good);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));

        row.signature = new bytes(64);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));

        row.signature = abi.encodePacked(good, uint8(0));
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));

        row.signature = new bytes(65);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(_one(row));

        row.signature = good;
        vm.prank(receiver);
        escrow.claim(_one(row));
        assertEq(_claimed(cfg), 100, "the low-s original works");
    }

    function test_Claim_StaleRowIsNoOp() public {
        _deposit(cfg, 1000);
        _claimAs(receiver, cfg, 500);
        BatchSettlement.VoucherClaim memory row = _row(cfg, 400, 400);
        row.signature = hex"00"; // not even checked
        vm.recordLogs();
        vm.prank(receiver);
        escrow.claim(_one(row));
        assertEq(vm.getRecordedLogs().length, 0, "no event");
        assertEq(_claimed(cfg), 500, "unchanged");
        // Replaying the applied voucher is also a no-op.
        _claimAs(receiver, cfg, 500);
        assertEq(_claimed(cfg), 500, "replay changes nothing");
    }

    function test_Claim_ManyChannelsCreditReceiver() public {
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](3);
        for (uint256 i; i < 3; ++i) {
            BatchSettlement.ChannelConfig memory c = _config(bytes32(i + 10));
            _deposit(c, 100);
            rows[i] = _row(c, 50, uint128(10 * (i + 1)));
        }
        vm.prank(receiver);
        escrow.claim(rows);
        (uint128 rc,) = escrow.receivers(receiver, address(usdc));
        assertEq(rc, 60, "10 + 20 + 30");
    }

    function test_Claim_Erc1271Payer() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(payer);
        BatchSettlement.ChannelConfig memory c = _config();
        c.payer = address(wallet);
        c.payerAuthorizer = address(0);
        _deposit(c, 1000, PAYER_KEY); // the wallet's owner signs the ERC-3009 authorization
        assertEq(_balance(c), 1000, "wallet funded the channel");

        BatchSettlement.VoucherClaim[] memory rows = _one(_row(c, PAYER_KEY, 300, 300));
        vm.prank(receiver);
        escrow.claim(rows);
        assertEq(_claimed(c), 300, "ERC-1271 voucher accepted");

        vm.prank(payer);
        wallet.setRejectAll(true);
        rows = _one(_row(c, PAYER_KEY, 400, 400));
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(rows);
    }

    function test_Claim_EoaPayerWithoutAuthorizer() public {
        BatchSettlement.ChannelConfig memory c = _config();
        c.payerAuthorizer = address(0);
        _deposit(c, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(c, PAYER_AUTH_KEY, 300, 300));
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        vm.prank(receiver);
        escrow.claim(rows);
        rows = _one(_row(c, PAYER_KEY, 300, 300));
        vm.prank(receiver);
        escrow.claim(rows);
        assertEq(_claimed(c), 300, "payer's own ECDSA signature");
    }

    // =========================================================================================================
    // claimWithSignature
    // =========================================================================================================

    function test_ClaimWithSignature_RelayedBatch() public {
        BatchSettlement.ChannelConfig memory c2 = _config(bytes32("two"));
        _deposit(cfg, 1000);
        _deposit(c2, 1000);
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](2);
        rows[0] = _row(cfg, 400, 300);
        rows[1] = _row(c2, 700, 700);
        bytes memory sig = _batchSig(RECEIVER_AUTH_KEY, rows);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Claimed(id, relayer, 300, 300);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Claimed(_id(c2), relayer, 700, 700);
        vm.prank(relayer);
        escrow.claimWithSignature(rows, sig);
        (uint128 rc,) = escrow.receivers(receiver, address(usdc));
        assertEq(rc, 1000, "both rows credited");

        // Submitting the same signed batch again is harmless.
        vm.recordLogs();
        escrow.claimWithSignature(rows, sig);
        assertEq(vm.getRecordedLogs().length, 0, "replay is a no-op");
    }

    function test_ClaimWithSignature_RevertsOnEmptyBatch() public {
        vm.expectRevert(BatchSettlement.EmptyBatch.selector);
        escrow.claimWithSignature(new BatchSettlement.VoucherClaim[](0), "");
    }

    function test_ClaimWithSignature_RevertsOnMixedAuthorizers() public {
        BatchSettlement.ChannelConfig memory c2 = _config(bytes32("two"));
        c2.receiverAuthorizer = stranger;
        _deposit(cfg, 1000);
        _deposit(c2, 1000);
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](2);
        rows[0] = _row(cfg, 10, 10);
        rows[1] = _row(c2, 10, 10);
        bytes memory sig = _batchSig(RECEIVER_AUTH_KEY, rows);
        vm.expectRevert(BatchSettlement.NotReceiverAuthorizer.selector);
        escrow.claimWithSignature(rows, sig);
    }

    function test_ClaimWithSignature_RevertsOnBadAuthorizerSignature() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 500, 400));
        bytes memory sig = _batchSig(STRANGER_KEY, rows);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.claimWithSignature(rows, sig);

        // A valid signature does not cover a tampered row.
        sig = _batchSig(RECEIVER_AUTH_KEY, rows);
        rows[0].totalClaimed = 500;
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.claimWithSignature(rows, sig);

        // Nor its high-s twin.
        rows[0].totalClaimed = 400;
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.claimWithSignature(rows, malleate(sig));

        escrow.claimWithSignature(rows, sig);
        assertEq(_claimed(cfg), 400, "original signature works");
    }

    function test_ClaimWithSignature_ChecksVoucherToo() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, STRANGER_KEY, 500, 400));
        bytes memory sig = _batchSig(RECEIVER_AUTH_KEY, rows);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.claimWithSignature(rows, sig);

        rows = _one(_row(cfg, 500, 501));
        sig = _batchSig(RECEIVER_AUTH_KEY, rows);
        vm.expectRevert(BatchSettlement.ClaimExceedsCeiling.selector);
        escrow.claimWithSignature(rows, sig);
    }

    function test_ClaimWithSignature_Erc1271ReceiverAuthorizer() public {
        MockERC1271Wallet authWallet = new MockERC1271Wallet(receiverAuthorizer);
        BatchSettlement.ChannelConfig memory c = _config();
        c.receiverAuthorizer = address(authWallet);
        _deposit(c, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(c, 500, 450));
        bytes memory sig = _batchSig(RECEIVER_AUTH_KEY, rows); // the wallet owner's key
        escrow.claimWithSignature(rows, sig);
        assertEq(_claimed(c), 450, "ERC-1271 authorizer accepted");

        vm.prank(receiverAuthorizer);
        authWallet.setRejectAll(true);
        rows = _one(_row(c, 500, 500));
        sig = _batchSig(RECEIVER_AUTH_KEY, rows);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.claimWithSignature(rows, sig);
    }

    // =========================================================================================================
    // settle
    // =========================================================================================================

    function test_Settle_SweepsClaimed() public {
        _deposit(cfg, 1000);
        _claimAs(receiver, cfg, 600);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Settled(receiver, address(usdc), stranger, 600);
        vm.prank(stranger);
        escrow.settle(receiver, address(usdc));
        assertEq(usdc.balanceOf(receiver), 600, "receiver paid");
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), 400, "rest stays in escrow");
        (uint128 rc, uint128 rs) = escrow.receivers(receiver, address(usdc));
        assertEq(rc, 600, "claimed");
        assertEq(rs, 600, "settled");

        // Nothing new: no transfer, no event.
        vm.recordLogs();
        escrow.settle(receiver, address(usdc));
        assertEq(vm.getRecordedLogs().length, 0, "no-op");

        _claimAs(receiver, cfg, 1000);
        escrow.settle(receiver, address(usdc));
        assertEq(usdc.balanceOf(receiver), 1000, "second sweep pays the difference");
    }

    function test_Settle_UnknownPairIsNoOp() public {
        vm.recordLogs();
        escrow.settle(address(0xABC), address(0xDEF));
        assertEq(vm.getRecordedLogs().length, 0, "nothing happens");
    }

    // =========================================================================================================
    // initiateWithdraw / finalizeWithdraw
    // =========================================================================================================

    function test_Withdraw_FullCycleClosesChannel() public {
        _deposit(cfg, 1000);
        vm.expectEmit(ESCROW_ADDRESS);
        emit WithdrawInitiated(id, 1000, uint40(block.timestamp) + DELAY);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 1000);
        (uint128 amount, uint40 startedAt) = escrow.pendingWithdrawals(id);
        assertEq(amount, 1000, "pending amount");
        assertEq(startedAt, block.timestamp, "initiatedAt");

        vm.warp(block.timestamp + DELAY - 1);
        vm.expectRevert(BatchSettlement.WithdrawDelayNotElapsed.selector);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);

        vm.warp(block.timestamp + 1);
        vm.expectEmit(ESCROW_ADDRESS);
        emit WithdrawFinalized(id, payer, 1000);
        vm.expectEmit(ESCROW_ADDRESS);
        emit ChannelClosed(id, cfg);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);
        assertEq(usdc.balanceOf(payer), 1000, "payer refunded");
        assertEq(_balance(cfg), 0, "channel empty");
        (amount, startedAt) = escrow.pendingWithdrawals(id);
        assertEq(startedAt, 0, "pending cleared");
        assertEq(amount, 0, "pending amount cleared");
    }

    function test_Withdraw_ByPayerAuthorizerPaysPayer() public {
        _deposit(cfg, 1000);
        vm.prank(payerAuthorizer);
        escrow.initiateWithdraw(cfg, 400);
        vm.warp(block.timestamp + DELAY);
        vm.prank(payerAuthorizer);
        escrow.finalizeWithdraw(cfg);
        assertEq(usdc.balanceOf(payer), 400, "funds go to the payer");
        assertEq(usdc.balanceOf(payerAuthorizer), 0, "not to the authorizer");
        assertEq(_balance(cfg), 600, "rest remains");
    }

    function test_Withdraw_CappedByLaterClaims() public {
        _deposit(cfg, 1000);
        _claimAs(receiver, cfg, 200);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 800);
        _claimAs(receiver, cfg, 900); // claims during the window shrink what is left
        vm.warp(block.timestamp + DELAY);
        vm.recordLogs();
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);
        assertEq(usdc.balanceOf(payer), 100, "only the unclaimed 100");
        assertEq(_balance(cfg), 900, "balance = claimed");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_count(logs, WithdrawFinalized.selector), 1, "finalized");
        assertEq(_count(logs, ChannelClosed.selector), 0, "claimed channels never close");
    }

    function test_Withdraw_NothingLeftPaysZero() public {
        _deposit(cfg, 1000);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 500);
        _claimAs(receiver, cfg, 1000);
        vm.warp(block.timestamp + DELAY);
        vm.expectEmit(ESCROW_ADDRESS);
        emit WithdrawFinalized(id, payer, 0);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);
        assertEq(usdc.balanceOf(payer), 0, "nothing paid");
    }

    function test_InitiateWithdraw_Reverts() public {
        _deposit(cfg, 1000);
        vm.expectRevert(BatchSettlement.InvalidChannel.selector);
        vm.prank(receiver);
        escrow.initiateWithdraw(cfg, 1);

        vm.expectRevert(BatchSettlement.NothingToWithdraw.selector);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 0);

        _claimAs(receiver, cfg, 300);
        vm.expectRevert(BatchSettlement.WithdrawAmountExceedsAvailable.selector);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 701);

        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 700);
        vm.expectRevert(BatchSettlement.WithdrawalAlreadyPending.selector);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 1);
    }

    function test_InitiateWithdraw_ZeroAuthorizerDoesNotAdmitAnyone() public {
        BatchSettlement.ChannelConfig memory c = _config();
        c.payerAuthorizer = address(0);
        _deposit(c, 10);
        vm.expectRevert(BatchSettlement.InvalidChannel.selector);
        vm.prank(stranger);
        escrow.initiateWithdraw(c, 1);
    }

    function test_FinalizeWithdraw_Reverts() public {
        _deposit(cfg, 1000);
        vm.expectRevert(BatchSettlement.NotAuthorizedToFinalizeWithdraw.selector);
        vm.prank(receiver);
        escrow.finalizeWithdraw(cfg);

        vm.expectRevert(BatchSettlement.WithdrawalNotPending.selector);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);

        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 10);
        vm.expectRevert(BatchSettlement.WithdrawDelayNotElapsed.selector);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);

        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);
        vm.expectRevert(BatchSettlement.WithdrawalNotPending.selector);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);
    }

    function test_Withdraw_CanRestartAfterFinalize() public {
        _deposit(cfg, 1000);
        vm.startPrank(payer);
        escrow.initiateWithdraw(cfg, 100);
        vm.warp(block.timestamp + DELAY);
        escrow.finalizeWithdraw(cfg);
        escrow.initiateWithdraw(cfg, 900);
        vm.warp(block.timestamp + DELAY);
        escrow.finalizeWithdraw(cfg);
        vm.stopPrank();
        assertEq(usdc.balanceOf(payer), 1000, "all back");
    }

    // =========================================================================================================
    // refund / refundWithSignature
    // =========================================================================================================

    function test_Refund_CappedAndClosing() public {
        _deposit(cfg, 1000);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Refunded(id, receiver, 1000);
        vm.expectEmit(ESCROW_ADDRESS);
        emit ChannelClosed(id, cfg);
        vm.prank(receiver);
        escrow.refund(cfg, 5000);
        assertEq(usdc.balanceOf(payer), 1000, "capped to the balance");
        assertEq(escrow.refundNonce(id), 1, "nonce advanced");
    }

    function test_Refund_PartialAfterClaims() public {
        _deposit(cfg, 1000);
        _claimAs(receiver, cfg, 300);
        vm.recordLogs();
        vm.prank(receiverAuthorizer);
        escrow.refund(cfg, 200);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_count(logs, Refunded.selector), 1, "refunded");
        assertEq(_count(logs, ChannelClosed.selector), 0, "still open");
        assertEq(usdc.balanceOf(payer), 200, "refunded");
        assertEq(_balance(cfg), 800, "balance");
        vm.prank(receiver);
        escrow.refund(cfg, type(uint128).max);
        assertEq(usdc.balanceOf(payer), 700, "everything unclaimed");
        assertEq(_balance(cfg), 300, "the claimed part stays");
    }

    function test_Refund_NothingAvailableStillBumpsNonce() public {
        _deposit(cfg, 1000);
        _claimAs(receiver, cfg, 1000);
        vm.recordLogs();
        vm.prank(receiver);
        escrow.refund(cfg, 10);
        assertEq(vm.getRecordedLogs().length, 0, "no Refunded, no transfer");
        assertEq(escrow.refundNonce(id), 1, "nonce advanced anyway");
    }

    function test_Refund_Reverts() public {
        _deposit(cfg, 1000);
        address[3] memory callers = [payer, payerAuthorizer, relayer];
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(BatchSettlement.NotAuthorizedToRefund.selector);
            vm.prank(callers[i]);
            escrow.refund(cfg, 1);
        }
        vm.expectRevert(BatchSettlement.ZeroRefund.selector);
        vm.prank(receiver);
        escrow.refund(cfg, 0);
        assertEq(escrow.refundNonce(id), 0, "failed refunds leave the nonce");
    }

    function test_Refund_ReducesPendingWithdrawal() public {
        _deposit(cfg, 1000);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 600);
        vm.prank(receiver);
        escrow.refund(cfg, 250);
        (uint128 amount, uint40 startedAt) = escrow.pendingWithdrawals(id);
        assertEq(amount, 350, "reduced");
        assertEq(startedAt, block.timestamp, "still pending");
    }

    function test_Refund_CancelsCoveredWithdrawal() public {
        _deposit(cfg, 1000);
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 600);
        vm.prank(receiver);
        escrow.refund(cfg, 600);
        (uint128 amount, uint40 startedAt) = escrow.pendingWithdrawals(id);
        assertEq(amount, 0, "amount cleared");
        assertEq(startedAt, 0, "cancelled");
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(BatchSettlement.WithdrawalNotPending.selector);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfg);
        // A new withdrawal can start right away.
        vm.prank(payer);
        escrow.initiateWithdraw(cfg, 400);
    }

    function test_RefundWithSignature_Relayed() public {
        _deposit(cfg, 1000);
        bytes memory sig = _refundSig(RECEIVER_AUTH_KEY, cfg, 300, 0);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Refunded(id, relayer, 300);
        vm.prank(relayer);
        escrow.refundWithSignature(cfg, 300, 0, sig);
        assertEq(usdc.balanceOf(payer), 300, "refunded");
        assertEq(escrow.refundNonce(id), 1, "nonce advanced");

        vm.expectRevert(BatchSettlement.InvalidRefundNonce.selector);
        escrow.refundWithSignature(cfg, 300, 0, sig);
        // The old signature with the new nonce is not a valid signature.
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.refundWithSignature(cfg, 300, 1, sig);
    }

    function test_RefundWithSignature_InvalidatedByDirectRefund() public {
        _deposit(cfg, 1000);
        bytes memory sig = _refundSig(RECEIVER_AUTH_KEY, cfg, 300, 0);
        vm.prank(receiver);
        escrow.refund(cfg, 1);
        vm.expectRevert(BatchSettlement.InvalidRefundNonce.selector);
        escrow.refundWithSignature(cfg, 300, 0, sig);
    }

    function test_RefundWithSignature_Reverts() public {
        _deposit(cfg, 1000);
        bytes memory sig = _refundSig(STRANGER_KEY, cfg, 300, 0);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.refundWithSignature(cfg, 300, 0, sig);

        sig = _refundSig(RECEIVER_AUTH_KEY, cfg, 300, 0);
        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.refundWithSignature(cfg, 301, 0, sig); // amount not covered

        vm.expectRevert(BatchSettlement.InvalidSignature.selector);
        escrow.refundWithSignature(cfg, 300, 0, malleate(sig));

        vm.expectRevert(BatchSettlement.InvalidRefundNonce.selector);
        escrow.refundWithSignature(cfg, 300, 7, sig);

        sig = _refundSig(RECEIVER_AUTH_KEY, cfg, 0, 0);
        vm.expectRevert(BatchSettlement.ZeroRefund.selector);
        escrow.refundWithSignature(cfg, 0, 0, sig);
    }

    function test_RefundWithSignature_Erc1271Authorizer() public {
        MockERC1271Wallet authWallet = new MockERC1271Wallet(receiverAuthorizer);
        BatchSettlement.ChannelConfig memory c = _config();
        c.receiverAuthorizer = address(authWallet);
        _deposit(c, 1000);
        bytes memory sig = _refundSig(RECEIVER_AUTH_KEY, c, 1000, 0);
        escrow.refundWithSignature(c, 1000, 0, sig);
        assertEq(usdc.balanceOf(payer), 1000, "refunded through ERC-1271");
    }

    // =========================================================================================================
    // multicall
    // =========================================================================================================

    /// @dev What the reference facilitator sends for a `refund` payload: claim the latest voucher, then refund.
    function test_Multicall_ClaimThenRefund() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 350, 350));
        bytes memory claimSig = _batchSig(RECEIVER_AUTH_KEY, rows);
        bytes memory refundSig = _refundSig(RECEIVER_AUTH_KEY, cfg, 650, 0);
        bytes[] memory calls = new bytes[](2);
        calls[0] = abi.encodeCall(BatchSettlement.claimWithSignature, (rows, claimSig));
        calls[1] = abi.encodeCall(BatchSettlement.refundWithSignature, (cfg, 650, 0, refundSig));

        vm.expectEmit(ESCROW_ADDRESS);
        emit Claimed(id, relayer, 350, 350);
        vm.expectEmit(ESCROW_ADDRESS);
        emit Refunded(id, relayer, 650);
        vm.prank(relayer);
        bytes[] memory results = escrow.multicall(calls);

        assertEq(results.length, 2, "two results");
        assertEq(_claimed(cfg), 350, "claimed");
        assertEq(_balance(cfg), 350, "only the claimed part remains");
        assertEq(usdc.balanceOf(payer), 650, "payer refunded");
        escrow.settle(receiver, address(usdc));
        assertEq(usdc.balanceOf(receiver), 350, "receiver paid");
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), 0, "escrow empty");
    }

    function test_Multicall_RevertsAtomically() public {
        _deposit(cfg, 1000);
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(cfg, 350, 350));
        bytes memory claimSig = _batchSig(RECEIVER_AUTH_KEY, rows);
        bytes[] memory calls = new bytes[](2);
        calls[0] = abi.encodeCall(BatchSettlement.claimWithSignature, (rows, claimSig));
        calls[1] = abi.encodeCall(BatchSettlement.refundWithSignature, (cfg, 650, 5, hex"")); // wrong nonce
        vm.expectRevert(BatchSettlement.InvalidRefundNonce.selector);
        escrow.multicall(calls);
        assertEq(_claimed(cfg), 0, "claim rolled back");
    }

    function test_Multicall_ReturnsViewResults() public {
        _deposit(cfg, 1000);
        bytes[] memory calls = new bytes[](2);
        calls[0] = abi.encodeWithSelector(escrow.channels.selector, id);
        calls[1] = abi.encodeWithSelector(escrow.refundNonce.selector, id);
        bytes[] memory results = escrow.multicall(calls);
        (uint128 bal, uint128 claimed) = abi.decode(results[0], (uint128, uint128));
        assertEq(bal, 1000, "balance via multicall");
        assertEq(claimed, 0, "claimed via multicall");
        assertEq(abi.decode(results[1], (uint256)), 0, "nonce via multicall");
    }

    // =========================================================================================================
    // Re-entrancy through a malicious token
    // =========================================================================================================

    function test_ReentrantToken_CannotReenterDuringPayouts() public {
        ReentrantToken evil = new ReentrantToken();
        PullCollector pull = new PullCollector();
        BatchSettlement.ChannelConfig memory c = _config(bytes32("evil"));
        c.token = address(evil);
        evil.mint(payer, 1000);
        vm.prank(payer);
        evil.approve(address(pull), type(uint256).max);
        escrow.deposit(c, 1000, address(pull), "");
        _claimAs(receiver, c, 400);
        evil.setTrigger(ESCROW_ADDRESS, true);

        // settle: the token re-enters settle for the same receiver while paying it.
        evil.arm(ESCROW_ADDRESS, abi.encodeCall(BatchSettlement.settle, (receiver, address(evil))));
        escrow.settle(receiver, address(evil));
        assertEq(evil.balanceOf(receiver), 400, "paid once");
        assertEq(evil.reentrySuccesses(), 0, "re-entry failed");
        assertEq(
            evil.lastRevertData(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector),
            "guard error"
        );

        // refund: the token re-enters with a valid relayable refund signature for the rest.
        bytes memory sig = _refundSig(RECEIVER_AUTH_KEY, c, 600, 1);
        evil.arm(ESCROW_ADDRESS, abi.encodeCall(BatchSettlement.refundWithSignature, (c, 600, 1, sig)));
        vm.prank(receiver);
        escrow.refund(c, 100);
        assertEq(evil.reentrySuccesses(), 0, "nested refund failed");
        assertEq(evil.balanceOf(payer), 100, "only the outer refund paid");
        assertEq(escrow.refundNonce(_id(c)), 1, "nonce bumped once");
        evil.disarm();
        escrow.refundWithSignature(c, 600, 1, sig);
        assertEq(evil.balanceOf(payer), 600, "the signature still works once, outside");
        assertEq(evil.balanceOf(ESCROW_ADDRESS), 0, "books balanced");
    }
}
