//! Envoy's Wasm access logger (`envoy.access_loggers.wasm`), against real Envoy 1.40: the
//! plugin's root context gets `proxy_on_log` for every finished stream (proxied or replied
//! locally), with the stream's request headers and `response.code` readable. The `trace`
//! plugin counts `trace_log.<x-trace-tag>.<code>`.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::proxy_peers::start_upstream;

use crate::support::*;

fn bootstrap(admin: u16, listen: u16, up: u16) -> String {
    let yaml = one_plugin(
        (admin, listen, up),
        test_plugins::AUTH,
        "au",
        r#"{"value": "k"}"#,
        "",
    );
    let logger = format!(
        r#"          stat_prefix: main
          access_log:
          - name: envoy.access_loggers.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.wasm.v3.WasmAccessLog
              config:
                name: logger
                root_id: logger
                vm_config:
                  vm_id: logger
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{}"}}}}
"#,
        test_plugins::path(test_plugins::TRACE).display()
    );
    yaml.replacen("          stat_prefix: main\n", &logger, 1)
}

async fn observe(addr: SocketAddr, admin: SocketAddr) -> anyhow::Result<Vec<String>> {
    for (tag, key) in [
        ("al-ok", Some("k")),
        ("al-denied", None),
        ("al-ok", Some("k")),
    ] {
        let mut req = get("log.example", "/logged");
        req.headers_mut().insert("x-trace-tag", tag.parse()?);
        if let Some(k) = key {
            req.headers_mut().insert("x-api-key", k.parse()?);
        }
        let _ = send(addr, req).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = send(admin, get("admin", "/stats")).await?.text();
    Ok(text
        .lines()
        .filter(|l| l.contains("trace_log.al-"))
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_access_logger_sees_each_stream_like_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let (ours, ours_addr, envoy, envoy_addr) =
        start_both(|admin, listen| bootstrap(admin, listen, up.addr.port())).await?;
    let e = observe(envoy_addr, envoy.admin).await?;
    let o = observe(ours_addr, ours.admin_addr().expect("admin")).await?;
    assert_eq!(
        e,
        [
            "wasmcustom.trace_log.al-denied.401: 1",
            "wasmcustom.trace_log.al-ok.200: 2"
        ],
        "envoy"
    );
    assert_eq!(o, e, "wasmesh (left) vs Envoy (right)");
    Ok(())
}
