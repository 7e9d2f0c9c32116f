#!/usr/bin/env node
// paychan: checks that our BatchSettlement ABI is a superset of what the x402 reference uses.
//
// 1. The reference SDK (@x402/evm, as installed by `npm ci`) ships the ABI it calls the escrow with
//    (`batchSettlementABI`, not exported, so it is read out of the SDK's bundled JS). Every function, event and
//    error it declares must exist in contracts/artifacts/BatchSettlement.json with the same name, parameter
//    types, parameter names (inputs and outputs, recursively) and state mutability.
// 2. The canonical contract's events and custom errors and the remaining public getters (interface facts from
//    the x402 contract, listed below) must exist with the same signatures and parameter names.
//
// Usage: node contracts/tools/check-abi.mjs [path/to/BatchSettlement.json]
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifactPath = process.argv[2] ?? path.join(here, '..', 'artifacts', 'BatchSettlement.json');

// ---------------------------------------------------------------------------------------------------------------
// Load both ABIs
// ---------------------------------------------------------------------------------------------------------------

function fail(msg) {
  console.error(`check-abi: ${msg}`);
  process.exit(1);
}

/** Returns the text of the JS array literal starting at `start` (which must point at '['). */
function arrayLiteral(text, start) {
  let depth = 0;
  let quote = null;
  for (let i = start; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      if (ch === '\\') i++;
      else if (ch === quote) quote = null;
      continue;
    }
    if (ch === '"' || ch === "'" || ch === '`') quote = ch;
    else if (ch === '[') depth++;
    else if (ch === ']' && --depth === 0) return text.slice(start, i + 1);
  }
  fail('unbalanced array literal in the SDK bundle');
}

/** Evaluates `var name = [...]` from a bundled SDK file, pulling in the helper arrays it references. */
function readSdkArray(file, name) {
  const text = fs.readFileSync(file, 'utf8');
  const defs = new Map();
  const define = (id) => {
    const decl = `var ${id} = [`;
    const at = text.indexOf(decl);
    if (at < 0) fail(`${path.relative(process.cwd(), file)} does not define ${id}`);
    defs.set(id, { at, literal: arrayLiteral(text, at + decl.length - 1) });
  };
  define(name);
  for (let attempt = 0; attempt < 20; attempt++) {
    // The bundle declares helpers before their users: keep its order.
    const prelude = [...defs]
      .sort((a, b) => a[1].at - b[1].at)
      .map(([id, d]) => `var ${id} = ${d.literal};`)
      .join('\n');
    try {
      return vm.runInNewContext(`${prelude}\n${name};`, Object.create(null));
    } catch (e) {
      const missing = /^(\w+) is not defined$/.exec(String(e && e.message));
      if (!e || e.name !== 'ReferenceError' || !missing) throw e;
      define(missing[1]);
    }
  }
  fail(`could not evaluate ${name}`);
}

/** The installed package directory (its package.json is not in the package's exports map). */
function packageDir(name) {
  for (let dir = here; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (path.dirname(dir) === dir) fail(`cannot find ${name}; run \`npm ci\` at the repository root`);
  }
}
const sdkDir = packageDir('@x402/evm');
const sdkVersion = JSON.parse(fs.readFileSync(path.join(sdkDir, 'package.json'), 'utf8')).version;
const sdkFile = path.join(sdkDir, 'dist', 'cjs', 'batch-settlement', 'facilitator', 'index.js');
const sdkAbi = readSdkArray(sdkFile, 'batchSettlementABI');
if (!fs.existsSync(artifactPath)) fail(`${artifactPath} not found; run contracts/tools/build-artifacts.sh`);
const ours = JSON.parse(fs.readFileSync(artifactPath, 'utf8')).abi;

// ---------------------------------------------------------------------------------------------------------------
// Canonical interface facts not covered by the SDK's ABI (events, errors, remaining getters)
// ---------------------------------------------------------------------------------------------------------------

