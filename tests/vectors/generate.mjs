#!/usr/bin/env node
// paychan golden vectors, made with the x402 reference SDK (@x402/evm, @x402/core) and viem only, written to
// crates/core/tests/vectors/reference.json for crates/core/tests/it/vectors.rs ("we verify theirs").
//
// Usage (repository root, after `npm ci`):  node tests/vectors/generate.mjs [--check] [--out FILE]
//   --check   regenerate in memory and fail if the committed file differs (reproducibility check)
//   VECTORS_LIVE=1  use the real clock and real randomness (see README.md: the output then differs per run)
//
// Reproducibility: the SDK draws the ERC-3009 deposit salt (and the server's pending-request ids) from
// globalThis.crypto.getRandomValues and reads the clock with Date.now() for validBefore. Unless VECTORS_LIVE is
// set, this script fixes both for its own process (a fixed instant, and bytes from keccak256(seed ‖ counter)),
// so the whole file is reproducible; the values the SDK drew are recorded in the vectors themselves.
import fs from 'node:fs';
import path from 'node:path';
import {
  ANVIL_KEYS, ERC3009_COLLECTOR, ESCROW, StubFacilitator, ZERO_ADDRESS, batchDomain, bsClient, bsServer, chainIdOf,
  coreClient, coreHttp, depositNonce, evm, headerGetter, packageVersion, plain, privateKeyToAccount,
  receiveAuthorizationMessage, receiveAuthorizationTypes, recoverReceiveAuthorization, recoverVoucherSigner,
  referenceServer, repoRoot, sameAddress, viem, voucherDigest,
} from './lib.mjs';

const LIVE = process.env.VECTORS_LIVE === '1';
const FIXED_NOW_MS = Date.UTC(2026, 0, 1, 0, 0, 0);
const ENTROPY_SEED = 'paychan-golden-vectors/v1';
if (!LIVE) {
  let counter = 0;
  const real = globalThis.crypto;
  const getRandomValues = (arr) => {
    const bytes = new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
    for (let off = 0; off < bytes.length; off += 32) {
      const block = viem.hexToBytes(viem.keccak256(viem.toHex(`${ENTROPY_SEED}:${counter++}`)));
      bytes.set(block.subarray(0, Math.min(32, bytes.length - off)), off);
    }
    return arr;
  };
  Object.defineProperty(globalThis, 'crypto', {
    configurable: true,
    value: { getRandomValues, subtle: real.subtle, randomUUID: () => real.randomUUID() },
  });
  Date.now = () => FIXED_NOW_MS;
}

const args = process.argv.slice(2);
const CHECK = args.includes('--check');
const outIdx = args.indexOf('--out');
const OUT = outIdx >= 0 ? path.resolve(args[outIdx + 1]) : path.join(repoRoot, 'crates', 'core', 'tests', 'vectors', 'reference.json');

function ok(cond, msg) {
  if (!cond) throw new Error(`generate: ${msg}`);
}

// ---------------------------------------------------------------------------------------------------------------
// keys, tokens, networks
const ROLE_KEYS = {
  facilitator: 0, payer: 1, receiver: 2, receiverAuthorizer: 3, payer2: 4,
  sessionKey: 5, payer3: 6, receiver2: 7, receiverAuthorizer2: 8, sessionKey2: 9,
};
const acct = Object.fromEntries(Object.entries(ROLE_KEYS).map(([role, i]) => [role, privateKeyToAccount(ANVIL_KEYS[i])]));
const keys = Object.fromEntries(
  Object.entries(ROLE_KEYS).map(([role, i]) => [role, { anvilIndex: i, privateKey: ANVIL_KEYS[i], address: acct[role].address }]),
);
const roleOf = (address) => Object.keys(acct).find((r) => sameAddress(acct[r].address, address));

const TOKENS = {
  usdcBase: '0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913',
  usdcBaseSepolia: '0x036CbD53842c5426634e7929541eC2318f3dCF7e',
  devToken: '0x5FbDB2315678afecb367f032d93F642f64180aa3',
};
const U128_MAX = (1n << 128n) - 1n;
const U256_MAX = (1n << 256n) - 1n;
const word = (n) => viem.pad(viem.toHex(BigInt(n)), { size: 32 });
const saltOf = (label) => viem.keccak256(viem.toHex(label));

