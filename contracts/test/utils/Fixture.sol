// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./Test.sol";
import {Vm} from "./Vm.sol";
import {BatchSettlement} from "../../src/BatchSettlement.sol";
import {ERC3009DepositCollector} from "../../src/ERC3009DepositCollector.sol";
import {DevStablecoin} from "../../src/dev/DevStablecoin.sol";

/// @notice Shared set-up for escrow tests. Like the dev chain, it places the escrow's and the collector's runtime
///         code at their canonical addresses with `vm.etch` (no constructor runs there), and uses a USDC-like
///         DevStablecoin (EIP-712 version "2") whose deposits go through the ERC-3009 collector.
abstract contract Fixture is Test {
    address internal constant ESCROW_ADDRESS = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;
    address internal constant COLLECTOR_ADDRESS = 0x4020806089470a89826cB9fB1f4059150b550004;

    uint256 internal constant PAYER_KEY = 0xA11CE;
    uint256 internal constant PAYER_AUTH_KEY = 0xA11CE0A;
    uint256 internal constant RECEIVER_AUTH_KEY = 0xB0B0A;
    uint256 internal constant STRANGER_KEY = 0xBAD;

    uint40 internal constant DELAY = 1 hours;
    uint256 internal constant START = 1_700_000_000;

    BatchSettlement internal escrow;
    ERC3009DepositCollector internal collector;
    DevStablecoin internal usdc;

    address internal payer;
    address internal payerAuthorizer;
    address internal receiver = address(0x5EC0);
    address internal receiverAuthorizer;
    address internal relayer = address(0x4E1A);
    address internal stranger;

    uint256 private _authSalt;

    function setUp() public virtual {
        vm.warp(START);
        vm.etch(ESCROW_ADDRESS, address(new BatchSettlement()).code);
        escrow = BatchSettlement(ESCROW_ADDRESS);
        vm.etch(COLLECTOR_ADDRESS, address(new ERC3009DepositCollector(ESCROW_ADDRESS)).code);
        collector = ERC3009DepositCollector(COLLECTOR_ADDRESS);
        usdc = new DevStablecoin("USD Coin", "USDC", "2", address(this));

        payer = vm.addr(PAYER_KEY);
        payerAuthorizer = vm.addr(PAYER_AUTH_KEY);
        receiverAuthorizer = vm.addr(RECEIVER_AUTH_KEY);
        stranger = vm.addr(STRANGER_KEY);
        vm.label(ESCROW_ADDRESS, "escrow");
        vm.label(COLLECTOR_ADDRESS, "collector");
        vm.label(payer, "payer");
        vm.label(payerAuthorizer, "payerAuthorizer");
        vm.label(receiver, "receiver");
        vm.label(receiverAuthorizer, "receiverAuthorizer");
    }

    // ---------------------------------------------------------------------------------------------------------
    // Configs
    // ---------------------------------------------------------------------------------------------------------

    function _config() internal view returns (BatchSettlement.ChannelConfig memory) {
        return _config(bytes32(uint256(1)));
    }

    function _config(bytes32 salt) internal view returns (BatchSettlement.ChannelConfig memory c) {
        c = BatchSettlement.ChannelConfig({
            payer: payer,
            payerAuthorizer: payerAuthorizer,
            receiver: receiver,
            receiverAuthorizer: receiverAuthorizer,
            token: address(usdc),
            withdrawDelay: DELAY,
            salt: salt
        });
    }

    function _id(BatchSettlement.ChannelConfig memory c) internal view returns (bytes32) {
        return escrow.getChannelId(c);
    }

    function _balance(BatchSettlement.ChannelConfig memory c) internal view returns (uint128 bal) {
        (bal,) = escrow.channels(_id(c));
    }

    function _claimed(BatchSettlement.ChannelConfig memory c) internal view returns (uint128 claimed) {
        (, claimed) = escrow.channels(_id(c));
    }

    // ---------------------------------------------------------------------------------------------------------
    // Deposits through the ERC-3009 collector
    // ---------------------------------------------------------------------------------------------------------

    /// @dev ERC-3009 `ReceiveWithAuthorization` digest for the DevStablecoin, built independently of the token.
    function _receiveDigest(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
                ),
                from,
                to,
                value,
                validAfter,
                validBefore,
                nonce
            )
        );
        return keccak256(abi.encodePacked(hex"1901", usdc.DOMAIN_SEPARATOR(), structHash));
    }

    /// @dev collectorData for depositing `amount` into `c`, signed by `signerKey` (the payer, or the owner of an
    ///      ERC-1271 payer wallet).
    function _collectorData(BatchSettlement.ChannelConfig memory c, uint256 amount, uint256 signerKey)
        internal
        returns (bytes memory)
    {
        uint256 salt = ++_authSalt;
        uint256 validBefore = block.timestamp + 1 hours;
        bytes32 nonce = keccak256(abi.encode(_id(c), salt));
        bytes32 digest = _receiveDigest(c.payer, COLLECTOR_ADDRESS, amount, 0, validBefore, nonce);
        return abi.encode(uint256(0), validBefore, salt, sign(signerKey, digest));
    }

    /// @dev Mints `amount` to the payer and deposits it through the ERC-3009 collector (submitted by a relayer).
    function _deposit(BatchSettlement.ChannelConfig memory c, uint128 amount) internal {
        _deposit(c, amount, PAYER_KEY);
    }

    function _deposit(BatchSettlement.ChannelConfig memory c, uint128 amount, uint256 signerKey) internal {
        usdc.mint(c.payer, amount);
        bytes memory data = _collectorData(c, amount, signerKey);
        vm.prank(relayer);
        escrow.deposit(c, amount, COLLECTOR_ADDRESS, data);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Vouchers, claim batches and refunds
    // ---------------------------------------------------------------------------------------------------------

    function _voucherSig(uint256 key, BatchSettlement.ChannelConfig memory c, uint128 max)
        internal
        view
        returns (bytes memory)
    {
        return sign(key, escrow.getVoucherDigest(_id(c), max));
    }

    function _row(BatchSettlement.ChannelConfig memory c, uint128 max, uint128 total)
        internal
        view
        returns (BatchSettlement.VoucherClaim memory)
    {
        return _row(c, PAYER_AUTH_KEY, max, total);
    }

    function _row(BatchSettlement.ChannelConfig memory c, uint256 key, uint128 max, uint128 total)
        internal
        view
        returns (BatchSettlement.VoucherClaim memory row)
    {
        row.voucher = BatchSettlement.Voucher({channel: c, maxClaimableAmount: max});
        row.signature = _voucherSig(key, c, max);
        row.totalClaimed = total;
    }

    function _one(BatchSettlement.VoucherClaim memory row)
        internal
        pure
        returns (BatchSettlement.VoucherClaim[] memory rows)
    {
        rows = new BatchSettlement.VoucherClaim[](1);
        rows[0] = row;
    }

    function _batchSig(uint256 key, BatchSettlement.VoucherClaim[] memory rows) internal view returns (bytes memory) {
        return sign(key, escrow.getClaimBatchDigest(rows));
    }

    function _refundSig(uint256 key, BatchSettlement.ChannelConfig memory c, uint128 amount, uint256 nonce)
        internal
        view
        returns (bytes memory)
    {
        return sign(key, escrow.getRefundDigest(_id(c), nonce, amount));
    }

    /// @dev Claims `total` on `c` as the receiver with a voucher of ceiling `total`.
    function _claimAs(address caller, BatchSettlement.ChannelConfig memory c, uint128 total) internal {
        BatchSettlement.VoucherClaim[] memory rows = _one(_row(c, total, total));
        vm.prank(caller);
        escrow.claim(rows);
    }

    /// @dev Counts recorded escrow logs whose first topic is `topic0`.
    function _count(Vm.Log[] memory logs, bytes32 topic0) internal pure returns (uint256 n) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == ESCROW_ADDRESS && logs[i].topics.length > 0 && logs[i].topics[0] == topic0) n++;
        }
    }
}
