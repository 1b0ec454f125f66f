//! Generated xDS compared as JSON, field for field with what istiod 1.29 produces.

use serde_json::json;
use wasmesh_xds::type_url;

use super::*;
use crate::config::config_from_yaml;
use crate::proxy::{Proxy, ProxyKind};

const ROUTING: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: app}
spec:
  hosts: [echo.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9000}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: app}
spec:
  hosts: [ext.example.com]
  ports: [{number: 443, name: h2, protocol: HTTP2}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /api}, method: {exact: GET}}]
    route: [{destination: {host: echo.local}}]
    rewrite: {uri: /, authority: echo.local}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
  - route:
    - {destination: {host: echo.local, port: {number: 80}}, weight: 90}
    - {destination: {host: ext.example.com}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: web, namespace: app}
spec:
  workloadSelector: {labels: {app: web}}
  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}]
"#;

fn plugin(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: app, resourceVersion: '7'}}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn gateway() -> Proxy {
    Proxy {
        id: "router~10.0.0.1~gw.app~app.svc.cluster.local".into(),
        kind: ProxyKind::Router,
        namespace: "app".into(),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
    }
}

fn sidecar() -> Proxy {
    Proxy {
        id: "sidecar~10.0.0.2~web.app~app.svc.cluster.local".into(),
        kind: ProxyKind::Sidecar,
        namespace: "app".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
    }
}

fn gen_json(yaml: &str, proxy: &Proxy) -> JsonResources {
    let config = config_from_yaml(yaml);
    let json = generate_json(&config, proxy, &Options::default());
    // Everything we generate must be accepted by Envoy's protos.
    encode(&json, &proxy.id).expect("generated resources encode");
    json
}

#[test]
fn ecds_resource_is_filled_as_istiod_fills_it() {
    let yaml = format!(
        "{ROUTING}{}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: pull, namespace: app}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: eyJhdXRocyI6e319\n",
        plugin(
            "auth",
            r#"url: registry.example/acme/auth:v1
sha256: 2f4a2b68d0e6f7ab3f0c3f0d8a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b
imagePullPolicy: Always
imagePullSecret: pull
pluginName: auth_root
pluginConfig: {header: x-api-key, list: [1, 2]}
phase: AUTHN
vmConfig:
  env:
  - {name: MODE, value: strict}
  - {name: POD_NAME, valueFrom: HOST}
failStrategy: FAIL_OPEN"#
        )
    );
    let json = gen_json(&yaml, &gateway());
    let ecds =
        &json.of(type_url::EXTENSION_CONFIG).unwrap()["extensions.istio.io/wasmplugin/app.auth"];
    assert_eq!(
        ecds,
        &json!({
            "name": "extensions.istio.io/wasmplugin/app.auth",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "app.auth",
                    "root_id": "auth_root",
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": "{\"header\":\"x-api-key\",\"list\":[1,2]}",
                    },
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"remote": {
                            "http_uri": {"uri": "oci://registry.example/acme/auth:v1", "timeout": "30s", "cluster": "_"},
                            "sha256": "2f4a2b68d0e6f7ab3f0c3f0d8a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b",
                        }},
                        "environment_variables": {
                            "key_values": {
                                "ISTIO_META_WASM_IMAGE_PULL_SECRET": "{\"auths\":{}}",
                                "ISTIO_META_WASM_IMAGE_PULL_POLICY": "Always",
                                "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "7",
                                "MODE": "strict",
                            },
                            "host_env_keys": ["POD_NAME"],
                        },
                    },
                    "failure_policy": "FAIL_OPEN",
                },
            },
        })
    );
}

