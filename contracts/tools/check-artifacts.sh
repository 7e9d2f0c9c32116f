#!/usr/bin/env bash
# paychan CI check: the committed contract artifacts and gas snapshot must match a fresh build, and the
# BatchSettlement ABI must stay compatible with the x402 reference SDK (tools/check-abi.mjs).
# Exits non-zero with a message naming what to regenerate. Leaves the working tree untouched.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
tmp="$(mktemp -d)"
snapshot="$root/snapshots/BatchSettlementGas.json"
trap 'rm -rf "$tmp"' EXIT
status=0

echo "== artifacts: fresh build"
"$here/build-artifacts.sh" "$tmp/artifacts" --fresh >/dev/null
for f in "$tmp"/artifacts/*.json; do
  name="$(basename "$f")"
  if [[ ! -f "$root/artifacts/$name" ]]; then
    echo "MISSING: contracts/artifacts/$name is not committed"
    status=1
  elif ! cmp -s "$f" "$root/artifacts/$name"; then
    fields="$(node -e '
      const [a, b] = process.argv.slice(1).map((f) => require(f));
      console.log(["abi", "bytecode", "deployedBytecode"]
        .filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k])).join(", ") || "formatting");
    ' "$root/artifacts/$name" "$f")"
    echo "STALE: contracts/artifacts/$name differs from a fresh build of contracts/src ($fields)"
    status=1
  fi
done
for f in "$root"/artifacts/*.json; do
  [[ -f "$tmp/artifacts/$(basename "$f")" ]] || { echo "UNEXPECTED: contracts/artifacts/$(basename "$f") is not produced by the build"; status=1; }
done
[[ $status -eq 0 ]] && echo "artifacts up to date"

echo "== ABI compatibility with the x402 reference"
if ! node "$here/check-abi.mjs" "$root/artifacts/BatchSettlement.json"; then
  status=1
fi

echo "== gas snapshot"
if [[ ! -f "$snapshot" ]]; then
  echo "MISSING: contracts/snapshots/BatchSettlementGas.json"
  status=1
else
  cd "$root"
  # Measure into a temp dir so the working tree is never touched.
  if ! FOUNDRY_SNAPSHOTS="$tmp/snapshots" FORGE_SNAPSHOT_EMIT=true \
      "$here/forge" test --match-path 'test/gas/*' >"$tmp/gas.log" 2>&1; then
    tail -30 "$tmp/gas.log"
    echo "FAILED: the gas tests do not pass"
    status=1
  elif ! cmp -s "$snapshot" "$tmp/snapshots/BatchSettlementGas.json"; then
    diff "$snapshot" "$tmp/snapshots/BatchSettlementGas.json" || true
    echo "STALE: contracts/snapshots/BatchSettlementGas.json differs from the measured gas (< committed, > measured)"
    status=1
  else
    echo "gas snapshot up to date"
  fi
fi

if [[ $status -ne 0 ]]; then
  echo
  echo "Regenerate with: contracts/tools/build-artifacts.sh && contracts/tools/gas-snapshot.sh"
  exit 1
fi
echo "OK"
