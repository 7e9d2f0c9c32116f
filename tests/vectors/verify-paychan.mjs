#!/usr/bin/env node
// "They verify ours": checks headers made by paychan-core with the x402 reference SDK (@x402/evm, @x402/core)
// and viem. Input: the JSON file written by crates/core/tests/it/vectors.rs (`they_verify_ours`):
//   { network, requestAmount, headers: { <name>: { headerName, header, expect: {...} } } }
// Usage: node tests/vectors/verify-paychan.mjs <file>
// Prints every check; exits 1 on any mismatch, 2 on bad usage or a missing `npm ci`.
import fs from 'node:fs';
import {
  ERC3009_COLLECTOR, StubFacilitator, bsClient, chainIdOf, coreHttp, depositNonce, evm, headerGetter, privateKeyToAccount,
  ANVIL_KEYS, recoverReceiveAuthorization, recoverVoucherSigner, referenceServer, sameAddress, schemas, viem,
} from './lib.mjs';

const file = process.argv[2];
if (!file) {
  console.error('usage: node tests/vectors/verify-paychan.mjs <file written by the paychan-core vectors test>');
  process.exit(2);
}
const input = JSON.parse(fs.readFileSync(file, 'utf8'));
const H = input.headers;

let failures = 0;
let checks = 0;
function check(cond, what, detail = '') {
  checks += 1;
  if (cond) {
    console.log(`  ok    ${what}`);
  } else {
    failures += 1;
    console.log(`  FAIL  ${what}${detail ? ` — ${detail}` : ''}`);
  }
}
async function section(title, fn) {
  console.log(title);
  try {
    await fn();
  } catch (e) {
    failures += 1;
    console.log(`  FAIL  ${title}: threw ${e?.stack ?? e}`);
  }
}
const eq = (a, b) => String(a) === String(b);
const show = (a, b) => `got ${a}, want ${b}`;

const decoded = {};

