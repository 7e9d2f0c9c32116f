#!/usr/bin/env node
// paychan: end-to-end smoke test of the committed contract artifacts on a real anvil dev chain, driven by the
// x402 reference SDK (@x402/evm batch-settlement client + facilitator), the judge of wire compatibility.
//
// It places the contracts the way the dev chain harness does (runtime code at the canonical addresses with
// anvil_setCode, so no constructor runs there), then: the reference client signs a deposit (ERC-3009 through
// the collector); the reference facilitator verifies and settles it; a fresh client recovers the channel from
// chain through Multicall3 and signs a voucher; the facilitator verifies it, claims it with a receiver-authorizer
// signature, sweeps it with settle, and refunds the rest (claim + refund in one multicall).
//
// Usage (after `npm ci` at the repository root): node contracts/tools/devchain-smoke.mjs
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const viem = require('viem');
const { privateKeyToAccount } = require('viem/accounts');
const { foundry } = require('viem/chains');
const { toClientEvmSigner, toFacilitatorEvmSigner } = require('@x402/evm');
const { BatchSettlementEvmScheme: Client, computeChannelId } = require('@x402/evm/batch-settlement/client');
const { BatchSettlementEvmScheme: Facilitator } = require('@x402/evm/batch-settlement/facilitator');

const ESCROW = '0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003';
const COLLECTOR = '0x4020806089470a89826cB9fB1f4059150b550004';
const MULTICALL3 = '0xcA11bde05977b3631167028862bE2a173976CA11';
// anvil's default accounts 0..3
const KEYS = [
  '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80', // deployer / facilitator
  '0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', // payer
  '0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a', // receiver
  '0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6', // receiver authorizer
];
const [deployer, payer, receiver, receiverAuthorizer] = KEYS.map((k) => privateKeyToAccount(k));

const artifact = (name) => JSON.parse(fs.readFileSync(path.join(here, '..', 'artifacts', `${name}.json`), 'utf8'));
const escrowArt = artifact('BatchSettlement');
const tokenArt = artifact('DevStablecoin');

function assert(cond, msg) {
  if (!cond) throw new Error(`smoke: ${msg}`);
  console.log(`  ok  ${msg}`);
}

function findAnvil() {
  if (process.env.ANVIL) return process.env.ANVIL;
  for (let dir = here; path.dirname(dir) !== dir; dir = path.dirname(dir)) {
    const bin = path.join(dir, 'node_modules', '@foundry-rs', 'anvil-linux-amd64', 'bin', 'anvil');
    if (fs.existsSync(bin)) return bin;
  }
  throw new Error('anvil not found; run `npm ci` at the repository root or set ANVIL');
}

async function startAnvil() {
  const child = spawn(findAnvil(), ['--port', '0', '--hardfork', 'cancun'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const m = /Listening on ([\d.]+:\d+)/.exec(buf);
      if (m) resolve(`http://${m[1]}`);
    });
    child.on('exit', (code) => reject(new Error(`anvil exited with ${code}`)));
  });
  child.stdout.resume();
  return { child, url };
}

