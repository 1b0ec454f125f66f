#!/usr/bin/env bash
# Builds the AssemblyScript test plugins: plugins/assemblyscript/<name>/build/<name>.wasm.
# Called by crates/test-plugins/build.rs; safe to run by hand. Needs node + npm (node 20).
# `npm ci` runs only when node_modules is missing or incomplete (package-lock.json pins the compiler:
# assemblyscript 0.14.x is the newest that compiles @solo-io/proxy-runtime 0.1.8).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

for tool in node npm npx; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: '$tool' not found on PATH; the AssemblyScript test plugins need Node.js 20 + npm (CI: see .ci/run)" >&2
    exit 1
  fi
done

# Builds from several cargo target dirs may run this script at once: one at a time, or
# `npm ci` of one would delete node_modules under the other's compiler.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$here/.build.lock"
  flock 9
fi

build() {
  local name="$1"
  local dir="$here/$name"
  cd "$dir"
  # Missing, or left half-installed by an interrupted install.
  if [ ! -x node_modules/.bin/asc ] || [ ! -d node_modules/@solo-io/proxy-runtime ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
  mkdir -p build
  # Write to a temporary file and rename, so a reader never sees a half-written module.
  local tmp="build/$name.wasm.tmp.$$"
  npx --no-install asc assembly/index.ts -b "$tmp" --use abort=abort_proc_exit --optimize
  mv -f "$tmp" "build/$name.wasm"
}

build add_header