const CONFIG = {
  type: 'tuple',
  components: [
    ['payer', 'address'], ['payerAuthorizer', 'address'], ['receiver', 'address'], ['receiverAuthorizer', 'address'],
    ['token', 'address'], ['withdrawDelay', 'uint40'], ['salt', 'bytes32'],
  ].map(([name, type]) => ({ name, type })),
};
const p = (name, type, extra = {}) => ({ name, type, ...extra });
const pc = (name, indexed) => ({ name, ...CONFIG, ...(indexed === undefined ? {} : { indexed }) });
const ev = (name, inputs) => ({ type: 'event', name, inputs, anonymous: false });
const er = (name) => ({ type: 'error', name, inputs: [] });
const view = (name, inputs, outputs) => ({ type: 'function', name, inputs, outputs, stateMutability: 'view' });
const CANONICAL = [
  ev('ChannelCreated', [p('channelId', 'bytes32', { indexed: true }), pc('config', false)]),
  ev('ChannelClosed', [p('channelId', 'bytes32', { indexed: true }), pc('config', false)]),
  ev('Deposited', [p('channelId', 'bytes32', { indexed: true }), p('sender', 'address', { indexed: true }),
    p('amount', 'uint128', { indexed: false }), p('newBalance', 'uint128', { indexed: false })]),
  ev('Claimed', [p('channelId', 'bytes32', { indexed: true }), p('sender', 'address', { indexed: true }),
    p('claimAmount', 'uint128', { indexed: false }), p('newTotalClaimed', 'uint128', { indexed: false })]),
  ev('Settled', [p('receiver', 'address', { indexed: true }), p('token', 'address', { indexed: true }),
    p('sender', 'address', { indexed: true }), p('amount', 'uint128', { indexed: false })]),
  ev('Refunded', [p('channelId', 'bytes32', { indexed: true }), p('sender', 'address', { indexed: true }),
    p('amount', 'uint128', { indexed: false })]),
  ev('WithdrawInitiated', [p('channelId', 'bytes32', { indexed: true }), p('amount', 'uint128', { indexed: false }),
    p('finalizeAfter', 'uint40', { indexed: false })]),
  ev('WithdrawFinalized', [p('channelId', 'bytes32', { indexed: true }), p('sender', 'address', { indexed: true }),
    p('amount', 'uint128', { indexed: false })]),
  ...['InvalidChannel', 'ZeroDeposit', 'DepositOverflow', 'InvalidSignature', 'NotReceiverAuthorizer',
    'NotAuthorizedToClaim', 'NotAuthorizedToRefund', 'ClaimExceedsCeiling', 'ClaimExceedsBalance',
    'WithdrawalAlreadyPending', 'WithdrawalNotPending', 'NotAuthorizedToFinalizeWithdraw', 'WithdrawDelayNotElapsed',
    'NothingToWithdraw', 'WithdrawAmountExceedsAvailable', 'WithdrawDelayOutOfRange', 'EmptyBatch',
    'DepositCollectionFailed', 'InvalidCollector', 'InvalidRefundNonce', 'ZeroRefund'].map(er),
  view('MIN_WITHDRAW_DELAY', [], [p('', 'uint40')]),
  view('MAX_WITHDRAW_DELAY', [], [p('', 'uint40')]),
  ...['VOUCHER_TYPEHASH', 'REFUND_TYPEHASH', 'CLAIM_ENTRY_TYPEHASH', 'CLAIM_BATCH_TYPEHASH'].map((n) =>
    view(n, [], [p('', 'bytes32')])),
  view('eip712Domain', [], [p('fields', 'bytes1'), p('name', 'string'), p('version', 'string'),
    p('chainId', 'uint256'), p('verifyingContract', 'address'), p('salt', 'bytes32'), p('extensions', 'uint256[]')]),
];

// ---------------------------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------------------------

const typeOf = (param) =>
  param.type.startsWith('tuple') ? `(${param.components.map(typeOf).join(',')})${param.type.slice(5)}` : param.type;
const signature = (item) => `${item.name}(${(item.inputs ?? []).map(typeOf).join(',')})`;

/** Canonical, comparable view of a parameter list: types, names, indexed flags, recursively. */
function shape(params = [], withIndexed = false) {
  return params.map((x) => ({
    name: x.name ?? '',
    type: x.type,
    ...(withIndexed ? { indexed: Boolean(x.indexed) } : {}),
    ...(x.components ? { components: shape(x.components) } : {}),
  }));
}

function describe(params = []) {
  return params
    .map((x) => `${typeOf(x)}${x.indexed ? ' indexed' : ''}${x.name ? ' ' + x.name : ''}${
      x.components ? ' {' + x.components.map((c) => c.name).join(', ') + '}' : ''}`)
    .join(', ');
}

const problems = [];
function check(expected, source) {
  const sig = signature(expected);
  const match = ours.find((o) => o.type === expected.type && signature(o) === sig);
  if (!match) {
    const sameName = ours.filter((o) => o.type === expected.type && o.name === expected.name);
    problems.push(`${source}: missing ${expected.type} ${sig}` +
      (sameName.length ? `\n    ours has: ${sameName.map(signature).join(' | ')}` : ''));
    return;
  }
  const isEvent = expected.type === 'event';
  const diffs = [];
  const want = JSON.stringify(shape(expected.inputs, isEvent));
  const got = JSON.stringify(shape(match.inputs, isEvent));
  if (want !== got) diffs.push(`inputs\n      reference: ${describe(expected.inputs)}\n      ours:      ${describe(match.inputs)}`);
  if (expected.type === 'function') {
    if (JSON.stringify(shape(expected.outputs)) !== JSON.stringify(shape(match.outputs))) {
      diffs.push(`outputs\n      reference: ${describe(expected.outputs)}\n      ours:      ${describe(match.outputs)}`);
    }
    if (expected.stateMutability && expected.stateMutability !== match.stateMutability) {
      diffs.push(`stateMutability: reference ${expected.stateMutability}, ours ${match.stateMutability}`);
    }
  }
  if (isEvent && Boolean(expected.anonymous) !== Boolean(match.anonymous)) diffs.push('anonymous flag differs');
  if (diffs.length) problems.push(`${source}: ${expected.type} ${sig} differs in ${diffs.join('\n    ')}`);
}

for (const item of sdkAbi) check(item, `@x402/evm ${sdkVersion} batchSettlementABI`);
for (const item of CANONICAL) check(item, 'canonical x402BatchSettlement interface');

const covered = new Set([...sdkAbi, ...CANONICAL].map((i) => `${i.type} ${signature(i)}`));
const extras = ours.filter((o) => o.type !== 'constructor' && !covered.has(`${o.type} ${signature(o)}`));

if (problems.length) {
  console.error(`check-abi: ${problems.length} incompatibilit${problems.length === 1 ? 'y' : 'ies'} in ${artifactPath}:`);
  for (const pr of problems) console.error(`  - ${pr}`);
  process.exit(1);
}
console.log(`check-abi: OK: ${sdkAbi.length} entries of the @x402/evm ${sdkVersion} batchSettlementABI and ` +
  `${CANONICAL.length} canonical interface entries match BatchSettlement exactly.`);
if (extras.length) {
  console.log(`check-abi: entries beyond the reference (${extras.length}): ` +
    extras.map((o) => `${o.type} ${signature(o)}`).join(', '));
}
