//! `vm_config.code.remote` against real Envoy 1.40: the module is fetched over HTTP through a
//! cluster and checked against `sha256`; when that fails the proxy still starts, with the
//! plugin unloaded: FAIL_CLOSED answers 503, FAIL_OPEN skips it. Envoy's
//! `wasm.remote_load_*` stats count the fetches.

use std::net::SocketAddr;

use sha2::Digest as _;
use test_support::proxy_peers::{serve_bytes, start_upstream};

use crate::support::*;

fn bootstrap(ports: (u16, u16, u16), code_port: u16, sha: &str, policy: &str) -> String {
    let filter = format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: remote
                root_id: remote
                failure_policy: {policy}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"response_add":{{"x-remote":"yes"}}}}'
                vm_config:
                  vm_id: remote
                  runtime: envoy.wasm.runtime.v8
                  code:
                    remote:
                      http_uri: {{uri: "http://plugins.example/headers.wasm", cluster: plugins, timeout: 5s}}
                      sha256: {sha}
"#
    );
    hcm_bootstrap(
        ports,
        "",
        &filter,
        &cluster_yaml("plugins", code_port, false),
    )
}

/// Status, `x-remote`, and the remote-load counters (the cache entry gauge left out: ours is
/// per process, and this process also runs the other cases).
async fn observe(addr: SocketAddr, admin: SocketAddr) -> anyhow::Result<(u16, bool, String)> {
    let r = send(addr, get("r.example", "/")).await?;
    let stats: String = send(admin, get("admin", "/stats"))
        .await?
        .text()
        .lines()
        .filter(|l| l.starts_with("wasm.remote_load_") && !l.contains("cache_entries"))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok((r.status, r.headers.contains_key("x-remote"), stats))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_code_loads_and_fails_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let code = std::fs::read(test_plugins::path(test_plugins::HEADERS))?;
    let sha = hex::encode(sha2::Sha256::digest(&code));
    let (code_addr, _code) = serve_bytes(code).await?;
    // Two wrong hashes: a failure is cached (per process, as in Envoy) and this process runs
    // every case.
    let wrong = |c: char| format!("{c}{}", &sha[1..]);
    let (wrong1, wrong2) = if sha.starts_with('0') {
        (wrong('1'), wrong('2'))
    } else {
        (
            wrong('0'),
            wrong(if sha.starts_with('1') { '2' } else { '1' }),
        )
    };
    for (sha, policy, status, header) in [
        (&sha, "FAIL_CLOSED", 200, true),
        (&wrong1, "FAIL_CLOSED", 503, false),
        (&wrong2, "FAIL_OPEN", 200, false),
    ] {
        let (ours, ours_addr, envoy, envoy_addr) = start_both(|admin, listen| {
            bootstrap(
                (admin, listen, up.addr.port()),
                code_addr.port(),
                sha,
                policy,
            )
        })
        .await?;
        let e = observe(envoy_addr, envoy.admin).await?;
        let o = observe(ours_addr, ours.admin_addr().expect("admin")).await?;
        assert_eq!(o, e, "{policy} {sha}: wasmesh (left) vs Envoy (right)");
        assert_eq!((e.0, e.1), (status, header), "{policy} {sha}: Envoy");
        drop((ours, envoy));
    }
    Ok(())
}
