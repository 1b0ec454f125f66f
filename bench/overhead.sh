#!/usr/bin/env bash
# Wasm overhead vs no filter, measured the way istio#27636 measured Envoy's (1 connection, 1
# worker: the proxy is not CPU bound, so the figure is what a plugin adds to each request's
# latency), for Envoy 1.40 and wasmesh side by side in one run.
#
#   bench/overhead.sh [PLUGIN_BOOTSTRAP]      # default bench/proxy/wasm_headers.yaml
#
# Starts nginx, then four proxies (Envoy and wasmesh, each with bench/proxy/basic.yaml and with
# the plugin bootstrap), and runs `wrk -t1 -c$CONNECTIONS -d$DURATION` against each in turn,
# ROUNDS times, alternating, so drift on a shared machine hits all four alike. Prints the median
# req/s and p50 of each, and the overhead (1 - plugin/no-filter req/s) for each proxy.
# Knobs: CONNECTIONS (default 1), DURATION (default 4s), ROUNDS (default 5).
# Needs: envoy, nginx, wrk, a release build (cargo build --release -p wasmesh) and the example
# plugins (cargo build -p test-plugins). Not a test.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
plugin_tpl="${1:-$here/proxy/wasm_headers.yaml}"
conns="${CONNECTIONS:-1}"
duration="${DURATION:-4s}"
rounds="${ROUNDS:-5}"
wasmesh_bin="${WASMESH_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/wasmesh}"
plugin_dir="${PLUGIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/wasm-plugins/bin}"
for tool in envoy nginx wrk; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$wasmesh_bin" ] || { echo "missing $wasmesh_bin: cargo build --release -p wasmesh" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
source "$here/lib.sh"
start_upstream "$work"

declare -A listen
# start NAME PROXY TEMPLATE
start() {
  local name=$1 proxy=$2 tpl=$3 p a
  p="$(port)"; a="$(port)"
  sed -e "s/{LISTEN_PORT}/$p/g" -e "s/{ADMIN_PORT}/$a/g" -e "s/{UPSTREAM_PORT}/$up_port/g" \
    -e "s#{PLUGIN_DIR}#$plugin_dir#g" "$tpl" > "$work/$name.yaml"
  if [ "$proxy" = envoy ]; then
    envoy -c "$work/$name.yaml" --concurrency 1 --base-id "$a" -l error >"$work/$name.log" 2>&1 &
  else
    RUST_LOG=warn "$wasmesh_bin" proxy -c "$work/$name.yaml" --concurrency 1 >"$work/$name.log" 2>&1 &
  fi
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$a/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$a/ready" >/dev/null || { echo "$name not ready" >&2; exit 1; }
  listen[$name]=$p
}
names=(envoy-none envoy-plugin wasmesh-none wasmesh-plugin)
start envoy-none envoy "$here/proxy/basic.yaml"
start envoy-plugin envoy "$plugin_tpl"
start wasmesh-none wasmesh "$here/proxy/basic.yaml"
start wasmesh-plugin wasmesh "$plugin_tpl"

for n in "${names[@]}"; do wrk -t1 -c2 -d1s "http://127.0.0.1:${listen[$n]}/" >/dev/null; done
for r in $(seq 1 "$rounds"); do
  for n in "${names[@]}"; do
    wrk -t1 -c"$conns" -d"$duration" --latency -H "x-api-key: k" "http://127.0.0.1:${listen[$n]}/" |
      awk -v n="$n" '
        function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1000000; return v }
        /Requests\/sec/ {rps=$2}
        $1=="50%" || $1=="50.000%" {p50=us($2)}
        END {printf "%s %.0f %.0f\n", n, rps, p50}' >> "$work/runs"
  done
done

median() { grep "^$1 " "$work/runs" | awk -v c="$2" '{print $c}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo
echo "plugin bootstrap: $(basename "$plugin_tpl"); 1 worker each; $conns connection(s); $rounds rounds of $duration, median"
printf "%-16s %14s %14s %14s %14s %14s\n" proxy "req/s none" "req/s plugin" "overhead" "p50 us none" "p50 us plugin"
for p in envoy wasmesh; do
  a="$(median "$p-none" 2)"; b="$(median "$p-plugin" 2)"
  pa="$(median "$p-none" 3)"; pb="$(median "$p-plugin" 3)"
  printf "%-16s %14s %14s %14s %14s %14s\n" "$p" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f %%", (1 - b / a) * 100 }')" "$pa" "$pb"
done
