#!/usr/bin/env node
// paychan interop: a reference x402 resource server (@x402/express paymentMiddleware with the
// @x402/evm batch-settlement server scheme, and the reference batch-settlement facilitator
// in-process) for paychan's own client (paychan-client) to pay. It serves until its stdin closes;
// the Rust test (tests/it/reference_server.rs) drives the client and asks this script for its
// view of things over stdin.
//
// Configuration comes only from the environment (keys are never taken from argv and never
// printed): PAYCHAN_RPC_URL, PAYCHAN_CHAIN_ID, PAYCHAN_TOKEN, PAYCHAN_TOKEN_NAME,
// PAYCHAN_TOKEN_VERSION, PAYCHAN_RECEIVER_ADDRESS, PAYCHAN_RECEIVER_AUTHORIZER_KEY,
// PAYCHAN_RELAYER_KEY, PAYCHAN_PRICE (default 1000), PAYCHAN_MIN_DEPOSIT (default 10 x price).
//
// stdout, one JSON line each:
//   at start          {"event":"listening","url":"http://127.0.0.1:<port>/infer","receiverAuthorizer":"0x…"}
//   stdin "stats"     {"event":"stats","requests":n,"paid":n,"upstreamCalls":n,"kinds":{"deposit":n,…}}
//   stdin "settle"    {"event":"settled","claims":[…tx],"settle":"0x…"|null}
//   on a failure      {"event":"error","message":"…"}
// Diagnostics go to stderr. stdin closed: the servers close and the script exits 0.
import { createInterface } from 'node:readline';

import express from 'express';
import { createWalletClient, defineChain, getAddress, http, nonceManager, publicActions } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { x402Facilitator } from '@x402/core/facilitator';
import { decodePaymentSignatureHeader } from '@x402/core/http';
import { paymentMiddleware, x402ResourceServer } from '@x402/express';
import { toFacilitatorEvmSigner } from '@x402/evm';
import { BatchSettlementEvmScheme as ServerScheme } from '@x402/evm/batch-settlement/server';
import { BatchSettlementEvmScheme as FacilitatorScheme } from '@x402/evm/batch-settlement/facilitator';

const WITHDRAW_DELAY = 900;
const TX_TIMEOUT_MS = 30_000;
const RPC_TIMEOUT_MS = 15_000;

