#!/usr/bin/env node
// paychan e2e benchmark (benches/e2e.rs): the x402 reference TypeScript stack, as a server and as
// a load generator, for the rows the Rust harness cannot play itself.
//
//   node benches/reference-bench.mjs serve   a reference resource server (@x402/express
//       paymentMiddleware, the reference facilitator in process) serving the same demo-like
//       upstream as `paychan serve` (`POST /v1/chat/completions`, an OpenAI-style echo) under
//       PAYCHAN_SCHEME `batch-settlement` (paid by paychan-client from the harness) or `exact`
//       (EIP-3009 `transferWithAuthorization`, one transfer per call, settled before the answer).
//       stdout: {"event":"listening","url":…} at start; stdin "settle" (batch-settlement):
//       claims every channel and settles, {"event":"settled","claims":[tx…],"settle":tx|null}.
//   node benches/reference-bench.mjs load    the reference client (@x402/fetch with the `exact`
//       client scheme) paying PAYCHAN_URL from PAYCHAN_CONCURRENCY loops, one call in flight
//       each. stdout: {"event":"ready"} once every loop made its first call; stdin "measure"
//       starts the measured window ({"event":"measuring"}), "stop" ends it:
//       {"event":"result","calls":n,"errors":n,"secs":s,"p50_us":…,"p99_us":…,"p999_us":…}
//       over the calls that ended in the window.
//
// Configuration comes only from the environment (keys are never taken from argv and never
// printed): PAYCHAN_RPC_URL, PAYCHAN_CHAIN_ID, PAYCHAN_TOKEN, PAYCHAN_TOKEN_NAME,
// PAYCHAN_TOKEN_VERSION, PAYCHAN_RECEIVER_ADDRESS, PAYCHAN_PRICE; serve: PAYCHAN_SCHEME,
// PAYCHAN_RELAYER_KEY, PAYCHAN_RECEIVER_AUTHORIZER_KEY (batch-settlement), PAYCHAN_MIN_DEPOSIT;
// load: PAYCHAN_URL, PAYCHAN_PAYER_KEY, PAYCHAN_CONCURRENCY. stdin closed: the script exits 0.
import { createInterface } from 'node:readline';

import express from 'express';
import { createPublicClient, createWalletClient, defineChain, getAddress, http, nonceManager, publicActions } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { x402Facilitator } from '@x402/core/facilitator';
import { paymentMiddleware, x402ResourceServer } from '@x402/express';
import { wrapFetchWithPayment, x402Client } from '@x402/fetch';
import { toClientEvmSigner, toFacilitatorEvmSigner } from '@x402/evm';
import { BatchSettlementEvmScheme as BatchServer } from '@x402/evm/batch-settlement/server';
import { BatchSettlementEvmScheme as BatchFacilitator } from '@x402/evm/batch-settlement/facilitator';
import { ExactEvmScheme as ExactServer } from '@x402/evm/exact/server';
import { ExactEvmScheme as ExactFacilitator } from '@x402/evm/exact/facilitator';
import { ExactEvmScheme as ExactClient } from '@x402/evm/exact/client';

const WITHDRAW_DELAY = 900;
const TX_TIMEOUT_MS = 30_000;
const RPC_TIMEOUT_MS = 15_000;
const PATH = '/v1/chat/completions';
const BODY = JSON.stringify({ model: 'paychan-demo', messages: [{ role: 'user', content: 'Say hello in one word.' }] });

