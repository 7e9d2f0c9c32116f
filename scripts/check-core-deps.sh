#!/usr/bin/env bash
# paychan-core must not link a runtime, store, network or chain client. Fails listing any
# forbidden crate in its normal (non-dev) dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|mio|async-std|smol|hyper|reqwest|h2|tonic|axum|tower|sled|rocksdb|alloy-provider|alloy-transport|alloy-rpc-client|alloy-contract|ureq|socket2|rustls)$'
deps=$(cargo tree -p paychan-core -e normal --prefix none --no-dedupe --locked | awk '{print $1}' | sort -u)
bad=$(printf '%s\n' "$deps" | grep -E "$forbidden" || true)
if [ -n "$bad" ]; then
  echo "paychan-core depends on I/O crates:" >&2
  printf '  %s\n' $bad >&2
  exit 1
fi
echo "paychan-core dependencies: $(printf '%s\n' "$deps" | wc -l) crates, none of them I/O"
