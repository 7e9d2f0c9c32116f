// paychan golden vectors: shared harness for generate.mjs and verify-paychan.mjs.
//
// Everything protocol-relevant here comes from the x402 reference SDK (@x402/evm, @x402/core) and viem.
// The only stand-in is StubFacilitator: an in-process FacilitatorClient whose /verify and /settle answers
// have the shapes the reference facilitator (@x402/evm/batch-settlement/facilitator) returns after talking to
// a chain (verifyVoucher / verifyDeposit extra, settleDeposit, buildRefundExtra), over an in-memory ledger.
// It does check what can be checked without a chain: channel ids, voucher signatures and ERC-3009
// authorizations. The resource server, its batch-settlement scheme and the header codecs are the SDK's own.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
const require = createRequire(import.meta.url);

function load(name) {
  try {
    return require(name);
  } catch (e) {
    console.error(`cannot load ${name} (${e.message}); run \`npm ci\` at the repository root (${repoRoot})`);
    process.exit(2);
  }
}

export const viem = load('viem');
export const { privateKeyToAccount } = load('viem/accounts');
export const evm = load('@x402/evm');
export const bsClient = load('@x402/evm/batch-settlement/client');
export const bsServer = load('@x402/evm/batch-settlement/server');
export const coreHttp = load('@x402/core/http');
export const coreClient = load('@x402/core/client');
export const coreServer = load('@x402/core/server');
export const schemas = load('@x402/core/schemas');

export function packageVersion(name) {
  const file = path.join(repoRoot, 'node_modules', ...name.split('/'), 'package.json');
  return JSON.parse(fs.readFileSync(file, 'utf8')).version;
}

// anvil's default accounts (public test keys; never use them for anything real).
export const ANVIL_KEYS = [
  '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80',
  '0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d',
  '0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a',
  '0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6',
  '0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a',
  '0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba',
  '0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e',
  '0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356',
  '0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97',
  '0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6',
];

export const ZERO_ADDRESS = '0x0000000000000000000000000000000000000000';
export const ESCROW = viem.getAddress(evm.BATCH_SETTLEMENT_ADDRESS);
export const ERC3009_COLLECTOR = viem.getAddress(evm.ERC3009_DEPOSIT_COLLECTOR_ADDRESS);

export function chainIdOf(network) {
  const m = /^eip155:(\d+)$/.exec(network);
  if (!m) throw new Error(`not an eip155 network: ${network}`);
  return Number(m[1]);
}

/** The escrow's EIP-712 domain exactly as the SDK builds it (getBatchSettlementEip712Domain, internal). */
export function batchDomain(chainId) {
  return { ...evm.BATCH_SETTLEMENT_DOMAIN, chainId, verifyingContract: ESCROW };
}

/** A copy of the SDK's internal `receiveAuthorizationTypes` (not exported by @x402/evm 2.27). */
export const receiveAuthorizationTypes = {
  ReceiveWithAuthorization: [
    { name: 'from', type: 'address' },
    { name: 'to', type: 'address' },
    { name: 'value', type: 'uint256' },
    { name: 'validAfter', type: 'uint256' },
    { name: 'validBefore', type: 'uint256' },
    { name: 'nonce', type: 'bytes32' },
  ],
};

/** The SDK's internal buildErc3009DepositNonce: keccak256(abi.encode(bytes32 channelId, uint256 salt)). */
export function depositNonce(channelId, salt) {
  return viem.keccak256(viem.encodeAbiParameters([{ type: 'bytes32' }, { type: 'uint256' }], [channelId, BigInt(salt)]));
}

export function voucherDigest(chainId, channelId, maxClaimableAmount) {
  return viem.hashTypedData({
    domain: batchDomain(chainId),
    types: evm.voucherTypes,
    primaryType: 'Voucher',
    message: { channelId, maxClaimableAmount: BigInt(maxClaimableAmount) },
  });
}

export async function recoverVoucherSigner(chainId, channelId, maxClaimableAmount, signature) {
  return viem.recoverTypedDataAddress({
    domain: batchDomain(chainId),
    types: evm.voucherTypes,
    primaryType: 'Voucher',
    message: { channelId, maxClaimableAmount: BigInt(maxClaimableAmount) },
    signature,
  });
}

export function receiveAuthorizationMessage({ from, to, value, validAfter, validBefore, nonce }) {
  return {
    from: viem.getAddress(from),
    to: viem.getAddress(to),
    value: BigInt(value),
    validAfter: BigInt(validAfter),
    validBefore: BigInt(validBefore),
    nonce,
  };
}

export async function recoverReceiveAuthorization(tokenDomain, message, signature) {
  return viem.recoverTypedDataAddress({
    domain: tokenDomain,
    types: receiveAuthorizationTypes,
    primaryType: 'ReceiveWithAuthorization',
    message: receiveAuthorizationMessage(message),
    signature,
  });
}

