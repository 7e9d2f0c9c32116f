#!/usr/bin/env node
// paychan interop: a client written to the batch-settlement streaming protocol of the x402
// reference examples, on the reference packages (@x402/fetch's x402HTTPClient and the
// @x402/evm batch-settlement client scheme), pays a long stream on a paychan route priced by
// chunks. The first payment opens the channel (ERC-3009 deposit); at each `x402-voucher-needed`
// event the client brings its channel state in line with the event, signs the next voucher with
// the scheme and posts it in PAYMENT-SIGNATURE to the event's `voucherEndpoint`;
// `x402-voucher-accepted` and `x402-settlement` update the state again, and the PAYMENT-RESPONSE
// trailer closes each stream. (The examples call the scheme's processSettleResponse for those
// updates; the pinned @x402/evm has no such method, so this script writes the same fields into
// the scheme's channel storage, which is what that method does.)
//
// Configuration (environment only; keys are never printed):
//   PAYCHAN_URL          the chunked endpoint (POST, body {"stream": true, "n": <chunks>})
//   PAYCHAN_RPC_URL      JSON-RPC of the chain
//   PAYCHAN_CHAIN_ID     chain id
//   PAYCHAN_PAYER_KEY    the payer's private key (0x + 64 hex)
//   PAYCHAN_STREAMS      comma-separated content chunks per stream, e.g. "35,22"
//
// Prints one JSON line on stdout: {"ok":true,"channelId",streams:[{content,vouchers,charged}],…}.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { createPublicClient, defineChain, http as viemHttp } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { x402Client, x402HTTPClient } from '@x402/fetch';
import { decodePaymentResponseHeader, encodePaymentSignatureHeader } from '@x402/core/http';
import { toClientEvmSigner } from '@x402/evm';
import { BatchSettlementEvmScheme as ClientScheme } from '@x402/evm/batch-settlement/client';

const t0 = Date.now();
const log = (msg) => console.error(`[reference-streaming-client +${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}`);
class Failure extends Error {}
const check = (cond, msg) => {
  if (!cond) throw new Failure(msg);
  log(`ok  ${msg}`);
};

function env(name, pattern) {
  const v = process.env[name];
  if (!v) throw new Failure(`missing environment variable ${name}`);
  if (pattern && !pattern.test(v)) throw new Failure(`environment variable ${name} is malformed`);
  return v;
}

/** The scheme's channel storage, kept in memory and writable by the stream's events. */
class Storage {
  constructor() { this.m = new Map(); }
  async get(k) { return this.m.get(k.toLowerCase()); }
  async set(k, v) { this.m.set(k.toLowerCase(), v); }
  async delete(k) { this.m.delete(k.toLowerCase()); }
  async sync(channelId, fields) {
    const prev = (await this.get(channelId)) ?? {};
    const next = { ...prev };
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) next[k] = v;
    await this.set(channelId, next);
  }
}

/** A POST whose answer is read as it streams, with its trailers. */
function streamPost(url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'content-type': 'application/json', te: 'trailers', ...headers } }, resolve);
    req.on('error', reject);
    req.setTimeout(60_000, () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

/** Server-sent events of a node response. */
async function* events(res) {
  let buf = '';
  for await (const chunk of res) {
    buf += chunk.toString('utf8');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const raw = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      let data = '';
      for (const line of raw.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7).trim();
        else if (line.startsWith('data: ')) data = line.slice(6);
      }
      yield { event, data };
    }
  }
}

