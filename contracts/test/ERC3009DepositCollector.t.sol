// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {BatchSettlement} from "../src/BatchSettlement.sol";
import {ERC3009DepositCollector} from "../src/ERC3009DepositCollector.sol";
import {DevStablecoin} from "../src/dev/DevStablecoin.sol";
import {MockERC1271Wallet} from "./mocks/MockERC1271Wallet.sol";

contract ERC3009DepositCollectorTest is Fixture {
    BatchSettlement.ChannelConfig internal cfg;
    bytes32 internal id;

    function setUp() public override {
        super.setUp();
        cfg = _config();
        id = _id(cfg);
    }

    function _signed(uint256 amount, uint256 validAfter, uint256 validBefore, uint256 salt, address to)
        internal
        view
        returns (bytes memory)
    {
        bytes32 nonce = keccak256(abi.encode(id, salt));
        bytes32 digest = _receiveDigest(payer, to, amount, validAfter, validBefore, nonce);
        return abi.encode(validAfter, validBefore, salt, sign(PAYER_KEY, digest));
    }

    function test_Constructor_RejectsZeroEscrow() public {
        vm.expectRevert(ERC3009DepositCollector.ZeroBatchSettlement.selector);
        new ERC3009DepositCollector(address(0));
    }

    function test_EscrowImmutableSurvivesEtch() public view {
        assertEq(collector.batchSettlement(), ESCROW_ADDRESS, "escrow baked into runtime code");
    }

    function test_Collect_OnlyEscrow() public {
        bytes memory data = _signed(100, 0, block.timestamp + 60, 1, COLLECTOR_ADDRESS);
        vm.expectRevert(abi.encodeWithSelector(ERC3009DepositCollector.CallerNotBatchSettlement.selector, relayer));
        vm.prank(relayer);
        collector.collect(payer, address(usdc), 100, id, data);
    }

    function test_Collect_PullsIntoEscrowAndConsumesChannelNonce() public {
        usdc.mint(payer, 100);
        bytes memory data = _signed(100, 0, block.timestamp + 60, 42, COLLECTOR_ADDRESS);
        vm.prank(ESCROW_ADDRESS);
        collector.collect(payer, address(usdc), 100, id, data);
        assertEq(usdc.balanceOf(ESCROW_ADDRESS), 100, "delivered to the escrow");
        assertEq(usdc.balanceOf(COLLECTOR_ADDRESS), 0, "nothing left behind");
        assertTrue(usdc.authorizationState(payer, keccak256(abi.encode(id, uint256(42)))), "nonce = H(channelId, salt)");
    }

    function test_Collect_SignatureCannotBeFrontRunOnToken() public {
        usdc.mint(payer, 100);
        bytes32 nonce = keccak256(abi.encode(id, uint256(1)));
        uint256 validBefore = block.timestamp + 60;
        bytes memory sig = sign(PAYER_KEY, _receiveDigest(payer, COLLECTOR_ADDRESS, 100, 0, validBefore, nonce));
        // Someone who saw the authorization cannot execute it: only the payee (the collector) may.
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.CallerNotPayee.selector, stranger, COLLECTOR_ADDRESS));
        vm.prank(stranger);
        usdc.receiveWithAuthorization(payer, COLLECTOR_ADDRESS, 100, 0, validBefore, nonce, sig);
    }

    function test_Deposit_ExpiredAuthorization() public {
        usdc.mint(payer, 100);
        bytes memory data = _signed(100, 0, block.timestamp, 1, COLLECTOR_ADDRESS);
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationExpired.selector, block.timestamp));
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
    }

    function test_Deposit_NotYetValidAuthorization() public {
        usdc.mint(payer, 100);
        bytes memory data = _signed(100, block.timestamp, block.timestamp + 60, 1, COLLECTOR_ADDRESS);
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationNotYetValid.selector, block.timestamp));
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
        vm.warp(block.timestamp + 1);
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
        assertEq(_balance(cfg), 100, "valid one second later");
    }

    function test_Deposit_AuthorizationToOtherPayeeFails() public {
        usdc.mint(payer, 100);
        bytes memory data = _signed(100, 0, block.timestamp + 60, 1, ESCROW_ADDRESS);
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
    }

    function test_Deposit_InsufficientPayerFunds() public {
        usdc.mint(payer, 99);
        bytes memory data = _signed(100, 0, block.timestamp + 60, 1, COLLECTOR_ADDRESS);
        vm.expectRevert(); // ERC20InsufficientBalance from the token
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, data);
    }

    function test_Deposit_MalformedCollectorData() public {
        usdc.mint(payer, 100);
        vm.expectRevert();
        escrow.deposit(cfg, 100, COLLECTOR_ADDRESS, hex"1234");
    }

    function test_Deposit_Erc1271PayerWallet() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(payer);
        BatchSettlement.ChannelConfig memory c = _config();
        c.payer = address(wallet);
        c.payerAuthorizer = address(0);
        _deposit(c, 500, PAYER_KEY);
        assertEq(_balance(c), 500, "ERC-1271 authorization accepted by the token");
        assertEq(usdc.balanceOf(address(wallet)), 0, "wallet debited");
    }
}