// ---------------------------------------------------------------------------------------------------------------
// channelIds: computeChannelId(config, network)
const cfg = (payer, payerAuthorizer, receiver, receiverAuthorizer, token, withdrawDelay, salt) => ({
  payer: acct[payer].address,
  payerAuthorizer: payerAuthorizer === null ? ZERO_ADDRESS : acct[payerAuthorizer].address,
  receiver: acct[receiver].address,
  receiverAuthorizer: acct[receiverAuthorizer].address,
  token,
  withdrawDelay,
  salt,
});
const channelCases = [
  ['dev-chain-basic', 'eip155:31337', cfg('payer', 'payer', 'receiver', 'receiverAuthorizer', TOKENS.devToken, 900, word(1))],
  ['same-config-on-base', 'eip155:8453', cfg('payer', 'payer', 'receiver', 'receiverAuthorizer', TOKENS.devToken, 900, word(1))],
  ['same-config-on-base-sepolia', 'eip155:84532', cfg('payer', 'payer', 'receiver', 'receiverAuthorizer', TOKENS.devToken, 900, word(1))],
  ['zero-payer-authorizer-eip1271', 'eip155:8453', cfg('payer', null, 'receiver', 'receiverAuthorizer', TOKENS.usdcBase, 900, word(0))],
  ['session-key-max-delay', 'eip155:8453', cfg('payer', 'sessionKey', 'receiver', 'receiverAuthorizer', TOKENS.usdcBase, 2592000, saltOf('session-key-max-delay'))],
  ['session-key-max-delay-other-salt', 'eip155:8453', cfg('payer', 'sessionKey', 'receiver', 'receiverAuthorizer', TOKENS.usdcBase, 2592000, saltOf('session-key-max-delay-2'))],
  ['other-parties-base-sepolia', 'eip155:84532', cfg('payer2', 'sessionKey2', 'receiver2', 'receiverAuthorizer2', TOKENS.usdcBaseSepolia, 86400, saltOf('other-parties'))],
  ['max-salt-max-delay', 'eip155:8453', cfg('payer3', 'payer3', 'receiver', 'receiverAuthorizer', TOKENS.usdcBase, 2592000, word(U256_MAX))],
  ['dev-chain-session-key', 'eip155:31337', cfg('payer', 'sessionKey', 'receiver2', 'receiverAuthorizer2', TOKENS.devToken, 900, saltOf('dev-chain-session-key'))],
  ['payer-is-receiver', 'eip155:84532', cfg('receiver', 'receiver', 'receiver', 'receiverAuthorizer', TOKENS.usdcBaseSepolia, 900, word(42))],
];
const channelIds = channelCases.map(([name, network, config]) => ({
  name,
  network,
  chainId: chainIdOf(network),
  config,
  channelId: bsClient.computeChannelId(config, network),
  source: '@x402/evm/batch-settlement/client computeChannelId',
}));
ok(new Set(channelIds.map((c) => c.channelId)).size === channelIds.length, 'channel ids are distinct');
const channel = Object.fromEntries(channelIds.map((c) => [c.name, c]));

// ---------------------------------------------------------------------------------------------------------------
// vouchers: signVoucher (client) + viem hashTypedData with the SDK's exported voucherTypes
const vouchers = [];
async function addVoucher(name, ch, maxClaimableAmount, signerRole, source = '@x402/evm/batch-settlement/client signVoucher') {
  const fields = await bsClient.signVoucher(acct[signerRole], ch.channelId, maxClaimableAmount.toString(), ch.network);
  const digest = voucherDigest(ch.chainId, ch.channelId, maxClaimableAmount);
  const recovered = await recoverVoucherSigner(ch.chainId, ch.channelId, maxClaimableAmount, fields.signature);
  ok(sameAddress(recovered, acct[signerRole].address), `voucher ${name} recovers to its signer`);
  vouchers.push({
    name,
    network: ch.network,
    chainId: ch.chainId,
    channelId: ch.channelId,
    maxClaimableAmount: maxClaimableAmount.toString(),
    digest,
    signer: acct[signerRole].address,
    signerKey: signerRole,
    signature: fields.signature,
    source,
  });
}
const voucherPlan = [
  ['dev-chain-basic', [0n, 1n, 1000n], 'payer'],
  ['same-config-on-base', [1234567n], 'payer'],
  ['zero-payer-authorizer-eip1271', [1n, 1000000n], 'payer'],
  ['session-key-max-delay', [0n, 5000n, U128_MAX], 'sessionKey'],
  ['other-parties-base-sepolia', [1n, 18446744073709551616n, U128_MAX], 'sessionKey2'],
  ['max-salt-max-delay', [999999999999n], 'payer3'],
  ['dev-chain-session-key', [2000n], 'sessionKey'],
];
for (const [chName, amounts, signer] of voucherPlan) {
  for (const a of amounts) await addVoucher(`${chName}/max=${a}`, channel[chName], a, signer);
}

// ---------------------------------------------------------------------------------------------------------------
// refunds and claim batches
const refunds = [];
const claimBatches = [];
function refundDigest(chainId, channelId, nonce, amount) {
  return viem.hashTypedData({
    domain: batchDomain(chainId),
    types: evm.refundTypes,
    primaryType: 'Refund',
    message: { channelId, nonce: BigInt(nonce), amount: BigInt(amount) },
  });
}
function claimBatchTyped(chainId, entries) {
  return {
    domain: batchDomain(chainId),
    types: evm.claimBatchTypes,
    primaryType: 'ClaimBatch',
    message: {
      claims: entries.map((e) => ({
        channelId: e.channelId,
        maxClaimableAmount: BigInt(e.maxClaimableAmount),
        totalClaimed: BigInt(e.totalClaimed),
      })),
    },
  };
}
async function addRefund(name, network, channelId, nonce, amount, signerRole, signature, source) {
  const chainId = chainIdOf(network);
  const typed = { domain: batchDomain(chainId), types: evm.refundTypes, primaryType: 'Refund', message: { channelId, nonce: BigInt(nonce), amount: BigInt(amount) } };
  const viemSig = await acct[signerRole].signTypedData(typed);
  if (signature === undefined) signature = viemSig;
  ok(signature === viemSig, `refund ${name}: SDK signature equals viem signTypedData over the SDK's refundTypes`);
  ok(sameAddress(await viem.recoverTypedDataAddress({ ...typed, signature }), acct[signerRole].address), `refund ${name} recovers`);
  refunds.push({
    name, network, chainId, channelId, nonce: nonce.toString(), amount: amount.toString(),
    digest: refundDigest(chainId, channelId, nonce, amount),
    signer: acct[signerRole].address, signerKey: signerRole, signature, source,
  });
}
async function addClaimBatch(name, network, entries, signerRole, signature, source) {
  const chainId = chainIdOf(network);
  const typed = claimBatchTyped(chainId, entries);
  const viemSig = await acct[signerRole].signTypedData(typed);
  if (signature === undefined) signature = viemSig;
  ok(signature === viemSig, `claim batch ${name}: SDK signature equals viem signTypedData over the SDK's claimBatchTypes`);
  ok(sameAddress(await viem.recoverTypedDataAddress({ ...typed, signature }), acct[signerRole].address), `claim batch ${name} recovers`);
  claimBatches.push({
    name, network, chainId,
    entries: entries.map((e) => ({ channelId: e.channelId, maxClaimableAmount: e.maxClaimableAmount.toString(), totalClaimed: e.totalClaimed.toString() })),
    digest: viem.hashTypedData(typed),
    signer: acct[signerRole].address, signerKey: signerRole, signature, source,
  });
}

