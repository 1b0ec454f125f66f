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

/// A `TypedStruct` that arrives as protobuf (LDS or ECDS from a control plane, where the JSON
/// pass never runs) is unwrapped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_typed_struct_filter_config_is_unwrapped() -> anyhow::Result<()> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter::ConfigType,
    };
    use prost::Message;
    let up = start_upstream("up").await?;
    let yaml = one_plugin(
        (0, 0, up.addr.port()),
        test_plugins::HEADERS,
        "hd",
        r#"{"response_add": {"x-binary": "unwrapped"}}"#,
        "",
    );
    let mut bootstrap = wasmesh_proxy::config::bootstrap::parse(&yaml)?;
    let sr = bootstrap
        .static_resources
        .as_mut()
        .expect("static resources");
    let hcm_any = match &mut sr.listeners[0].filter_chains[0].filters[0].config_type {
        Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) => a,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    let mut hcm = HttpConnectionManager::decode(hcm_any.value.as_slice())?;
    let Some(ConfigType::TypedConfig(wasm)) = hcm.http_filters[0].config_type.clone() else {
        anyhow::bail!("no wasm filter");
    };
    // The Wasm config as a Struct inside a TypedStruct.
    let json = wasmesh_xds::descriptors::to_json(
        "envoy.extensions.filters.http.wasm.v3.Wasm",
        &wasm.value,
    )?;
    let value = envoy_types::pb::google::protobuf::Struct::decode(
        wasmesh_xds::descriptors::from_json("google.protobuf.Struct", &json)?.as_slice(),
    )?;
    let ts = wasmesh_xds::descriptors::TypedStruct {
        type_url: wasm.type_url.clone(),
        value: Some(value),
    };
    hcm.http_filters[0].config_type = Some(ConfigType::TypedConfig(
        envoy_types::pb::google::protobuf::Any {
            type_url: wasmesh_xds::descriptors::TYPED_STRUCT_URLS[0].into(),
            value: ts.encode_to_vec(),
        },
    ));
    hcm_any.value = hcm.encode_to_vec();
    let opts = wasmesh_proxy::ProxyOptions::default();
    let p = wasmesh_proxy::start(&bootstrap, &opts)?;
    let r = send(p.listener_addr("main").expect("listener"), get("x", "/")).await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("x-binary").and_then(|v| v.to_str().ok()),
        Some("unwrapped")
    );
    Ok(())
}