// --- PAYMENT-SIGNATURE payloads --------------------------------------------------------------------------------
for (const name of Object.keys(H).filter((n) => H[n].headerName === 'PAYMENT-SIGNATURE')) {
  await section(`${name} (PAYMENT-SIGNATURE, @x402/core decodePaymentSignatureHeader)`, async () => {
    const { header, expect } = H[name];
    const pp = coreHttp.decodePaymentSignatureHeader(header);
    decoded[name] = pp;
    const z = schemas.parsePaymentPayload(pp);
    check(z.success && schemas.isPaymentPayloadV2(pp), 'zod PaymentPayload (v2) schema accepts it', z.success ? '' : JSON.stringify(z.error.issues));
    const zr = schemas.parsePaymentRequirements(pp.accepted);
    check(zr.success, 'zod PaymentRequirements schema accepts `accepted`', zr.success ? '' : JSON.stringify(zr.error.issues));
    const raw = pp.payload;
    const guard = { deposit: evm.isBatchSettlementDepositPayload, voucher: evm.isBatchSettlementVoucherPayload, refund: evm.isBatchSettlementRefundPayload }[expect.payloadType];
    check(raw.type === expect.payloadType && guard?.(raw), `payload type is ${expect.payloadType} (SDK type guard)`, `type ${raw.type}`);
    const network = pp.accepted.network;
    const chainId = chainIdOf(network);
    const id = bsClient.computeChannelId(raw.channelConfig, network);
    check(id === raw.voucher.channelId, 'computeChannelId(channelConfig) equals voucher.channelId', show(raw.voucher.channelId, id));
    check(eq(raw.voucher.channelId, expect.channelId), 'channel id is the one paychan computed', show(raw.voucher.channelId, expect.channelId));
    check(eq(raw.voucher.maxClaimableAmount, expect.maxClaimableAmount), `voucher ceiling ${expect.maxClaimableAmount}`, show(raw.voucher.maxClaimableAmount, expect.maxClaimableAmount));
    check(sameAddress(raw.channelConfig.receiver, pp.accepted.payTo), 'channelConfig.receiver is accepted.payTo');
    check(sameAddress(raw.channelConfig.receiverAuthorizer, pp.accepted.extra.receiverAuthorizer), 'channelConfig.receiverAuthorizer is accepted.extra.receiverAuthorizer');
    check(sameAddress(raw.channelConfig.token, pp.accepted.asset), 'channelConfig.token is accepted.asset');
    check(raw.channelConfig.withdrawDelay === pp.accepted.extra.withdrawDelay, 'channelConfig.withdrawDelay is accepted.extra.withdrawDelay (as a JSON number)');
    const signer = await recoverVoucherSigner(chainId, raw.voucher.channelId, raw.voucher.maxClaimableAmount, raw.voucher.signature);
    check(sameAddress(signer, raw.channelConfig.payerAuthorizer), 'voucher signature recovers (viem recoverTypedDataAddress, SDK domain + voucherTypes) to payerAuthorizer', show(signer, raw.channelConfig.payerAuthorizer));
    check(sameAddress(raw.channelConfig.payerAuthorizer, expect.payerAuthorizer), 'payerAuthorizer is the expected voucher key');
    const ok = await viem.verifyTypedData({
      address: raw.channelConfig.payerAuthorizer,
      domain: { ...evm.BATCH_SETTLEMENT_DOMAIN, chainId, verifyingContract: evm.BATCH_SETTLEMENT_ADDRESS },
      types: evm.voucherTypes,
      primaryType: 'Voucher',
      message: { channelId: raw.voucher.channelId, maxClaimableAmount: BigInt(raw.voucher.maxClaimableAmount) },
      signature: raw.voucher.signature,
    });
    check(ok, 'viem verifyTypedData accepts the voucher (what the reference server runs locally)');
    if (expect.payloadType === 'deposit') {
      const auth = raw.deposit.authorization.erc3009Authorization;
      check(auth !== undefined, 'deposit carries an erc3009Authorization');
      check(eq(raw.deposit.amount, expect.depositAmount), `deposit amount ${expect.depositAmount}`, show(raw.deposit.amount, expect.depositAmount));
      check(/^0x[0-9a-f]{64}$/.test(auth.salt), 'ERC-3009 salt is 32-byte lowercase hex (as the SDK writes it)', auth.salt);
      const nonce = depositNonce(raw.voucher.channelId, auth.salt);
      const tokenDomain = { name: pp.accepted.extra.name, version: pp.accepted.extra.version, chainId, verifyingContract: viem.getAddress(pp.accepted.asset) };
      const from = await recoverReceiveAuthorization(
        tokenDomain,
        { from: raw.channelConfig.payer, to: ERC3009_COLLECTOR, value: raw.deposit.amount, validAfter: auth.validAfter, validBefore: auth.validBefore, nonce },
        auth.signature,
      );
      check(sameAddress(from, raw.channelConfig.payer), 'ReceiveWithAuthorization (to = SDK ERC3009_DEPOSIT_COLLECTOR_ADDRESS, nonce = keccak256(abi.encode(channelId, salt))) recovers to the payer', show(from, raw.channelConfig.payer));
      check(BigInt(auth.validBefore) > BigInt(auth.validAfter), 'validBefore > validAfter');
    }
    if (expect.payloadType === 'refund') {
      check(eq(raw.amount ?? null, expect.amount ?? null), `refund amount ${expect.amount ?? '(full)'}`, show(raw.amount, expect.amount));
      check(raw.refundNonce === undefined && raw.claims === undefined, 'client refund carries no server-completed fields');
    }
  });
}

