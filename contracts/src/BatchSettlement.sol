// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IERC5267} from "@openzeppelin/contracts/interfaces/IERC5267.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IDepositCollector} from "./interfaces/IDepositCollector.sol";

/// @title BatchSettlement
/// @notice paychan's escrow for the x402 `batch-settlement` scheme (EVM): unidirectional payment channels
///         funded by the payer, drawn down by the receiver with cumulative payer-signed vouchers claimed in
///         batches, and swept to the receiver in one transfer per (receiver, token).
/// @dev ABI-compatible with the canonical x402 batch-settlement contract (same selectors, structs, events,
///      errors, EIP-712 domain and type strings), so the x402 reference SDK can drive it unchanged.
///
///      The runtime code is position independent on purpose: dev chains place it at the canonical address with
///      `anvil_setCode`, which skips the constructor. There is therefore no constructor, no immutable and no
///      storage that must be initialised; the EIP-712 domain separator is derived from `block.chainid` and
///      `address(this)` on every call, and the reentrancy lock lives in transient storage (EIP-1153).
///
///      Accounting: for each channel `totalClaimed <= balance` always holds, and the contract's holding of a
///      token equals the sum over its channels of `balance - totalClaimed` plus the sum over receivers of
///      `totalClaimed - totalSettled`. Fee-on-transfer and rebasing tokens are not supported.
contract BatchSettlement is Multicall, ReentrancyGuardTransient, IERC5267 {
    using SafeERC20 for IERC20;

    // ---------------------------------------------------------------------------------------------------------
    // Types
    // ---------------------------------------------------------------------------------------------------------

    /// @notice The immutable parameters of a channel; its EIP-712 hash is the channel id.
    /// @param payer Owner of the escrowed funds; refunds and withdrawals go back to it.
    /// @param payerAuthorizer EOA that signs vouchers (fast path), or zero to verify against `payer` (ERC-1271).
    /// @param receiver Beneficiary of claimed funds.
    /// @param receiverAuthorizer Signs claim batches and refunds for the receiver side; never zero.
    /// @param token The ERC-20 held in escrow.
    /// @param withdrawDelay Seconds between `initiateWithdraw` and `finalizeWithdraw` (15 minutes to 30 days).
    /// @param salt Distinguishes otherwise identical channels.
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    /// @notice Escrowed funds of a channel and the cumulative amount claimed from them.
    struct ChannelState {
        uint128 balance;
        uint128 totalClaimed;
    }

    /// @notice A payer's timed withdrawal in progress; `initiatedAt == 0` means none.
    struct WithdrawalState {
        uint128 amount;
        uint40 initiatedAt;
    }

    /// @notice Claimed and already transferred totals of one receiver in one token.
    struct ReceiverState {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    /// @notice What a payer signs: a cumulative ceiling the receiver may claim from a channel.
    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    /// @notice One claim row: a voucher, the payer's signature over it, and the new cumulative claimed total.
    /// @dev The total is cumulative, not a delta, so replaying an already applied row changes nothing.
    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    /// @dev Claimed amounts of consecutive claim rows with the same (receiver, token), added to `receivers` in one
    ///      write when the run ends (a batch usually serves one receiver and one token).
    struct PendingCredit {
        address receiver;
        address token;
        uint128 amount;
    }

    // ---------------------------------------------------------------------------------------------------------
    // Constants
    // ---------------------------------------------------------------------------------------------------------

    /// @notice Shortest allowed `withdrawDelay` (15 minutes).
    uint40 public constant MIN_WITHDRAW_DELAY = 15 minutes;

    /// @notice Longest allowed `withdrawDelay` (30 days).
    uint40 public constant MAX_WITHDRAW_DELAY = 30 days;

    /// @notice EIP-712 type hash of `ChannelConfig` (the channel id is the typed-data hash of a config).
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );

    /// @notice EIP-712 type hash of the payer-signed `Voucher`.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");

    /// @notice EIP-712 type hash of the receiver-authorizer-signed `Refund`.
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");

    /// @notice EIP-712 type hash of one `ClaimEntry` row of a signed claim batch.
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");

    /// @notice EIP-712 type hash of the receiver-authorizer-signed `ClaimBatch`.
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    string private constant _NAME = "x402 Batch Settlement";
    string private constant _VERSION = "1";
    bytes32 private constant _NAME_HASH = keccak256(bytes(_NAME));
    bytes32 private constant _VERSION_HASH = keccak256(bytes(_VERSION));

    // ---------------------------------------------------------------------------------------------------------
    // Storage
    // ---------------------------------------------------------------------------------------------------------

    /// @notice Escrow balance and cumulative claimed amount per channel.
    mapping(bytes32 channelId => ChannelState) public channels;

    /// @notice The nonce the next `Refund` signature of a channel must carry; every executed refund
    ///         (signed or direct) increments it, even one that moves no tokens.
    mapping(bytes32 channelId => uint256) public refundNonce;

    /// @notice The timed withdrawal in progress per channel.
    mapping(bytes32 channelId => WithdrawalState) public pendingWithdrawals;

    /// @notice Claimed and settled totals per receiver and token.
    mapping(address receiver => mapping(address token => ReceiverState)) public receivers;

    // ---------------------------------------------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------------------------------------------

    /// @notice A deposit took a channel's balance from zero (first funding, or refunding after it was emptied).
    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);

    /// @notice A refund or withdrawal took the balance of a never-claimed channel back to zero.
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);

    /// @notice `amount` was added to a channel; `newBalance` is its balance afterwards.
    event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);

    /// @notice A channel's cumulative claimed amount rose by `claimAmount` to `newTotalClaimed`.
    event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);

    /// @notice `amount` of claimed `token` was transferred to `receiver`.
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);

    /// @notice `amount` of unclaimed escrow was returned to the payer cooperatively.
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);

    /// @notice The payer started a timed withdrawal that can be finalized from `finalizeAfter` on.
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);

    /// @notice A timed withdrawal completed and `amount` went back to the payer.
    event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);

    // ---------------------------------------------------------------------------------------------------------
    // Errors
    // ---------------------------------------------------------------------------------------------------------

    /// @notice A config field that must be set is zero, or the caller is not the payer side (`initiateWithdraw`).
    error InvalidChannel();
    /// @notice `deposit` with a zero amount.
    error ZeroDeposit();
    /// @notice The deposit would push the channel balance past `type(uint128).max`.
    error DepositOverflow();
    /// @notice A voucher, claim-batch or refund signature does not verify.
    error InvalidSignature();
    /// @notice A row of a signed claim batch names a different `receiverAuthorizer` than the first row.
    error NotReceiverAuthorizer();
    /// @notice `claim` caller is neither the receiver nor the receiver authorizer of a row's channel.
    error NotAuthorizedToClaim();
    /// @notice `refund` caller is neither the receiver nor the receiver authorizer of the channel.
    error NotAuthorizedToRefund();
    /// @notice A claimed total is above the voucher's `maxClaimableAmount`.
    error ClaimExceedsCeiling();
    /// @notice A claimed total is above the channel's balance.
    error ClaimExceedsBalance();
    /// @notice `initiateWithdraw` while another withdrawal is pending.
    error WithdrawalAlreadyPending();
    /// @notice `finalizeWithdraw` with no withdrawal pending.
    error WithdrawalNotPending();
    /// @notice `finalizeWithdraw` caller is neither the payer nor the payer authorizer.
    error NotAuthorizedToFinalizeWithdraw();
    /// @notice `finalizeWithdraw` before `initiatedAt + withdrawDelay`.
    error WithdrawDelayNotElapsed();
    /// @notice `initiateWithdraw` with a zero amount.
    error NothingToWithdraw();
    /// @notice `initiateWithdraw` for more than the unclaimed escrow.
    error WithdrawAmountExceedsAvailable();
    /// @notice `withdrawDelay` outside `[MIN_WITHDRAW_DELAY, MAX_WITHDRAW_DELAY]`.
    error WithdrawDelayOutOfRange();
    /// @notice A claim batch with no rows.
    error EmptyBatch();
    /// @notice The collector did not raise this contract's token balance by exactly the deposited amount.
    error DepositCollectionFailed();
    /// @notice The collector address is zero or has no code.
    error InvalidCollector();
    /// @notice `refundWithSignature` with a nonce other than the channel's current `refundNonce`.
    error InvalidRefundNonce();
    /// @notice A refund of zero.
    error ZeroRefund();

    // ---------------------------------------------------------------------------------------------------------
    // Deposits
    // ---------------------------------------------------------------------------------------------------------

    /// @notice Adds `amount` to the channel described by `config`, pulling the tokens through `collector`.
    /// @dev The first deposit creates the channel. The collector may be any contract: what counts is that this
    ///      contract's balance of `config.token` grows by exactly `amount` during the call.
    /// @param config The channel configuration.
    /// @param amount Token units to add.
    /// @param collector The `IDepositCollector` that pulls the payer's tokens.
    /// @param collectorData Opaque parameters for the collector (for example a signed ERC-3009 authorization).
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0)
        ) revert InvalidChannel();
        uint40 delay = config.withdrawDelay;
        if (delay < MIN_WITHDRAW_DELAY || delay > MAX_WITHDRAW_DELAY) revert WithdrawDelayOutOfRange();
        if (amount == 0) revert ZeroDeposit();
        if (collector.code.length == 0) revert InvalidCollector();

        bytes32 channelId = _channelId(_domainSeparator(), config);
        ChannelState storage ch = channels[channelId];
        uint128 previous = ch.balance;
        if (amount > type(uint128).max - previous) revert DepositOverflow();
        uint128 newBalance = previous + amount;
        ch.balance = newBalance;

        IERC20 token = IERC20(config.token);
        uint256 held = token.balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, channelId, collectorData);
        if (token.balanceOf(address(this)) != held + amount) revert DepositCollectionFailed();

        // totalClaimed <= balance always, so a zero balance before this deposit also means nothing was claimed.
        if (previous == 0) emit ChannelCreated(channelId, config);
        emit Deposited(channelId, msg.sender, amount, newBalance);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Claims and settlement
    // ---------------------------------------------------------------------------------------------------------

    /// @notice Applies a batch of payer-signed vouchers; the caller must be the receiver or the receiver
    ///         authorizer of every row's channel.
    /// @dev A row whose `totalClaimed` does not exceed the channel's current total is skipped (no signature
    ///      check). Claims only update accounting; `settle` moves the tokens.
    /// @param voucherClaims The rows to apply, in order.
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        uint256 n = voucherClaims.length;
        if (n == 0) revert EmptyBatch();
        bytes32 domain = _domainSeparator();
        PendingCredit memory credit;
        for (uint256 i; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            ChannelConfig calldata c = row.voucher.channel;
            if (msg.sender != c.receiver && msg.sender != c.receiverAuthorizer) revert NotAuthorizedToClaim();
            _applyClaim(domain, _channelId(domain, c), row, credit);
        }
        _flush(credit);
    }

    /// @notice Applies a batch of payer-signed vouchers authorized by one EIP-712 `ClaimBatch` signature of the
    ///         rows' common `receiverAuthorizer` (EOA or ERC-1271). Anyone may submit it.
    /// @param voucherClaims The rows to apply; all must share the first row's `receiverAuthorizer`.
    /// @param authorizerSignature The authorizer's signature over `getClaimBatchDigest(voucherClaims)`.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        uint256 n = voucherClaims.length;
        if (n == 0) revert EmptyBatch();
        bytes32 domain = _domainSeparator();
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;

        bytes32[] memory ids = new bytes32[](n);
        bytes32[] memory entries = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            if (row.voucher.channel.receiverAuthorizer != authorizer) revert NotReceiverAuthorizer();
            bytes32 id = _channelId(domain, row.voucher.channel);
            ids[i] = id;
            entries[i] = _claimEntryHash(id, row.voucher.maxClaimableAmount, row.totalClaimed);
        }
        bytes32 digest = MessageHashUtils.toTypedDataHash(domain, _claimBatchHash(entries));
        if (!SignatureChecker.isValidSignatureNowCalldata(authorizer, digest, authorizerSignature)) {
            revert InvalidSignature();
        }

        PendingCredit memory credit;
        for (uint256 i; i < n; ++i) {
            _applyClaim(domain, ids[i], voucherClaims[i], credit);
        }
        _flush(credit);
    }

    /// @notice Transfers everything claimed but not yet transferred for (`receiver`, `token`) to `receiver`.
    /// @dev Permissionless; does nothing when there is nothing to transfer.
    /// @param receiver The receiver whose claimed funds are swept.
    /// @param token The token to sweep.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverState storage rs = receivers[receiver][token];
        uint128 claimed = rs.totalClaimed;
        uint128 amount = claimed - rs.totalSettled;
        if (amount == 0) return;
        rs.totalSettled = claimed;
        IERC20(token).safeTransfer(receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Timed withdrawal (payer side)
    // ---------------------------------------------------------------------------------------------------------

    /// @notice Starts a timed withdrawal of up to `amount` of unclaimed escrow; callable by the payer or the
    ///         payer authorizer.
    /// @dev Only claims already recorded on-chain reduce what is available: receivers must claim outstanding
    ///      vouchers before `finalizeWithdraw` becomes possible, `config.withdrawDelay` seconds from now.
    /// @param config The channel configuration.
    /// @param amount Amount requested; at most `balance - totalClaimed` now, and capped again on finalization.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert InvalidChannel();
        if (amount == 0) revert NothingToWithdraw();

        bytes32 channelId = _channelId(_domainSeparator(), config);
        WithdrawalState storage pending = pendingWithdrawals[channelId];
        if (pending.initiatedAt != 0) revert WithdrawalAlreadyPending();
        ChannelState storage ch = channels[channelId];
        if (amount > ch.balance - ch.totalClaimed) revert WithdrawAmountExceedsAvailable();

        uint40 now_ = uint40(block.timestamp);
        pending.amount = amount;
        pending.initiatedAt = now_;
        emit WithdrawInitiated(channelId, amount, now_ + config.withdrawDelay);
    }

    /// @notice Completes a timed withdrawal once its delay has elapsed, paying the payer the requested amount
    ///         capped to the unclaimed escrow left at this moment; callable by the payer or the payer authorizer.
    /// @param config The channel configuration.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) {
            revert NotAuthorizedToFinalizeWithdraw();
        }
        bytes32 channelId = _channelId(_domainSeparator(), config);
        WithdrawalState storage pending = pendingWithdrawals[channelId];
        uint40 initiatedAt = pending.initiatedAt;
        if (initiatedAt == 0) revert WithdrawalNotPending();
        if (block.timestamp < uint256(initiatedAt) + config.withdrawDelay) revert WithdrawDelayNotElapsed();

        ChannelState storage ch = channels[channelId];
        uint128 balance = ch.balance;
        uint128 available = balance - ch.totalClaimed;
        uint128 requested = pending.amount;
        uint128 paid = requested < available ? requested : available;

        delete pendingWithdrawals[channelId];
        balance -= paid;
        ch.balance = balance;

        emit WithdrawFinalized(channelId, msg.sender, paid);
        if (balance == 0) emit ChannelClosed(channelId, config);
        if (paid != 0) IERC20(config.token).safeTransfer(config.payer, paid);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Cooperative refund (receiver side)
    // ---------------------------------------------------------------------------------------------------------

    /// @notice Returns up to `amount` of unclaimed escrow to the payer; callable by the receiver or the
    ///         receiver authorizer.
    /// @dev Increments `refundNonce` (invalidating pre-signed refunds for the old nonce) even when nothing is
    ///      left to refund. A pending withdrawal is reduced by the refunded amount, or cancelled if covered.
    /// @param config The channel configuration.
    /// @param amount Amount requested (non-zero), capped to `balance - totalClaimed`.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotAuthorizedToRefund();
        _refund(_channelId(_domainSeparator(), config), config, amount);
    }

    /// @notice Same as `refund`, authorized by an EIP-712 `Refund` signature of the receiver authorizer (EOA or
    ///         ERC-1271) instead of the caller; anyone may submit it.
    /// @param config The channel configuration.
    /// @param amount Amount signed for (non-zero), capped to `balance - totalClaimed`.
    /// @param nonce Must equal `refundNonce(channelId)`; executing the refund increments it.
    /// @param receiverAuthorizerSignature Signature over `getRefundDigest(channelId, nonce, amount)`.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 domain = _domainSeparator();
        bytes32 channelId = _channelId(domain, config);
        if (nonce != refundNonce[channelId]) revert InvalidRefundNonce();
        bytes32 digest = MessageHashUtils.toTypedDataHash(domain, _refundHash(channelId, nonce, amount));
        if (!SignatureChecker.isValidSignatureNowCalldata(
                config.receiverAuthorizer, digest, receiverAuthorizerSignature
            )) {
            revert InvalidSignature();
        }
        _refund(channelId, config, amount);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------------------------------

    /// @notice The id of the channel described by `config`: its EIP-712 typed-data hash under this contract's
    ///         domain, so the same config has a different id on every chain and every escrow deployment.
    /// @param config The channel configuration.
    /// @return The channel id.
    function getChannelId(ChannelConfig calldata config) external view returns (bytes32) {
        return _channelId(_domainSeparator(), config);
    }

    /// @notice The EIP-712 digest a payer signs for a voucher.
    /// @param channelId The channel id.
    /// @param maxClaimableAmount The cumulative ceiling.
    /// @return The digest.
    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32) {
        return MessageHashUtils.toTypedDataHash(_domainSeparator(), _voucherHash(channelId, maxClaimableAmount));
    }

    /// @notice The EIP-712 digest the receiver authorizer signs for `refundWithSignature`.
    /// @param channelId The channel id.
    /// @param nonce The channel's current `refundNonce`.
    /// @param amount The refund amount.
    /// @return The digest.
    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32) {
        return MessageHashUtils.toTypedDataHash(_domainSeparator(), _refundHash(channelId, nonce, amount));
    }

    /// @notice The EIP-712 digest the receiver authorizer signs for `claimWithSignature`.
    /// @dev Defined for an empty batch too (the hash of no entries), although claims reject empty batches.
    /// @param voucherClaims The claim rows; signatures are not part of the digest.
    /// @return The digest.
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32) {
        bytes32 domain = _domainSeparator();
        uint256 n = voucherClaims.length;
        bytes32[] memory entries = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            entries[i] = _claimEntryHash(
                _channelId(domain, row.voucher.channel), row.voucher.maxClaimableAmount, row.totalClaimed
            );
        }
        return MessageHashUtils.toTypedDataHash(domain, _claimBatchHash(entries));
    }

    /// @notice The EIP-712 domain separator for the current chain and this contract's address.
    /// @return The domain separator.
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparator();
    }

    /// @inheritdoc IERC5267
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", _NAME, _VERSION, block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    // ---------------------------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------------------------

    /// @dev Raises a channel's claimed total to `row.totalClaimed` after checking the ceiling, the balance and
    ///      the payer's voucher signature; adds the difference to `credit`, which the caller flushes into
    ///      `receivers` at the end of the batch (the only external calls in between are ERC-1271 static calls,
    ///      which cannot act on the not-yet-written total).
    function _applyClaim(bytes32 domain, bytes32 channelId, VoucherClaim calldata row, PendingCredit memory credit)
        private
    {
        ChannelState storage ch = channels[channelId];
        uint128 target = row.totalClaimed;
        uint128 claimed = ch.totalClaimed;
        if (target <= claimed) return;
        uint128 ceiling = row.voucher.maxClaimableAmount;
        if (target > ceiling) revert ClaimExceedsCeiling();
        if (target > ch.balance) revert ClaimExceedsBalance();

        ChannelConfig calldata c = row.voucher.channel;
        bytes32 digest = MessageHashUtils.toTypedDataHash(domain, _voucherHash(channelId, ceiling));
        if (!_isPayerSignature(c, digest, row.signature)) revert InvalidSignature();

        uint128 delta = target - claimed;
        ch.totalClaimed = target;
        address rcv = c.receiver;
        address token = c.token;
        if (rcv != credit.receiver || token != credit.token) {
            _flush(credit);
            credit.receiver = rcv;
            credit.token = token;
        }
        credit.amount += delta;
        emit Claimed(channelId, msg.sender, delta, target);
    }

    /// @dev Adds the pending run of claimed amounts to its (receiver, token) total.
    function _flush(PendingCredit memory credit) private {
        if (credit.amount != 0) {
            receivers[credit.receiver][credit.token].totalClaimed += credit.amount;
            credit.amount = 0;
        }
    }

    /// @dev Voucher signature check: plain ECDSA by `payerAuthorizer` when it is set, otherwise `payer` through
    ///      SignatureChecker (ECDSA for an EOA, ERC-1271 for a contract). Malformed and high-s signatures fail.
    function _isPayerSignature(ChannelConfig calldata c, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        address authorizer = c.payerAuthorizer;
        if (authorizer != address(0)) {
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
            return err == ECDSA.RecoverError.NoError && signer == authorizer;
        }
        return SignatureChecker.isValidSignatureNowCalldata(c.payer, digest, signature);
    }

    /// @dev Shared body of `refund` and `refundWithSignature`.
    function _refund(bytes32 channelId, ChannelConfig calldata config, uint128 amount) private {
        if (amount == 0) revert ZeroRefund();
        unchecked {
            ++refundNonce[channelId];
        }

        ChannelState storage ch = channels[channelId];
        uint128 balance = ch.balance;
        uint128 available = balance - ch.totalClaimed;
        uint128 refunded = amount < available ? amount : available;
        if (refunded == 0) return;

        balance -= refunded;
        ch.balance = balance;

        WithdrawalState storage pending = pendingWithdrawals[channelId];
        if (pending.initiatedAt != 0) {
            uint128 requested = pending.amount;
            if (refunded >= requested) delete pendingWithdrawals[channelId];
            else pending.amount = requested - refunded;
        }

        emit Refunded(channelId, msg.sender, refunded);
        if (balance == 0) emit ChannelClosed(channelId, config);
        IERC20(config.token).safeTransfer(config.payer, refunded);
    }

    /// @dev EIP-712 domain separator, recomputed per call so the code works at any address (see contract notes).
    function _domainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(_DOMAIN_TYPEHASH, _NAME_HASH, _VERSION_HASH, block.chainid, address(this)));
    }

    /// @dev hashStruct(ChannelConfig) straight from calldata: the config is 7 static words, hashed after the type
    ///      hash. Non-canonical encodings (dirty high bits in an address or in `withdrawDelay`) revert, as the
    ///      ABI decoder would, so a config has exactly one id.
    function _channelId(bytes32 domain, ChannelConfig calldata config) private pure returns (bytes32) {
        bytes32 typeHash = CHANNEL_CONFIG_TYPEHASH;
        bytes32 structHash;
        assembly ("memory-safe") {
            let dirty := shr(40, calldataload(add(config, 0xa0)))
            for { let o := 0 } lt(o, 0xa0) { o := add(o, 0x20) } {
                dirty := or(dirty, shr(160, calldataload(add(config, o))))
            }
            if dirty { revert(0, 0) }
            let m := mload(0x40)
            mstore(m, typeHash)
            calldatacopy(add(m, 0x20), config, 0xe0)
            structHash := keccak256(m, 0x100)
        }
        return MessageHashUtils.toTypedDataHash(domain, structHash);
    }

    function _voucherHash(bytes32 channelId, uint128 maxClaimableAmount) private pure returns (bytes32) {
        return keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount));
    }

    function _refundHash(bytes32 channelId, uint256 nonce, uint128 amount) private pure returns (bytes32) {
        return keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount));
    }

    function _claimEntryHash(bytes32 channelId, uint128 maxClaimableAmount, uint128 totalClaimed)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(CLAIM_ENTRY_TYPEHASH, channelId, maxClaimableAmount, totalClaimed));
    }

    /// @dev hashStruct(ClaimBatch): the `claims` array is encoded as the keccak of its concatenated entry hashes.
    function _claimBatchHash(bytes32[] memory entries) private pure returns (bytes32 h) {
        bytes32 entriesHash;
        assembly ("memory-safe") {
            entriesHash := keccak256(add(entries, 0x20), shl(5, mload(entries)))
        }
        h = keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, entriesHash));
    }
}
