#!/usr/bin/env node
// paychan: turns forge build output into the committed contract artifacts.
// Usage: node tools/extract-artifacts.mjs <forge out dir> <artifacts dir>
// Writes <artifacts dir>/<Name>.json = {"abi", "bytecode": {"object"}, "deployedBytecode": {"object"}}, the
// Foundry artifact subset that alloy's `sol!` macro binds, pretty-printed with a trailing newline.
import fs from 'node:fs';
import path from 'node:path';

export const CONTRACTS = [
  ['BatchSettlement.sol', 'BatchSettlement'],
  ['ERC3009DepositCollector.sol', 'ERC3009DepositCollector'],
  ['DevStablecoin.sol', 'DevStablecoin'],
  ['Multicall3.sol', 'Multicall3'],
];

const [outDir, artifactsDir] = process.argv.slice(2);
if (!outDir || !artifactsDir) {
  console.error('usage: extract-artifacts.mjs <forge out dir> <artifacts dir>');
  process.exit(2);
}
fs.mkdirSync(artifactsDir, { recursive: true });
for (const [file, name] of CONTRACTS) {
  const src = path.join(outDir, file, `${name}.json`);
  if (!fs.existsSync(src)) {
    console.error(`extract-artifacts: ${src} is missing (did forge build succeed?)`);
    process.exit(1);
  }
  const forge = JSON.parse(fs.readFileSync(src, 'utf8'));
  const code = (o) => {
    const hex = o && o.object;
    if (typeof hex !== 'string' || !/^0x[0-9a-f]+$/i.test(hex)) {
      console.error(`extract-artifacts: ${name} has no linked bytecode`);
      process.exit(1);
    }
    return { object: hex.toLowerCase() };
  };
  const artifact = { abi: forge.abi, bytecode: code(forge.bytecode), deployedBytecode: code(forge.deployedBytecode) };
  fs.writeFileSync(path.join(artifactsDir, `${name}.json`), JSON.stringify(artifact, null, 2) + '\n');
}