// --- PAYMENT-REQUIRED (corrective 402) --------------------------------------------------------------------------
for (const name of Object.keys(H).filter((n) => H[n].headerName === 'PAYMENT-REQUIRED')) {
  await section(`${name} (PAYMENT-REQUIRED, @x402/core decodePaymentRequiredHeader)`, async () => {
    const { header, expect } = H[name];
    const pr = coreHttp.decodePaymentRequiredHeader(header);
    const z = schemas.parsePaymentRequired(pr);
    check(z.success && schemas.isPaymentRequiredV2(pr), 'zod PaymentRequired (v2) schema accepts it', z.success ? '' : JSON.stringify(z.error.issues));
    check(pr.error === 'invalid_batch_settlement_evm_cumulative_amount_mismatch', 'error is cumulative_amount_mismatch', pr.error);
    const accept = pr.accepts.find((a) => a.scheme === 'batch-settlement');
    const { channelState, voucherState } = accept.extra;
    const chainId = chainIdOf(accept.network);
    check(eq(channelState.channelId, expect.channelId), 'channelState.channelId', show(channelState.channelId, expect.channelId));
    check(BigInt(channelState.chargedCumulativeAmount) <= BigInt(voucherState.signedMaxClaimable), 'chargedCumulativeAmount <= signedMaxClaimable (recoverFromSignature rule)');
    const who = await recoverVoucherSigner(chainId, channelState.channelId, voucherState.signedMaxClaimable, voucherState.signature);
    check(sameAddress(who, expect.payerAuthorizer), 'voucherState.signature recovers to the payer authorizer for (channelId, signedMaxClaimable)', show(who, expect.payerAuthorizer));
    // The SDK client's own recovery. It reads channels(channelId) from chain; offline, that read is answered
    // with the balance / totalClaimed the server reports (a chain that agrees with the server).
    const storage = new bsClient.InMemoryClientChannelStorage();
    const reads = [];
    const signer = {
      address: expect.payer,
      signTypedData: async () => {
        throw new Error('no signing in verification');
      },
      readContract: async (req) => {
        reads.push(req.functionName);
        if (req.functionName !== 'channels') throw new Error(`unexpected read ${req.functionName}`);
        return [BigInt(channelState.balance), BigInt(channelState.totalClaimed)];
      },
    };
    const client = new bsClient.BatchSettlementEvmScheme(signer, { storage, salt: expect.salt, payerAuthorizer: expect.payerAuthorizer });
    const recovered = await client.processCorrectivePaymentRequired(pr);
    check(recovered === true, 'SDK client processCorrectivePaymentRequired accepts it (recoverFromSignature)', `returned ${recovered}; chain reads: ${reads.join(',')}`);
    const ctx = await storage.get(expect.channelId);
    check(ctx && eq(ctx.chargedCumulativeAmount, expect.chargedCumulativeAmount), `client resynchronized to chargedCumulativeAmount ${expect.chargedCumulativeAmount}`, JSON.stringify(ctx));
    check(ctx && eq(ctx.signedMaxClaimable, expect.signedMaxClaimable) && ctx.signature === voucherState.signature, 'client adopted signedMaxClaimable and the signature');
  });
}

// --- PAYMENT-RESPONSE --------------------------------------------------------------------------------------------
for (const name of Object.keys(H).filter((n) => H[n].headerName === 'PAYMENT-RESPONSE')) {
  await section(`${name} (PAYMENT-RESPONSE, @x402/core decodePaymentResponseHeader)`, async () => {
    const { header, expect } = H[name];
    const settle = coreHttp.decodePaymentResponseHeader(header);
    check(settle.success === true, 'success');
    check(settle.network === input.network, 'network', show(settle.network, input.network));
    check(typeof settle.extra?.chargedAmount === 'string' && /^\d+$/.test(settle.extra.chargedAmount), 'extra.chargedAmount is a decimal string');
    check(eq(settle.extra?.channelState?.channelId, expect.channelId), 'extra.channelState.channelId');
    // The SDK client's processPaymentResponse → updateChannelFromSettle, from the client state before this request.
    const storage = new bsClient.InMemoryClientChannelStorage();
    if (expect.chargedBefore !== '0' || expect.depositAmount === undefined) {
      await storage.set(expect.channelId, { chargedCumulativeAmount: expect.chargedBefore, balance: expect.balanceBefore });
    }
    await bsClient.processPaymentResponse(storage, headerGetter({ 'PAYMENT-RESPONSE': header }), {
      channelId: expect.channelId,
      requestAmount: input.requestAmount,
      ...(expect.depositAmount !== undefined ? { depositAmount: expect.depositAmount } : {}),
    });
    const after = await storage.get(expect.channelId);
    const want = (BigInt(expect.chargedBefore) + BigInt(settle.extra.chargedAmount)).toString();
    check(after && eq(after.chargedCumulativeAmount, want) && eq(settle.extra.channelState.chargedCumulativeAmount, want),
      `SDK client processPaymentResponse accepts it: chargedCumulativeAmount ${expect.chargedBefore} + ${settle.extra.chargedAmount} = ${want}`, JSON.stringify(after));
    if (expect.depositAmount !== undefined) {
      check(after && eq(after.balance, BigInt(expect.balanceBefore ?? '0') + BigInt(expect.depositAmount)), 'client balance grew by the deposit', JSON.stringify(after));
    }
  });
}

