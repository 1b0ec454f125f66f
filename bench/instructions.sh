#!/usr/bin/env bash
# Instructions per request, wasmesh vs Envoy 1.40, under valgrind's callgrind: a count that does
# not depend on how busy the machine is (req/s on a shared 2-core machine swings 2-4x).
#
#   bench/instructions.sh [CONFIG...]      # default: basic wasm_headers (bench/proxy/*.yaml)
#
# For each proxy and config: start it under callgrind (one worker), send N and 2N HTTP/1.1
# requests (h2load --h1, 10 connections) in two separate runs, and report
# (Ir(2N) - Ir(N)) / N: start-up, config loading and module compilation cancel out. User-space
# instructions of all the proxy's threads; kernel work (the TCP stack, the same for both) is
# not counted. Needs valgrind, h2load, nginx, envoy and a release build. Slow (Envoy with V8
# under valgrind: ~2 min per run). Not a test.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
n="${REQUESTS:-2000}"
wasmesh_bin="${WASMESH_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/wasmesh}"
plugin_dir="${PLUGIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/wasm-plugins/bin}"
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(basic wasm_headers)
for tool in valgrind h2load nginx envoy curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$wasmesh_bin" ] || { echo "missing $wasmesh_bin: cargo build --release -p wasmesh" >&2; exit 1; }
# The pip package's `envoy` is a Python launcher; run the binary it wraps directly.
envoy_bin="$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || command -v envoy)"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
source "$here/lib.sh"
start_upstream "$work"

# run PROXY CONFIG REQUESTS: prints the instructions callgrind collected.
run() {
  local proxy=$1 cfg=$2 count=$3 listen admin out pid
  listen="$(port)"; admin="$(port)"; out="$work/$proxy.$cfg.$count"
  sed -e "s/{LISTEN_PORT}/$listen/g" -e "s/{ADMIN_PORT}/$admin/g" -e "s/{UPSTREAM_PORT}/$up_port/g" \
    -e "s#{PLUGIN_DIR}#$plugin_dir#g" "$here/proxy/$cfg.yaml" > "$out.yaml"
  if [ "$proxy" = envoy ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$envoy_bin" -c "$out.yaml" \
      --concurrency 1 --base-id "$admin" -l error < /dev/null > "$out.log" 2>&1 &
  else
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$wasmesh_bin" proxy \
      -c "$out.yaml" --concurrency 1 < /dev/null > "$out.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.5
  done
  h2load --h1 -n "$count" -c 10 "http://127.0.0.1:$listen/" > "$out.h2load" 2>&1
  grep -q "$count succeeded" "$out.h2load" || { echo "$proxy $cfg: requests failed" >&2; cat "$out.h2load" >&2; exit 1; }
  curl -s -X POST "http://127.0.0.1:$admin/quitquitquit" >/dev/null || true
  wait "$pid" || true
  awk '/Collected :/ {gsub(",", "", $4); print $4}' "$out.log"
}

per_request() { # proxy cfg
  local a b
  a="$(run "$1" "$2" "$n")"; b="$(run "$1" "$2" $((2 * n)))"
  awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%.0f", (b - a) / n }'
}

printf "%-16s %16s %16s %14s\n" "config" "envoy instr/req" "wasmesh instr/req" "wasmesh/envoy"
declare -A e w
for cfg in "${configs[@]}"; do
  e[$cfg]="$(per_request envoy "$cfg")"
  w[$cfg]="$(per_request wasmesh "$cfg")"
  printf "%-16s %16s %16s %14s\n" "$cfg" "${e[$cfg]}" "${w[$cfg]}" \
    "$(awk -v a="${w[$cfg]}" -v b="${e[$cfg]}" 'BEGIN { printf "%.2f", a / b }')"
done
base="${configs[0]}"
for cfg in "${configs[@]:1}"; do
  printf "%-16s envoy %+d (%+.0f %%), wasmesh %+d (%+.0f %%) instructions per request vs %s\n" "$cfg" \
    $((e[$cfg] - e[$base])) "$(awk -v a="${e[$cfg]}" -v b="${e[$base]}" 'BEGIN { print (a / b - 1) * 100 }')" \
    $((w[$cfg] - w[$base])) "$(awk -v a="${w[$cfg]}" -v b="${w[$base]}" 'BEGIN { print (a / b - 1) * 100 }')" "$base"
done
