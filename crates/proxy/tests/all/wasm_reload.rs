//! `failure_policy: FAIL_RELOAD` against real Envoy 1.40: a plugin that traps is reloaded for
//! the next request, and Envoy's reload counters (`wasm.<plugin>.vm_reload`, `_success`,
//! `_failure`, `_backoff`) and runtime stats (`wasm.envoy.wasm.runtime.v8.*`) are reported
//! under Envoy's names.

use std::net::SocketAddr;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// Status of each request (a trap, a fine one, a trap, a fine one, 20 ms apart) and the
/// reload counters.
async fn observe(addr: SocketAddr, admin: SocketAddr) -> anyhow::Result<(Vec<u16>, String, bool)> {
    let mut statuses = Vec::new();
    for trap in [true, false, true, false] {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut req = get("reload.example", "/");
        if trap {
            req.headers_mut().insert("x-trap", "1".parse()?);
        }
        statuses.push(send(addr, req).await.map_or(0, |r| r.status));
    }
    let prom = send(admin, get("admin", "/stats/prometheus")).await?.text();
    let reload: String = prom
        .lines()
        .filter(|l| l.starts_with("envoy_wasm_rl_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let runtime = ["active", "created"]
        .iter()
        .all(|s| prom.contains(&format!("# TYPE envoy_wasm_envoy_wasm_runtime_v8_{s} ")))
        && prom.contains("envoy_wasm_wasm_vm_count{}");
    Ok((statuses, reload, runtime))
}

/// `reload_config.backoff.base_interval` `base`: the plugin's bootstrap.
fn bootstrap(admin: u16, listen: u16, up: u16, base: &str) -> String {
    one_plugin((admin, listen, up), test_plugins::TRAP, "rl", "", "").replace(
        "root_id: rl\n",
        &format!(
            "root_id: rl\n                failure_policy: FAIL_RELOAD\n                reload_config: {{backoff: {{base_interval: {base}}}}}\n"
        ),
    )
}

/// A reload is due once the base interval has passed since the VM was loaded: with 2 ms (Envoy divides by half the base, so 1 ms crashes it),
/// every request after a trap gets a fresh VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_reloads_and_counts_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port(), "0.002s")).await?;
    let envoy = observe(envoy_addr, envoy_proc.admin).await?;
    let wasmesh = observe(ours_addr, ours.admin_addr().expect("admin")).await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(envoy.0, [503, 200, 503, 200]);
    assert!(
        envoy.1.contains("envoy_wasm_rl_vm_reload_success{} 2"),
        "{}",
        envoy.1
    );
    assert!(envoy.2, "Envoy's runtime stats");
    Ok(())
}

/// Within the base interval of the last load, a failed VM stays failed (fail closed) and each
/// request counts a `vm_reload_backoff`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reload_waits_out_its_backoff_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy_proc, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port(), "100s")).await?;
    let envoy = observe(envoy_addr, envoy_proc.admin).await?;
    let wasmesh = observe(ours_addr, ours.admin_addr().expect("admin")).await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    assert_eq!(envoy.0, [503, 503, 503, 503]);
    assert!(
        envoy.1.contains("envoy_wasm_rl_vm_reload_backoff{} 3"),
        "{}",
        envoy.1
    );
    Ok(())
}
