#!/usr/bin/env node
// paychan interop: the whole x402 reference stack (@x402/fetch client, @x402/express server with the
// batch-settlement server scheme, @x402/core facilitator with the batch-settlement facilitator scheme) paying
// for a mock inference endpoint over real HTTP, against paychan's contracts on a dev chain.
//
// Configuration comes only from the environment (keys are never taken from argv and never printed); see
// tests/interop/README.md. Diagnostics go to stderr; stdout carries exactly one JSON line on success.
// Exit status is non-zero, with a message on stderr, on any failure.
//
// Usage: PAYCHAN_RPC_URL=… PAYCHAN_CHAIN_ID=… … node tests/interop/reference-stack.mjs
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import express from 'express';
import {
  createPublicClient,
  createWalletClient,
  decodeEventLog,
  defineChain,
  getAddress,
  http,
  nonceManager,
  parseAbi,
  publicActions,
} from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { x402Facilitator } from '@x402/core/facilitator';
import { HTTPFacilitatorClient } from '@x402/core/server';
import { decodePaymentRequiredHeader, decodePaymentResponseHeader } from '@x402/core/http';
import { paymentMiddleware, x402ResourceServer } from '@x402/express';
import { wrapFetchWithPayment, x402Client } from '@x402/fetch';
import { toClientEvmSigner, toFacilitatorEvmSigner } from '@x402/evm';
import { BatchSettlementEvmScheme as ClientScheme, computeChannelId } from '@x402/evm/batch-settlement/client';
import { BatchSettlementEvmScheme as ServerScheme } from '@x402/evm/batch-settlement/server';
import { BatchSettlementEvmScheme as FacilitatorScheme } from '@x402/evm/batch-settlement/facilitator';

// Canonical batch-settlement escrow (the reference SDK hard-codes it; the dev chain puts our escrow there).
const ESCROW = '0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003';
const ZERO_ADDRESS = '0x0000000000000000000000000000000000000000';
const WITHDRAW_DELAY = 900; // the minimum the escrow accepts; the reference server's default
const RPC_TIMEOUT_MS = 15_000;
const TX_TIMEOUT_MS = 30_000;
const HTTP_TIMEOUT_MS = 45_000;
const OVERALL_TIMEOUT_MS = Number(process.env.PAYCHAN_TIMEOUT_MS ?? 100_000);

// The escrow interface this script reads on its own (independently of the SDK): public x402 batch-settlement ABI.
const CHANNEL_CONFIG =
  '(address payer, address payerAuthorizer, address receiver, address receiverAuthorizer, address token, uint40 withdrawDelay, bytes32 salt)';
const escrowAbi = parseAbi([
  `function getChannelId(${CHANNEL_CONFIG} config) view returns (bytes32)`,
  'function channels(bytes32 channelId) view returns (uint128 balance, uint128 totalClaimed)',
  'function refundNonce(bytes32 channelId) view returns (uint256)',
  'function receivers(address receiver, address token) view returns (uint128 totalClaimed, uint128 totalSettled)',
  'event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance)',
  'event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed)',
  'event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount)',
  'event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount)',
]);
const tokenAbi = parseAbi(['function balanceOf(address) view returns (uint256)']);

// ---------------------------------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------------------------------