export const sameAddress = (a, b) => typeof a === 'string' && typeof b === 'string' && a.toLowerCase() === b.toLowerCase();

/** JSON-safe copy (bigint → decimal string). */
export function plain(v) {
  return JSON.parse(JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? x.toString() : x)));
}

/**
 * An in-process FacilitatorClient answering like the reference facilitator over an in-memory ledger
 * (see the file header). `log` records every call; `settled` every settle payload (with the server's
 * enrichment, e.g. the receiver authorizer's refund and claim-batch signatures).
 */
export class StubFacilitator {
  constructor({ networks, receiverAuthorizer, facilitatorAddress }) {
    this.networks = networks;
    this.receiverAuthorizer = receiverAuthorizer;
    this.facilitatorAddress = facilitatorAddress;
    this.ledger = new Map();
    this.txCount = 0;
    this.log = [];
    this.settled = [];
  }

  state(channelId) {
    const key = channelId.toLowerCase();
    if (!this.ledger.has(key)) {
      this.ledger.set(key, { balance: 0n, totalClaimed: 0n, withdrawRequestedAt: 0, refundNonce: 0n });
    }
    return this.ledger.get(key);
  }

  tx(kind) {
    this.txCount += 1;
    return viem.keccak256(viem.toHex(`paychan-vectors:${kind}:${this.txCount}`));
  }

  async getSupported() {
    return {
      kinds: this.networks.map((network) => ({
        x402Version: 2,
        scheme: 'batch-settlement',
        network,
        extra: { receiverAuthorizer: this.receiverAuthorizer },
      })),
      extensions: [],
      signers: { 'eip155:*': [this.facilitatorAddress] },
    };
  }

  async checkVoucher(raw, requirements) {
    const problems = [];
    const chainId = chainIdOf(requirements.network);
    if (bsClient.computeChannelId(raw.channelConfig, chainId).toLowerCase() !== raw.voucher.channelId.toLowerCase()) {
      problems.push('invalid_batch_settlement_evm_channel_id_mismatch');
    }
    if (!sameAddress(raw.channelConfig.payerAuthorizer, ZERO_ADDRESS)) {
      const who = await recoverVoucherSigner(chainId, raw.voucher.channelId, raw.voucher.maxClaimableAmount, raw.voucher.signature);
      if (!sameAddress(who, raw.channelConfig.payerAuthorizer)) problems.push('invalid_batch_settlement_evm_voucher_signature');
    }
    return problems;
  }

  snapshotExtra(channelId, s) {
    return {
      channelId,
      balance: s.balance.toString(),
      totalClaimed: s.totalClaimed.toString(),
      withdrawRequestedAt: s.withdrawRequestedAt,
      refundNonce: s.refundNonce.toString(),
    };
  }

  async verify(paymentPayload, requirements) {
    const raw = paymentPayload.payload;
    const payer = raw.channelConfig?.payer;
    const problems = await this.checkVoucher(raw, requirements);
    const s = this.state(raw.voucher.channelId);
    if (evm.isBatchSettlementDepositPayload(raw)) {
      const auth = raw.deposit.authorization.erc3009Authorization;
      const chainId = chainIdOf(requirements.network);
      const tokenDomain = { name: requirements.extra.name, version: requirements.extra.version, chainId, verifyingContract: viem.getAddress(requirements.asset) };
      const from = await recoverReceiveAuthorization(
        tokenDomain,
        {
          from: payer,
          to: ERC3009_COLLECTOR,
          value: raw.deposit.amount,
          validAfter: auth.validAfter,
          validBefore: auth.validBefore,
          nonce: depositNonce(raw.voucher.channelId, auth.salt),
        },
        auth.signature,
      );
      if (!sameAddress(from, payer)) problems.push('invalid_batch_settlement_evm_receive_authorization_signature');
      if (BigInt(raw.voucher.maxClaimableAmount) > s.balance + BigInt(raw.deposit.amount)) problems.push('invalid_batch_settlement_evm_cumulative_exceeds_balance');
    } else {
      const max = BigInt(raw.voucher.maxClaimableAmount);
      if (s.balance === 0n) problems.push('invalid_batch_settlement_evm_channel_not_found');
      else if (max > s.balance) problems.push('invalid_batch_settlement_evm_cumulative_exceeds_balance');
      else if (raw.type === 'refund' ? max < s.totalClaimed : max <= s.totalClaimed) problems.push('invalid_batch_settlement_evm_cumulative_below_claimed');
    }
    this.log.push({ op: 'verify', type: raw.type, problems });
    if (problems.length > 0) return { isValid: false, invalidReason: problems[0], payer };
    return { isValid: true, payer, extra: this.snapshotExtra(raw.voucher.channelId, s) };
  }