#[test]
fn file_url_becomes_local_filename_and_defaults() {
    let yaml = format!(
        "{ROUTING}{}",
        plugin("local", "url: file:///opt/plugins/headers.wasm")
    );
    let json = gen_json(&yaml, &gateway());
    let cfg = &json.of(type_url::EXTENSION_CONFIG).unwrap()["extensions.istio.io/wasmplugin/app.local"]
        ["typed_config"]["config"];
    assert_eq!(
        cfg["vm_config"]["code"],
        json!({"local": {"filename": "/opt/plugins/headers.wasm"}})
    );
    assert_eq!(cfg["root_id"], "");
    assert_eq!(cfg["failure_policy"], "FAIL_CLOSED");
    assert!(cfg.get("configuration").is_none());
    assert_eq!(
        cfg["vm_config"]["environment_variables"],
        json!({"key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "7"}})
    );
}

fn ecds_config(json: &JsonResources, name: &str) -> Value {
    json.of(type_url::EXTENSION_CONFIG).unwrap()
        [&format!("extensions.istio.io/wasmplugin/app.{name}")]["typed_config"]["config"]
        .clone()
}

#[test]
fn plugin_config_json_text_is_byte_identical_to_istiods() {
    // istiod: protomarshal.ToJSON over google.protobuf.Struct (Go encoding/json rules).
    let yaml = format!(
        "{ROUTING}{}",
        plugin(
            "cfg",
            "url: oci://r/x\npluginConfig: {url: \"https://a/?x=1&y=2\", html: \"<b>\", ratio: 1.0, n: 1e3}"
        )
    );
    let json = gen_json(&yaml, &gateway());
    assert_eq!(
        ecds_config(&json, "cfg")["configuration"]["value"],
        r#"{"html":"\u003cb\u003e","n":1000,"ratio":1,"url":"https://a/?x=1\u0026y=2"}"#
    );
}

#[test]
fn plugin_config_yaml_numbers_are_read_as_kubectl_reads_them() {
    // kubectl parses YAML 1.1 (sigs.k8s.io/yaml over go-yaml v2): a leading zero is octal,
    // underscores are dropped, 0x is hex; a digit string that is not octal is a float.
    let yaml = format!(
        "{ROUTING}{}",
        plugin(
            "nums",
            "url: oci://r/x\npluginConfig: {octal: 010, zero: 0, under: 1_000, hex: 0x10, notoctal: 080, small: 0.0000001, big: 1e21, quoted: '010'}"
        )
    );
    let json = gen_json(&yaml, &gateway());
    assert_eq!(
        ecds_config(&json, "nums")["configuration"]["value"],
        r#"{"big":1e+21,"hex":16,"notoctal":80,"octal":8,"quoted":"010","small":1e-7,"under":1000,"zero":0}"#
    );
}

#[test]
fn image_pull_secret_names_are_parsed_like_istiod() {
    // istiod toSecretResourceName: the namespace is always the plugin's; a name that does not
    // parse as a credential resource name leaves no env var; other types get "".
    let secret = |ns: &str, name: &str, cfg: &str| {
        format!(
            "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{cfg}'\n"
        )
    };
    let cases: &[(&str, Option<&str>)] = &[
        ("pull", Some("{\"auths\":{\"app\":{}}}")),
        ("other/pull", Some("{\"auths\":{\"app\":{}}}")),
        ("kubernetes://pull", Some("{\"auths\":{\"app\":{}}}")),
        ("kubernetes://other/pull", Some("{\"auths\":{\"app\":{}}}")),
        ("a/pull/extra", Some("{\"auths\":{\"app\":{}}}")),
        ("missing", Some("")),
        ("configmap://other/pull", Some("")),
        ("kubernetes-gateway://other/pull", Some("")),
        ("invalid://x", Some("")),
        ("builtin://x", None),
        ("configmap://pull", None),
        ("kubernetes-gateway:///pull", None),
    ];
    for (name, want) in cases {
        let yaml = [
            ROUTING,
            &plugin("p", &format!("url: oci://r/x\nimagePullSecret: {name:?}")),
            &secret("app", "pull", "{\"auths\":{\"app\":{}}}"),
            &secret("other", "pull", "{\"auths\":{\"other\":{}}}"),
        ]
        .concat();
        let json = gen_json(&yaml, &gateway());
        let env = &ecds_config(&json, "p")["vm_config"]["environment_variables"]["key_values"];
        assert_eq!(
            env.get("ISTIO_META_WASM_IMAGE_PULL_SECRET")
                .map(|v| v.as_str().unwrap()),
            *want,
            "imagePullSecret {name:?}"
        );
    }
}

#[test]
fn gateway_listener_references_plugins_by_ecds_name_in_order() {
    let yaml = [
        ROUTING,
        &plugin("stats", "url: file:///s.wasm\nphase: STATS"),
        &plugin("last", "url: file:///l.wasm"),
        &plugin("authn", "url: file:///a.wasm\nphase: AUTHN"),
        &plugin("authz", "url: file:///z.wasm\nphase: AUTHZ"),
        &plugin("l4", "url: file:///n.wasm\ntype: NETWORK"),
    ]
    .concat();
    let json = gen_json(&yaml, &gateway());
    let l = &json.of(type_url::LISTENER).unwrap()["0.0.0.0_8080"];
    let filters = l["filter_chains"][0]["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 2);
    assert_eq!(
        filters[0],
        json!({"name": "extensions.istio.io/wasmplugin/app.l4", "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
            "type_urls": [
                "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            ],
        }})
    );
    let hcm = &filters[1]["typed_config"];
    let names: Vec<&str> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "extensions.istio.io/wasmplugin/app.authn",
            "extensions.istio.io/wasmplugin/app.authz",
            "extensions.istio.io/wasmplugin/app.stats",
            "extensions.istio.io/wasmplugin/app.last",
            "envoy.filters.http.router",
        ]
    );
    assert_eq!(
        hcm["http_filters"][0]["config_discovery"]["type_urls"],
        json!([
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        ])
    );
    assert!(
        hcm["http_filters"][0]["config_discovery"]
            .get("default_config")
            .is_none()
    );
    assert_eq!(hcm["rds"]["route_config_name"], "http.8080");
    // (istiod's RDS source: ADS, v3, no initial fetch timeout)
    assert_eq!(
        hcm["rds"]["config_source"],
        json!({"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"})
    );
    // Every referenced name is served over ECDS, and nothing else is.
    let ecds: Vec<&String> = json
        .of(type_url::EXTENSION_CONFIG)
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        ecds,
        [
            "extensions.istio.io/wasmplugin/app.authn",
            "extensions.istio.io/wasmplugin/app.authz",
            "extensions.istio.io/wasmplugin/app.l4",
            "extensions.istio.io/wasmplugin/app.last",
            "extensions.istio.io/wasmplugin/app.stats",
        ]
    );
}

