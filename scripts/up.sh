#!/usr/bin/env bash
# The demo: builds wasmesh and runs `wasmesh up` (control plane, agent, gateway proxy, demo
# upstream and module source on loopback, with example plugins). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec cargo run -p wasmesh -- up "$@"