const t0 = Date.now();
const log = (msg) => console.error(`[reference-stack +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);

class Failure extends Error {}
function check(cond, msg) {
  if (!cond) throw new Failure(msg);
  log(`ok  ${msg}`);
}

/** Bounds any promise: rejects with `what` after `ms`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** fetch with a deadline on every call (the reference client and refund flow call it several times). */
const timedFetch = (input, init = {}) => fetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(HTTP_TIMEOUT_MS) });

/** JSON.stringify that writes bigints as decimal strings. */
const toJson = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? x.toString() : x));

function env(name, { required = true, pattern, fallback } = {}) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback !== undefined) return fallback;
    if (required) throw new Failure(`missing environment variable ${name}`);
    return undefined;
  }
  // Never echo the value: some of these are private keys.
  if (pattern && !pattern.test(v)) throw new Failure(`environment variable ${name} is malformed`);
  return v;
}

const HEX_KEY = /^0x[0-9a-fA-F]{64}$/;
const HEX_ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const UINT = /^[0-9]+$/;

function readConfig() {
  const facilitatorUrl = env('PAYCHAN_FACILITATOR_URL', { required: false, pattern: /^https?:\/\/\S+$/ });
  const cfg = {
    rpcUrl: env('PAYCHAN_RPC_URL', { pattern: /^https?:\/\/\S+$/ }),
    chainId: Number(env('PAYCHAN_CHAIN_ID', { pattern: UINT })),
    token: getAddress(env('PAYCHAN_TOKEN', { pattern: HEX_ADDRESS })),
    tokenName: env('PAYCHAN_TOKEN_NAME'),
    tokenVersion: env('PAYCHAN_TOKEN_VERSION'),
    payerKey: env('PAYCHAN_PAYER_KEY', { pattern: HEX_KEY }),
    receiver: getAddress(env('PAYCHAN_RECEIVER_ADDRESS', { pattern: HEX_ADDRESS })),
    receiverAuthorizerKey: env('PAYCHAN_RECEIVER_AUTHORIZER_KEY', { pattern: HEX_KEY }),
    // Only the in-process reference facilitator needs the relayer key; an external one signs its own txs.
    relayerKey: env('PAYCHAN_RELAYER_KEY', { required: !facilitatorUrl, pattern: HEX_KEY }),
    requests: Number(env('PAYCHAN_REQUESTS', { pattern: UINT, fallback: '5' })),
    price: BigInt(env('PAYCHAN_PRICE', { pattern: UINT, fallback: '1000' })),
    facilitatorUrl,
    // The bearer token an external facilitator wants on /verify and /settle (paychan's does), read
    // from a file so it never sits in the environment or argv.
    facilitatorTokenFile: env('PAYCHAN_FACILITATOR_TOKEN_FILE', { required: false }),
    // Serve the in-process reference facilitator over HTTP and reach it through HTTPFacilitatorClient.
    facilitatorOverHttp: env('PAYCHAN_FACILITATOR_HTTP', { required: false, fallback: '0' }) === '1',
  };
  if (!Number.isSafeInteger(cfg.chainId) || cfg.chainId <= 0) throw new Failure('PAYCHAN_CHAIN_ID must be a positive integer');
  if (!Number.isSafeInteger(cfg.requests) || cfg.requests < 1 || cfg.requests > 1000) {
    throw new Failure('PAYCHAN_REQUESTS must be within 1..1000');
  }
  if (cfg.price <= 0n) throw new Failure('PAYCHAN_PRICE must be positive');
  return cfg;
}

/** Listens on 127.0.0.1, port 0; resolves with the http.Server and its base URL. */
function listen(app) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const server = app.listen(0, '127.0.0.1', (err) => {
        if (err) return reject(err);
        const { port } = server.address();
        resolve({ server, url: `http://127.0.0.1:${port}` });
      });
      server.on('error', reject);
    }),
    5_000,
    'http listen',
  );
}

function closeServer(server) {
  if (!server) return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections?.();
    }),
    5_000,
    'http close',
  ).catch((e) => log(`warning: ${e.message}`));
}

// ---------------------------------------------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------------------------------------------

const servers = [];

