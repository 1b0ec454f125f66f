#!/usr/bin/env bash
# Agent ECDS latency: control plane push → rewritten ECDS at the proxy, for a cached module
# (goal < 5 ms) and for a 1 MiB module pulled from a local docker-registry (goal < 100 ms).
# Prints figures; not a pass/fail test. Needs docker-registry (.ci/run installs it).
#
# Built in the dev profile, like the tests (an optimized build is faster still:
# drop `--profile dev` if you have ~20 minutes for a release build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench -p wasmesh-agent --bench ecds --profile dev
