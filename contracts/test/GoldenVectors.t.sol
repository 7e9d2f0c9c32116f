// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {BatchSettlement} from "../src/BatchSettlement.sol";
import {DevStablecoin} from "../src/dev/DevStablecoin.sol";

/// @notice Wire compatibility with the x402 reference SDK: channel ids and EIP-712 digests computed by
///         the npm package x402/evm (computeChannelId) and viem (hashTypedData). Regenerate the constants with
///         `node contracts/tools/golden-vectors.mjs`.
contract GoldenVectorsTest is Test {
    address internal constant ESCROW_ADDRESS = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;
    address internal constant TOKEN_ADDRESS = 0x5FbDB2315678afecb367f032d93F642f64180aa3;

    BatchSettlement internal escrow = BatchSettlement(ESCROW_ADDRESS);

    function setUp() public {
        vm.etch(ESCROW_ADDRESS, address(new BatchSettlement()).code);
    }

    function _config() internal pure returns (BatchSettlement.ChannelConfig memory) {
        return BatchSettlement.ChannelConfig({
            payer: 0x70997970C51812dc3A010C7d01b50e0d17dc79C8,
            payerAuthorizer: 0x70997970C51812dc3A010C7d01b50e0d17dc79C8,
            receiver: 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC,
            receiverAuthorizer: 0x90F79bf6EB2c4f870365E785982E1f101E93b906,
            token: TOKEN_ADDRESS,
            withdrawDelay: 900,
            salt: bytes32(uint256(1))
        });
    }

    function _twoRows(bytes32) internal pure returns (BatchSettlement.VoucherClaim[] memory rows) {
        rows = new BatchSettlement.VoucherClaim[](2);
        rows[0].voucher = BatchSettlement.Voucher(_config(), 1_234_567);
        rows[0].totalClaimed = 1_000_000;
        rows[0].signature = hex"deadbeef"; // signatures are not part of the batch digest
        rows[1].voucher = BatchSettlement.Voucher(_config(), 2_000_000);
        rows[1].totalClaimed = 1_500_000;
    }

    function _check(
        uint256 chainId,
        bytes32 domainSeparator,
        bytes32 channelId,
        bytes32 voucherDigest,
        bytes32 refundDigest,
        bytes32 batchDigest,
        bytes32 emptyBatchDigest
    ) internal {
        vm.chainId(chainId);
        assertEq(escrow.DOMAIN_SEPARATOR(), domainSeparator, "domain separator");
        bytes32 id = escrow.getChannelId(_config());
        assertEq(id, channelId, "channel id (reference computeChannelId)");
        assertEq(escrow.getVoucherDigest(id, 1_234_567), voucherDigest, "voucher digest");
        assertEq(escrow.getRefundDigest(id, 3, 500), refundDigest, "refund digest");
        assertEq(escrow.getClaimBatchDigest(_twoRows(id)), batchDigest, "claim batch digest");
        assertEq(escrow.getClaimBatchDigest(new BatchSettlement.VoucherClaim[](0)), emptyBatchDigest, "empty batch");
    }

    function test_GoldenVectors_Anvil31337() public {
        _check(
            31_337,
            0xbf720f8d28a5c76a2f7743512598984fa4b90dd1efdb19af73f64cc6587d68af,
            0x15b5cbc562125867593bcf9ff41e1c440274a725bacd8c1b15b952a4163ae61d,
            0xe5bc4426c009c40ee8bd04f91ce1e120742caaa2609315d2a91d92a2b3496d06,
            0xa2e13a6c50be02f1f870f9472760843488d8ac914e3075f22eaeef3d1d24d0d5,
            0x554fbe9469c8597782a6cefd65d1cace903b34c9c6928446214f2da844f3ad2c,
            0x12bca07dd0ec892f2d47a96c4cd3d3c1fa8c16e68be4f391dcc7076e185680f8
        );
    }

    function test_GoldenVectors_Base8453() public {
        _check(
            8453,
            0xd8d982716899b0e20cf2c1e706a37b8a892c83fdd4ac9b540cfeec11f9c73a39,
            0xf55031ffb702eda95242f45f3b2770c149b897441784da40a320f68edad47401,
            0x07e5482dcf25a112d464d3c2fcb0749acbb288a93675e1e522a2374a25a5c8eb,
            0x9dbb3bde271315155b4b75c6acd8c450bf2a129fd0293e1951226ffac695fa99,
            0x2e979c9b8f561740b28e5c0027b61df5887c7cd88dc0d11fc7125424b2e18d70,
            0x3483bc42d4cc5a5e79820fd6d896640faee52a1d3fc9efe3896bfd7a149ec340
        );
    }

    /// @dev The same config has a different id at another escrow address (the domain binds the contract).
    function test_ChannelIdBindsVerifyingContract() public {
        vm.chainId(31_337);
        BatchSettlement other = new BatchSettlement();
        assertNotEq(other.getChannelId(_config()), escrow.getChannelId(_config()), "id must depend on the address");
    }

    function test_Eip712Domain() public {
        vm.chainId(31_337);
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifying,
            bytes32 salt,
            uint256[] memory extensions
        ) = escrow.eip712Domain();
        assertEq(uint256(uint8(fields)), 0x0f, "fields: name, version, chainId, verifyingContract");
        assertEq(name, "x402 Batch Settlement", "name");
        assertEq(version, "1", "version");
        assertEq(chainId, 31_337, "chainId");
        assertEq(verifying, ESCROW_ADDRESS, "verifyingContract");
        assertEq(salt, bytes32(0), "salt");
        assertEq(extensions.length, 0, "extensions");
    }

    /// @dev DevStablecoin ("USD Coin", version "2") at 0x5FbD... on 31337: domain separator and a
    ///      ReceiveWithAuthorization digest from viem, signed and accepted by the token.
    function test_DevStablecoinGoldenVectors() public {
        vm.chainId(31_337);
        vm.warp(1_800_000_000);
        DevStablecoin deployed = new DevStablecoin("USD Coin", "USDC", "2", address(this));
        vm.etch(TOKEN_ADDRESS, address(deployed).code);
        DevStablecoin token = DevStablecoin(TOKEN_ADDRESS);
        assertEq(token.DOMAIN_SEPARATOR(), 0xfc557a58e1177dd0b729c40130003009d1ffed5a502b494889e2711c7726dd52, "domain");

        // Anvil's second default account (the golden config's payer).
        uint256 key = 0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d;
        address from = vm.addr(key);
        assertEq(from, 0x70997970C51812dc3A010C7d01b50e0d17dc79C8, "anvil account 1");
        address to = 0x4020806089470a89826cB9fB1f4059150b550004;
        token.mint(from, 1_000_000);
        bytes32 digest = 0xad6a25ef6c7fd21f6b53a9c8a999c038f74fa373de231768c84db9745a3e721b;
        bytes32 nonce = bytes32(uint256(0xaa));
        vm.prank(to);
        token.receiveWithAuthorization(from, to, 1_000_000, 0, 4_102_444_800, nonce, sign(key, digest));
        assertEq(token.balanceOf(to), 1_000_000, "moved by the viem-digest signature");
        assertTrue(token.authorizationState(from, nonce), "nonce consumed");
    }
}