const t0 = Date.now();
const log = (msg) => console.error(`[reference-server +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);
const toJson = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? x.toString() : x));
const emit = (v) => process.stdout.write(`${toJson(v)}\n`);

function env(name, { pattern, fallback } = {}) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback !== undefined) return fallback;
    throw new Error(`missing environment variable ${name}`);
  }
  // Never echo the value: some of these are private keys.
  if (pattern && !pattern.test(v)) throw new Error(`environment variable ${name} is malformed`);
  return v;
}

const HEX_KEY = /^0x[0-9a-fA-F]{64}$/;
const HEX_ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const UINT = /^[0-9]+$/;

async function main() {
  const rpcUrl = env('PAYCHAN_RPC_URL', { pattern: /^https?:\/\/\S+$/ });
  const chainId = Number(env('PAYCHAN_CHAIN_ID', { pattern: UINT }));
  const token = getAddress(env('PAYCHAN_TOKEN', { pattern: HEX_ADDRESS }));
  const tokenName = env('PAYCHAN_TOKEN_NAME');
  const tokenVersion = env('PAYCHAN_TOKEN_VERSION');
  const receiver = getAddress(env('PAYCHAN_RECEIVER_ADDRESS', { pattern: HEX_ADDRESS }));
  const receiverAuthorizer = privateKeyToAccount(env('PAYCHAN_RECEIVER_AUTHORIZER_KEY', { pattern: HEX_KEY }));
  const relayer = privateKeyToAccount(env('PAYCHAN_RELAYER_KEY', { pattern: HEX_KEY }), { nonceManager });
  const price = BigInt(env('PAYCHAN_PRICE', { pattern: UINT, fallback: '1000' }));
  const minDeposit = BigInt(env('PAYCHAN_MIN_DEPOSIT', { pattern: UINT, fallback: (price * 10n).toString() }));
  const network = `eip155:${chainId}`;

  const chain = defineChain({
    id: chainId,
    name: 'paychan dev chain',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const transport = http(rpcUrl, { timeout: RPC_TIMEOUT_MS, retryCount: 1 });
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
  const facilitator = new x402Facilitator().register(network, new FacilitatorScheme(signer));
  const facilitatorClient = {
    verify: async (payload, requirements) => {
      const r = await facilitator.verify(payload, requirements);
      if (!r.isValid) log(`facilitator verify(${payload?.payload?.type}) invalid: ${r.invalidReason} ${r.invalidMessage ?? ''}`);
      return r;
    },
    settle: async (payload, requirements) => {
      const r = await facilitator.settle(payload, requirements);
      if (!r.success) log(`facilitator settle(${payload?.payload?.type}) failed: ${r.errorReason} ${r.errorMessage ?? ''}`);
      return r;
    },
    getSupported: async () => facilitator.getSupported(),
  };

  const serverScheme = new ServerScheme(receiver, {
    receiverAuthorizerSigner: receiverAuthorizer,
    withdrawDelay: WITHDRAW_DELAY,
  });
  const resourceServer = new x402ResourceServer(facilitatorClient).register(network, serverScheme);
  const routes = {
    'POST /infer': {
      accepts: {
        scheme: 'batch-settlement',
        network,
        payTo: receiver,
        price: {
          amount: price.toString(),
          asset: token,
          extra: { name: tokenName, version: tokenVersion, minDeposit: minDeposit.toString() },
        },
        maxTimeoutSeconds: 60,
      },
      description: 'mock inference',
      mimeType: 'application/json',
    },
  };

  // What reached the server, counted before the payment middleware: every request, those with a
  // PAYMENT-SIGNATURE, and the payload types they carried.
  const stats = { requests: 0, paid: 0, upstreamCalls: 0, kinds: {} };
  const app = express();
  app.use((req, res, next) => {
    stats.requests += 1;
    const sig = req.get('PAYMENT-SIGNATURE');
    if (sig) {
      stats.paid += 1;
      try {
        const type = decodePaymentSignatureHeader(sig)?.payload?.type ?? 'unknown';
        stats.kinds[type] = (stats.kinds[type] ?? 0) + 1;
      } catch {
        stats.kinds.undecodable = (stats.kinds.undecodable ?? 0) + 1;
      }
    }
    next();
  });
  app.use(paymentMiddleware(routes, resourceServer));
  app.use(express.json());
  app.post('/infer', (req, res) => {
    stats.upstreamCalls += 1;
    res.json({ model: 'mock-llm', output: `completion #${stats.upstreamCalls}`, echo: req.body ?? null });
  });
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(0, '127.0.0.1', (err) => (err ? reject(err) : resolve(s)));
    s.on('error', reject);
  });
  const url = `http://127.0.0.1:${server.address().port}/infer`;
  log(`reference server at ${url} (facilitator relayer ${relayer.address})`);
  emit({ event: 'listening', url, receiverAuthorizer: receiverAuthorizer.address });

  const manager = serverScheme.createChannelManager(facilitatorClient, network, token);
  const commands = {
    stats: async () => ({ event: 'stats', ...stats }),
    settle: async () => {
      const claims = await manager.claim();
      let settle = null;
      try {
        settle = (await manager.settle()).transaction ?? null;
      } catch (e) {
        log(`settle: ${e?.message ?? e}`);
      }
      return { event: 'settled', claims: claims.map((c) => c.transaction), settle };
    },
  };
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    const cmd = commands[line.trim()];
    if (!cmd) {
      emit({ event: 'error', message: `unknown command ${JSON.stringify(line.trim())}` });
      continue;
    }
    try {
      emit(await cmd());
    } catch (e) {
      log(`${line.trim()}: ${e?.stack ?? e}`);
      emit({ event: 'error', message: String(e?.message ?? e) });
    }
  }
  await new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections?.();
  });
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`reference-server: FAILED: ${e?.stack ?? e}`);
    emit({ event: 'error', message: String(e?.message ?? e) });
    process.exit(1);
  },
);