async function main() {
  const cfg = readConfig();
  const network = `eip155:${cfg.chainId}`;
  const chain = defineChain({
    id: cfg.chainId,
    name: 'paychan dev chain',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [cfg.rpcUrl] } },
  });
  const transport = http(cfg.rpcUrl, { timeout: RPC_TIMEOUT_MS, retryCount: 1 });
  const pub = createPublicClient({ chain, transport });
  const read = (address, abi, functionName, args = []) =>
    withTimeout(pub.readContract({ address, abi, functionName, args }), RPC_TIMEOUT_MS, `${functionName} read`);
  const receiptOf = async (hash, what) => {
    const r = await withTimeout(pub.waitForTransactionReceipt({ hash, timeout: TX_TIMEOUT_MS }), TX_TIMEOUT_MS + 1_000, `${what} receipt`);
    if (r.status !== 'success') throw new Failure(`${what} transaction ${hash} reverted on chain`);
    return r;
  };
  const eventsOf = (receipt, eventName) =>
    receipt.logs
      .filter((l) => l.address.toLowerCase() === ESCROW.toLowerCase())
      .map((l) => {
        try {
          return decodeEventLog({ abi: escrowAbi, data: l.data, topics: l.topics });
        } catch {
          return null;
        }
      })
      .filter((e) => e && e.eventName === eventName)
      .map((e) => e.args);

  const gotChainId = await withTimeout(pub.getChainId(), RPC_TIMEOUT_MS, 'eth_chainId');
  check(gotChainId === cfg.chainId, `RPC answers for chain ${cfg.chainId}`);
  const escrowCode = await withTimeout(pub.getCode({ address: ESCROW }), RPC_TIMEOUT_MS, 'escrow code');
  check(escrowCode && escrowCode !== '0x', `escrow deployed at the canonical address ${ESCROW}`);

  const payer = privateKeyToAccount(cfg.payerKey);
  const receiverAuthorizer = privateKeyToAccount(cfg.receiverAuthorizerKey);
  log(`payer ${payer.address}, receiver ${cfg.receiver}, receiverAuthorizer ${receiverAuthorizer.address}, token ${cfg.token}`);

  // --- (a) the facilitator ------------------------------------------------------------------------------------
  let facilitatorClient;
  let facilitatorKind;
  if (cfg.facilitatorUrl) {
    const token = cfg.facilitatorTokenFile ? readFileSync(cfg.facilitatorTokenFile, 'utf8').trim() : undefined;
    const createAuthHeaders = token
      ? async () => {
          const headers = { Authorization: `Bearer ${token}` };
          return { verify: headers, settle: headers, supported: {} };
        }
      : undefined;
    facilitatorClient = new HTTPFacilitatorClient({ url: cfg.facilitatorUrl, timeoutMs: TX_TIMEOUT_MS + 15_000, createAuthHeaders });
    facilitatorKind = `external facilitator at ${cfg.facilitatorUrl}`;
  } else {
    const relayer = privateKeyToAccount(cfg.relayerKey, { nonceManager });
    const wallet = createWalletClient({ account: relayer, chain, transport }).extend(publicActions);
    const signer = toFacilitatorEvmSigner(
      {
        address: relayer.address,
        getCode: (args) => wallet.getCode(args),
        readContract: (args) => wallet.readContract({ ...args, args: args.args ?? [] }),
        verifyTypedData: (args) => wallet.verifyTypedData(args),
        writeContract: (args) => wallet.writeContract(args),
        sendTransaction: (args) => wallet.sendTransaction(args),
        waitForTransactionReceipt: (args) => wallet.waitForTransactionReceipt(args),
      },
      { confirmationTimeoutMs: TX_TIMEOUT_MS },
    );
    // No authorizer signer: the resource server holds the receiver-authorizer key and signs claims/refunds.
    const facilitator = new x402Facilitator().register(network, new FacilitatorScheme(signer));
    if (cfg.facilitatorOverHttp) {
      const url = await serveFacilitator(facilitator);
      facilitatorClient = new HTTPFacilitatorClient({ url, timeoutMs: TX_TIMEOUT_MS + 15_000 });
      facilitatorKind = `reference facilitator served over HTTP at ${url} (relayer ${relayer.address})`;
    } else {
      facilitatorClient = {
        verify: (payload, requirements) => facilitator.verify(payload, requirements),
        settle: (payload, requirements) => facilitator.settle(payload, requirements),
        getSupported: async () => facilitator.getSupported(),
      };
      facilitatorKind = `in-process reference facilitator (relayer ${relayer.address})`;
    }
  }
  log(`facilitator: ${facilitatorKind}`);
  facilitatorClient = withFailureLog(facilitatorClient);

  // --- (b) the resource server ----------------------------------------------------------------------------------
  const serverScheme = new ServerScheme(cfg.receiver, {
    receiverAuthorizerSigner: receiverAuthorizer,
    withdrawDelay: WITHDRAW_DELAY,
  });
  const resourceServer = new x402ResourceServer(facilitatorClient).register(network, serverScheme);
  // Deposit hint: enough for every request twice over, so a refund remains at the end.
  const minDeposit = cfg.price * BigInt(cfg.requests) * 2n;
  const routes = {
    'GET /infer': {
      accepts: {
        scheme: 'batch-settlement',
        network,
        payTo: cfg.receiver,
        price: {
          amount: cfg.price.toString(),
          asset: cfg.token,
          extra: { name: cfg.tokenName, version: cfg.tokenVersion, minDeposit: minDeposit.toString() },
        },
        maxTimeoutSeconds: 60,
      },
      description: 'mock inference',
      mimeType: 'application/json',
    },
  };
  let upstreamCalls = 0;
  const app = express();
  app.use(paymentMiddleware(routes, resourceServer));
  app.get('/infer', (req, res) => {
    upstreamCalls += 1;
    res.json({ model: 'mock-llm', output: `completion #${upstreamCalls}`, usage: { prompt_tokens: 3, completion_tokens: 5 } });
  });
  const { server, url: base } = await listen(app);
  servers.push(server);
  const url = `${base}/infer`;
  log(`resource server at ${url}`);

  // An unpaid request is a 402 with the scheme's requirements (this also proves the server initialized).
  const unpaid = await timedFetch(url);
  const prHeader = unpaid.headers.get('PAYMENT-REQUIRED');
  if (unpaid.status !== 402 || !prHeader) {
    throw new Failure(`unpaid request: expected 402 with PAYMENT-REQUIRED, got ${unpaid.status}: ${(await unpaid.text()).slice(0, 500)}`);
  }
  const paymentRequired = decodePaymentRequiredHeader(prHeader);
  const accept = paymentRequired.accepts.find((a) => a.scheme === 'batch-settlement');
  check(paymentRequired.x402Version === 2 && accept, 'unpaid request → 402, x402 v2, batch-settlement offered');
  check(
    accept.network === network &&
      accept.amount === cfg.price.toString() &&
      getAddress(accept.asset) === cfg.token &&
      getAddress(accept.payTo) === cfg.receiver &&
      getAddress(accept.extra.receiverAuthorizer) === receiverAuthorizer.address &&
      accept.extra.withdrawDelay === WITHDRAW_DELAY &&
      accept.extra.name === cfg.tokenName &&
      accept.extra.version === cfg.tokenVersion,
    `requirements: ${accept.amount} of ${accept.asset} on ${accept.network} to ${accept.payTo}, receiverAuthorizer and token domain set`,
  );

  // --- (c) the reference client: N paid requests -----------------------------------------------------------------
  // A fresh salt per run: re-running against the same chain opens a new channel instead of resuming an old one.
  const salt = `0x${randomBytes(32).toString('hex')}`;
  const clientScheme = new ClientScheme(toClientEvmSigner(payer, pub), {
    salt,
    depositPolicy: { depositMultiplier: Math.max(3, cfg.requests * 2) },
  });
  const client = new x402Client()
    .register(network, clientScheme)
    // Our dev token is not one of the SDK's default assets: opt it in, capped at the route price per payment.
    .setSpendControls({ allowedAssets: [{ network, asset: cfg.token, maxAmountPerPayment: cfg.price.toString() }] });
  const created = [];
  client.onAfterPaymentCreation(async (ctx) => {
    created.push(ctx.paymentPayload);
  });
  const payFetch = wrapFetchWithPayment(timedFetch, client);

  const responses = [];
  let charged = 0n;
  for (let i = 0; i < cfg.requests; i++) {
    const before = created.length;
    const res = await withTimeout(payFetch(url), HTTP_TIMEOUT_MS * 2, `paid request ${i + 1}`);
    const body = await withTimeout(res.text(), HTTP_TIMEOUT_MS, `paid request ${i + 1} body`);
    if (res.status !== 200) {
      const pr = res.headers.get('PAYMENT-REQUIRED');
      const error = pr ? `error ${toJson(decodePaymentRequiredHeader(pr).error ?? null)}, ` : '';
      throw new Failure(`paid request ${i + 1}: expected 200, got ${res.status}: ${error}body ${body.slice(0, 800)}`);
    }
    const header = res.headers.get('PAYMENT-RESPONSE');
    if (!header) throw new Failure(`paid request ${i + 1}: 200 without a PAYMENT-RESPONSE header`);
    const settle = decodePaymentResponseHeader(header);
    const payloads = created.slice(before);
    if (payloads.length !== 1) throw new Failure(`paid request ${i + 1}: the client signed ${payloads.length} payloads (expected 1: no corrective retry)`);
    const type = payloads[0].payload.type;
    const expectedType = i === 0 ? 'deposit' : 'voucher';
    if (type !== expectedType) throw new Failure(`paid request ${i + 1}: client sent a ${type} payload, expected ${expectedType}`);
    if (!settle.success) throw new Failure(`paid request ${i + 1}: PAYMENT-RESPONSE not successful: ${toJson(settle)}`);
    if (settle.network !== network) throw new Failure(`paid request ${i + 1}: PAYMENT-RESPONSE network ${settle.network}`);
    if (!settle.payer || getAddress(settle.payer) !== payer.address) throw new Failure(`paid request ${i + 1}: PAYMENT-RESPONSE payer ${settle.payer}`);
    const chargedAmount = settle.extra?.chargedAmount;
    if (chargedAmount !== cfg.price.toString()) throw new Failure(`paid request ${i + 1}: extra.chargedAmount ${chargedAmount}, expected ${cfg.price}`);
    const cumulative = settle.extra?.channelState?.chargedCumulativeAmount;
    if (cumulative !== (cfg.price * BigInt(i + 1)).toString()) {
      throw new Failure(`paid request ${i + 1}: channelState.chargedCumulativeAmount ${cumulative}, expected ${cfg.price * BigInt(i + 1)}`);
    }
    if (i === 0) {
      if (!/^0x[0-9a-fA-F]{64}$/.test(settle.transaction ?? '')) throw new Failure(`deposit: PAYMENT-RESPONSE transaction ${settle.transaction}`);
    } else if (settle.transaction !== '') {
      throw new Failure(`voucher ${i + 1}: expected an empty transaction, got ${settle.transaction}`);
    }
    const json = JSON.parse(body);
    if (json.model !== 'mock-llm') throw new Failure(`paid request ${i + 1}: unexpected body ${body.slice(0, 200)}`);
    charged += BigInt(chargedAmount);
    responses.push({ type, settle, payload: payloads[0] });
    log(`ok  request ${i + 1}: 200, ${type}, charged ${chargedAmount}, cumulative ${cumulative}${settle.transaction ? `, tx ${settle.transaction}` : ''}`);
  }
  check(upstreamCalls === cfg.requests, `upstream handler ran exactly ${cfg.requests} times`);

  const depositPayload = responses[0].payload.payload;
  const channelConfig = depositPayload.channelConfig;
  const channelId = depositPayload.voucher.channelId;
  check(responses.every((r) => r.payload.payload.voucher.channelId === channelId), 'every payment used one channel');
  const depositTx = responses[0].settle.transaction;
  const depositReceipt = await receiptOf(depositTx, 'deposit');
  const [deposited] = eventsOf(depositReceipt, 'Deposited');
  check(deposited && deposited.channelId.toLowerCase() === channelId.toLowerCase(), `deposit tx ${depositTx} emitted Deposited for the channel`);
  const depositAmount = deposited.amount;
  check(depositAmount.toString() === depositPayload.deposit.amount, `deposited ${depositAmount} (as signed by the client)`);
  check(depositAmount >= charged, `deposit ${depositAmount} covers the ${charged} charged`);
  check(getAddress(channelConfig.payerAuthorizer) !== ZERO_ADDRESS, 'vouchers ride the ECDSA fast path (payerAuthorizer set)');

  // --- (f) channel id: the SDK's computeChannelId vs. our escrow's getChannelId -------------------------------
  const variants = [
    ['channel in use', channelConfig],
    ['different salt', { ...channelConfig, salt: `0x${randomBytes(32).toString('hex')}` }],
    ['different withdrawDelay', { ...channelConfig, withdrawDelay: 86_400 }],
  ];
  const seen = new Set();
  for (const [label, config] of variants) {
    const sdk = computeChannelId(config, network);
    const onchain = await read(ESCROW, escrowAbi, 'getChannelId', [{ ...config, withdrawDelay: Number(config.withdrawDelay) }]);
    check(sdk.toLowerCase() === onchain.toLowerCase(), `computeChannelId == escrow getChannelId (${label}): ${onchain}`);
    seen.add(onchain.toLowerCase());
  }
  check(seen.size === 3 && seen.has(channelId.toLowerCase()), 'the three configs give three ids; the first is the channel used');

  // --- (d) the server claims and settles through the reference channel manager ---------------------------------
  const manager = serverScheme.createChannelManager(facilitatorClient, network, cfg.token);
  const claimable = await manager.getClaimableVouchers();
  check(claimable.length === 1 && claimable[0].totalClaimed === charged.toString(), `one claimable voucher for ${charged}`);
  const claims = await withTimeout(manager.claim(), TX_TIMEOUT_MS * 2, 'channel manager claim');
  check(claims.length === 1 && claims[0].vouchers === 1, `claimWithSignature: 1 batch, 1 voucher (tx ${claims[0]?.transaction})`);
  const claimReceipt = await receiptOf(claims[0].transaction, 'claim');
  const [claimed] = eventsOf(claimReceipt, 'Claimed');
  check(claimed && claimed.channelId.toLowerCase() === channelId.toLowerCase() && claimed.newTotalClaimed === charged, `Claimed ${claimed?.claimAmount}, total ${claimed?.newTotalClaimed}`);
  const [, totalClaimed] = await read(ESCROW, escrowAbi, 'channels', [channelId]);
  check(totalClaimed === charged, `on chain: channel totalClaimed == ${charged}`);
  check((await manager.getClaimableVouchers()).length === 0, 'nothing left to claim');

  const settled = await withTimeout(manager.settle(), TX_TIMEOUT_MS * 2, 'channel manager settle');
  const settleReceipt = await receiptOf(settled.transaction, 'settle');
  const [settledEv] = eventsOf(settleReceipt, 'Settled');
  check(
    settledEv && getAddress(settledEv.receiver) === cfg.receiver && getAddress(settledEv.token) === cfg.token && settledEv.amount >= charged,
    `settle(receiver, token) swept ${settledEv?.amount} (tx ${settled.transaction})`,
  );

  // --- (e) cooperative refund of the remainder through the client → server → facilitator -------------------------
  const refundResult = await withTimeout(clientScheme.refund(url, { fetch: timedFetch }), HTTP_TIMEOUT_MS * 3, 'client refund');
  check(refundResult.success === true, `refund settled (tx ${refundResult.transaction})`);
  const refundReceipt = await receiptOf(refundResult.transaction, 'refund');
  const [refundedEv] = eventsOf(refundReceipt, 'Refunded');
  check(refundedEv && refundedEv.channelId.toLowerCase() === channelId.toLowerCase(), 'refund tx emitted Refunded for the channel');
  const refunded = refundedEv.amount;
  check(refunded === depositAmount - charged, `refunded ${refunded} == deposit ${depositAmount} − charged ${charged}`);
  check(refundResult.amount === refunded.toString(), `refund PAYMENT-RESPONSE amount ${refundResult.amount}`);
  const [balanceAfter, claimedAfter] = await read(ESCROW, escrowAbi, 'channels', [channelId]);
  check(balanceAfter === claimedAfter && claimedAfter === charged, `channel after refund: balance ${balanceAfter} == totalClaimed ${claimedAfter}`);
  check((await read(ESCROW, escrowAbi, 'refundNonce', [channelId])) === 1n, 'refundNonce advanced to 1');
  check(upstreamCalls === cfg.requests, 'the refund did not reach the upstream handler');

  const gas = {
    deposit: depositReceipt.gasUsed.toString(),
    claim: claimReceipt.gasUsed.toString(),
    settle: settleReceipt.gasUsed.toString(),
    refund: refundReceipt.gasUsed.toString(),
  };
  log(`gas (receipt gasUsed): ${toJson(gas)}`);
  return {
    ok: true,
    channelId,
    requests: cfg.requests,
    price: cfg.price.toString(),
    charged: charged.toString(),
    deposited: depositAmount.toString(),
    refunded: refunded.toString(),
    facilitator: cfg.facilitatorUrl ? 'external' : cfg.facilitatorOverHttp ? 'reference-http' : 'reference-in-process',
    transactions: {
      deposit: depositTx,
      claim: claims[0].transaction,
      settle: settled.transaction,
      refund: refundResult.transaction,
    },
    gas,
  };
}

