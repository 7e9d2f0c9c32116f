#!/usr/bin/env node
// paychan interop: the x402 reference client (@x402/fetch + @x402/evm batch-settlement client scheme)
// pays a paychan server. Its first request opens the channel with an ERC-3009 deposit, the rest pay
// by voucher, then it asks for a cooperative refund of what is left.
//
// Configuration (environment only; keys are never printed):
//   PAYCHAN_URL          the paid endpoint (POST, OpenAI-style chat body)
//   PAYCHAN_RPC_URL      JSON-RPC of the chain (the client reads channel state through it)
//   PAYCHAN_CHAIN_ID     chain id
//   PAYCHAN_TOKEN        token address (default: the one the server's 402 offers)
//   PAYCHAN_PAYER_KEY    the payer's private key (0x + 64 hex)
//   PAYCHAN_REQUESTS     paid requests (default 5)
//   PAYCHAN_PRICE        the route's maximum price per request, atomic units (default: the 402's)
//   PAYCHAN_STREAM       1: send `"stream": true` and read server-sent events. The charge of a
//                        stream is its PAYMENT-RESPONSE trailer, which fetch cannot read, so the
//                        client learns it from the corrective 402 of its next payment (one retry
//                        a call) and "charged" is what the refund leaves: deposit − refunded.
//
// Prints one JSON line on stdout: {"ok":true,"channelId",…,"charged","deposited","refunded",…};
// diagnostics on stderr. Exits non-zero on any failure.
import { randomBytes } from 'node:crypto';
import { createPublicClient, defineChain, http } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { wrapFetchWithPayment, x402Client } from '@x402/fetch';
import { decodePaymentRequiredHeader, decodePaymentResponseHeader } from '@x402/core/http';
import { toClientEvmSigner } from '@x402/evm';
import { BatchSettlementEvmScheme as ClientScheme } from '@x402/evm/batch-settlement/client';

