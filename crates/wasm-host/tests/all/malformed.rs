//! Malformed modules are refused with a clear error; hostile pointers get statuses, not panics.

use wasm_host::{Error, HeadersAction, MapType};

use crate::harness::*;

fn compile_wat(src: &str) -> Result<wasm_host::CompiledModule, Error> {
    runtime().compile(&wat::parse_str(src).expect("wat"))
}

const ALLOC: &str = r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
"#;

#[test]
fn refuses_garbage_and_unknown_abi() {
    assert!(matches!(
        runtime().compile(b"not wasm at all"),
        Err(Error::InvalidModule(_))
    ));
    assert!(matches!(
        runtime().compile(b"\0asm\x01\0\0\0\x05garbage"),
        Err(Error::InvalidModule(_))
    ));
    let no_abi = format!("(module {ALLOC})");
    let err = compile_wat(&no_abi).err().expect("refused");
    assert!(matches!(err, Error::UnknownAbi));
    assert!(err.to_string().contains("proxy_abi_version_0_2_1"), "{err}");
}

#[test]
fn refuses_unknown_imports_naming_them() {
    let src = format!(
        r#"(module (import "env" "proxy_does_not_exist" (func (param i32)))
           {ALLOC} (func (export "proxy_abi_version_0_2_1")))"#
    );
    let err = compile_wat(&src).err().expect("refused");
    assert!(err.to_string().contains("proxy_does_not_exist"), "{err}");
}

#[test]
fn on_vm_start_false_rejects_the_plugin() {
    let src = format!(
        r#"(module {ALLOC} (func (export "proxy_abi_version_0_2_1"))
           (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 0)))"#
    );
    let module = compile_wat(&src).expect("compiles");
    let plugin = wasm_host::Plugin::new(runtime(), module, config("reject", ""));
    match plugin.instantiate(Box::new(TestHost::default())) {
        Err(Error::Rejected { callback, .. }) => assert_eq!(callback, "proxy_on_vm_start"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("must be rejected"),
    }
}

#[test]
fn headers_callbacks_must_have_the_declared_abis_signature() {
    // ABI 0.1.0 headers callbacks take (context, headers); 0.2.x add end_of_stream. Envoy
    // refuses a module whose callbacks do not match the ABI it declares.
    let module = |abi: &str, params: &str| {
        format!(
            r#"(module {ALLOC} (func (export "proxy_abi_version_{abi}"))
               (func (export "proxy_on_request_headers") (param {params}) (result i32) (i32.const 0)))"#
        )
    };
    for (abi, params, ok) in [
        ("0_1_0", "i32 i32 i32", false),
        ("0_2_1", "i32 i32", false),
        ("0_1_0", "i32 i32", true),
        ("0_2_1", "i32 i32 i32", true),
    ] {
        let m = compile_wat(&module(abi, params)).expect("compiles");
        let plugin = wasm_host::Plugin::new(runtime(), m, config("sig", ""));
        match plugin.instantiate(Box::new(TestHost::default())) {
            Ok(_) => assert!(ok, "{abi} with ({params}) must be refused"),
            Err(e) => {
                assert!(!ok, "{abi} with ({params}): {e}");
                assert!(
                    e.to_string()
                        .contains("bad function signature for proxy_on_request_headers"),
                    "{e}"
                );
            }
        }
    }
}

/// A module whose request-headers callback makes host calls with hostile pointers and
/// records each status in shared data (key "s<i>"), so the test can read them.
#[test]
fn hostile_pointers_get_invalid_memory_access() {
    let src = format!(
        r#"(module
          (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
          {ALLOC}
          (data (i32.const 100) ":path")
          (data (i32.const 200) "s0s1s2s3s4s5")
          (func (export "proxy_abi_version_0_2_1"))
          (func $record (param $i i32) (param $status i32)
            (i32.store (i32.const 300) (local.get $status))
            (drop (call $set (i32.add (i32.const 200) (i32.mul (local.get $i) (i32.const 2))) (i32.const 2)
                             (i32.const 300) (i32.const 4) (i32.const 0))))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            ;; key far outside memory
            (call $record (i32.const 0) (call $get (i32.const 0) (i32.const 0x7ffffff0) (i32.const 5) (i32.const 400) (i32.const 404)))
            ;; out-pointer outside memory
            (call $record (i32.const 1) (call $get (i32.const 0) (i32.const 100) (i32.const 5) (i32.const -4) (i32.const 404)))
            ;; log with a length running off the end
            (call $record (i32.const 2) (call $log (i32.const 2) (i32.const 65530) (i32.const 100)))
            ;; value pointer wraps around
            (call $record (i32.const 3) (call $add (i32.const 0) (i32.const 100) (i32.const 5) (i32.const -1) (i32.const 2)))
            ;; property path out of range
            (call $record (i32.const 4) (call $prop (i32.const 70000) (i32.const 4) (i32.const 400) (i32.const 404)))
            ;; a valid call still works afterwards
            (call $record (i32.const 5) (call $get (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 400) (i32.const 404)))
            (i32.const 0)))"#
    );
    let module = compile_wat(&src).expect("compiles");
    let mut cfg = config("pointers", "");
    cfg.vm_id = "pointers".into();
    let plugin = wasm_host::Plugin::new(runtime(), module, cfg);
    let mut vm = plugin
        .instantiate(Box::new(TestHost::default()))
        .expect("instantiate");
    let ctx = new_stream(&mut vm, request_headers("/x", &[]));
    assert_eq!(
        vm.on_request_headers(ctx, true).expect("no trap"),
        HeadersAction::Continue
    );
    let status = |i: u32| {
        let key = format!("s{i}");
        let (v, _) = runtime()
            .shared()
            .get("pointers", key.as_bytes())
            .expect("recorded");
        u32::from_le_bytes(v.try_into().expect("4 bytes"))
    };
    for i in 0..5 {
        assert_eq!(status(i), 6, "call {i} must give InvalidMemoryAccess");
    }
    assert_eq!(status(5), 0, "valid call is Ok");
    assert_eq!(
        vm.map(ctx, MapType::RequestHeaders)
            .and_then(|m| m.get_str(":path")),
        Some("/x")
    );
}

