// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "../utils/Test.sol";
import {BatchSettlement} from "../../src/BatchSettlement.sol";
import {ERC3009DepositCollector} from "../../src/ERC3009DepositCollector.sol";
import {DevStablecoin} from "../../src/dev/DevStablecoin.sol";
import {MockERC1271Wallet} from "../mocks/MockERC1271Wallet.sol";
import {PullCollector} from "../mocks/TestCollectors.sol";
import {ReentrantToken} from "../mocks/ReentrantToken.sol";

/// @notice Drives random sequences of escrow operations for the invariant suite, across 12 channels
///         (3 payers x 2 receivers x 2 tokens) of the canonical escrow, and records in ghost variables anything
///         that must never happen: an accepted replay or high-s signature, an early withdrawal, a claim above
///         its voucher or balance, a successful re-entry, or a legitimate operation that reverted.
/// @dev Payers: 0 signs vouchers with a separate payerAuthorizer key, 1 is its own payerAuthorizer, 2 is an
///      ERC-1271 wallet (payerAuthorizer = 0). Receiver 0 has an EOA receiverAuthorizer, receiver 1 an ERC-1271
///      one. Token 0 is the USDC-like DevStablecoin (deposits through the ERC-3009 collector), token 1 is a
///      malicious ERC-20 that re-enters the escrow whenever the escrow or the collector moves it.
///      Every channel also exists, funded, on a second escrow instance and under another chain id of the same
///      escrow, so that replayed signatures fail on the signature check rather than on a missing balance.
contract EscrowHandler is Test {
    uint256 internal constant CHAIN = 31_337;
    uint256 internal constant OTHER_CHAIN = 8453;
    uint256 internal constant N = 12;
    uint256 internal constant COUNTERPART_FUNDING = 1e12;

    BatchSettlement public immutable escrow;
    BatchSettlement public immutable escrow2;
    DevStablecoin public immutable usdc;
    ReentrantToken public immutable evil;
    PullCollector public immutable pull;
    address public immutable collector3009;

    BatchSettlement.ChannelConfig[N] internal _configs;
    bytes32[N] public ids; // on `escrow` at CHAIN
    bytes32[N] public ids2; // on `escrow2` at CHAIN
    bytes32[N] public idsOtherChain; // on `escrow` at OTHER_CHAIN
    uint256[N] internal _voucherKey; // key whose signature the escrow accepts as the payer's
    uint256[N] internal _depositKey; // key that signs ERC-3009 authorizations for the payer
    uint256[N] internal _raKey; // key behind the receiver authorizer (EOA or ERC-1271 wallet owner)

    address[2] public receiverOf;
    address public immutable relayer = address(0x4E1A);
    uint256 internal _salt;

    // ------------------------------------------------------------------------------------------------------
    // Ghost state
    // ------------------------------------------------------------------------------------------------------

    mapping(bytes32 channelId => uint128) public maxCeilingSigned;
    uint256 public claimAboveLimitAccepted;
    uint256 public earlyFinalizeAccepted;
    uint256 public finalizeOverpaid;
    uint256 public replayAccepted;
    uint256 public replayBlocked;
    uint256 public highSAccepted;
    uint256 public highSBlocked;
    uint256 public unexpectedOutcomes;
    bytes public lastUnexpected;
    mapping(bytes4 selector => uint256) public calls;

    constructor(BatchSettlement escrow_, ERC3009DepositCollector collector_) {
        escrow = escrow_;
        collector3009 = address(collector_);
        DevStablecoin usdc_ = new DevStablecoin("USD Coin", "USDC", "2", address(this));
        usdc = usdc_;
        escrow2 = new BatchSettlement();
        evil = new ReentrantToken();
        pull = new PullCollector();
        evil.setTrigger(address(escrow_), true);
        evil.setTrigger(address(pull), true);
        receiverOf[0] = address(0x5EC0);
        receiverOf[1] = address(0x5EC1);

        uint256[3] memory payerKeys = [uint256(0xA0), 0xA1, 0xA2];
        uint40[3] memory delays = [uint40(900), 1 hours, 1 days];
        address[3] memory payers;
        address[3] memory payerAuths;
        payers[0] = vm.addr(payerKeys[0]);
        payerAuths[0] = vm.addr(0xAA0);
        payers[1] = vm.addr(payerKeys[1]);
        payerAuths[1] = payers[1];
        payers[2] = address(new MockERC1271Wallet(vm.addr(payerKeys[2])));
        payerAuths[2] = address(0);
        address[2] memory ras = [vm.addr(0xB0), address(new MockERC1271Wallet(vm.addr(0xB1)))];

        for (uint256 i; i < N; ++i) {
            uint256 p = i / 4;
            uint256 r = (i / 2) % 2;
            uint256 t = i % 2;
            _configs[i] = BatchSettlement.ChannelConfig({
                payer: payers[p],
                payerAuthorizer: payerAuths[p],
                receiver: receiverOf[r],
                receiverAuthorizer: ras[r],
                token: t == 0 ? address(usdc_) : address(evil),
                withdrawDelay: delays[p],
                salt: bytes32(i)
            });
            _voucherKey[i] = p == 0 ? 0xAA0 : payerKeys[p];
            _depositKey[i] = payerKeys[p];
            _raKey[i] = r == 0 ? 0xB0 : 0xB1;
        }
        for (uint256 p; p < 3; ++p) {
            vm.startPrank(payers[p]);
            usdc_.approve(address(pull), type(uint256).max);
            evil.approve(address(pull), type(uint256).max);
            vm.stopPrank();
        }

        // Funded counterparts: the same configs on a second escrow and under another chain id.
        for (uint256 i; i < N; ++i) {
            _mint(_configs[i], 2 * COUNTERPART_FUNDING);
            ids[i] = escrow_.getChannelId(_configs[i]);
            ids2[i] = escrow2.getChannelId(_configs[i]);
            escrow2.deposit(_configs[i], uint128(COUNTERPART_FUNDING), address(pull), "");
            vm.chainId(OTHER_CHAIN);
            idsOtherChain[i] = escrow_.getChannelId(_configs[i]);
            escrow_.deposit(_configs[i], uint128(COUNTERPART_FUNDING), address(pull), "");
            vm.chainId(CHAIN);
        }
    }

    // ------------------------------------------------------------------------------------------------------
    // Views for the invariant contract
    // ------------------------------------------------------------------------------------------------------

    function config(uint256 i) external view returns (BatchSettlement.ChannelConfig memory) {
        return _configs[i];
    }

    // ------------------------------------------------------------------------------------------------------
    // Actions
    // ------------------------------------------------------------------------------------------------------

    function deposit(uint256 ch, uint256 amount) external {
        calls[this.deposit.selector]++;
        uint256 i = ch % N;
        BatchSettlement.ChannelConfig memory c = _configs[i];
        uint128 amt = uint128(bound(amount, 1, 1e12));
        _mint(c, amt);
        address via = address(pull);
        bytes memory data;
        if (c.token == address(usdc)) {
            via = collector3009;
            data = _authorization(i, amt);
        }
        vm.prank(relayer);
        try escrow.deposit(c, amt, via, data) {}
        catch (bytes memory err) {
            _unexpected(err);
        }
    }

    function claim(uint256 ch, uint256 raise, uint256 headroom, bool asAuthorizer) external {
        calls[this.claim.selector]++;
        uint256 i = ch % N;
        BatchSettlement.ChannelConfig memory c = _configs[i];
        (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
        if (bal == claimed) return;
        uint128 target = claimed + uint128(bound(raise, 1, bal - claimed));
        uint128 ceiling = target + uint128(bound(headroom, 0, 1e6));
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](1);
        rows[0] = _row(i, ceiling, target);
        vm.prank(asAuthorizer ? c.receiverAuthorizer : c.receiver);
        try escrow.claim(rows) {
            _checkClaimed(i, ceiling);
        } catch (bytes memory err) {
            _unexpected(err);
        }
    }

    /// @dev A batch over the channels of one receiver (shared receiver authorizer), relayed by a third party.
    function claimWithSignature(uint256 receiverSeed, uint256 mask, uint256 raise) external {
        calls[this.claimWithSignature.selector]++;
        uint256 r = receiverSeed % 2;
        uint256[6] memory picked;
        uint256 n;
        for (uint256 k; k < 6; ++k) {
            uint256 i = (k / 2) * 4 + r * 2 + (k % 2); // the six channels of receiver r
            if ((mask >> k) & 1 == 1) picked[n++] = i;
        }
        if (n == 0) return;
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](n);
        uint128[] memory ceilings = new uint128[](n);
        for (uint256 k; k < n; ++k) {
            uint256 i = picked[k];
            (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
            uint128 target = bal == claimed ? claimed : claimed + uint128(bound(raise >> (k * 8), 1, bal - claimed));
            ceilings[k] = target;
            rows[k] = _row(i, target, target);
        }
        bytes memory sig = sign(_raKey[picked[0]], escrow.getClaimBatchDigest(rows));
        vm.prank(relayer);
        try escrow.claimWithSignature(rows, sig) {
            for (uint256 k; k < n; ++k) {
                _checkClaimed(picked[k], ceilings[k]);
            }
        } catch (bytes memory err) {
            _unexpected(err);
        }
    }

    /// @dev Tries to claim above the voucher ceiling or above the channel balance; both must revert.
    function claimOverLimit(uint256 ch, uint256 excess, bool overBalance) external {
        calls[this.claimOverLimit.selector]++;
        uint256 i = ch % N;
        (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
        uint128 extra = uint128(bound(excess, 1, 1e12));
        uint128 target;
        uint128 ceiling;
        bytes4 expected;
        if (overBalance) {
            target = bal + extra;
            ceiling = target;
            expected = BatchSettlement.ClaimExceedsBalance.selector;
        } else {
            if (bal == claimed) return;
            ceiling = claimed + uint128(bound(excess, 0, bal - claimed - 1));
            target = ceiling + 1;
            expected = BatchSettlement.ClaimExceedsCeiling.selector;
        }
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](1);
        rows[0] = _row(i, ceiling, target);
        vm.prank(_configs[i].receiver);
        try escrow.claim(rows) {
            claimAboveLimitAccepted++;
        } catch (bytes memory err) {
            _expect(err, expected);
        }
    }

    function settle(uint256 receiverSeed, bool evilToken) external {
        calls[this.settle.selector]++;
        try escrow.settle(receiverOf[receiverSeed % 2], evilToken ? address(evil) : address(usdc)) {}
        catch (bytes memory err) {
            _unexpected(err);
        }
    }

    function refund(uint256 ch, uint256 amount, bool asAuthorizer) external {
        calls[this.refund.selector]++;
        uint256 i = ch % N;
        BatchSettlement.ChannelConfig memory c = _configs[i];
        vm.prank(asAuthorizer ? c.receiverAuthorizer : c.receiver);
        try escrow.refund(c, uint128(bound(amount, 1, 2e12))) {}
        catch (bytes memory err) {
            _unexpected(err);
        }
    }

    function refundWithSignature(uint256 ch, uint256 amount) external {
        calls[this.refundWithSignature.selector]++;
        uint256 i = ch % N;
        uint128 amt = uint128(bound(amount, 1, 2e12));
        uint256 nonce = escrow.refundNonce(ids[i]);
        bytes memory sig = sign(_raKey[i], escrow.getRefundDigest(ids[i], nonce, amt));
        vm.prank(relayer);
        try escrow.refundWithSignature(_configs[i], amt, nonce, sig) {}
        catch (bytes memory err) {
            _unexpected(err);
        }
    }

    function initiateWithdraw(uint256 ch, uint256 amount) external {
        calls[this.initiateWithdraw.selector]++;
        uint256 i = ch % N;
        BatchSettlement.ChannelConfig memory c = _configs[i];
        (, uint40 startedAt) = escrow.pendingWithdrawals(ids[i]);
        (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
        if (startedAt != 0 || bal == claimed) return;
        address caller = c.payerAuthorizer != address(0) && amount % 2 == 1 ? c.payerAuthorizer : c.payer;
        vm.prank(caller);
        try escrow.initiateWithdraw(c, uint128(bound(amount, 1, bal - claimed))) {}
        catch (bytes memory err) {
            _unexpected(err);
        }
    }

    /// @dev Finalizes whenever a withdrawal is pending, early or not: early attempts must revert.
    function finalizeWithdraw(uint256 ch) external {
        calls[this.finalizeWithdraw.selector]++;
        uint256 i = ch % N;
        BatchSettlement.ChannelConfig memory c = _configs[i];
        (uint128 requested, uint40 startedAt) = escrow.pendingWithdrawals(ids[i]);
        if (startedAt == 0) return;
        bool due = block.timestamp >= uint256(startedAt) + c.withdrawDelay;
        (uint128 balBefore,) = escrow.channels(ids[i]);
        vm.prank(c.payer);
        try escrow.finalizeWithdraw(c) {
            if (!due) earlyFinalizeAccepted++;
            (uint128 balAfter,) = escrow.channels(ids[i]);
            if (balBefore - balAfter > requested) finalizeOverpaid++;
        } catch (bytes memory err) {
            if (due) _unexpected(err);
            else _expect(err, BatchSettlement.WithdrawDelayNotElapsed.selector);
        }
    }

    function warp(uint256 secs) external {
        calls[this.warp.selector]++;
        vm.warp(block.timestamp + bound(secs, 1, 2 days));
    }

    /// @dev A valid voucher for channel i (this escrow, this chain) presented for: another channel of the same
    ///      payer signer (mode 0), the same config on the second escrow (mode 1), or the same config under
    ///      another chain id (mode 2). The target always has room for the claim, so only the signature can fail.
    function replayVoucher(uint256 ch, uint256 mode) external {
        calls[this.replayVoucher.selector]++;
        uint256 i = ch % N;
        mode = mode % 3;
        uint256 j = mode == 0 ? _sibling(i) : i;
        (BatchSettlement target, bytes32 targetId) = _replayTarget(j, mode);
        if (!_hasRoom(target, targetId)) return;
        uint128 total = _claimedOn(target, targetId) + 1;
        bytes memory sig = _voucherSig(i, total);
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](1);
        rows[0].voucher = BatchSettlement.Voucher(_configs[j], total);
        rows[0].signature = sig;
        rows[0].totalClaimed = total;
        if (mode == 2) vm.chainId(OTHER_CHAIN);
        vm.prank(_configs[j].receiver);
        try target.claim(rows) {
            replayAccepted++;
        } catch (bytes memory err) {
            _expectReplayBlocked(err);
        }
        vm.chainId(CHAIN);
    }

    /// @dev A receiver-authorizer batch signature made for rows of channel i on this escrow and chain, presented
    ///      with rows that are otherwise valid on the target (other channel, other escrow, other chain id).
    function replayClaimBatch(uint256 ch, uint256 mode) external {
        calls[this.replayClaimBatch.selector]++;
        uint256 i = ch % N;
        mode = mode % 3;
        uint256 j = mode == 0 ? _sibling(i) : i;
        (BatchSettlement target, bytes32 targetId) = _replayTarget(j, mode);
        if (!_hasRoom(target, targetId)) return;

        BatchSettlement.VoucherClaim[] memory signedRows = new BatchSettlement.VoucherClaim[](1);
        uint128 total = _claimedOn(escrow, ids[i]) + 1;
        signedRows[0] = _row(i, total, total);
        bytes memory batchSig = sign(_raKey[i], escrow.getClaimBatchDigest(signedRows));

        // Rows valid for the target domain: a fresh voucher signed under the target's domain.
        if (mode == 2) vm.chainId(OTHER_CHAIN);
        uint128 t2 = _claimedOn(target, targetId) + 1;
        if (t2 > maxCeilingSigned[targetId]) maxCeilingSigned[targetId] = t2;
        BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](1);
        rows[0].voucher = BatchSettlement.Voucher(_configs[j], t2);
        rows[0].signature = sign(_voucherKey[j], target.getVoucherDigest(targetId, t2));
        rows[0].totalClaimed = t2;
        try target.claimWithSignature(rows, batchSig) {
            replayAccepted++;
        } catch (bytes memory err) {
            _expectReplayBlocked(err);
        }
        vm.chainId(CHAIN);
    }

    /// @dev A refund signature for channel i on this escrow and chain, presented elsewhere with the target's
    ///      own current nonce (so the nonce check passes and only the signature can fail).
    function replayRefund(uint256 ch, uint256 mode, uint256 amount) external {
        calls[this.replayRefund.selector]++;
        uint256 i = ch % N;
        mode = mode % 3;
        uint256 j = mode == 0 ? _sibling(i) : i;
        (BatchSettlement target, bytes32 targetId) = _replayTarget(j, mode);
        uint128 amt = uint128(bound(amount, 1, 1e12));
        uint256 nonce = target.refundNonce(targetId);
        bytes memory sig = sign(_raKey[i], escrow.getRefundDigest(ids[i], nonce, amt));
        if (mode == 2) vm.chainId(OTHER_CHAIN);
        try target.refundWithSignature(_configs[j], amt, nonce, sig) {
            replayAccepted++;
        } catch (bytes memory err) {
            _expectReplayBlocked(err);
        }
        vm.chainId(CHAIN);
    }

    /// @dev The high-s twin of an otherwise valid voucher (kind 0), claim-batch (1) or refund (2) signature.
    ///      (The ERC-1271 mock wallets verify with OpenZeppelin's ECDSA, so they reject high-s as well.)
    function highS(uint256 ch, uint256 kind) external {
        calls[this.highS.selector]++;
        uint256 i = ch % N;
        kind = kind % 3;
        (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
        bool ok;
        bytes memory err;
        if (kind == 2) {
            uint256 nonce = escrow.refundNonce(ids[i]);
            bytes memory sig = malleate(sign(_raKey[i], escrow.getRefundDigest(ids[i], nonce, 1)));
            (ok, err) = _try(abi.encodeCall(BatchSettlement.refundWithSignature, (_configs[i], 1, nonce, sig)), relayer);
        } else {
            if (bal == claimed) return;
            BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](1);
            rows[0] = _row(i, claimed + 1, claimed + 1);
            if (kind == 0) {
                rows[0].signature = malleate(rows[0].signature);
                (ok, err) = _try(abi.encodeCall(BatchSettlement.claim, (rows)), _configs[i].receiver);
            } else {
                bytes memory sig = malleate(sign(_raKey[i], escrow.getClaimBatchDigest(rows)));
                (ok, err) = _try(abi.encodeCall(BatchSettlement.claimWithSignature, (rows, sig)), relayer);
            }
        }
        if (ok) {
            highSAccepted++;
        } else if (bytes4(err) == BatchSettlement.InvalidSignature.selector && err.length == 4) {
            highSBlocked++;
        } else {
            _unexpected(err);
        }
    }

    /// @dev Arms the malicious token with a relayable escrow call that would pass every check if it were not
    ///      nested: a settle, a correctly signed claim batch, or a correctly signed refund.
    function armReentry(uint256 ch, uint256 kind) external {
        calls[this.armReentry.selector]++;
        uint256 i = (ch % (N / 2)) * 2 + 1; // channels of the malicious token
        kind = kind % 3;
        bytes memory call;
        if (kind == 0) {
            call = abi.encodeCall(BatchSettlement.settle, (_configs[i].receiver, address(evil)));
        } else if (kind == 1) {
            (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
            if (bal == claimed) return;
            BatchSettlement.VoucherClaim[] memory rows = new BatchSettlement.VoucherClaim[](1);
            rows[0] = _row(i, bal, bal);
            call = abi.encodeCall(
                BatchSettlement.claimWithSignature, (rows, sign(_raKey[i], escrow.getClaimBatchDigest(rows)))
            );
        } else {
            uint256 nonce = escrow.refundNonce(ids[i]);
            bytes memory sig = sign(_raKey[i], escrow.getRefundDigest(ids[i], nonce, 1e12));
            call = abi.encodeCall(BatchSettlement.refundWithSignature, (_configs[i], 1e12, nonce, sig));
        }
        evil.arm(address(escrow), call);
    }

    // ------------------------------------------------------------------------------------------------------
    // Helpers
    // ------------------------------------------------------------------------------------------------------

    function _mint(BatchSettlement.ChannelConfig memory c, uint256 amount) internal {
        if (c.token == address(usdc)) usdc.mint(c.payer, amount);
        else evil.mint(c.payer, amount);
    }

    function _authorization(uint256 i, uint128 amount) internal returns (bytes memory) {
        uint256 salt = ++_salt;
        uint256 validBefore = block.timestamp + 1 hours;
        bytes32 nonce = keccak256(abi.encode(ids[i], salt));
        bytes32 structHash = keccak256(
            abi.encode(
                usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
                _configs[i].payer,
                collector3009,
                uint256(amount),
                uint256(0),
                validBefore,
                nonce
            )
        );
        bytes32 digest = keccak256(abi.encodePacked(hex"1901", usdc.DOMAIN_SEPARATOR(), structHash));
        return abi.encode(uint256(0), validBefore, salt, sign(_depositKey[i], digest));
    }

    function _voucherSig(uint256 i, uint128 ceiling) internal returns (bytes memory) {
        if (ceiling > maxCeilingSigned[ids[i]]) maxCeilingSigned[ids[i]] = ceiling;
        return sign(_voucherKey[i], escrow.getVoucherDigest(ids[i], ceiling));
    }

    function _row(uint256 i, uint128 ceiling, uint128 total)
        internal
        returns (BatchSettlement.VoucherClaim memory row)
    {
        row.voucher = BatchSettlement.Voucher(_configs[i], ceiling);
        row.signature = _voucherSig(i, ceiling);
        row.totalClaimed = total;
    }

    function _checkClaimed(uint256 i, uint128 ceiling) internal {
        (uint128 bal, uint128 claimed) = escrow.channels(ids[i]);
        if (claimed > ceiling || claimed > bal) claimAboveLimitAccepted++;
    }

    /// @dev Another channel signed by the same payer key but with a different receiver or token.
    function _sibling(uint256 i) internal pure returns (uint256) {
        return (i / 4) * 4 + ((i % 4) + 1) % 4;
    }

    function _replayTarget(uint256 j, uint256 mode) internal view returns (BatchSettlement, bytes32) {
        if (mode == 1) return (escrow2, ids2[j]);
        if (mode == 2) return (escrow, idsOtherChain[j]);
        return (escrow, ids[j]);
    }

    function _hasRoom(BatchSettlement e, bytes32 id) internal view returns (bool) {
        (uint128 bal, uint128 claimed) = e.channels(id);
        return bal > claimed;
    }

    function _claimedOn(BatchSettlement e, bytes32 id) internal view returns (uint128 claimed) {
        (, claimed) = e.channels(id);
    }

    function _try(bytes memory data, address caller) internal returns (bool ok, bytes memory ret) {
        vm.prank(caller);
        (ok, ret) = address(escrow).call(data);
    }

    function _expectReplayBlocked(bytes memory err) internal {
        if (err.length == 4 && bytes4(err) == BatchSettlement.InvalidSignature.selector) replayBlocked++;
        else _unexpected(err);
    }

    function _expect(bytes memory err, bytes4 selector) internal {
        if (err.length != 4 || bytes4(err) != selector) _unexpected(err);
    }

    function _unexpected(bytes memory err) internal {
        unexpectedOutcomes++;
        lastUnexpected = err;
    }
}
