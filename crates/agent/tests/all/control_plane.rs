//! The whole chain with our own control plane: WasmPlugin YAML (oci:// url) → wasmesh
//! control plane → agent → real Envoy. Proves the agent understands the ECDS the control
//! plane generates (istiod's format).

use wasmesh_agent::ListenAddr;
use wasmesh_control_plane::{ControlPlane, Settings};

use crate::envoy::{Envoy, get};
use crate::registry::{Format, Options, Registry};
use crate::util::{eventually, free_port, init_logs, start_agent};

fn write(dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn routing(gw_port: u16, echo_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: app}}
spec:
  hosts: [echo.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: app}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gw_port}, name: http, protocol: HTTP}}, hosts: ['*']}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: app}}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route: [{{destination: {{host: echo.local}}}}]
"#
    )
}

fn plugin(url: &str, sha: &str, value: &str) -> String {
    let sha = if sha.is_empty() {
        String::new()
    } else {
        format!("  sha256: {sha}\n")
    };
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: hdr\n  namespace: app\nspec:\n  url: {url}\n{sha}  pluginConfig:\n    response_add: {{x-plugin: {value}}}\n"
    )
}

#[tokio::test]
async fn wasm_plugin_yaml_with_an_oci_url_runs_in_envoy_through_the_agent() -> anyhow::Result<()> {
    init_logs();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg
        .push(
            "p/headers",
            "v1",
            Format::WasmArtifact,
            &test_plugins::bytes(test_plugins::HEADERS),
        )
        .await?;
    let (echo, _task) = crate::util::upstream().await?;
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg)?;
    let gw = free_port();
    write(&cfg, "routing.yaml", &routing(gw, echo.port()))?;
    write(
        &cfg,
        "plugin.yaml",
        &plugin(&reg.url("p/headers", "v1"), &digest, "from-oci"),
    )?;
    let cp = ControlPlane::start(Settings::new(&cfg, "127.0.0.1:0".parse()?)).await?;
    let sock = dir.path().join("xds.sock");
    let agent = start_agent(
        ListenAddr::Unix(sock.clone()),
        cp.addr,
        &dir.path().join("cache"),
        &reg.host,
    )
    .await?;
    let bootstrap = serde_json::json!({
        "node": {
            "id": "router~127.0.0.1~ingress.app~app.svc.cluster.local",
            "cluster": "ingressgateway.app",
            "metadata": {"NAMESPACE": "app", "LABELS": {"istio": "ingressgateway"}},
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"pipe": {"path": sock.display().to_string()}}}}]}]},
        }]},
    });
    let _envoy = Envoy::start_with(dir.path(), &bootstrap.to_string())?;
    let client = reqwest::Client::new();
    eventually!(
        90,
        "the plugin pulled from OCI answers through the gateway",
        async {
            get(&client, gw)
                .await
                .is_some_and(|(s, h)| s == 200 && h.as_deref() == Some("from-oci"))
        }
    );
    // A wrong sha256 (fail closed by default): deny-all, as istio-agent.
    write(
        &cfg,
        "plugin.yaml",
        &plugin(&reg.url("p/headers", "v1"), &"f".repeat(64), "bad"),
    )?;
    eventually!(60, "deny-all after a wrong sha256", async {
        get(&client, gw).await.is_some_and(|(s, _)| s == 403)
    });
    // Fixed: the plugin is back with the new config.
    write(
        &cfg,
        "plugin.yaml",
        &plugin(&reg.url("p/headers", "v1"), &digest, "fixed"),
    )?;
    eventually!(60, "the plugin is back", async {
        get(&client, gw)
            .await
            .is_some_and(|(s, h)| s == 200 && h.as_deref() == Some("fixed"))
    });
    agent.shutdown().await;
    Ok(())
}
