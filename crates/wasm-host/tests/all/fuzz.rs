//! Randomized host calls with hostile pointers and lengths: the host answers with a status or
//! the guest traps; the host never panics, and never reads outside the guest's memory.

use proptest::prelude::*;
use wasm_host::{Plugin, Runtime};

use crate::harness::*;

/// Calls import number `which` with six arguments taken from the plugin configuration.
const FUZZ: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $f0 (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $f1 (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $f2 (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $f3 (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $f4 (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $f5 (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $f6 (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $f7 (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $f8 (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $f9 (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $f10 (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $f11 (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (local.get $n) (i32.const 16384)) (then (return (i32.const 0))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (if (i32.gt_u (global.get $heap) (i32.const 60000)) (then (global.set $heap (i32.const 8192))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (local $w i32) (local $a i32) (local $b i32) (local $c i32) (local $d i32) (local $e i32) (local $g i32) (local $p i32)
    (drop (call $f1 (i32.const 7) (i32.const 0) (i32.const 28) (i32.const 0) (i32.const 4)))
    (local.set $p (i32.load (i32.const 0)))
    (local.set $w (i32.load (local.get $p)))
    (local.set $a (i32.load offset=4 (local.get $p)))
    (local.set $b (i32.load offset=8 (local.get $p)))
    (local.set $c (i32.load offset=12 (local.get $p)))
    (local.set $d (i32.load offset=16 (local.get $p)))
    (local.set $e (i32.load offset=20 (local.get $p)))
    (local.set $g (i32.load offset=24 (local.get $p)))
    (block $done
      (block $b11 (block $b10 (block $b9 (block $b8 (block $b7 (block $b6 (block $b5 (block $b4 (block $b3 (block $b2 (block $b1 (block $b0
        (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 $b10 $b11 $done (local.get $w)))
        (drop (call $f0 (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e))) (br $done))
        (drop (call $f1 (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e))) (br $done))
        (drop (call $f2 (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e))) (br $done))
        (drop (call $f3 (local.get $a) (local.get $b) (local.get $c) (local.get $d))) (br $done))
        (drop (call $f4 (local.get $a) (local.get $b) (local.get $c))) (br $done))
        (drop (call $f5 (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e) (local.get $g)
                        (local.get $a) (local.get $b) (local.get $c) (local.get $d))) (br $done))
        (drop (call $f6 (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e) (local.get $g) (local.get $a) (local.get $b))) (br $done))
        (drop (call $f7 (local.get $a) (local.get $b) (local.get $c) (local.get $d) (local.get $e))) (br $done))
        (drop (call $f8 (i32.and (local.get $a) (i32.const 3)) (local.get $b) (i32.and (local.get $c) (i32.const 15)) (local.get $d))) (br $done))
        (drop (call $f9 (local.get $a) (local.get $b))) (br $done))
        (drop (call $f10 (local.get $a) (local.get $b) (local.get $c))) (br $done))
        (drop (call $f11 (local.get $a) (local.get $b) (local.get $c) (local.get $d))))
    (i32.const 1)))"#;

fn fuzz_runtime() -> &'static Runtime {
    runtime()
}

fn interesting() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(i32::MAX),
        Just(i32::MIN),
        Just(65532),
        Just(65536),
        0..70000i32,
        any::<i32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn host_calls_never_panic(which in 0..12u32, args in proptest::collection::vec(interesting(), 6)) {
        let module = fuzz_runtime().compile(&wat::parse_str(FUZZ).expect("wat")).expect("compile");
        let mut cfg_bytes = which.to_le_bytes().to_vec();
        for a in &args {
            cfg_bytes.extend_from_slice(&a.to_le_bytes());
        }
        let mut cfg = config("fuzz", "");
        cfg.configuration = cfg_bytes;
        let plugin = Plugin::new(fuzz_runtime(), module, cfg);
        // Either the plugin starts (the host answered with a status) or the guest trapped
        // cleanly (e.g. it handed back an allocation the host rejected); never a host panic.
        match plugin.instantiate(Box::new(TestHost::default())) {
            Ok(vm) => prop_assert!(!vm.is_failed()),
            Err(e) => prop_assert!(e.trap_kind().is_some() || matches!(e, wasm_host::Error::Rejected { .. }), "{}", e),
        }
    }
}
