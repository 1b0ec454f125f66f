//! ABI benchmarks, printed next to a native Rust baseline (never asserted):
//! - `on_request_headers` round trip with 10 headers, plugin reads one and adds one
//!   (`bench_rw`), vs the same work on the same map in native Rust;
//! - the cost of one host call (`proxy_get_header_map_value`), from a guest loop;
//! - VM instantiation from a compiled module, and memory per VM.
//!
//! Run: `cargo bench -p wasm-host --bench abi` (release build).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group};
use wasm_host::{
    HeaderMap, MapType, NoProperties, NullHost, Plugin, PluginConfig, PluginVm, Runtime,
    RuntimeConfig,
};

fn ten_headers() -> HeaderMap {
    HeaderMap::from_entries([
        (":authority", "example.com"),
        (":path", "/api/v1/items?page=2"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "wrk/4.2"),
        ("accept", "*/*"),
        ("x-bench-in", "hello"),
        ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("x-forwarded-proto", "http"),
        ("content-type", "application/json"),
    ])
}

fn plugin(rt: &Runtime, bytes: &[u8]) -> Arc<Plugin> {
    let module = rt.compile(bytes).expect("compile");
    let cfg = PluginConfig {
        name: "bench".into(),
        vm_id: "bench".into(),
        ..Default::default()
    };
    Plugin::new(rt, module, cfg)
}

fn vm(p: &Arc<Plugin>) -> PluginVm {
    p.instantiate(Box::new(NullHost)).expect("instantiate")
}

const HOSTCALL_LOOP: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "x-bench-in")
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (if (i32.gt_u (global.get $heap) (i32.const 60000)) (then (global.set $heap (i32.const 4096))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (loop $l
      (drop (call $get (i32.const 0) (i32.const 100) (i32.const 10) (i32.const 200) (i32.const 204)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (i32.const 0)))"#;

fn benches(c: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let rw = plugin(&rt, &test_plugins::bytes(test_plugins::BENCH_RW));

    let mut g = c.benchmark_group("on_request_headers (10 headers, read 1 + add 1)");
    g.bench_function("native Rust", |b| {
        b.iter(|| {
            let mut m = black_box(ten_headers());
            let v = m.get(b"x-bench-in").map(<[u8]>::to_vec).unwrap_or_default();
            m.add(b"x-bench-out", &v);
            black_box(m)
        })
    });
    let mut v = vm(&rw);
    let ctx = v.new_http_context(Box::new(NoProperties)).expect("ctx");
    g.bench_function("wasm callback (set map, call, take map)", |b| {
        b.iter(|| {
            v.set_map(ctx, MapType::RequestHeaders, black_box(ten_headers()))
                .expect("set");
            v.on_request_headers(ctx, true).expect("call");
            black_box(v.take_map(ctx, MapType::RequestHeaders))
        })
    });
    g.bench_function(
        "wasm whole stream (create, headers, log/done/delete)",
        |b| {
            b.iter(|| {
                let ctx = v.new_http_context(Box::new(NoProperties)).expect("ctx");
                v.set_map(ctx, MapType::RequestHeaders, black_box(ten_headers()))
                    .expect("set");
                v.on_request_headers(ctx, true).expect("call");
                let m = v.take_map(ctx, MapType::RequestHeaders);
                v.complete(ctx).expect("complete");
                black_box(m)
            })
        },
    );
    g.finish();

    let looped = plugin(&rt, &wat::parse_str(HOSTCALL_LOOP).expect("wat"));
    let mut lv = vm(&looped);
    let lctx = lv.new_http_context(Box::new(NoProperties)).expect("ctx");
    lv.set_map(lctx, MapType::RequestHeaders, ten_headers())
        .expect("set");
    c.bench_function("1000 x proxy_get_header_map_value (divide by 1000)", |b| {
        b.iter(|| lv.on_request_headers(lctx, true).expect("call"))
    });

    c.bench_function(
        "VM instantiation from compiled module (start + configure)",
        |b| b.iter(|| black_box(vm(&rw))),
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn memory_per_vm() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    for name in [test_plugins::BENCH_RW, test_plugins::HEADERS] {
        let p = plugin(&rt, &test_plugins::bytes(name));
        let warm = vm(&p);
        let n = 200;
        let before = rss_kib();
        let vms: Vec<PluginVm> = (0..n).map(|_| vm(&p)).collect();
        let after = rss_kib();
        println!(
            "memory per VM ({name}): {:.0} KiB RSS ({} KiB linear memory declared per VM)",
            (after.saturating_sub(before)) as f64 / n as f64,
            warm.memory_bytes() / 1024
        );
        drop(vms);
    }
}

criterion_group!(abi, benches);

fn main() {
    memory_per_vm();
    abi();
    Criterion::default().configure_from_args().final_summary();
}
