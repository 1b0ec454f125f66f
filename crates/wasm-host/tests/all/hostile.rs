//! Hostile plugins are stopped with the right failure kind, and nothing else is disturbed.

use std::time::{Duration, Instant};

use wasm_host::{Error, HeadersAction, Limits, LogLevel, MapType, TrapKind};

use crate::harness::*;

fn limited(name: &str) -> (wasm_host::PluginVm, TestHost) {
    let mut cfg = config(name, "");
    cfg.limits = Limits {
        max_memory_bytes: 32 << 20,
        callback_deadline: Duration::from_millis(100),
        start_deadline: Duration::from_secs(10),
    };
    start_with(name, cfg, TestHost::default())
}

fn assert_trap(res: Result<HeadersAction, Error>, want: TrapKind) -> Error {
    match res {
        Err(e) => {
            assert_eq!(e.trap_kind(), Some(want), "wrong failure: {e}");
            e
        }
        Ok(a) => panic!("expected a {want:?} failure, got {a:?}"),
    }
}

#[test]
fn trap_marks_vm_failed_and_other_vms_keep_working() {
    let (mut vm, host) = limited(test_plugins::TRAP);
    let (mut healthy, _) = limited(test_plugins::TRAP);
    let ok = new_stream(&mut vm, request_headers("/", &[]));
    assert_eq!(
        vm.on_request_headers(ok, true)
            .expect("no trap without the header"),
        HeadersAction::Continue
    );
    let ctx = new_stream(&mut vm, request_headers("/", &[("x-trap", "1")]));
    let err = assert_trap(vm.on_request_headers(ctx, true), TrapKind::Trap);
    assert!(
        err.to_string().contains("proxy_on_request_headers"),
        "{err}"
    );
    assert!(
        host.logs_at(LogLevel::Critical)
            .iter()
            .any(|l| l.contains("trap requested")),
        "{}",
        host.all_logs()
    );
    assert!(vm.is_failed());
    assert!(
        matches!(vm.on_request_headers(ok, true), Err(Error::VmFailed { .. })),
        "a failed VM takes no calls"
    );
    // the context can still be released
    vm.finish(ctx).expect("finish after failure");
    // another VM of the same plugin is unaffected
    let c2 = new_stream(&mut healthy, request_headers("/", &[]));
    assert_eq!(
        healthy.on_request_headers(c2, true).expect("healthy"),
        HeadersAction::Continue
    );
    // reload: a fresh VM from the same plugin works
    let mut fresh = vm
        .plugin()
        .instantiate(Box::new(TestHost::default()))
        .expect("reload");
    let c3 = new_stream(&mut fresh, request_headers("/", &[]));
    assert_eq!(
        fresh.on_request_headers(c3, true).expect("fresh"),
        HeadersAction::Continue
    );
    assert!(
        vm.plugin()
            .stats()
            .traps
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn infinite_loop_is_stopped_by_the_cpu_deadline() {
    let (mut vm, _) = limited(test_plugins::LOOP);
    let ctx = new_stream(&mut vm, request_headers("/", &[("x-loop", "1")]));
    let started = Instant::now();
    let err = assert_trap(vm.on_request_headers(ctx, true), TrapKind::Deadline);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert!(err.to_string().contains("CPU deadline"), "{err}");
    assert!(
        vm.plugin()
            .stats()
            .deadline_exceeded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn memory_hog_hits_the_memory_limit() {
    let (mut vm, _) = limited(test_plugins::MEMORY_HOG);
    let ctx = new_stream(&mut vm, request_headers("/", &[("x-hog", "1")]));
    let err = assert_trap(vm.on_request_headers(ctx, true), TrapKind::Memory);
    assert!(err.to_string().contains("memory limit"), "{err}");
    assert!(
        vm.memory_bytes() <= 32 << 20,
        "memory stayed under the cap: {}",
        vm.memory_bytes()
    );
}

#[test]
fn hostile_plugins_behave_when_not_triggered() {
    for name in [
        test_plugins::TRAP,
        test_plugins::LOOP,
        test_plugins::MEMORY_HOG,
    ] {
        let (mut vm, _) = limited(name);
        let ctx = new_stream(&mut vm, request_headers("/", &[]));
        vm.on_request_headers(ctx, true).expect("request");
        vm.set_map(ctx, MapType::ResponseHeaders, response_headers("200"))
            .expect("set");
        vm.on_response_headers(ctx, true).expect("response");
        assert_eq!(
            header(vm.map(ctx, MapType::ResponseHeaders), "x-hostile").as_deref(),
            Some("ok"),
            "{name}"
        );
    }
}
