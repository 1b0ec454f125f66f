#!/usr/bin/env bash
# Wasm filter overhead, wasmesh vs Envoy 1.40 (V8), one worker each, same nginx upstream, same
# load: no filter, one native filter (RBAC, the filter-chain cost without Wasm), one header plugin,
# one body-rewriting plugin, three plugins chained.
# Runs bench/proxy_bench.sh once per configuration. Needs a release build (cargo build --release
# -p wasmesh) and the example plugins (cargo build -p test-plugins). Not a test.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for cfg in basic native_rbac wasm_headers wasm_body wasm_chain3; do
  "$here/proxy_bench.sh" "$here/proxy/$cfg.yaml" | tail -10
done
