// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {DevStablecoin} from "../src/dev/DevStablecoin.sol";
import {IERC3009} from "../src/interfaces/IERC3009.sol";
import {MockERC1271Wallet} from "./mocks/MockERC1271Wallet.sol";

contract DevStablecoinTest is Test {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    uint256 internal constant OWNER_KEY = 0x0DD;
    uint256 internal constant OTHER_KEY = 0xE4E;

    DevStablecoin internal token;
    address internal owner;
    address internal spender = address(0x5BE);
    address internal payee = address(0xBEE);
    address internal relayer = address(0x4E1A);

    function setUp() public {
        vm.warp(1_700_000_000);
        token = new DevStablecoin("USD Coin", "USDC", "2", address(this));
        owner = vm.addr(OWNER_KEY);
        token.mint(owner, 1000e6);
    }

    function _digest(bytes32 structHash) internal view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), structHash));
    }

    function _permitDigest(address o, address s, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        return _digest(keccak256(abi.encode(token.PERMIT_TYPEHASH(), o, s, value, nonce, deadline)));
    }

    function _authDigest(bytes32 typeHash, address from, address to, uint256 value, uint256 va, uint256 vb, bytes32 n)
        internal
        view
        returns (bytes32)
    {
        return _digest(keccak256(abi.encode(typeHash, from, to, value, va, vb, n)));
    }

    function _cancelDigest(address authorizer, bytes32 nonce) internal view returns (bytes32) {
        return _digest(keccak256(abi.encode(token.CANCEL_AUTHORIZATION_TYPEHASH(), authorizer, nonce)));
    }

    // ---------------------------------------------------------------------------------------------------------
    // Metadata and minting
    // ---------------------------------------------------------------------------------------------------------

    function test_Metadata() public view {
        assertEq(token.name(), "USD Coin", "name");
        assertEq(token.symbol(), "USDC", "symbol");
        assertEq(uint256(token.decimals()), 6, "decimals");
        assertEq(token.version(), "2", "version");
        assertEq(token.minter(), address(this), "minter");
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("USD Coin"),
                keccak256("2"),
                block.chainid,
                address(token)
            )
        );
        assertEq(token.DOMAIN_SEPARATOR(), expected, "domain separator");
        (, string memory name, string memory version,, address verifying,,) = token.eip712Domain();
        assertEq(name, "USD Coin", "5267 name");
        assertEq(version, "2", "5267 version");
        assertEq(verifying, address(token), "5267 verifyingContract");
        assertEq(
            token.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
            keccak256(
                "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
            ),
            "receive typehash"
        );
    }

    function test_OtherVersionChangesDomain() public {
        DevStablecoin v1 = new DevStablecoin("USD Coin", "USDC", "1", address(this));
        assertEq(v1.version(), "1", "version");
        assertNotEq(v1.DOMAIN_SEPARATOR(), token.DOMAIN_SEPARATOR(), "version is part of the domain");
    }

    function test_Mint_OnlyMinter() public {
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.NotMinter.selector, owner));
        vm.prank(owner);
        token.mint(owner, 1);
        token.mint(payee, 5);
        assertEq(token.balanceOf(payee), 5, "minted");
        assertEq(token.totalSupply(), 1000e6 + 5, "supply");
    }

    // ---------------------------------------------------------------------------------------------------------
    // EIP-2612
    // ---------------------------------------------------------------------------------------------------------

    function test_Permit_VRS() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_KEY, _permitDigest(owner, spender, 77, 0, deadline));
        vm.expectEmit(address(token));
        emit Approval(owner, spender, 77);
        vm.prank(relayer);
        token.permit(owner, spender, 77, deadline, v, r, s);
        assertEq(token.allowance(owner, spender), 77, "allowance");
        assertEq(token.nonces(owner), 1, "nonce used");

        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.permit(owner, spender, 77, deadline, v, r, s); // replay: the nonce moved on
    }

    function test_Permit_Reverts() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = sign(OWNER_KEY, _permitDigest(owner, spender, 77, 0, deadline));
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.permit(owner, spender, 78, deadline, sig);

        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.permit(owner, spender, 77, deadline, malleate(sig));

        bytes memory other = sign(OTHER_KEY, _permitDigest(owner, spender, 77, 0, deadline));
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.permit(owner, spender, 77, deadline, other);

        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.PermitExpired.selector, deadline));
        token.permit(owner, spender, 77, deadline, sig);
    }

    function test_Permit_BytesAtDeadlineAndErc1271() public {
        uint256 deadline = block.timestamp;
        token.permit(owner, spender, 5, deadline, sign(OWNER_KEY, _permitDigest(owner, spender, 5, 0, deadline)));
        assertEq(token.allowance(owner, spender), 5, "valid at the deadline itself");

        MockERC1271Wallet wallet = new MockERC1271Wallet(owner);
        bytes memory sig = sign(OWNER_KEY, _permitDigest(address(wallet), spender, 9, 0, deadline));
        token.permit(address(wallet), spender, 9, deadline, sig);
        assertEq(token.allowance(address(wallet), spender), 9, "contract owner via ERC-1271");
    }

    // ---------------------------------------------------------------------------------------------------------
    // EIP-3009 transfer / receive
    // ---------------------------------------------------------------------------------------------------------

    function test_TransferWithAuthorization_BothForms() public {
        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes32 digest = _authDigest(typeHash, owner, payee, 10, 0, vb, bytes32("n1"));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_KEY, digest);
        vm.expectEmit(address(token));
        emit AuthorizationUsed(owner, bytes32("n1"));
        vm.prank(relayer);
        token.transferWithAuthorization(owner, payee, 10, 0, vb, bytes32("n1"), v, r, s);
        assertTrue(token.authorizationState(owner, bytes32("n1")), "used");

        digest = _authDigest(typeHash, owner, payee, 20, 0, vb, bytes32("n2"));
        vm.prank(relayer);
        token.transferWithAuthorization(owner, payee, 20, 0, vb, bytes32("n2"), sign(OWNER_KEY, digest));
        assertEq(token.balanceOf(payee), 30, "both moved");

        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationAlreadyUsed.selector, owner, bytes32("n2")));
        token.transferWithAuthorization(owner, payee, 20, 0, vb, bytes32("n2"), sign(OWNER_KEY, digest));
    }

    function test_TransferWithAuthorization_TimeWindowIsExclusive() public {
        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 va = block.timestamp;
        uint256 vb = block.timestamp + 2;
        bytes memory sig = sign(OWNER_KEY, _authDigest(typeHash, owner, payee, 1, va, vb, bytes32("t")));
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationNotYetValid.selector, va));
        token.transferWithAuthorization(owner, payee, 1, va, vb, bytes32("t"), sig);
        vm.warp(vb);
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationExpired.selector, vb));
        token.transferWithAuthorization(owner, payee, 1, va, vb, bytes32("t"), sig);
        vm.warp(va + 1);
        token.transferWithAuthorization(owner, payee, 1, va, vb, bytes32("t"), sig);
        assertEq(token.balanceOf(payee), 1, "inside the window");
    }

    function test_TransferWithAuthorization_BadSignatures() public {
        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes memory sig = sign(OWNER_KEY, _authDigest(typeHash, owner, payee, 10, 0, vb, bytes32("n")));
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.transferWithAuthorization(owner, payee, 11, 0, vb, bytes32("n"), sig);
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.transferWithAuthorization(owner, relayer, 10, 0, vb, bytes32("n"), sig);
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.transferWithAuthorization(owner, payee, 10, 0, vb, bytes32("n"), malleate(sig));
        // A transfer authorization is not a receive authorization.
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        vm.prank(payee);
        token.receiveWithAuthorization(owner, payee, 10, 0, vb, bytes32("n"), sig);
        assertFalse(token.authorizationState(owner, bytes32("n")), "still unused");
    }

    function test_ReceiveWithAuthorization_BothForms() public {
        bytes32 typeHash = token.RECEIVE_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes32 digest = _authDigest(typeHash, owner, payee, 10, 0, vb, bytes32("r1"));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_KEY, digest);

        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.CallerNotPayee.selector, relayer, payee));
        vm.prank(relayer);
        token.receiveWithAuthorization(owner, payee, 10, 0, vb, bytes32("r1"), v, r, s);

        vm.prank(payee);
        token.receiveWithAuthorization(owner, payee, 10, 0, vb, bytes32("r1"), v, r, s);

        digest = _authDigest(typeHash, owner, payee, 5, 0, vb, bytes32("r2"));
        bytes memory sig = sign(OWNER_KEY, digest);
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.CallerNotPayee.selector, relayer, payee));
        vm.prank(relayer);
        token.receiveWithAuthorization(owner, payee, 5, 0, vb, bytes32("r2"), sig);
        vm.prank(payee);
        token.receiveWithAuthorization(owner, payee, 5, 0, vb, bytes32("r2"), sig);
        assertEq(token.balanceOf(payee), 15, "received");
    }

    function test_TransferWithAuthorization_Erc1271From() public {
        MockERC1271Wallet wallet = new MockERC1271Wallet(owner);
        token.mint(address(wallet), 50);
        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes memory sig = sign(OWNER_KEY, _authDigest(typeHash, address(wallet), payee, 50, 0, vb, bytes32("w")));
        token.transferWithAuthorization(address(wallet), payee, 50, 0, vb, bytes32("w"), sig);
        assertEq(token.balanceOf(payee), 50, "moved by ERC-1271 authorization");
    }

    // ---------------------------------------------------------------------------------------------------------
    // EIP-3009 cancel
    // ---------------------------------------------------------------------------------------------------------

    function test_CancelAuthorization_BlocksLaterUse() public {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(OWNER_KEY, _cancelDigest(owner, bytes32("c1")));
        vm.expectEmit(address(token));
        emit AuthorizationCanceled(owner, bytes32("c1"));
        vm.prank(relayer);
        token.cancelAuthorization(owner, bytes32("c1"), v, r, s);
        assertTrue(token.authorizationState(owner, bytes32("c1")), "cancelled");

        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes memory sig = sign(OWNER_KEY, _authDigest(typeHash, owner, payee, 1, 0, vb, bytes32("c1")));
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationAlreadyUsed.selector, owner, bytes32("c1")));
        token.transferWithAuthorization(owner, payee, 1, 0, vb, bytes32("c1"), sig);

        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationAlreadyUsed.selector, owner, bytes32("c1")));
        token.cancelAuthorization(owner, bytes32("c1"), v, r, s);
    }

    function test_CancelAuthorization_BytesForm() public {
        bytes memory bad = sign(OTHER_KEY, _cancelDigest(owner, bytes32("c2")));
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.cancelAuthorization(owner, bytes32("c2"), bad);

        token.cancelAuthorization(owner, bytes32("c2"), sign(OWNER_KEY, _cancelDigest(owner, bytes32("c2"))));
        assertTrue(token.authorizationState(owner, bytes32("c2")), "cancelled");

        // A used authorization cannot be cancelled afterwards either.
        _transferOne(bytes32("c3"));
        bytes memory cancel = sign(OWNER_KEY, _cancelDigest(owner, bytes32("c3")));
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationAlreadyUsed.selector, owner, bytes32("c3")));
        token.cancelAuthorization(owner, bytes32("c3"), cancel);
    }

    function _transferOne(bytes32 nonce) internal {
        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes memory sig = sign(OWNER_KEY, _authDigest(typeHash, owner, payee, 1, 0, vb, nonce));
        token.transferWithAuthorization(owner, payee, 1, 0, vb, nonce, sig);
    }

    /// forge-config: default.fuzz.runs = 128
    function testFuzz_AuthorizationReplayAndTampering(uint256 value, bytes32 nonce, uint256 tamper) public {
        value = bound(value, 1, 1000e6);
        bytes32 typeHash = token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH();
        uint256 vb = block.timestamp + 60;
        bytes memory sig = sign(OWNER_KEY, _authDigest(typeHash, owner, payee, value, 0, vb, nonce));
        uint256 tampered = value ^ (bound(tamper, 1, type(uint64).max));
        vm.expectRevert(DevStablecoin.InvalidSignature.selector);
        token.transferWithAuthorization(owner, payee, tampered, 0, vb, nonce, sig);
        token.transferWithAuthorization(owner, payee, value, 0, vb, nonce, sig);
        vm.expectRevert(abi.encodeWithSelector(DevStablecoin.AuthorizationAlreadyUsed.selector, owner, nonce));
        token.transferWithAuthorization(owner, payee, value, 0, vb, nonce, sig);
        assertEq(token.balanceOf(payee), value, "exactly once");
    }
}
