#!/usr/bin/env bash
# Builds the AssemblyScript test plugins: plugins/assemblyscript/<name>/build/<name>.wasm.
# Called by crates/test-plugins/build.rs; safe to run by hand. Needs node + npm (node 20).
# `npm ci` runs only when node_modules is missing (package-lock.json pins the compiler:
# assemblyscript 0.14.x is the newest that compiles @solo-io/proxy-runtime 0.1.8).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

for tool in node npm npx; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: '$tool' not found on PATH; the AssemblyScript test plugins need Node.js 20 + npm (CI: see .ci/run)" >&2
    exit 1
  fi
done

build() {
  local name="$1"
  local dir="$here/$name"
  cd "$dir"
  if [ ! -d node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
  mkdir -p build
  # Write to a temporary file and rename, so a reader never sees a half-written module.
  npx --no-install asc assembly/index.ts -b "build/$name.wasm.tmp" \
    --use abort=abort_proc_exit --optimize
  mv -f "build/$name.wasm.tmp" "build/$name.wasm"
}

build add_header