#[test]
fn routes_clusters_and_endpoints() {
    let json = gen_json(ROUTING, &gateway());
    let rc = &json.of(type_url::ROUTE).unwrap()["http.8080"];
    assert_eq!(
        rc["virtual_hosts"][0]["routes"][0],
        json!({
            "match": {"prefix": "/api", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
            "route": {
                "cluster": "outbound|80||echo.local",
                "timeout": "1.500s",
                "prefix_rewrite": "/",
                "host_rewrite_literal": "echo.local",
                "retry_policy": {"num_retries": 3, "retry_on": "5xx", "per_try_timeout": "0.500s"},
            },
        })
    );
    assert_eq!(
        rc["virtual_hosts"][0]["routes"][1]["route"]["weighted_clusters"],
        json!({"clusters": [
            {"name": "outbound|80||echo.local", "weight": 90},
            {"name": "outbound|443||ext.example.com", "weight": 10},
        ], "total_weight": 100})
    );
    let clusters = json.of(type_url::CLUSTER).unwrap();
    assert_eq!(clusters["outbound|80||echo.local"]["type"], "EDS");
    assert_eq!(
        clusters["outbound|443||ext.example.com"]["type"],
        "STRICT_DNS"
    );
    assert_eq!(
        json.of(type_url::ENDPOINT).unwrap()["outbound|80||echo.local"],
        json!({"cluster_name": "outbound|80||echo.local", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}}
        ]}]})
    );
}

#[test]
fn sidecar_inbound_listener_uses_server_mode() {
    let yaml = [
        ROUTING,
        &plugin(
            "server",
            "url: file:///s.wasm\nmatch: [{mode: SERVER, ports: [{number: 9080}]}]",
        ),
        &plugin("client", "url: file:///c.wasm\nmatch: [{mode: CLIENT}]"),
    ]
    .concat();
    let json = gen_json(&yaml, &sidecar());
    let l = &json.of(type_url::LISTENER).unwrap()["inbound_0.0.0.0_9080"];
    let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["http_filters"][0]["name"],
        "extensions.istio.io/wasmplugin/app.server"
    );
    assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 2);
    assert_eq!(
        json.of(type_url::CLUSTER).unwrap()["inbound|9080||"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
            [0]["endpoint"]["address"],
        json!({"socket_address": {"address": "127.0.0.1", "port_value": 8080}})
    );
    // The CLIENT plugin is on the outbound listeners only; both are served over ECDS.
    let ecds: Vec<&String> = json
        .of(type_url::EXTENSION_CONFIG)
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        ecds,
        [
            "extensions.istio.io/wasmplugin/app.client",
            "extensions.istio.io/wasmplugin/app.server"
        ]
    );
}

