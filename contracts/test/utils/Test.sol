// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Vm} from "./Vm.sol";

/// @notice paychan's minimal forge test base: the cheatcode handle, assertion shorthands, `bound`, signing
///         helpers, and the target/exclude getters forge's invariant runner looks for.
abstract contract Test {
    /// @dev The address forge serves cheatcodes at: address(bytes20(uint160(uint256(keccak256("hevm cheat code")))))
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    /// @dev secp256k1 group order; a signature with s > N/2 is the malleated twin of one with s' = N - s.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    // ---------------------------------------------------------------------------------------------------------
    // Assertions
    // ---------------------------------------------------------------------------------------------------------

    function assertTrue(bool c, string memory m) internal pure {
        vm.assertTrue(c, m);
    }

    function assertFalse(bool c, string memory m) internal pure {
        vm.assertFalse(c, m);
    }

    function assertEq(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(uint256 a, uint256 b) internal pure {
        vm.assertEq(a, b, "values differ");
    }

    function assertEq(address a, address b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(address a, address b) internal pure {
        vm.assertEq(a, b, "addresses differ");
    }

    function assertEq(bytes32 a, bytes32 b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(bytes32 a, bytes32 b) internal pure {
        vm.assertEq(a, b, "hashes differ");
    }

    function assertEq(bool a, bool b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(bytes memory a, bytes memory b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertEq(string memory a, string memory b, string memory m) internal pure {
        vm.assertEq(a, b, m);
    }

    function assertNotEq(bytes32 a, bytes32 b, string memory m) internal pure {
        vm.assertNotEq(a, b, m);
    }

    function assertLe(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertLe(a, b, m);
    }

    function assertLt(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertLt(a, b, m);
    }

    function assertGe(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertGe(a, b, m);
    }

    function assertGt(uint256 a, uint256 b, string memory m) internal pure {
        vm.assertGt(a, b, m);
    }

    // ---------------------------------------------------------------------------------------------------------
    // Fuzz helpers
    // ---------------------------------------------------------------------------------------------------------

    /// @dev Maps `x` into [lo, hi]; values already inside are kept, so edge values stay reachable.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (x >= lo && x <= hi) return x;
        uint256 span = hi - lo;
        if (span == type(uint256).max) return x;
        return lo + (x % (span + 1));
    }

    // ---------------------------------------------------------------------------------------------------------
    // Signatures
    // ---------------------------------------------------------------------------------------------------------

    /// @dev 65-byte `r ‖ s ‖ v` ECDSA signature of `digest` by `key`.
    function sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev The malleated twin of a 65-byte signature: s -> N - s and v flipped. Recovers to the same signer
    ///      under raw ecrecover, but has a high s.
    function malleate(bytes memory sig) internal pure returns (bytes memory) {
        require(sig.length == 65, "malleate: not 65 bytes");
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
        return abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
    }

    // ---------------------------------------------------------------------------------------------------------
    // Invariant targeting (forge calls these getters when they exist)
    // ---------------------------------------------------------------------------------------------------------

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] private _targetedContracts;
    address[] private _targetedSenders;
    address[] private _excludedSenders;
    FuzzSelector[] private _targetedSelectors;

    function targetContract(address target) internal {
        _targetedContracts.push(target);
    }

    function targetSender(address sender) internal {
        _targetedSenders.push(sender);
    }

    function excludeSender(address sender) internal {
        _excludedSenders.push(sender);
    }

    function targetSelector(FuzzSelector memory selector) internal {
        _targetedSelectors.push(selector);
    }

    function targetContracts() public view returns (address[] memory) {
        return _targetedContracts;
    }

    function targetSenders() public view returns (address[] memory) {
        return _targetedSenders;
    }

    function excludeSenders() public view returns (address[] memory) {
        return _excludedSenders;
    }

    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetedSelectors;
    }
}