/// gRPC unary callouts: dispatched through the host with the right fields, the answer (message
/// or close status) delivered to the root context, readable as buffer type 5 / `proxy_get_status`.
#[test]
fn grpc_callouts_reach_the_host_and_answers_reach_the_plugin() {
    let src = format!(
        r#"(module
          (import "env" "proxy_grpc_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))
          (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
          {ALLOC}
          (data (i32.const 100) "grpc-cluster")
          (data (i32.const 120) "pkg.Svc")
          (data (i32.const 140) "Check")
          (data (i32.const 160) "ping")
          (data (i32.const 180) "msgcodeokay")
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            ;; status of the dispatch to shared data "okay"
            (i32.store (i32.const 300) (call $call (i32.const 100) (i32.const 12) (i32.const 120) (i32.const 7)
              (i32.const 140) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 160) (i32.const 4)
              (i32.const 250) (i32.const 304)))
            (drop (call $set (i32.const 187) (i32.const 4) (i32.const 300) (i32.const 4) (i32.const 0)))
            (i32.const 1))
          (func (export "proxy_on_grpc_receive") (param i32 i32 i32)
            (drop (call $buf (i32.const 5) (i32.const 0) (local.get 2) (i32.const 400) (i32.const 404)))
            (drop (call $set (i32.const 180) (i32.const 3) (i32.load (i32.const 400)) (i32.load (i32.const 404)) (i32.const 0))))
          (func (export "proxy_on_grpc_close") (param i32 i32 i32)
            (i32.store (i32.const 300) (local.get 2))
            (drop (call $set (i32.const 183) (i32.const 4) (i32.const 300) (i32.const 4) (i32.const 0)))))"#
    );
    let module = compile_wat(&src).expect("compiles");
    let mut cfg = config("grpc", "");
    cfg.vm_id = "grpc-test".into();
    let plugin = wasm_host::Plugin::new(runtime(), module, cfg);
    let host = TestHost::default();
    let mut vm = plugin
        .instantiate(Box::new(host.clone()))
        .expect("instantiate");
    let shared = |k: &str| {
        runtime()
            .shared()
            .get("grpc-test", k.as_bytes())
            .map(|(v, _)| v)
    };
    let ctx = new_stream(&mut vm, request_headers("/", &[]));
    vm.on_request_headers(ctx, true).expect("call");
    assert_eq!(
        shared("okay"),
        Some(0u32.to_le_bytes().to_vec()),
        "dispatch Ok"
    );
    let call = host
        .record
        .borrow_mut()
        .grpc_calls
        .pop()
        .expect("dispatched");
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("pkg.Svc", "Check")
    );
    assert_eq!(call.message, b"ping");
    assert_eq!(call.timeout, Some(std::time::Duration::from_millis(250)));
    assert_eq!(call.root_context_id, vm.root_context_id());
    vm.on_grpc_response(call.token, Ok(b"pong".to_vec()))
        .expect("receive");
    assert_eq!(shared("msg"), Some(b"pong".to_vec()));

    // a second call closed with UNAVAILABLE
    vm.on_request_headers(ctx, true).expect("call");
    let call = host
        .record
        .borrow_mut()
        .grpc_calls
        .pop()
        .expect("dispatched");
    vm.on_grpc_response(call.token, Err((14, "unavailable".into())))
        .expect("close");
    assert_eq!(shared("code"), Some(14u32.to_le_bytes().to_vec()));
}