const t0 = Date.now();
const log = (msg) => console.error(`[reference-bench +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);
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

function common() {
  const rpcUrl = env('PAYCHAN_RPC_URL', { pattern: /^https?:\/\/\S+$/ });
  const chainId = Number(env('PAYCHAN_CHAIN_ID', { pattern: UINT }));
  const chain = defineChain({
    id: chainId,
    name: 'paychan dev chain',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  return {
    chain,
    network: `eip155:${chainId}`,
    transport: http(rpcUrl, { timeout: RPC_TIMEOUT_MS, retryCount: 1 }),
    token: getAddress(env('PAYCHAN_TOKEN', { pattern: HEX_ADDRESS })),
    tokenName: env('PAYCHAN_TOKEN_NAME'),
    tokenVersion: env('PAYCHAN_TOKEN_VERSION'),
    receiver: getAddress(env('PAYCHAN_RECEIVER_ADDRESS', { pattern: HEX_ADDRESS })),
    price: BigInt(env('PAYCHAN_PRICE', { pattern: UINT, fallback: '1000' })),
  };
}

/** Lines of stdin, each handed to `on(line)`; resolves when stdin closes. */
async function commands(on) {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) await on(line.trim());
}

/** The demo upstream's answer (crates/server/src/demo.rs): an echo of the last message. */
function demo(req, res) {
  const messages = Array.isArray(req.body?.messages) ? req.body.messages : [];
  const tokens = (s) => Math.max(1, Math.ceil(s.length / 4));
  const prompt = messages.map((m) => String(m?.content ?? '')).join('\n');
  const answer = `echo: ${String(messages.at(-1)?.content ?? '')}`;
  const [pt, ct] = [tokens(prompt), tokens(answer)];
  res.json({
    id: 'chatcmpl-paychan-demo',
    object: 'chat.completion',
    model: req.body?.model ?? 'paychan-demo',
    choices: [{ index: 0, message: { role: 'assistant', content: answer }, finish_reason: 'stop' }],
    usage: { prompt_tokens: pt, completion_tokens: ct, total_tokens: pt + ct },
  });
}

async function serve() {
  const c = common();
  const scheme = env('PAYCHAN_SCHEME', { pattern: /^(batch-settlement|exact)$/ });
  const relayer = privateKeyToAccount(env('PAYCHAN_RELAYER_KEY', { pattern: HEX_KEY }), { nonceManager });
  const wallet = createWalletClient({ account: relayer, chain: c.chain, transport: c.transport }).extend(publicActions);
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
  const facilitator = new x402Facilitator();
  let serverScheme;
  const extra = { name: c.tokenName, version: c.tokenVersion };
  if (scheme === 'batch-settlement') {
    facilitator.register(c.network, new BatchFacilitator(signer));
    const receiverAuthorizer = privateKeyToAccount(env('PAYCHAN_RECEIVER_AUTHORIZER_KEY', { pattern: HEX_KEY }));
    serverScheme = new BatchServer(c.receiver, { receiverAuthorizerSigner: receiverAuthorizer, withdrawDelay: WITHDRAW_DELAY });
    extra.minDeposit = env('PAYCHAN_MIN_DEPOSIT', { pattern: UINT, fallback: (c.price * 10n).toString() });
  } else {
    facilitator.register(c.network, new ExactFacilitator(signer));
    serverScheme = new ExactServer();
  }
  let failures = 0;
  const facilitatorClient = {
    verify: async (payload, requirements) => {
      const r = await facilitator.verify(payload, requirements);
      if (!r.isValid && failures++ < 5) log(`verify invalid: ${r.invalidReason} ${r.invalidMessage ?? ''}`);
      return r;
    },
    settle: async (payload, requirements) => {
      const r = await facilitator.settle(payload, requirements);
      if (!r.success && failures++ < 5) log(`settle failed: ${r.errorReason} ${r.errorMessage ?? ''}`);
      return r;
    },
    getSupported: async () => facilitator.getSupported(),
  };
  const resourceServer = new x402ResourceServer(facilitatorClient).register(c.network, serverScheme);
  const routes = {
    [`POST ${PATH}`]: {
      accepts: {
        scheme,
        network: c.network,
        payTo: c.receiver,
        price: { amount: c.price.toString(), asset: c.token, extra },
        maxTimeoutSeconds: 60,
      },
      description: 'demo inference',
      mimeType: 'application/json',
    },
  };
  const app = express();
  app.use(paymentMiddleware(routes, resourceServer));
  app.use(express.json());
  app.post(PATH, demo);
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(0, '127.0.0.1', (err) => (err ? reject(err) : resolve(s)));
    s.on('error', reject);
  });
  // Like paychan's server: many keep-alive connections from one client.
  server.keepAliveTimeout = 60_000;
  server.maxConnections = 16_384;
  const url = `http://127.0.0.1:${server.address().port}${PATH}`;
  log(`reference ${scheme} server at ${url}`);
  emit({ event: 'listening', url });

  const manager = scheme === 'batch-settlement' ? serverScheme.createChannelManager(facilitatorClient, c.network, c.token) : null;
  await commands(async (line) => {
    if (line === 'settle' && manager) {
      try {
        const claims = await manager.claim();
        let settle = null;
        try {
          settle = (await manager.settle()).transaction ?? null;
        } catch (e) {
          log(`settle: ${e?.message ?? e}`);
        }
        emit({ event: 'settled', claims: claims.map((x) => x.transaction), settle });
      } catch (e) {
        emit({ event: 'error', message: String(e?.message ?? e) });
      }
    } else {
      emit({ event: 'error', message: `unknown command ${JSON.stringify(line)}` });
    }
  });
  await new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections?.();
  });
}