const VIEM_REFUND = 'viem signTypedData with @x402/evm refundTypes (the way the internal signRefund signs)';
await addRefund('dev-chain-basic/nonce=0/amount=1', 'eip155:31337', channel['dev-chain-basic'].channelId, 0n, 1n, 'receiverAuthorizer', undefined, VIEM_REFUND);
await addRefund('session-key/nonce=7/amount=u128max', 'eip155:8453', channel['session-key-max-delay'].channelId, 7n, U128_MAX, 'receiverAuthorizer', undefined, VIEM_REFUND);
await addRefund('other-parties/nonce=u256max/amount=123', 'eip155:84532', channel['other-parties-base-sepolia'].channelId, U256_MAX, 123n, 'receiverAuthorizer2', undefined, VIEM_REFUND);
await addRefund('dev-chain-session-key/nonce=1/amount=0', 'eip155:31337', channel['dev-chain-session-key'].channelId, 1n, 0n, 'receiverAuthorizer2', undefined, VIEM_REFUND);

// The reference server's BatchSettlementChannelManager signs claim batches (submitClaim) and refunds
// (refundChannel) with the internal signClaimBatch / signRefund; capture them from its facilitator calls.
async function managerFor(network, token, receiverRole, authorizerRole, channels) {
  const facilitator = new StubFacilitator({ networks: [network], receiverAuthorizer: acct[authorizerRole].address, facilitatorAddress: acct.facilitator.address });
  const scheme = new bsServer.BatchSettlementEvmScheme(acct[receiverRole].address, { receiverAuthorizerSigner: acct[authorizerRole] });
  for (const c of channels) {
    const ch = c.ch;
    const sig = (await bsClient.signVoucher(acct[roleOf(ch.config.payerAuthorizer) ?? roleOf(ch.config.payer)], ch.channelId, c.signedMaxClaimable.toString(), network)).signature;
    await scheme.getStorage().updateChannel(ch.channelId, () => ({
      channelId: ch.channelId,
      channelConfig: ch.config,
      chargedCumulativeAmount: c.charged.toString(),
      signedMaxClaimable: c.signedMaxClaimable.toString(),
      signature: sig,
      balance: c.balance.toString(),
      totalClaimed: c.totalClaimed.toString(),
      withdrawRequestedAt: 0,
      refundNonce: c.refundNonce ?? 0,
      onchainSyncedAt: Date.now(),
      lastRequestTimestamp: Date.now(),
    }));
  }
  return { facilitator, scheme, manager: new bsServer.BatchSettlementChannelManager({ scheme, facilitator, receiver: acct[receiverRole].address, token, network }) };
}
// Five channels on Base with one receiver: configs differing by payer, authorizer and salt.
const baseClaimChannels = [];
for (let i = 0; i < 5; i++) {
  const payerRole = ['payer', 'payer2', 'payer3', 'payer', 'payer2'][i];
  const authRole = ['payer', 'sessionKey2', 'payer3', 'sessionKey', 'payer2'][i];
  const config = cfg(payerRole, authRole, 'receiver', 'receiverAuthorizer', TOKENS.usdcBase, 900, saltOf(`claim-batch-${i}`));
  const ch = { name: `claim-channel-${i}`, network: 'eip155:8453', chainId: 8453, config, channelId: bsClient.computeChannelId(config, 'eip155:8453') };
  baseClaimChannels.push({ ch, signedMaxClaimable: 5000n + 1000n * BigInt(i), charged: 4200n + 1000n * BigInt(i), totalClaimed: 1000n * BigInt(i), balance: 100000n });
}
const CLAIM_SOURCE = '@x402/evm/batch-settlement/server BatchSettlementChannelManager.claim (internal signClaimBatch)';
for (const n of [1, 2, 5]) {
  const { facilitator, manager } = await managerFor('eip155:8453', TOKENS.usdcBase, 'receiver', 'receiverAuthorizer', baseClaimChannels.slice(0, n));
  const results = await manager.claim({ maxClaimsPerBatch: 10 });
  ok(results.length === 1 && results[0].vouchers === n, `one claim batch of ${n}`);
  const sent = facilitator.settled.find((p) => p.payload.type === 'claim');
  const entries = sent.payload.claims.map((c) => ({
    channelId: bsClient.computeChannelId(c.voucher.channel, 8453),
    maxClaimableAmount: BigInt(c.voucher.maxClaimableAmount),
    totalClaimed: BigInt(c.totalClaimed),
  }));
  await addClaimBatch(`base/${n}-entries`, 'eip155:8453', entries, 'receiverAuthorizer', sent.payload.claimAuthorizerSignature, CLAIM_SOURCE);
}
{
  const ch = channel['other-parties-base-sepolia'];
  const ch2 = { ...channel['payer-is-receiver'] };
  const config2 = { ...ch2.config, receiver: acct.receiver2.address, receiverAuthorizer: acct.receiverAuthorizer2.address };
  const second = { name: 'sepolia-second', network: 'eip155:84532', chainId: 84532, config: config2, channelId: bsClient.computeChannelId(config2, 'eip155:84532') };
  const { facilitator, manager } = await managerFor('eip155:84532', TOKENS.usdcBaseSepolia, 'receiver2', 'receiverAuthorizer2', [
    { ch, signedMaxClaimable: U128_MAX, charged: U128_MAX - 1n, totalClaimed: 0n, balance: U128_MAX },
    { ch: second, signedMaxClaimable: 1n, charged: 1n, totalClaimed: 0n, balance: 1n },
  ]);
  await manager.claim({ maxClaimsPerBatch: 10 });
  const sent = facilitator.settled.find((p) => p.payload.type === 'claim');
  const entries = sent.payload.claims.map((c) => ({
    channelId: bsClient.computeChannelId(c.voucher.channel, 84532),
    maxClaimableAmount: BigInt(c.voucher.maxClaimableAmount),
    totalClaimed: BigInt(c.totalClaimed),
  }));
  await addClaimBatch('base-sepolia/2-entries-extremes', 'eip155:84532', entries, 'receiverAuthorizer2', sent.payload.claimAuthorizerSignature, CLAIM_SOURCE);
}
for (const [network, role] of [['eip155:8453', 'receiverAuthorizer'], ['eip155:31337', 'receiverAuthorizer']]) {
  // The SDK never signs an empty batch; the digest is still defined (keccak256 of no words).
  await addClaimBatch(`${network === 'eip155:8453' ? 'base' : 'dev-chain'}/empty`, network, [], role, undefined, 'viem hashTypedData / signTypedData with @x402/evm claimBatchTypes (the SDK never signs an empty batch)');
}
{
  // Channel-manager refunds: one with an outstanding claim (claim + refund), one fully claimed with nonce 3.
  const REFUND_SOURCE = '@x402/evm/batch-settlement/server BatchSettlementChannelManager.refund (internal signRefund / signClaimBatch)';
  const { facilitator, manager } = await managerFor('eip155:8453', TOKENS.usdcBase, 'receiver', 'receiverAuthorizer', [
    { ...baseClaimChannels[0], balance: 100000n, refundNonce: 0 },
    { ...baseClaimChannels[3], charged: 3000n, totalClaimed: 3000n, balance: 50000n, refundNonce: 3 },
  ]);
  await manager.refund();
  const sent = facilitator.settled.filter((p) => p.payload.type === 'refund');
  ok(sent.length === 2, 'two manager refunds');
  for (const p of sent) {
    const r = p.payload;
    await addRefund(`manager/nonce=${r.refundNonce}/amount=${r.amount}`, 'eip155:8453', r.voucher.channelId, BigInt(r.refundNonce), BigInt(r.amount), 'receiverAuthorizer', r.refundAuthorizerSignature, REFUND_SOURCE);
    if (r.claims.length > 0) {
      const entries = r.claims.map((c) => ({ channelId: bsClient.computeChannelId(c.voucher.channel, 8453), maxClaimableAmount: BigInt(c.voucher.maxClaimableAmount), totalClaimed: BigInt(c.totalClaimed) }));
      await addClaimBatch(`manager-refund/${entries.length}-entry`, 'eip155:8453', entries, 'receiverAuthorizer', r.claimAuthorizerSignature, REFUND_SOURCE);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// receiveWithAuthorization: createBatchSettlementEIP3009DepositPayload (client)
const receiveWithAuthorization = [];
async function addDeposit(name, ch, tokenName, tokenVersion, depositAmount, maxClaimable, payerRole, voucherRole) {
  const requirements = {
    scheme: 'batch-settlement',
    network: ch.network,
    amount: maxClaimable.toString(),
    asset: ch.config.token,
    payTo: ch.config.receiver,
    maxTimeoutSeconds: 300,
    extra: { receiverAuthorizer: ch.config.receiverAuthorizer, withdrawDelay: ch.config.withdrawDelay, name: tokenName, version: tokenVersion },
  };
  const result = await bsClient.createBatchSettlementEIP3009DepositPayload(
    acct[payerRole], 2, requirements, ch.config, depositAmount.toString(), maxClaimable.toString(), voucherRole === payerRole ? undefined : acct[voucherRole],
  );
  const p = result.payload;
  ok(p.voucher.channelId === ch.channelId, `deposit ${name} channel id`);
  const auth = p.deposit.authorization.erc3009Authorization;
  const tokenDomain = { name: tokenName, version: tokenVersion, chainId: ch.chainId, verifyingContract: viem.getAddress(ch.config.token) };
  const message = { from: acct[payerRole].address, to: ERC3009_COLLECTOR, value: p.deposit.amount, validAfter: auth.validAfter, validBefore: auth.validBefore, nonce: depositNonce(ch.channelId, auth.salt) };
  const digest = viem.hashTypedData({ domain: tokenDomain, types: receiveAuthorizationTypes, primaryType: 'ReceiveWithAuthorization', message: receiveAuthorizationMessage(message) });
  ok(sameAddress(await recoverReceiveAuthorization(tokenDomain, message, auth.signature), acct[payerRole].address), `deposit ${name} authorization recovers to the payer`);
  receiveWithAuthorization.push({
    name,
    network: ch.network,
    chainId: ch.chainId,
    token: { address: viem.getAddress(ch.config.token), name: tokenName, version: tokenVersion },
    channelId: ch.channelId,
    salt: auth.salt,
    depositNonce: message.nonce,
    from: message.from,
    to: message.to,
    value: p.deposit.amount,
    validAfter: auth.validAfter,
    validBefore: auth.validBefore,
    digest,
    signer: acct[payerRole].address,
    signerKey: payerRole,
    signature: auth.signature,
    source: '@x402/evm/batch-settlement/client createBatchSettlementEIP3009DepositPayload (salt and validBefore drawn by the SDK)',
  });
  vouchers.push({
    name: `deposit:${name}`,
    network: ch.network,
    chainId: ch.chainId,
    channelId: ch.channelId,
    maxClaimableAmount: p.voucher.maxClaimableAmount,
    digest: voucherDigest(ch.chainId, ch.channelId, p.voucher.maxClaimableAmount),
    signer: acct[voucherRole].address,
    signerKey: voucherRole,
    signature: p.voucher.signature,
    source: '@x402/evm/batch-settlement/client createBatchSettlementEIP3009DepositPayload (voucher part)',
  });
}
await addDeposit('dev-chain-basic', channel['dev-chain-basic'], 'USD Coin', '2', 10000n, 1000n, 'payer', 'payer');
await addDeposit('base-session-key', channel['session-key-max-delay'], 'USD Coin', '2', 1000000n, 1000n, 'payer', 'sessionKey');
await addDeposit('base-sepolia-usdc-name', channel['other-parties-base-sepolia'], 'USDC', '2', 5000000n, 250000n, 'payer2', 'sessionKey2');
await addDeposit('base-u128-max', channel['max-salt-max-delay'], 'USD Coin', '2', U128_MAX, U128_MAX, 'payer3', 'payer3');
await addDeposit('zero-payer-authorizer', channel['zero-payer-authorizer-eip1271'], 'USD Coin', '2', 7000n, 700n, 'payer', 'payer');

// ---------------------------------------------------------------------------------------------------------------
// headers: the reference client against the reference resource server
const FLOW = {
  network: 'eip155:8453',
  url: 'https://api.example.com/inference',
  amount: '1000',
  asset: TOKENS.usdcBase,
  payTo: acct.receiver.address,
  tokenName: 'USD Coin',
  tokenVersion: '2',
  withdrawDelay: 3600,
  maxTimeoutSeconds: 300,
  channelSalt: saltOf('paychan-vectors/header-flow-channel'),
};
const facilitator = new StubFacilitator({ networks: [FLOW.network], receiverAuthorizer: acct.receiverAuthorizer.address, facilitatorAddress: acct.facilitator.address });
const server = await referenceServer({
  facilitator,
  network: FLOW.network,
  payTo: FLOW.payTo,
  asset: FLOW.asset,
  amount: FLOW.amount,
  tokenName: FLOW.tokenName,
  tokenVersion: FLOW.tokenVersion,
  withdrawDelay: FLOW.withdrawDelay,
  maxTimeoutSeconds: FLOW.maxTimeoutSeconds,
  receiverAuthorizerSigner: acct.receiverAuthorizer,
  url: FLOW.url,
});
const clientStorage = new bsClient.InMemoryClientChannelStorage();
const clientScheme = new bsClient.BatchSettlementEvmScheme(acct.payer, { storage: clientStorage, voucherSigner: acct.sessionKey, salt: FLOW.channelSalt });
const x402 = new coreClient.x402Client().register(FLOW.network, clientScheme);
const httpClient = new coreClient.x402HTTPClient(x402);
const headers = {};
const decodeOf = {
  'PAYMENT-REQUIRED': coreHttp.decodePaymentRequiredHeader,
  'PAYMENT-SIGNATURE': coreHttp.decodePaymentSignatureHeader,
  'PAYMENT-RESPONSE': coreHttp.decodePaymentResponseHeader,
};
function record(name, headerName, value, expect, source) {
  ok(typeof value === 'string' && value.length > 0, `${name}: ${headerName} present`);
  headers[name] = { headerName, header: value, decoded: plain(decodeOf[headerName](value)), expect, source };
}

const CLIENT_SOURCE = 'reference client: x402HTTPClient(x402Client + @x402/evm batch-settlement client).createPaymentPayload, encodePaymentSignatureHeader';
const SERVER_SOURCE = 'reference server: x402HTTPResourceServer + @x402/evm batch-settlement server scheme (facilitator answers stubbed, see lib.mjs)';
const config = clientScheme.buildChannelConfig({ scheme: 'batch-settlement', network: FLOW.network, amount: FLOW.amount, asset: FLOW.asset, payTo: FLOW.payTo, maxTimeoutSeconds: FLOW.maxTimeoutSeconds, extra: { receiverAuthorizer: acct.receiverAuthorizer.address, withdrawDelay: FLOW.withdrawDelay } });
const flowChannelId = bsClient.computeChannelId(config, FLOW.network);

// 1. unpaid request → 402
const r0 = await server.request(undefined);
ok(r0.status === 402, 'unpaid request gets a 402');
const pr = httpClient.getPaymentRequiredResponse(headerGetter(r0.headers), r0.body);
const acc0 = pr.accepts[0];
record('paymentRequired', 'PAYMENT-REQUIRED', headerGetter(r0.headers)('PAYMENT-REQUIRED'), {
  error: pr.error ?? null,
  scheme: 'batch-settlement',
  network: FLOW.network,
  amount: FLOW.amount,
  asset: FLOW.asset,
  payTo: FLOW.payTo,
  maxTimeoutSeconds: FLOW.maxTimeoutSeconds,
  receiverAuthorizer: acct.receiverAuthorizer.address,
  withdrawDelay: FLOW.withdrawDelay,
  tokenName: FLOW.tokenName,
  tokenVersion: FLOW.tokenVersion,
  minDeposit: acc0.extra.minDeposit ?? null,
  resourceUrl: FLOW.url,
}, SERVER_SOURCE);

// 2. deposit
async function pay(name) {
  const payload = await httpClient.createPaymentPayload(pr);
  const sigHeaders = httpClient.encodePaymentSignatureHeader(payload);
  const res = await server.request(sigHeaders['PAYMENT-SIGNATURE']);
  const result = await httpClient.processPaymentResult(payload, headerGetter(res.headers), res.status);
  return { payload, sigHeader: sigHeaders['PAYMENT-SIGNATURE'], res, result, name };
}
const before1 = plain((await clientStorage.get(flowChannelId)) ?? {});
const d = await pay('deposit');
ok(d.payload.payload.type === 'deposit' && d.res.status === 200, `deposit accepted (${d.res.status})`);
const dAuth = d.payload.payload.deposit.authorization.erc3009Authorization;
record('depositPayment', 'PAYMENT-SIGNATURE', d.sigHeader, {
  payloadType: 'deposit',
  channelId: flowChannelId,
  payer: acct.payer.address,
  payerAuthorizer: acct.sessionKey.address,
  voucherSigner: acct.sessionKey.address,
  maxClaimableAmount: '1000',
  requestAmount: FLOW.amount,
  chargedBefore: before1.chargedCumulativeAmount ?? '0',
  depositAmount: d.payload.payload.deposit.amount,
  erc3009: {
    salt: dAuth.salt,
    validAfter: dAuth.validAfter,
    validBefore: dAuth.validBefore,
    depositNonce: depositNonce(flowChannelId, dAuth.salt),
    to: ERC3009_COLLECTOR,
    signer: acct.payer.address,
  },
}, CLIENT_SOURCE);
const depositAmount = d.payload.payload.deposit.amount;
record('depositResponse', 'PAYMENT-RESPONSE', headerGetter(d.res.headers)('PAYMENT-RESPONSE'), {
  success: true,
  payer: acct.payer.address,
  transaction: d.result.settleResponse.transaction,
  amount: depositAmount,
  chargedAmount: FLOW.amount,
  channelId: flowChannelId,
  chargedCumulativeAmount: '1000',
  balance: depositAmount,
  totalClaimed: '0',
  refundNonce: '0',
}, SERVER_SOURCE);
ok((await clientStorage.get(flowChannelId)).chargedCumulativeAmount === '1000', 'client adopted the deposit response');

// 3. two vouchers
const v1 = await pay('voucher-1');
ok(v1.payload.payload.type === 'voucher' && v1.res.status === 200, `voucher 1 accepted (${v1.res.status})`);
record('voucherPayment', 'PAYMENT-SIGNATURE', v1.sigHeader, {
  payloadType: 'voucher',
  channelId: flowChannelId,
  payer: acct.payer.address,
  payerAuthorizer: acct.sessionKey.address,
  voucherSigner: acct.sessionKey.address,
  maxClaimableAmount: '2000',
  requestAmount: FLOW.amount,
  chargedBefore: '1000',
  balance: depositAmount,
  totalClaimed: '0',
}, CLIENT_SOURCE);
record('voucherResponse', 'PAYMENT-RESPONSE', headerGetter(v1.res.headers)('PAYMENT-RESPONSE'), {
  success: true,
  payer: acct.payer.address,
  transaction: '',
  amount: '',
  chargedAmount: FLOW.amount,
  channelId: flowChannelId,
  chargedCumulativeAmount: '2000',
  balance: depositAmount,
  totalClaimed: '0',
  refundNonce: '0',
}, SERVER_SOURCE);
const v2 = await pay('voucher-2');
ok(v2.payload.payload.type === 'voucher' && v2.payload.payload.voucher.maxClaimableAmount === '3000' && v2.res.status === 200, 'voucher 2 accepted');

// 4. a stale voucher (voucher 1 replayed) → corrective 402 carrying the server's state and our last voucher
const r4 = await server.request(v1.sigHeader);
ok(r4.status === 402, 'replayed voucher gets a 402');
const corrective = coreHttp.decodePaymentRequiredHeader(headerGetter(r4.headers)('PAYMENT-REQUIRED'));
ok(corrective.error === 'invalid_batch_settlement_evm_cumulative_amount_mismatch', `corrective error (${corrective.error})`);
record('corrective402', 'PAYMENT-REQUIRED', headerGetter(r4.headers)('PAYMENT-REQUIRED'), {
  error: 'invalid_batch_settlement_evm_cumulative_amount_mismatch',
  channelId: flowChannelId,
  balance: depositAmount,
  totalClaimed: '0',
  refundNonce: '0',
  withdrawRequestedAt: 0,
  chargedCumulativeAmount: '3000',
  signedMaxClaimable: '3000',
  voucherSignature: v2.payload.payload.voucher.signature,
  voucherSigner: acct.sessionKey.address,
  payer: acct.payer.address,
  salt: FLOW.channelSalt,
  requestAmount: FLOW.amount,
}, SERVER_SOURCE);

// 5. refunds through the client's own refund flow (scheme.refund → probe 402, build, send): partial, then full
const PARTIAL = '2000';
const partial = await clientScheme.refund(FLOW.url, { amount: PARTIAL, fetch: server.fetch });
ok(partial.success, 'partial refund settled');
const ex1 = server.fetch.exchanges.find((e) => e.paymentSignature && e.status === 200);
record('refundPayment', 'PAYMENT-SIGNATURE', ex1.paymentSignature, {
  payloadType: 'refund',
  channelId: flowChannelId,
  payer: acct.payer.address,
  payerAuthorizer: acct.sessionKey.address,
  voucherSigner: acct.sessionKey.address,
  maxClaimableAmount: '3000',
  amount: PARTIAL,
  chargedBefore: '3000',
}, 'reference client: BatchSettlementEvmScheme.refund (refundChannel), header encoded by x402HTTPClient.encodePaymentSignatureHeader');
const balanceAfterPartial = (BigInt(depositAmount) - BigInt(PARTIAL)).toString();
record('refundResponse', 'PAYMENT-RESPONSE', headerGetter(ex1.headers)('PAYMENT-RESPONSE'), {
  success: true,
  payer: acct.payer.address,
  transaction: partial.transaction,
  amount: PARTIAL,
  chargedAmount: null,
  channelId: flowChannelId,
  chargedCumulativeAmount: '3000',
  balance: balanceAfterPartial,
  totalClaimed: '3000',
  refundNonce: '1',
}, SERVER_SOURCE);
server.fetch.exchanges.length = 0;
const full = await clientScheme.refund(FLOW.url, { fetch: server.fetch });
ok(full.success, 'full refund settled');
const ex2 = server.fetch.exchanges.find((e) => e.paymentSignature && e.status === 200);
const fullRefunded = (BigInt(balanceAfterPartial) - 3000n).toString();
record('refundFullPayment', 'PAYMENT-SIGNATURE', ex2.paymentSignature, {
  payloadType: 'refund',
  channelId: flowChannelId,
  payer: acct.payer.address,
  payerAuthorizer: acct.sessionKey.address,
  voucherSigner: acct.sessionKey.address,
  maxClaimableAmount: '3000',
  amount: null,
  chargedBefore: '3000',
}, 'reference client: BatchSettlementEvmScheme.refund (refundChannel), header encoded by x402HTTPClient.encodePaymentSignatureHeader');
record('refundFullResponse', 'PAYMENT-RESPONSE', headerGetter(ex2.headers)('PAYMENT-RESPONSE'), {
  success: true,
  payer: acct.payer.address,
  transaction: full.transaction,
  amount: fullRefunded,
  chargedAmount: null,
  channelId: flowChannelId,
  chargedCumulativeAmount: '3000',
  balance: '3000',
  totalClaimed: '3000',
  refundNonce: '2',
}, SERVER_SOURCE);

// The server's refund enrichment signed a Refund and a one-entry ClaimBatch with the internal signRefund /
// signClaimBatch (handleEnrichSettlementPayload); keep those as vectors too.
const ENRICH_SOURCE = '@x402/evm/batch-settlement/server enrichSettlementPayload (internal signRefund / signClaimBatch)';
for (const p of facilitator.settled.filter((x) => x.payload.type === 'refund')) {
  const r = p.payload;
  await addRefund(`server-refund/nonce=${r.refundNonce}/amount=${r.amount}`, FLOW.network, r.voucher.channelId, BigInt(r.refundNonce), BigInt(r.amount), 'receiverAuthorizer', r.refundAuthorizerSignature, ENRICH_SOURCE);
  const entries = r.claims.map((c) => ({ channelId: bsClient.computeChannelId(c.voucher.channel, FLOW.network), maxClaimableAmount: BigInt(c.voucher.maxClaimableAmount), totalClaimed: BigInt(c.totalClaimed) }));
  await addClaimBatch(`server-refund/nonce=${r.refundNonce}/claim`, FLOW.network, entries, 'receiverAuthorizer', r.claimAuthorizerSignature, ENRICH_SOURCE);
}
for (const [name, h] of Object.entries(headers)) {
  if (h.headerName !== 'PAYMENT-SIGNATURE') continue;
  const p = h.decoded.payload;
  vouchers.push({
    name: `header:${name}`,
    network: FLOW.network,
    chainId: chainIdOf(FLOW.network),
    channelId: p.voucher.channelId,
    maxClaimableAmount: p.voucher.maxClaimableAmount,
    digest: voucherDigest(chainIdOf(FLOW.network), p.voucher.channelId, p.voucher.maxClaimableAmount),
    signer: acct.sessionKey.address,
    signerKey: 'sessionKey',
    signature: p.voucher.signature,
    source: CLIENT_SOURCE,
  });
}
{
  const p = headers.depositPayment.decoded.payload;
  const auth = p.deposit.authorization.erc3009Authorization;
  const tokenDomain = { name: FLOW.tokenName, version: FLOW.tokenVersion, chainId: chainIdOf(FLOW.network), verifyingContract: viem.getAddress(FLOW.asset) };
  const message = { from: acct.payer.address, to: ERC3009_COLLECTOR, value: p.deposit.amount, validAfter: auth.validAfter, validBefore: auth.validBefore, nonce: depositNonce(p.voucher.channelId, auth.salt) };
  ok(sameAddress(await recoverReceiveAuthorization(tokenDomain, message, auth.signature), acct.payer.address), 'header deposit authorization recovers');
  receiveWithAuthorization.push({
    name: 'header:depositPayment',
    network: FLOW.network,
    chainId: chainIdOf(FLOW.network),
    token: { address: viem.getAddress(FLOW.asset), name: FLOW.tokenName, version: FLOW.tokenVersion },
    channelId: p.voucher.channelId,
    salt: auth.salt,
    depositNonce: message.nonce,
    from: message.from,
    to: message.to,
    value: p.deposit.amount,
    validAfter: auth.validAfter,
    validBefore: auth.validBefore,
    digest: viem.hashTypedData({ domain: tokenDomain, types: receiveAuthorizationTypes, primaryType: 'ReceiveWithAuthorization', message: receiveAuthorizationMessage(message) }),
    signer: acct.payer.address,
    signerKey: 'payer',
    signature: auth.signature,
    source: CLIENT_SOURCE,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// errorCodes: every invalid_batch_settlement_evm_* string in the installed @x402/evm dist bundles (.js/.mjs).
// errorCodesSourceOnly: those that appear only in the bundled TypeScript sources (source maps): defined in the
// scheme's errors.ts but tree-shaken out, so never emitted. otherErrorCodes: the non-prefixed codes the
// batch-settlement bundles can also put on the wire (shared Permit2 / gas-sponsoring / settlement code).
const distRoot = path.join(repoRoot, 'node_modules', '@x402', 'evm', 'dist');
const CODE_RE = /invalid_batch_settlement_evm_[a-z0-9_]*[a-z0-9]/g;
const inBundles = new Set();
const inMaps = new Set();
const otherCodes = new Set();
const walk = (dir) => {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      walk(p);
      continue;
    }
    const isBundle = /\.(c|m)?js$/.test(e.name);
    const isMap = /\.(c|m)?js\.map$/.test(e.name);
    if (!isBundle && !isMap) continue;
    const text = fs.readFileSync(p, 'utf8');
    for (const m of text.matchAll(CODE_RE)) (isBundle ? inBundles : inMaps).add(m[0]);
    if (isBundle && p.includes(`${path.sep}batch-settlement${path.sep}`)) {
      for (const m of text.matchAll(/var Err[A-Za-z0-9]* = "([a-z0-9_]+)"/g)) if (!m[1].startsWith('invalid_batch_settlement_evm_')) otherCodes.add(m[1]);
    }
  }
};
walk(distRoot);
const errorCodes = [...inBundles].sort();
const errorCodesSourceOnly = [...inMaps].filter((c) => !inBundles.has(c)).sort();
const otherErrorCodes = [...otherCodes].sort();

// ---------------------------------------------------------------------------------------------------------------
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}
const out = sortKeys(plain({
  about: {
    generator: 'tests/vectors/generate.mjs',
    readme: 'tests/vectors/README.md',
    sdk: { '@x402/evm': packageVersion('@x402/evm'), '@x402/core': packageVersion('@x402/core'), viem: packageVersion('viem') },
    deterministic: !LIVE,
    fixedClockMs: LIVE ? null : FIXED_NOW_MS,
    entropySeed: LIVE ? null : ENTROPY_SEED,
    escrow: ESCROW,
    erc3009Collector: ERC3009_COLLECTOR,
    batchDomain: { name: evm.BATCH_SETTLEMENT_DOMAIN.name, version: evm.BATCH_SETTLEMENT_DOMAIN.version },
    headerFlow: { ...FLOW, payer: acct.payer.address, voucherSigner: acct.sessionKey.address, receiverAuthorizer: acct.receiverAuthorizer.address, channelId: flowChannelId, channelConfig: config },
  },
  keys,
  channelIds,
  vouchers,
  refunds,
  claimBatches,
  receiveWithAuthorization,
  headers,
  errorCodes,
  errorCodesSourceOnly,
  otherErrorCodes,
}));
const text = `${JSON.stringify(out, null, 2)}\n`;
const summary = `channelIds ${channelIds.length}, vouchers ${vouchers.length}, refunds ${refunds.length}, claimBatches ${claimBatches.length}, receiveWithAuthorization ${receiveWithAuthorization.length}, headers ${Object.keys(headers).length}, errorCodes ${errorCodes.length} (+${errorCodesSourceOnly.length} source-only, ${otherErrorCodes.length} other)`;
if (CHECK) {
  const committed = fs.existsSync(OUT) ? fs.readFileSync(OUT, 'utf8') : '';
  if (committed !== text) {
    console.error(`generate --check: ${path.relative(repoRoot, OUT)} differs from a fresh generation (${summary})`);
    process.exit(1);
  }
  console.log(`generate --check: ${path.relative(repoRoot, OUT)} is reproducible (${summary})`);
} else {
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, text);
  console.log(`wrote ${path.relative(repoRoot, OUT)}: ${summary}`);
}
