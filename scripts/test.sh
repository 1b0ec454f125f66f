#!/usr/bin/env bash
# Runs every test (debug build): unit tests, and integration tests against real Envoy 1.40, a
# real OCI registry, curl and h2load. Installs what they need first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --test
cargo test --workspace --no-fail-fast
# The control plane's Kubernetes source (optional feature; against a fake API server).
cargo test -p wasmesh-control-plane --features kubernetes --no-fail-fast
