// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {Multicall3} from "../src/dev/Multicall3.sol";
import {BatchSettlement} from "../src/BatchSettlement.sol";

contract Echo {
    function echo(uint256 x) external payable returns (uint256, uint256) {
        return (x, msg.value);
    }

    function fail() external pure {
        revert("echo: fail");
    }
}

contract Multicall3Test is Fixture {
    address internal constant MULTICALL3_ADDRESS = 0xcA11bde05977b3631167028862bE2a173976CA11;
    Multicall3 internal mc;
    Echo internal echo;

    function setUp() public override {
        super.setUp();
        vm.etch(MULTICALL3_ADDRESS, address(new Multicall3()).code);
        mc = Multicall3(MULTICALL3_ADDRESS);
        echo = new Echo();
        vm.roll(100);
    }

    function _calls(bool withFailure) internal view returns (Multicall3.Call[] memory calls) {
        calls = new Multicall3.Call[](2);
        calls[0] = Multicall3.Call(address(echo), abi.encodeCall(Echo.echo, (7)));
        calls[1] = withFailure
            ? Multicall3.Call(address(echo), abi.encodeCall(Echo.fail, ()))
            : Multicall3.Call(address(echo), abi.encodeCall(Echo.echo, (8)));
    }

    function test_Aggregate() public {
        (uint256 blockNumber, bytes[] memory ret) = mc.aggregate(_calls(false));
        assertEq(blockNumber, 100, "block number");
        (uint256 x,) = abi.decode(ret[1], (uint256, uint256));
        assertEq(x, 8, "second result");
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate(_calls(true));
    }

    function test_TryAggregate() public {
        Multicall3.Result[] memory res = mc.tryAggregate(false, _calls(true));
        assertTrue(res[0].success, "first ok");
        assertFalse(res[1].success, "second failed");
        assertEq(res[1].returnData, abi.encodeWithSignature("Error(string)", "echo: fail"), "revert data kept");
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.tryAggregate(true, _calls(true));
    }

    function test_BlockAndAggregate() public {
        (uint256 n, bytes32 h, Multicall3.Result[] memory res) = mc.tryBlockAndAggregate(false, _calls(true));
        assertEq(n, 100, "block");
        assertEq(h, blockhash(100), "hash of the current block");
        assertFalse(res[1].success, "failure reported");
        (n,, res) = mc.blockAndAggregate(_calls(false));
        assertEq(res.length, 2, "results");
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.blockAndAggregate(_calls(true));
    }

    function test_Aggregate3() public {
        Multicall3.Call3[] memory calls = new Multicall3.Call3[](2);
        calls[0] = Multicall3.Call3(address(echo), true, abi.encodeCall(Echo.fail, ()));
        calls[1] = Multicall3.Call3(address(echo), false, abi.encodeCall(Echo.echo, (3)));
        Multicall3.Result[] memory res = mc.aggregate3(calls);
        assertFalse(res[0].success, "allowed failure");
        assertTrue(res[1].success, "success");
        calls[0].allowFailure = false;
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate3(calls);
    }

    function test_Aggregate3Value() public {
        Multicall3.Call3Value[] memory calls = new Multicall3.Call3Value[](2);
        calls[0] = Multicall3.Call3Value(address(echo), false, 1 ether, abi.encodeCall(Echo.echo, (1)));
        calls[1] = Multicall3.Call3Value(address(echo), false, 2 ether, abi.encodeCall(Echo.echo, (2)));
        vm.deal(address(this), 10 ether);
        Multicall3.Result[] memory res = mc.aggregate3Value{value: 3 ether}(calls);
        (, uint256 value) = abi.decode(res[1].returnData, (uint256, uint256));
        assertEq(value, 2 ether, "value forwarded");
        assertEq(address(echo).balance, 3 ether, "echo received both");
        vm.expectRevert(bytes("Multicall3: value mismatch"));
        mc.aggregate3Value{value: 4 ether}(calls);
        calls[1].allowFailure = false;
        calls[1].callData = abi.encodeCall(Echo.fail, ());
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate3Value{value: 3 ether}(calls);
    }

    function test_BlockGetters() public {
        vm.warp(1_800_000_000);
        vm.chainId(31_337);
        vm.deal(address(0xE7), 123);
        assertEq(mc.getBlockNumber(), 100, "number");
        assertEq(mc.getCurrentBlockTimestamp(), 1_800_000_000, "timestamp");
        assertEq(mc.getChainId(), 31_337, "chain id");
        assertEq(mc.getEthBalance(address(0xE7)), 123, "balance");
        assertEq(mc.getBasefee(), block.basefee, "basefee");
        assertEq(mc.getCurrentBlockGasLimit(), block.gaslimit, "gas limit");
        assertEq(mc.getCurrentBlockCoinbase(), block.coinbase, "coinbase");
        assertEq(mc.getCurrentBlockDifficulty(), block.prevrandao, "prevrandao");
        assertEq(mc.getBlockHash(99), blockhash(99), "block hash");
        assertEq(mc.getLastBlockHash(), blockhash(99), "last block hash");
    }

    /// @dev The reads the reference SDK batches through tryAggregate(false, ...).
    function test_ReadsEscrowLikeTheSdk() public {
        BatchSettlement.ChannelConfig memory c = _config();
        bytes32 cid = _id(c);
        _deposit(c, 1000);
        vm.prank(payer);
        escrow.initiateWithdraw(c, 400);

        Multicall3.Call[] memory calls = new Multicall3.Call[](3);
        calls[0] = Multicall3.Call(ESCROW_ADDRESS, abi.encodeWithSelector(escrow.channels.selector, cid));
        calls[1] = Multicall3.Call(ESCROW_ADDRESS, abi.encodeWithSelector(escrow.pendingWithdrawals.selector, cid));
        calls[2] = Multicall3.Call(ESCROW_ADDRESS, abi.encodeWithSelector(escrow.refundNonce.selector, cid));
        Multicall3.Result[] memory res = mc.tryAggregate(false, calls);
        (uint128 bal,) = abi.decode(res[0].returnData, (uint128, uint128));
        (uint128 pending, uint40 startedAt) = abi.decode(res[1].returnData, (uint128, uint40));
        assertEq(bal, 1000, "balance");
        assertEq(pending, 400, "pending");
        assertEq(startedAt, block.timestamp, "initiated");
        assertEq(abi.decode(res[2].returnData, (uint256)), 0, "refund nonce");
    }
}