async function main() {
  const { child, url } = await startAnvil();
  try {
    const transport = viem.http(url);
    const pub = viem.createPublicClient({ chain: foundry, transport });
    const wallet = (account) => viem.createWalletClient({ account, chain: foundry, transport }).extend(viem.publicActions);
    const rpc = (method, params) => pub.request({ method, params });
    const sendAndWait = async (hash) => {
      const r = await pub.waitForTransactionReceipt({ hash });
      if (r.status !== 'success') throw new Error(`transaction ${hash} reverted`);
      return r;
    };

    console.log(`anvil at ${url}`);
    // --- place the contracts like the dev chain harness ---------------------------------------------------
    await rpc('anvil_setCode', [ESCROW, escrowArt.deployedBytecode.object]);
    await rpc('anvil_setCode', [MULTICALL3, artifact('Multicall3').deployedBytecode.object]);
    const dep = wallet(deployer);
    const collectorArt = artifact('ERC3009DepositCollector');
    const collectorTx = await dep.deployContract({ abi: collectorArt.abi, bytecode: collectorArt.bytecode.object, args: [ESCROW] });
    const collectorAt = (await sendAndWait(collectorTx)).contractAddress;
    await rpc('anvil_setCode', [COLLECTOR, await pub.getCode({ address: collectorAt })]);
    const tokenTx = await dep.deployContract({
      abi: tokenArt.abi, bytecode: tokenArt.bytecode.object, args: ['USD Coin', 'USDC', '2', deployer.address],
    });
    const token = (await sendAndWait(tokenTx)).contractAddress;
    await sendAndWait(await dep.writeContract({ address: token, abi: tokenArt.abi, functionName: 'mint', args: [payer.address, 10_000_000n] }));
    const read = (address, abi, functionName, args = []) => pub.readContract({ address, abi, functionName, args });
    assert(
      (await read(COLLECTOR, collectorArt.abi, 'batchSettlement')).toLowerCase() === ESCROW.toLowerCase(),
      'collector at its canonical address serves the canonical escrow',
    );

    // --- the reference SDK against our contracts -------------------------------------------------------------
    const requirements = {
      scheme: 'batch-settlement',
      network: 'eip155:31337',
      amount: '1000',
      asset: token,
      payTo: receiver.address,
      maxTimeoutSeconds: 3600,
      extra: { receiverAuthorizer: receiverAuthorizer.address, withdrawDelay: 900, name: 'USD Coin', version: '2' },
    };
    const facilitator = new Facilitator(
      toFacilitatorEvmSigner({ ...wallet(deployer), address: deployer.address }),
      receiverAuthorizer,
    );
    const paymentPayload = (created) => ({ x402Version: 2, accepted: requirements, payload: created.payload });
    const gas = {};
    const gasOf = async (label, result) => {
      gas[label] = (await pub.getTransactionReceipt({ hash: result.transaction })).gasUsed;
    };

    const client = new Client(toClientEvmSigner(payer, pub));
    const deposit = paymentPayload(await client.createPaymentPayload(2, requirements));
    assert(deposit.payload.type === 'deposit', 'reference client starts with a deposit payload');
    const channelId = deposit.payload.voucher.channelId;
    assert(channelId === computeChannelId(deposit.payload.channelConfig, 'eip155:31337'), 'client channel id');
    const escrowId = await read(ESCROW, escrowArt.abi, 'getChannelId', [deposit.payload.channelConfig]);
    assert(escrowId === channelId, 'escrow getChannelId == reference computeChannelId');

    const v1 = await facilitator.verify(deposit, requirements);
    assert(v1.isValid, `facilitator verifies the deposit (${v1.invalidReason ?? 'valid'})`);
    const s1 = await facilitator.settle(deposit, requirements);
    assert(s1.success, `facilitator settles the deposit through the ERC-3009 collector (${s1.errorReason ?? s1.transaction})`);
    await gasOf('deposit (first, ERC-3009 collector)', s1);
    const depositAmount = BigInt(deposit.payload.deposit.amount);
    const [bal] = await read(ESCROW, escrowArt.abi, 'channels', [channelId]);
    assert(bal === depositAmount, `channel balance is the deposit (${bal})`);

    // A fresh client (empty storage) recovers the channel from chain (Multicall3 tryAggregate) and pays a voucher.
    const client2 = new Client(toClientEvmSigner(payer, pub));
    const voucher = paymentPayload(await client2.createPaymentPayload(2, requirements));
    assert(voucher.payload.type === 'voucher', 'recovered client pays with a voucher (no second deposit)');
    assert(voucher.payload.voucher.maxClaimableAmount === '1000', 'voucher is cumulative: 0 charged + 1000');
    const v2 = await facilitator.verify(voucher, requirements);
    assert(v2.isValid, `facilitator verifies the voucher (${v2.invalidReason ?? 'valid'})`);

    // Claim it (facilitator signs the ClaimBatch as receiver authorizer), then sweep.
    const claimRow = {
      voucher: { channel: voucher.payload.channelConfig, maxClaimableAmount: '1000' },
      signature: voucher.payload.voucher.signature,
      totalClaimed: '1000',
    };
    const s2 = await facilitator.settle({ x402Version: 2, accepted: requirements, payload: { type: 'claim', claims: [claimRow] } }, requirements);
    assert(s2.success, `claimWithSignature via the facilitator (${s2.errorReason ?? s2.transaction})`);
    await gasOf('claimWithSignature (1 channel)', s2);
    const s3 = await facilitator.settle(
      { x402Version: 2, accepted: requirements, payload: { type: 'settle', receiver: receiver.address, token } },
      requirements,
    );
    assert(s3.success, `settle via the facilitator (${s3.errorReason ?? s3.transaction})`);
    await gasOf('settle', s3);
    assert((await read(token, tokenArt.abi, 'balanceOf', [receiver.address])) === 1000n, 'receiver holds the claimed 1000');

    // Refund the rest: the facilitator sends claim + refund as one multicall.
    const refund = {
      type: 'refund',
      channelConfig: voucher.payload.channelConfig,
      voucher: voucher.payload.voucher,
      amount: (depositAmount - 1000n).toString(),
      refundNonce: '0',
      claims: [claimRow],
    };
    const s4 = await facilitator.settle({ x402Version: 2, accepted: requirements, payload: refund }, requirements);
    assert(s4.success, `multicall(claimWithSignature, refundWithSignature) via the facilitator (${s4.errorReason ?? s4.transaction})`);
    await gasOf('multicall(claim no-op, refundWithSignature)', s4);
    assert((await read(token, tokenArt.abi, 'balanceOf', [payer.address])) === 10_000_000n - 1000n, 'payer got the unclaimed rest back');
    assert((await read(token, tokenArt.abi, 'balanceOf', [ESCROW])) === 0n, 'escrow is empty');
    assert((await read(ESCROW, escrowArt.abi, 'refundNonce', [channelId])) === 1n, 'refund nonce advanced');
    console.log('transaction gas (receipt gasUsed, including the 21,000 intrinsic gas and calldata):');
    for (const [label, used] of Object.entries(gas)) console.log(`  ${String(used).padStart(7)}  ${label}`);
    console.log('devchain smoke test: OK');
  } finally {
    child.kill('SIGTERM');
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
