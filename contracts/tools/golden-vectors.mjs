#!/usr/bin/env node
// paychan: prints the EIP-712 golden vectors that test/GoldenVectors.t.sol hard-codes, computed with the x402
// reference SDK (@x402/evm computeChannelId) and viem's hashTypedData, i.e. independently of our Solidity.
// Usage (repository root or anywhere below it): node contracts/tools/golden-vectors.mjs
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const { hashTypedData, hashDomain } = require('viem');
const { computeChannelId } = require('@x402/evm/batch-settlement/client');

const ESCROW = '0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003';
const TOKEN = '0x5FbDB2315678afecb367f032d93F642f64180aa3';
const config = {
  payer: '0x70997970C51812dc3A010C7d01b50e0d17dc79C8',
  payerAuthorizer: '0x70997970C51812dc3A010C7d01b50e0d17dc79C8',
  receiver: '0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC',
  receiverAuthorizer: '0x90F79bf6EB2c4f870365E785982E1f101E93b906',
  token: TOKEN,
  withdrawDelay: 900,
  salt: '0x0000000000000000000000000000000000000000000000000000000000000001',
};
const claimTypes = {
  ClaimBatch: [{ name: 'claims', type: 'ClaimEntry[]' }],
  ClaimEntry: [
    { name: 'channelId', type: 'bytes32' },
    { name: 'maxClaimableAmount', type: 'uint128' },
    { name: 'totalClaimed', type: 'uint128' },
  ],
};
const out = {};
for (const chainId of [31337, 8453]) {
  const domain = { name: 'x402 Batch Settlement', version: '1', chainId, verifyingContract: ESCROW };
  const channelId = computeChannelId(config, `eip155:${chainId}`);
  out[chainId] = {
    domainSeparator: hashDomain({ domain, types: { EIP712Domain: [
      { name: 'name', type: 'string' }, { name: 'version', type: 'string' },
      { name: 'chainId', type: 'uint256' }, { name: 'verifyingContract', type: 'address' },
    ] } }),
    channelId,
    voucherDigest_1234567: hashTypedData({
      domain, primaryType: 'Voucher',
      types: { Voucher: [{ name: 'channelId', type: 'bytes32' }, { name: 'maxClaimableAmount', type: 'uint128' }] },
      message: { channelId, maxClaimableAmount: 1234567n },
    }),
    refundDigest_nonce3_amount500: hashTypedData({
      domain, primaryType: 'Refund',
      types: { Refund: [{ name: 'channelId', type: 'bytes32' }, { name: 'nonce', type: 'uint256' }, { name: 'amount', type: 'uint128' }] },
      message: { channelId, nonce: 3n, amount: 500n },
    }),
    claimBatchDigest_two_rows: hashTypedData({
      domain, primaryType: 'ClaimBatch', types: claimTypes,
      message: { claims: [
        { channelId, maxClaimableAmount: 1234567n, totalClaimed: 1000000n },
        { channelId, maxClaimableAmount: 2000000n, totalClaimed: 1500000n },
      ] },
    }),
    claimBatchDigest_empty: hashTypedData({ domain, primaryType: 'ClaimBatch', types: claimTypes, message: { claims: [] } }),
  };
}
// DevStablecoin deployed as {name "USD Coin", version "2"} at TOKEN on chain 31337.
const tokenDomain = { name: 'USD Coin', version: '2', chainId: 31337, verifyingContract: TOKEN };
out.token = {
  domainSeparator: hashDomain({ domain: tokenDomain, types: { EIP712Domain: [
    { name: 'name', type: 'string' }, { name: 'version', type: 'string' },
    { name: 'chainId', type: 'uint256' }, { name: 'verifyingContract', type: 'address' },
  ] } }),
  receiveWithAuthorizationDigest: hashTypedData({
    domain: tokenDomain, primaryType: 'ReceiveWithAuthorization',
    types: { ReceiveWithAuthorization: [
      { name: 'from', type: 'address' }, { name: 'to', type: 'address' }, { name: 'value', type: 'uint256' },
      { name: 'validAfter', type: 'uint256' }, { name: 'validBefore', type: 'uint256' }, { name: 'nonce', type: 'bytes32' },
    ] },
    message: {
      from: config.payer, to: '0x4020806089470a89826cB9fB1f4059150b550004', value: 1000000n,
      validAfter: 0n, validBefore: 4102444800n,
      nonce: '0x00000000000000000000000000000000000000000000000000000000000000aa',
    },
  }),
};
console.log(JSON.stringify(out, null, 2));
