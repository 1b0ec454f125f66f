//! Bootstraps written the way the proxy-wasm SDKs' examples write them start and behave as in
//! Envoy 1.40: filter configs wrapped in `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`
//! and enum values in lower case (`type: strict_dns`, `lb_policy: round_robin`,
//! `codec_type: auto`), which Envoy's case-insensitive enum parsing accepts.

use std::net::SocketAddr;

use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

fn bootstrap(admin: u16, listen: u16, up: u16, typed_struct: &str) -> String {
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: auto
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/{typed_struct}
              type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              value:
                config:
                  configuration:
                    "@type": type.googleapis.com/google.protobuf.StringValue
                    value: '{{"response_add": {{"x-sdk-style": "yes"}}}}'
                  vm_config:
                    runtime: "envoy.wasm.runtime.v8"
                    code: {{local: {{filename: "{path}"}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up
    connect_timeout: 1s
    type: strict_dns
    lb_policy: round_robin
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]
"#,
        path = test_plugins::path(test_plugins::HEADERS).display()
    )
}

async fn answer(addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    let r = send(addr, get("sdk.example", "/")).await?;
    let added = r
        .headers
        .get("x-sdk-style")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<missing>")
        .to_string();
    Ok((r.status, added))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_structs_and_lower_case_enums_work_as_in_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    for ts in ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"] {
        let ports = free_ports(2)?;
        let envoy_yaml = bootstrap(ports[1], ports[0], up.addr.port(), ts);
        let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
        let ours = start_proxy(&bootstrap(0, 0, up.addr.port(), ts))?;
        let e = answer(([127, 0, 0, 1], ports[0]).into()).await?;
        let o = answer(ours.listener_addr("main").expect("listener")).await?;
        assert_eq!(e, (200, "yes".to_string()), "envoy with {ts}");
        assert_eq!(o, e, "wasmesh (left) vs Envoy (right) with {ts}");
    }
    Ok(())
}