// --- the reference resource server accepts paychan's payments ------------------------------------------------------
await section('reference resource server (x402HTTPResourceServer + batch-settlement server scheme) accepts paychan payments', async () => {
  const dep = decoded.depositPayment;
  const acc = dep.accepted;
  const facilitator = new StubFacilitator({ networks: [acc.network], receiverAuthorizer: acc.extra.receiverAuthorizer, facilitatorAddress: privateKeyToAccount(ANVIL_KEYS[0]).address });
  const server = await referenceServer({
    facilitator,
    network: acc.network,
    payTo: acc.payTo,
    asset: acc.asset,
    amount: acc.amount,
    tokenName: acc.extra.name,
    tokenVersion: acc.extra.version,
    withdrawDelay: acc.extra.withdrawDelay,
    maxTimeoutSeconds: acc.maxTimeoutSeconds,
    url: dep.resource?.url ?? 'https://api.example.com/inference',
  });
  const offer = coreHttp.decodePaymentRequiredHeader(headerGetter((await server.request(undefined)).headers)('PAYMENT-REQUIRED')).accepts[0];
  const missing = Object.keys(offer.extra).filter((k) => JSON.stringify(offer.extra[k]) !== JSON.stringify(acc.extra[k]));
  check(missing.length === 0, "paychan's `accepted` carries every field of the reference server's offer (exact match rule)", `differs in extra: ${missing.join(', ')}`);
  const responses = {};
  for (const name of ['depositPayment', 'voucherPayment1', 'voucherPayment2']) {
    const res = await server.request(H[name].header);
    const body = res.status === 402 ? coreHttp.decodePaymentRequiredHeader(headerGetter(res.headers)('PAYMENT-REQUIRED')).error : '';
    check(res.status === 200, `${name}: reference server answers 200`, `status ${res.status} ${body} ${JSON.stringify(facilitator.log.at(-1) ?? {})}`);
    responses[name] = res.status === 200 ? coreHttp.decodePaymentResponseHeader(headerGetter(res.headers)('PAYMENT-RESPONSE')) : undefined;
  }
  const ours = coreHttp.decodePaymentResponseHeader(H.voucherResponse.header);
  const theirs = responses.voucherPayment2;
  check(theirs && eq(theirs.extra.channelState.chargedCumulativeAmount, ours.extra.channelState.chargedCumulativeAmount) && eq(theirs.extra.chargedAmount, ours.extra.chargedAmount),
    "reference server's voucher response agrees with paychan's (chargedAmount, chargedCumulativeAmount)", `${JSON.stringify(theirs?.extra)} vs ${JSON.stringify(ours.extra)}`);
  // Replaying voucher 1 must produce the same corrective state paychan produced.
  const replay = await server.request(H.voucherPayment1.header);
  check(replay.status === 402, 'replayed voucher 1: reference server answers a corrective 402');
  if (replay.status === 402) {
    const theirPr = coreHttp.decodePaymentRequiredHeader(headerGetter(replay.headers)('PAYMENT-REQUIRED'));
    const ourPr = coreHttp.decodePaymentRequiredHeader(H.corrective402.header);
    const t = theirPr.accepts[0].extra;
    const o = ourPr.accepts[0].extra;
    check(theirPr.error === ourPr.error, 'same corrective error code', show(ourPr.error, theirPr.error));
    check(t.channelState !== undefined && t.voucherState !== undefined && eq(t.channelState.chargedCumulativeAmount, o.channelState.chargedCumulativeAmount) && eq(t.voucherState.signedMaxClaimable, o.voucherState.signedMaxClaimable)
      && t.voucherState.signature === o.voucherState.signature && eq(t.channelState.balance, o.channelState.balance),
      "reference server's corrective state equals paychan's (charged, signedMaxClaimable, signature, balance)", `${JSON.stringify(t)} vs ${JSON.stringify(o)}`);
  }
  const refund = await server.request(H.refundPayment.header);
  check(refund.status === 200, 'refundPayment: reference server settles the refund (200)', `status ${refund.status}`);
  const sent = facilitator.settled.find((p) => p.payload.type === 'refund');
  check(sent && eq(sent.payload.amount, H.refundPayment.expect.amount ?? sent.payload.amount), 'the refund it sent to the facilitator keeps paychan\'s amount');
});

console.log(`\n${checks} checks, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
