// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Fixture} from "../utils/Fixture.sol";
import {BatchSettlement} from "../../src/BatchSettlement.sol";

/// @notice Gas of the escrow's hot paths, recorded with `vm.snapshotGasLastCall` into
///         snapshots/BatchSettlementGas.json (gas of the measured call frame, without the 21,000 intrinsic
///         transaction gas and the calldata cost: the same method as the reference contract's published figures).
/// @dev Every scenario is prepared in setUp (its own transaction) so that the measured call is the first to
///      touch the escrow's storage in the test transaction: cold slots and clean original values, as on chain.
abstract contract GasFixture is Fixture {
    string internal constant GROUP = "BatchSettlementGas";
    uint256 internal constant CHANNELS = 100;

    BatchSettlement.ChannelConfig[] internal cfgs;
    BatchSettlement.VoucherClaim[] internal rows;
    bytes internal freshDeposit;
    bytes internal topUp;
    BatchSettlement.ChannelConfig internal freshCfg;

    function setUp() public virtual override {
        super.setUp();
        for (uint256 i; i < CHANNELS; ++i) {
            BatchSettlement.ChannelConfig memory c = _config(bytes32(i + 1));
            cfgs.push(c);
            _deposit(c, 1_000_000);
            rows.push(_row(c, 600_000, 500_000));
        }
        // Two channels with claims outstanding for the settle and a payer with nothing claimed for refunds.
        freshCfg = _config(bytes32("fresh"));
        usdc.mint(payer, 2_000_000);
        freshDeposit = _collectorData(freshCfg, 1_000_000, PAYER_KEY);
        topUp = _collectorData(cfgs[0], 1_000_000, PAYER_KEY);
        usdc.mint(address(this), 1_000_000);
    }

    function _rows(uint256 n) internal view returns (BatchSettlement.VoucherClaim[] memory out) {
        out = new BatchSettlement.VoucherClaim[](n);
        for (uint256 i; i < n; ++i) {
            out[i] = rows[i];
        }
    }

    function _snap(string memory name) internal {
        vm.snapshotGasLastCall(GROUP, name);
    }
}

/// @notice Deposits, claims, refunds and the start of a withdrawal.
contract BatchSettlementGasTest is GasFixture {
    function test_Gas_BaselineErc20Transfer() public {
        usdc.transfer(address(0xF00D), 1000);
        _snap("baseline_erc20_transfer");
    }

    function test_Gas_DepositErc3009First() public {
        vm.prank(relayer);
        escrow.deposit(freshCfg, 1_000_000, COLLECTOR_ADDRESS, freshDeposit);
        _snap("deposit_erc3009_first");
    }

    function test_Gas_DepositErc3009TopUp() public {
        vm.prank(relayer);
        escrow.deposit(cfgs[0], 1_000_000, COLLECTOR_ADDRESS, topUp);
        _snap("deposit_erc3009_topup");
    }

    function _claimWithSignature(uint256 n, string memory name) internal {
        BatchSettlement.VoucherClaim[] memory batch = _rows(n);
        bytes memory sig = _batchSig(RECEIVER_AUTH_KEY, batch);
        vm.prank(relayer);
        escrow.claimWithSignature(batch, sig);
        _snap(name);
    }

    function test_Gas_ClaimWithSignature1() public {
        _claimWithSignature(1, "claimWithSignature_1_channel");
    }

    function test_Gas_ClaimWithSignature10() public {
        _claimWithSignature(10, "claimWithSignature_10_channels");
    }

    function test_Gas_ClaimWithSignature100() public {
        _claimWithSignature(100, "claimWithSignature_100_channels");
    }

    function test_Gas_Claim1() public {
        BatchSettlement.VoucherClaim[] memory batch = _rows(1);
        vm.prank(receiver);
        escrow.claim(batch);
        _snap("claim_1_channel");
    }

    function test_Gas_Claim10() public {
        BatchSettlement.VoucherClaim[] memory batch = _rows(10);
        vm.prank(receiver);
        escrow.claim(batch);
        _snap("claim_10_channels");
    }

    function test_Gas_RefundWithSignature() public {
        bytes memory sig = _refundSig(RECEIVER_AUTH_KEY, cfgs[0], 1_000_000, 0);
        vm.prank(relayer);
        escrow.refundWithSignature(cfgs[0], 1_000_000, 0, sig);
        _snap("refundWithSignature_full_relay");
    }

    function test_Gas_InitiateWithdraw() public {
        vm.prank(payer);
        escrow.initiateWithdraw(cfgs[0], 1_000_000);
        _snap("initiateWithdraw");
    }
}

/// @notice Operations that need an earlier transaction: settling claimed funds and finalizing a withdrawal.
contract BatchSettlementGasAfterClaimTest is GasFixture {
    function setUp() public override {
        super.setUp();
        vm.prank(receiver);
        escrow.claim(_rows(10));
        vm.prank(payer);
        escrow.initiateWithdraw(cfgs[50], 1_000_000);
    }

    /// @dev Sweeps what 10 channels claimed to a receiver that held no tokens yet.
    function test_Gas_Settle() public {
        escrow.settle(receiver, address(usdc));
        _snap("settle_receiver_token");
    }

    function test_Gas_FinalizeWithdraw() public {
        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        escrow.finalizeWithdraw(cfgs[50]);
        _snap("finalizeWithdraw_full");
    }
}

/// @notice Steady state: channels and receiver already carry claims, and the receiver already holds tokens
///         (how a server that claims and settles periodically sees it).
contract BatchSettlementGasSteadyTest is GasFixture {
    BatchSettlement.VoucherClaim[] internal next;

    function setUp() public override {
        super.setUp();
        vm.startPrank(receiver);
        escrow.claim(_rows(20));
        escrow.settle(receiver, address(usdc));
        BatchSettlement.VoucherClaim[] memory again = new BatchSettlement.VoucherClaim[](10);
        for (uint256 i; i < 10; ++i) {
            again[i] = _row(cfgs[i], 600_000, 600_000);
            next.push(_row(cfgs[10 + i], 600_000, 600_000));
        }
        escrow.claim(again);
        vm.stopPrank();
    }

    function test_Gas_ClaimWithSignature10Steady() public {
        BatchSettlement.VoucherClaim[] memory batch = next;
        bytes memory sig = _batchSig(RECEIVER_AUTH_KEY, batch);
        vm.prank(relayer);
        escrow.claimWithSignature(batch, sig);
        _snap("claimWithSignature_10_channels_steady");
    }

    function test_Gas_SettleSteady() public {
        escrow.settle(receiver, address(usdc));
        _snap("settle_receiver_token_steady");
    }
}
