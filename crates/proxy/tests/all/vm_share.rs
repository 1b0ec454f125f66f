//! Plugins share a VM as in Envoy 1.40: every plugin whose `vm_id`, VM configuration and code
//! are the same runs in one VM per thread, each with a root context of its own (the next
//! context id) that gets its own `on_vm_start` and `on_configure`; their globals are shared.
//! A plugin with another `vm_id` gets a VM of its own. The `vm_share` plugin shows its root
//! context id and the VM's root contexts, starts and requests in a response header.

use std::net::SocketAddr;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// An HTTP Wasm filter item running `vm_share` with configuration `name` in VM `vm_id`.
fn share_filter(name: &str, vm_id: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {name}
                vm_config:
                  vm_id: {vm_id}
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{path}"}}}}
"#,
        path = test_plugins::path(test_plugins::VM_SHARE).display()
    )
}

/// Filters `a` and `b` share VM `shared`; `c` runs alone in VM `other`; `d` is in `shared`
/// again, after `c`.
fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    let router = "          - name: envoy.filters.http.router";
    let filters = ["a", "b"]
        .iter()
        .map(|n| share_filter(n, "shared"))
        .chain([share_filter("c", "other"), share_filter("d", "shared")])
        .collect::<String>();
    let yaml = one_plugin(
        (admin, listen, up),
        test_plugins::VM_SHARE,
        "first",
        "first",
        "",
    );
    // one_plugin's own filter is replaced by the four.
    let start = yaml
        .find("          - name: envoy.filters.http.wasm")
        .expect("filter");
    let end = yaml.find(router).expect("router");
    format!("{}{filters}{}", &yaml[..start], &yaml[end..])
}

/// The four plugins' headers for two requests.
async fn observe(addr: SocketAddr) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..2 {
        let r = send(addr, get("share.example", "/")).await?;
        anyhow::ensure!(r.status == 200, "status {}", r.status);
        for name in ["a", "b", "c", "d"] {
            let v = r
                .headers
                .get(format!("x-vm-share-{name}"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("<missing>");
            out.push(format!("request {i} {name}: {v}"));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_with_one_vm_id_and_code_share_a_vm_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (_ours, ours_addr, _envoy, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port())).await?;
    let envoy = observe(envoy_addr).await?;
    let wasmesh = observe(ours_addr).await?;
    assert_eq!(wasmesh, envoy, "wasmesh (left) vs Envoy (right)");
    // What sharing means, so that a change in both cannot pass unnoticed.
    assert!(
        envoy[0].ends_with("roots=3 starts=3 seen=1") && envoy[2].contains("roots=1"),
        "{envoy:?}"
    );
    Ok(())
}