  async settle(paymentPayload, requirements) {
    const raw = paymentPayload.payload;
    const network = requirements.network;
    this.settled.push(plain(paymentPayload));
    this.log.push({ op: 'settle', type: raw.type });
    if (evm.isBatchSettlementDepositPayload(raw)) {
      const s = this.state(raw.voucher.channelId);
      s.balance += BigInt(raw.deposit.amount);
      return {
        success: true,
        transaction: this.tx('deposit'),
        network,
        payer: raw.channelConfig.payer,
        amount: raw.deposit.amount,
        extra: { channelState: this.snapshotExtra(raw.voucher.channelId, s) },
      };
    }
    const applyClaims = (claims) => {
      for (const c of claims ?? []) {
        const id = bsClient.computeChannelId(c.voucher.channel, chainIdOf(network));
        const s = this.state(id);
        const t = BigInt(c.totalClaimed);
        if (t > s.totalClaimed) s.totalClaimed = t;
      }
    };
    if (raw.type === 'claim') {
      applyClaims(raw.claims);
      return { success: true, transaction: this.tx('claim'), network };
    }
    if (raw.type === 'settle') {
      return { success: true, transaction: this.tx('settle'), network };
    }
    if (evm.isBatchSettlementRefundPayload(raw)) {
      const channelId = bsClient.computeChannelId(raw.channelConfig, chainIdOf(network));
      applyClaims(raw.claims);
      const s = this.state(channelId);
      const available = s.balance - s.totalClaimed;
      const requested = BigInt(raw.amount);
      const refunded = requested > available ? available : requested;
      s.balance -= refunded;
      s.refundNonce += 1n;
      return {
        success: true,
        transaction: this.tx('refund'),
        network,
        payer: raw.channelConfig.payer,
        amount: refunded.toString(),
        extra: { channelState: { ...this.snapshotExtra(channelId, s), withdrawRequestedAt: 0 } },
      };
    }
    return { success: false, errorReason: 'invalid_batch_settlement_evm_payload_type', transaction: '', network };
  }
}

/**
 * The reference resource server (x402ResourceServer + x402HTTPResourceServer + the batch-settlement server
 * scheme) protecting `GET /inference`, driven the way @x402/express drives it.
 */
export async function referenceServer({ facilitator, network, payTo, asset, amount, tokenName, tokenVersion, withdrawDelay, maxTimeoutSeconds, receiverAuthorizerSigner, url }) {
  const scheme = new bsServer.BatchSettlementEvmScheme(payTo, { receiverAuthorizerSigner, withdrawDelay });
  const resourceServer = new coreServer.x402ResourceServer(facilitator).register(network, scheme);
  const routes = {
    'GET /inference': {
      accepts: { scheme: 'batch-settlement', payTo, network, maxTimeoutSeconds, price: { amount, asset, extra: { name: tokenName, version: tokenVersion } } },
      resource: url,
      description: 'paychan golden vectors: one inference call',
      mimeType: 'application/json',
    },
  };
  const http = new coreServer.x402HTTPResourceServer(resourceServer, routes);
  await http.initialize();

  async function request(paymentHeader) {
    const adapter = {
      getHeader: (name) => (/^(payment-signature|x-payment)$/i.test(name) ? paymentHeader : undefined),
      getMethod: () => 'GET',
      getPath: () => '/inference',
      getUrl: () => url,
      getAcceptHeader: () => 'application/json',
      getUserAgent: () => 'paychan-vectors',
    };
    const context = { adapter, path: '/inference', method: 'GET', paymentHeader };
    const result = await http.processHTTPRequest(context);
    if (result.type === 'payment-error') return { status: result.response.status, headers: result.response.headers, body: result.response.body };
    if (result.type !== 'payment-verified') throw new Error(`unexpected ${result.type}`);
    // The handler runs and succeeds; then settlement, as the express middleware does it.
    const settle = await http.processSettlement(
      result.paymentPayload,
      result.paymentRequirements,
      result.declaredExtensions,
      { request: context, responseBody: Buffer.from('{"ok":true}'), responseHeaders: {} },
      undefined,
      result.beforeHandlerSettlement,
    );
    if (!settle.success) return { status: settle.response.status, headers: settle.response.headers, body: settle.response.body };
    return { status: 200, headers: settle.headers, body: { ok: true } };
  }

  /** A fetch() over `request`, for the SDK client's refund flow. */
  async function fetchImpl(_url, init) {
    const h = init?.headers ?? {};
    const sig = h['PAYMENT-SIGNATURE'] ?? h['payment-signature'];
    const res = await request(sig);
    fetchImpl.exchanges.push({ paymentSignature: sig, status: res.status, headers: res.headers });
    return new Response(JSON.stringify(res.body ?? {}), { status: res.status, headers: res.headers });
  }
  fetchImpl.exchanges = [];

  return { scheme, resourceServer, http, request, fetch: fetchImpl };
}

export function headerGetter(headers) {
  const lower = Object.fromEntries(Object.entries(headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  return (name) => lower[name.toLowerCase()] ?? null;
}
