//! Plugin VMs start with the config, not with the first request, against real Envoy 1.40:
//! Envoy starts a VM per worker and one on the main thread when it loads a Wasm filter, and
//! their root contexts' timers tick with no traffic at all. The `tick_shared` plugin counts
//! its ticks in shared data and reports the count on the first response.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    one_plugin(
        (admin, listen, up),
        test_plugins::TICK_SHARED,
        "ticks",
        r#"{"tick_ms": 50}"#,
        "",
    )
}

/// The tick count the first response reports.
async fn first_count(addr: SocketAddr) -> anyhow::Result<u64> {
    let r = send(addr, get("ticks.example", "/")).await?;
    let v = r
        .headers
        .get("x-tick-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_tick_before_the_first_request_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let ports = free_ports(2)?;
    let envoy_yaml = bootstrap(ports[1], ports[0], up.addr.port());
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let ours = start_proxy(&bootstrap(0, 0, up.addr.port()))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    // 50 ms ticks; no request for a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = first_count(envoy_addr).await?;
    let o = first_count(ours_addr).await?;
    assert!(e >= 4, "envoy ticked before any request: {e}");
    assert!(o >= 4, "wasmesh ticked before any request: {o} (envoy {e})");
    Ok(())
}

/// When the proxy stops, every plugin VM (one per worker and the main thread's) is told with
/// its root context's `on_done`, as Envoy does when it tears a plugin down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_proxy_calls_on_done_on_every_root_context() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    // (no timer: a tick descheduled past the CPU deadline on a loaded machine would fail the
    // VM, and a failed VM is not asked anything)
    let yaml = bootstrap(0, 0, up.addr.port())
        .replace("vm_id: ticks", "vm_id: ticks-done")
        .replace("value: '{\"tick_ms\": 50}'", "value: '{\"tick_ms\": 0}'");
    let p = start_proxy_with(&yaml, 2)?;
    let shared = wasmesh_proxy::wasm_filter::runtime()?.shared().clone();
    let done = || {
        shared
            .get("ticks-done", b"tick_shared.done")
            .and_then(|(v, _)| String::from_utf8(v).ok())
            .unwrap_or_default()
    };
    assert_eq!(done(), "0", "nothing is done while the proxy runs");
    tokio::task::spawn_blocking(move || p.shutdown()).await?;
    // two workers and the main thread
    assert_eq!(done(), "3", "on_done calls");
    Ok(())
}

/// A `bootstrap_extensions` Wasm service (a singleton: the main thread only) ticks on its own,
/// in Envoy and in wasmesh; an HTTP filter of the same `vm_id` (its own timer off) reads the
/// count the service keeps in shared data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_wasm_service_runs_like_envoys() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let service = |yaml: String| {
        let with_service = yaml
            .replace("value: '{\"tick_ms\": 50}'", "value: '{\"tick_ms\": 0}'")
            .replace("vm_id: ticks", "vm_id: svc");
        format!(
            r#"bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: svc
      root_id: svc
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{{"tick_ms": 50}}'
      vm_config:
        vm_id: svc
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: "{path}"}}}}
{with_service}"#,
            path = test_plugins::path(test_plugins::TICK_SHARED).display()
        )
    };
    let ports = free_ports(2)?;
    let envoy_yaml = service(bootstrap(ports[1], ports[0], up.addr.port()));
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let ours = start_proxy(&service(bootstrap(0, 0, up.addr.port())))?;
    let ours_addr = ours.listener_addr("main").expect("listener");
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = first_count(envoy_addr).await?;
    let o = first_count(ours_addr).await?;
    assert!(e >= 4, "envoy's service ticked: {e}");
    assert!(o >= 4, "wasmesh's service ticked: {o} (envoy {e})");
    Ok(())
}
