#!/usr/bin/env bash
# paychan: build the contracts and (re)write contracts/artifacts/<Name>.json for BatchSettlement,
# ERC3009DepositCollector, DevStablecoin and Multicall3.
#
#   contracts/tools/build-artifacts.sh              # regenerate the committed artifacts
#   contracts/tools/build-artifacts.sh <dir> --fresh  # write them to <dir>, compiling from scratch in a temp dir
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
dest="${1:-$root/artifacts}"
mode="${2:-}"

cd "$root"
if [[ "$mode" == "--fresh" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$here/forge" build --quiet --out "$work/out" --cache-path "$work/cache"
  out="$work/out"
else
  "$here/forge" build --quiet
  out="$root/out"
fi
node "$here/extract-artifacts.mjs" "$out" "$dest"
echo "artifacts written to $dest"