/** Nearest-rank percentile (per mille) of sorted `v`. */
const pct = (v, perMille) => (v.length === 0 ? 0 : v[Math.min(v.length, Math.max(1, Math.ceil((perMille * v.length) / 1000))) - 1]);

async function load() {
  const c = common();
  const url = env('PAYCHAN_URL', { pattern: /^https?:\/\/\S+$/ });
  const n = Number(env('PAYCHAN_CONCURRENCY', { pattern: UINT }));
  const payer = privateKeyToAccount(env('PAYCHAN_PAYER_KEY', { pattern: HEX_KEY }));
  const pub = createPublicClient({ chain: c.chain, transport: c.transport });
  const client = new x402Client()
    .register(c.network, new ExactClient(toClientEvmSigner(payer, pub)))
    // The dev token is not one of the SDK's default assets: opt it in, capped at the price.
    .setSpendControls({ allowedAssets: [{ network: c.network, asset: c.token, maxAmountPerPayment: c.price.toString() }] });
  const payFetch = wrapFetchWithPayment(fetch, client);
  let phase = 'warm';
  let shown = 0;
  const lat = [];
  let errors = 0;
  let measuredFrom = 0;
  let measuredSecs = 0;
  const call = async () => {
    const r = await payFetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: BODY });
    const body = await r.text();
    if (!r.ok && shown++ < 3) log(`call: ${r.status} ${body.slice(0, 300)}`);
    return r.ok && r.headers.get('PAYMENT-RESPONSE') !== null;
  };
  let opened = 0;
  const loops = Array.from({ length: n }, async () => {
    try {
      await call();
    } catch (e) {
      if (shown++ < 3) log(`first call: ${e?.message ?? e}`);
    }
    opened += 1;
    if (opened === n) emit({ event: 'ready' });
    while (phase !== 'stop') {
      const t = process.hrtime.bigint();
      let ok = false;
      try {
        ok = await call();
      } catch (e) {
        if (shown++ < 3) log(`call: ${e?.message ?? e}`);
      }
      const us = Number((process.hrtime.bigint() - t) / 1000n);
      // Counted when it ends in the window, whenever it began: a call here can take seconds
      // (one transfer mined per call), longer than a short window.
      if (phase === 'measure') {
        if (ok) lat.push(us);
        else errors += 1;
      }
    }
  });
  await commands(async (line) => {
    if (line === 'measure') {
      phase = 'measure';
      measuredFrom = performance.now();
      emit({ event: 'measuring' });
    } else if (line === 'stop') {
      measuredSecs = (performance.now() - measuredFrom) / 1000;
      phase = 'stop';
      await Promise.all(loops);
      lat.sort((a, b) => a - b);
      emit({
        event: 'result',
        calls: lat.length,
        errors,
        secs: measuredSecs,
        p50_us: pct(lat, 500),
        p99_us: pct(lat, 990),
        p999_us: pct(lat, 999),
      });
    }
  });
}

const mode = process.argv[2];
const run = mode === 'serve' ? serve : mode === 'load' ? load : null;
if (!run) {
  console.error('usage: node benches/reference-bench.mjs serve|load (configuration in the environment)');
  process.exit(2);
}
run().then(
  () => process.exit(0),
  (e) => {
    console.error(`reference-bench: FAILED: ${e?.stack ?? e}`);
    emit({ event: 'error', message: String(e?.message ?? e) });
    process.exit(1);
  },
);