/**
 * Logs every failed verify/settle with the facilitator's reason and message (e.g. a decoded revert), which the
 * HTTP layer otherwise reduces to a bare error code in the 402.
 */
function withFailureLog(inner) {
  const describe = (p) => p?.payload?.type ?? 'payment';
  return {
    getSupported: () => inner.getSupported(),
    async verify(payload, requirements) {
      const r = await inner.verify(payload, requirements);
      if (!r.isValid) log(`facilitator verify(${describe(payload)}) invalid: ${r.invalidReason} ${r.invalidMessage ?? ''}`);
      return r;
    },
    async settle(payload, requirements) {
      const r = await inner.settle(payload, requirements);
      if (!r.success) log(`facilitator settle(${describe(payload)}) failed: ${r.errorReason} ${r.errorMessage ?? ''} ${r.transaction ?? ''}`);
      return r;
    },
  };
}

/** The reference facilitator behind the standard facilitator HTTP API (POST /verify, POST /settle, GET /supported). */
async function serveFacilitator(facilitator) {
  const app = express();
  app.use(express.json({ limit: '1mb' }));
  const send = (res, status, body) => res.status(status).type('application/json').send(toJson(body));
  const handle = (op) => async (req, res) => {
    const { paymentPayload, paymentRequirements } = req.body ?? {};
    if (!paymentPayload || !paymentRequirements) return send(res, 400, { error: 'missing paymentPayload or paymentRequirements' });
    try {
      send(res, 200, await facilitator[op](paymentPayload, paymentRequirements));
    } catch (e) {
      log(`facilitator /${op} error: ${e?.message ?? e}`);
      send(res, 500, { error: e instanceof Error ? e.message : String(e) });
    }
  };
  app.post('/verify', handle('verify'));
  app.post('/settle', handle('settle'));
  app.get('/supported', (req, res) => send(res, 200, facilitator.getSupported()));
  const { server, url } = await listen(app);
  servers.push(server);
  return url;
}

async function shutdown() {
  await Promise.all(servers.splice(0).map(closeServer));
}

const watchdog = setTimeout(() => {
  console.error(`reference-stack: FAILED: overall timeout after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(3);
}, OVERALL_TIMEOUT_MS);
watchdog.unref();

main().then(
  async (summary) => {
    await shutdown();
    process.stdout.write(`${toJson(summary)}\n`, () => process.exit(0));
  },
  async (e) => {
    const msg = e instanceof Failure ? e.message : (e?.stack ?? String(e));
    console.error(`reference-stack: FAILED: ${msg}`);
    if (e?.cause) console.error(`  cause: ${e.cause?.stack ?? e.cause}`);
    await shutdown();
    process.exit(1);
  },
);
