#!/usr/bin/env bash
# paychan: re-measure the escrow's gas (test/gas/) and rewrite contracts/snapshots/BatchSettlementGas.json.
# Plain `forge test` never writes snapshots (gas_snapshot_emit = false in foundry.toml), so a filtered run
# cannot leave a partial file behind; this script is the one writer.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
FORGE_SNAPSHOT_EMIT=true "$here/forge" test --match-path 'test/gas/*' "$@"
echo "gas snapshot written to contracts/snapshots/BatchSettlementGas.json"