#[test]
fn encoded_snapshot_round_trips_through_envoy_json() {
    let yaml = format!(
        "{ROUTING}{}",
        plugin("p", "url: file:///p.wasm\npluginConfig: {a: 1}")
    );
    let config = config_from_yaml(&yaml);
    let snap = generate(&config, &gateway(), &Options::default()).unwrap();
    let ecds = snap.get(type_url::EXTENSION_CONFIG).unwrap();
    let any = ecds.get("extensions.istio.io/wasmplugin/app.p").unwrap();
    let back = wasmesh_xds::descriptors::any_to_json(any).unwrap();
    assert_eq!(
        back["typedConfig"]["config"]["configuration"]["value"],
        "{\"a\":1}"
    );
    assert_eq!(
        back["typedConfig"]["config"]["vmConfig"]["runtime"],
        "envoy.wasm.runtime.v8"
    );
}

#[test]
fn sidecar_outbound_listener_uses_client_mode_and_mesh_virtual_services() {
    let yaml = [
        ROUTING,
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: mesh-vs, namespace: app}\nspec:\n  hosts: [echo.local]\n  http: [{route: [{destination: {host: echo.local}}], timeout: 2s}]\n",
        &plugin("client", "url: file:///c.wasm\nmatch: [{mode: CLIENT, ports: [{number: 80}]}]"),
        &plugin("server", "url: file:///s.wasm\nmatch: [{mode: SERVER}]"),
    ]
    .concat();
    let json = gen_json(&yaml, &sidecar());
    let listeners = json.of(type_url::LISTENER).unwrap();
    let names: Vec<&String> = listeners.keys().collect();
    assert_eq!(names, ["0.0.0.0_443", "0.0.0.0_80", "inbound_0.0.0.0_9080"]);
    let hcm = &listeners["0.0.0.0_80"]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], "80");
    assert_eq!(hcm["rds"]["config_source"]["initial_fetch_timeout"], "0s");
    assert_eq!(
        hcm["http_filters"][0]["name"],
        "extensions.istio.io/wasmplugin/app.client"
    );
    let inbound =
        &listeners["inbound_0.0.0.0_9080"]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        inbound["http_filters"][0]["name"],
        "extensions.istio.io/wasmplugin/app.server"
    );
    let rc = &json.of(type_url::ROUTE).unwrap()["80"];
    assert_eq!(
        rc["virtual_hosts"][0]["domains"],
        json!(["echo.local", "echo.local:80"])
    );
    assert_eq!(
        rc["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
        "2.000s"
    );
}

#[test]
fn root_namespace_sidecar_is_the_mesh_wide_default() {
    let yaml = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  ingress: [{port: {number: 7070, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:7000'}]\n";
    let other = Proxy {
        namespace: "other".into(),
        id: "sidecar~10.0.0.3~x.other~other.svc.cluster.local".into(),
        ..sidecar()
    };
    let json = gen_json(yaml, &other);
    assert!(
        json.of(type_url::LISTENER)
            .unwrap()
            .contains_key("inbound_0.0.0.0_7070")
    );
    // A namespace's own Sidecar wins over the default.
    let json = gen_json(&format!("{ROUTING}{yaml}"), &sidecar());
    let listeners: Vec<&String> = json.of(type_url::LISTENER).unwrap().keys().collect();
    assert!(listeners.contains(&&"inbound_0.0.0.0_9080".to_string()));
    assert!(!listeners.contains(&&"inbound_0.0.0.0_7070".to_string()));
}

#[test]
fn no_plugin_config_is_an_empty_any_as_istiod_sends_it() {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use prost::Message;
    let yaml = format!("{ROUTING}{}", plugin("bare", "url: file:///b.wasm"));
    let snap = generate(&config_from_yaml(&yaml), &gateway(), &Options::default()).unwrap();
    let any = snap
        .get(type_url::EXTENSION_CONFIG)
        .unwrap()
        .get("extensions.istio.io/wasmplugin/app.bare")
        .unwrap();
    let tec = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
    let wasm = Wasm::decode(tec.typed_config.unwrap().value.as_slice()).unwrap();
    let cfg = wasm.config.unwrap();
    assert_eq!(cfg.configuration, Some(Default::default()));
    assert_eq!(cfg.name, "app.bare");
}