const t0 = Date.now();
const log = (msg) => console.error(`[reference-client +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);
class Failure extends Error {}
const check = (cond, msg) => {
  if (!cond) throw new Failure(msg);
  log(`ok  ${msg}`);
};
const HTTP_TIMEOUT_MS = 30_000;
const timedFetch = (input, init = {}) => fetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(HTTP_TIMEOUT_MS) });

function env(name, pattern, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback !== undefined) return fallback;
    throw new Failure(`missing environment variable ${name}`);
  }
  if (pattern && !pattern.test(v)) throw new Failure(`environment variable ${name} is malformed`);
  return v;
}

async function main() {
  const url = env('PAYCHAN_URL', /^https?:\/\/\S+$/);
  const rpcUrl = env('PAYCHAN_RPC_URL', /^https?:\/\/\S+$/);
  const chainId = Number(env('PAYCHAN_CHAIN_ID', /^[0-9]+$/));
  const payer = privateKeyToAccount(env('PAYCHAN_PAYER_KEY', /^0x[0-9a-fA-F]{64}$/));
  const requests = Number(env('PAYCHAN_REQUESTS', /^[0-9]+$/, '5'));
  const stream = env('PAYCHAN_STREAM', /^[01]$/, '0') === '1';
  // Token and price default to what the server offers in its 402.
  const probe = await timedFetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  check(probe.status === 402 && probe.headers.get('PAYMENT-REQUIRED'), `unpaid request answered 402 with PAYMENT-REQUIRED`);
  const offer = decodePaymentRequiredHeader(probe.headers.get('PAYMENT-REQUIRED')).accepts.find((a) => a.scheme === 'batch-settlement');
  check(!!offer, `the server offers batch-settlement: ${offer?.amount} of ${offer?.asset} on ${offer?.network}`);
  const token = env('PAYCHAN_TOKEN', /^0x[0-9a-fA-F]{40}$/, offer.asset);
  const price = BigInt(env('PAYCHAN_PRICE', /^[0-9]+$/, offer.amount));
  const network = `eip155:${chainId}`;
  const chain = defineChain({ id: chainId, name: 'paychan-dev', nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [rpcUrl] } } });
  const pub = createPublicClient({ chain, transport: http(rpcUrl) });

  const clientScheme = new ClientScheme(toClientEvmSigner(payer, pub), {
    salt: `0x${randomBytes(32).toString('hex')}`,
    depositPolicy: { depositMultiplier: Math.max(3, requests * 2) },
  });
  const client = new x402Client()
    .register(network, clientScheme)
    .setSpendControls({ allowedAssets: [{ network, asset: token, maxAmountPerPayment: price.toString() }] });
  const created = [];
  client.onAfterPaymentCreation(async (ctx) => {
    created.push(ctx.paymentPayload);
  });
  const payFetch = wrapFetchWithPayment(timedFetch, client);

  let charged = 0n;
  let depositTx;
  let depositAmount;
  let channelId;
  for (let i = 0; i < requests; i++) {
    const before = created.length;
    const body = JSON.stringify({ model: 'paychan-demo', ...(stream ? { stream: true } : {}), messages: [{ role: 'user', content: `request ${i}: ${'words '.repeat(i * 7)}` }] });
    const res = await payFetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const text = await res.text();
    if (res.status !== 200) {
      const pr = res.headers.get('PAYMENT-REQUIRED');
      const detail = pr ? JSON.stringify(decodePaymentRequiredHeader(pr).error ?? null) : '';
      throw new Failure(`request ${i + 1}: status ${res.status} ${detail} ${text.slice(0, 300)}`);
    }
    if (stream) {
      check(res.headers.get('content-type')?.startsWith('text/event-stream') && text.endsWith('data: [DONE]\n\n'), `request ${i + 1}: 200, a whole event stream`);
      check(!res.headers.get('PAYMENT-RESPONSE') && res.headers.get('trailer')?.toLowerCase() === 'payment-response', `request ${i + 1}: the charge announced as a trailer`);
      const payloads = created.slice(before);
      const p = payloads[payloads.length - 1].payload;
      check(payloads.length <= 2, `request ${i + 1}: ${payloads.length} payment(s) signed`);
      if (i === 0) {
        check(p.type === 'deposit', 'request 1: a deposit payload');
        depositAmount = BigInt(p.deposit.amount);
        channelId = p.voucher.channelId;
      }
      continue;
    }
    const header = res.headers.get('PAYMENT-RESPONSE');
    check(!!header, `request ${i + 1}: 200 with PAYMENT-RESPONSE`);
    const settle = decodePaymentResponseHeader(header);
    const payloads = created.slice(before);
    check(payloads.length === 1, `request ${i + 1}: one payment signed (no corrective retry)`);
    const p = payloads[0].payload;
    check(p.type === (i === 0 ? 'deposit' : 'voucher'), `request ${i + 1}: a ${p.type} payload`);
    check(settle.success && settle.network === network, `request ${i + 1}: successful response on ${network}`);
    const c = BigInt(settle.extra.chargedAmount);
    check(c > 0n && c <= price, `request ${i + 1}: charged ${c} ≤ ${price}`);
    charged += c;
    check(settle.extra.channelState.chargedCumulativeAmount === charged.toString(), `request ${i + 1}: cumulative ${charged}`);
    if (i === 0) {
      depositTx = settle.transaction;
      depositAmount = BigInt(p.deposit.amount);
      channelId = p.voucher.channelId;
      check(/^0x[0-9a-f]{64}$/i.test(depositTx) && settle.amount === p.deposit.amount, `deposit ${depositAmount} in ${depositTx}`);
    } else {
      check(settle.transaction === '', `request ${i + 1}: nothing on chain`);
    }
    const json = JSON.parse(text);
    check(typeof json.choices?.[0]?.message?.content === 'string', `request ${i + 1}: an answer from the upstream`);
  }

  const refund = await clientScheme.refund(url, { fetch: timedFetch });
  check(refund.success === true && /^0x[0-9a-f]{64}$/i.test(refund.transaction), `refund settled in ${refund.transaction}`);
  const refunded = BigInt(refund.amount);
  if (stream) {
    charged = depositAmount - refunded;
  } else {
    check(refunded === depositAmount - charged, `refunded ${refunded} = deposit ${depositAmount} − charged ${charged}`);
  }

  console.log(JSON.stringify({
    ok: true,
    channelId,
    requests,
    charged: charged.toString(),
    deposited: depositAmount.toString(),
    refunded: refunded.toString(),
    transactions: { deposit: depositTx, refund: refund.transaction },
  }));
}

main().catch((e) => {
  console.error(e instanceof Failure ? `reference-client: ${e.message}` : e);
  process.exit(1);
});