async function main() {
  const url = env('PAYCHAN_URL', /^https?:\/\/\S+$/);
  const base = new URL(url).origin;
  const rpcUrl = env('PAYCHAN_RPC_URL', /^https?:\/\/\S+$/);
  const chainId = Number(env('PAYCHAN_CHAIN_ID', /^[0-9]+$/));
  const payer = privateKeyToAccount(env('PAYCHAN_PAYER_KEY', /^0x[0-9a-fA-F]{64}$/));
  const streams = env('PAYCHAN_STREAMS', /^[0-9]+(,[0-9]+)*$/).split(',').map(Number);
  const network = `eip155:${chainId}`;
  const chain = defineChain({ id: chainId, name: 'paychan-dev', nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [rpcUrl] } } });
  const pub = createPublicClient({ chain, transport: viemHttp(rpcUrl) });
  const storage = new Storage();
  const scheme = new ClientScheme(toClientEvmSigner(payer, pub), {
    salt: `0x${randomBytes(32).toString('hex')}`,
    depositPolicy: { depositMultiplier: 20 },
    storage,
  });
  // The dev token is not one of the reference's default assets: allow it, at one chunk a payment.
  const probe = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  const offer = (await probe.json()).accepts.find((a) => a.scheme === 'batch-settlement');
  check(!!offer, `the route offers batch-settlement: ${offer?.amount} a chunk`);
  const client = new x402Client()
    .register(network, scheme)
    .setSpendControls({ allowedAssets: [{ network, asset: offer.asset, maxAmountPerPayment: offer.amount }] });
  const httpClient = new x402HTTPClient(client);

  const summary = { ok: true, streams: [] };
  for (const [s, n] of streams.entries()) {
    const body = JSON.stringify({ model: 'paychan-demo', stream: true, n });
    const initial = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    check(initial.status === 402, `stream ${s + 1}: unpaid request answered 402`);
    const paymentRequired = httpClient.getPaymentRequiredResponse((h) => initial.headers.get(h), await initial.json());
    const first = await httpClient.createPaymentPayload(paymentRequired);
    const requirements = first.accepted;
    const paid = await streamPost(url, httpClient.encodePaymentSignatureHeader(first), body);
    check(paid.statusCode === 200, `stream ${s + 1}: paid request answered 200 (${paid.statusCode})`);
    let content = 0;
    let vouchers = 1;
    let accepted = 0;
    let settlement;
    const channelId = first.payload.voucher.channelId;
    if (first.payload.type === 'deposit') summary.deposited = (BigInt(summary.deposited ?? 0) + BigInt(first.payload.deposit.amount)).toString();
    for await (const { event, data } of events(paid)) {
      switch (event) {
        case 'message':
          if (data.includes('chat.completion.chunk')) content++;
          break;
        case 'x402-voucher-needed': {
          const v = JSON.parse(data);
          check(v.channelId.toLowerCase() === channelId.toLowerCase(), `voucher needed after ${content} chunks, charged ${v.chargedCumulativeAmount}`);
          await storage.sync(v.channelId, { chargedCumulativeAmount: v.chargedCumulativeAmount, balance: v.balance });
          const next = await scheme.createPaymentPayload(first.x402Version, requirements);
          check(BigInt(next.payload.voucher.maxClaimableAmount) === BigInt(v.nextMaxClaimableAmount), `signed the next ceiling ${v.nextMaxClaimableAmount}`);
          const renewal = { x402Version: next.x402Version, accepted: requirements, payload: next.payload };
          const res = await fetch(`${base}${v.voucherEndpoint}`, { method: 'POST', headers: { 'PAYMENT-SIGNATURE': encodePaymentSignatureHeader(renewal), 'content-type': 'application/json' } });
          check(res.ok, `voucher posted to ${v.voucherEndpoint}: ${res.status}`);
          vouchers++;
          break;
        }
        case 'x402-voucher-accepted': {
          const v = JSON.parse(data);
          accepted++;
          await storage.sync(v.channelId, { chargedCumulativeAmount: v.newChargedCumulativeAmount, balance: v.balance });
          break;
        }
        case 'x402-settlement': {
          settlement = JSON.parse(data);
          await storage.sync(settlement.channelId, { chargedCumulativeAmount: settlement.chargedCumulativeAmount });
          break;
        }
        case 'x402-error':
          throw new Failure(`stream ${s + 1}: x402-error ${data}`);
        default:
          break;
      }
    }
    check(accepted === vouchers - 1, `stream ${s + 1}: every posted voucher accepted (${accepted})`);
    check(!!settlement, `stream ${s + 1}: x402-settlement at the end`);
    const trailer = paid.trailers['payment-response'];
    check(!!trailer, `stream ${s + 1}: PAYMENT-RESPONSE trailer`);
    const settle = decodePaymentResponseHeader(trailer);
    check(settle.success && settle.extra.channelState.chargedCumulativeAmount === settlement.chargedCumulativeAmount, `stream ${s + 1}: trailer agrees with x402-settlement (${settlement.chargedCumulativeAmount})`);
    await storage.sync(channelId, { chargedCumulativeAmount: settle.extra.channelState.chargedCumulativeAmount, balance: settle.extra.channelState.balance });
    summary.channelId = channelId;
    summary.streams.push({ content, vouchers, charged: settle.extra.chargedAmount, cumulative: settlement.chargedCumulativeAmount });
  }
  console.log(JSON.stringify(summary));
}

main().catch((e) => {
  console.error(e instanceof Failure ? `reference-streaming-client: ${e.message}` : e);
  process.exit(1);
});
