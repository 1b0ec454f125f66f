use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HttpUri, RemoteDataSource, http_uri};
use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm as NetworkWasm;
use envoy_types::pb::envoy::extensions::wasm::v3::EnvironmentVariables;
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use super::*;
use crate::cache::CacheOptions;
use crate::metrics::{ConversionResult, Metrics};
use crate::testutil::{FileServer, Route, fetch_options, module, sha};

const NAME: &str = "extensions.istio.io/wasmplugin/default.headers";

fn converter(dir: &std::path::Path) -> Converter {
    let mut o = CacheOptions::new(dir);
    o.fetch = fetch_options();
    Converter::new(ModuleCache::open(o, Arc::new(Metrics::default())).unwrap())
}

fn remote(url: &str, sha: &str) -> AsyncDataSource {
    AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Remote(RemoteDataSource {
            http_uri: Some(HttpUri {
                uri: url.into(),
                timeout: Some(PbDuration {
                    seconds: 30,
                    nanos: 0,
                }),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("_".into())),
            }),
            sha256: sha.into(),
            retry_policy: None,
        })),
    }
}

fn local(path: &str) -> AsyncDataSource {
    AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(path.into())),
            ..Default::default()
        })),
    }
}

/// An ECDS resource as istiod builds it (`buildPluginConfig`/`buildVMConfig`).
fn istiod_resource(
    code: Option<AsyncDataSource>,
    env: &[(&str, &str)],
    policy: FailurePolicy,
    network: bool,
) -> Any {
    let pc = PluginConfig {
        name: "default.headers".into(),
        root_id: "headers_root".into(),
        configuration: Some(pack(
            "type.googleapis.com/google.protobuf.StringValue",
            &"{}".to_string(),
        )),
        failure_policy: policy as i32,
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            runtime: "envoy.wasm.runtime.v8".into(),
            code,
            environment_variables: Some(EnvironmentVariables {
                host_env_keys: vec![],
                key_values: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let typed = if network {
        pack(NETWORK_WASM_TYPE_URL, &NetworkWasm { config: Some(pc) })
    } else {
        pack(HTTP_WASM_TYPE_URL, &HttpWasm { config: Some(pc) })
    };
    pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: Some(typed),
        },
    )
}

fn decode_plugin(any: &Any) -> (TypedExtensionConfig, PluginConfig) {
    let ec = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
    let typed = ec.typed_config.clone().unwrap();
    let w = HttpWasm::decode(typed.value.as_slice()).unwrap();
    (ec, w.config.unwrap())
}

fn vm(pc: &PluginConfig) -> &VmConfig {
    match pc.vm.as_ref().unwrap() {
        plugin_config::Vm::VmConfig(v) => v,
    }
}

fn istio_env(rv: &str) -> Vec<(&'static str, String)> {
    vec![
        (RESOURCE_VERSION_ENV, rv.to_string()),
        (PULL_POLICY_ENV, "IfNotPresent".into()),
    ]
}

#[tokio::test]
async fn remote_code_becomes_a_local_file_and_istio_env_is_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/headers.wasm", 200, module(1));
    let conv = converter(dir.path());
    let env = istio_env("7");
    let mut kv: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    kv.push(("MY_VAR", "x"));
    let res = istiod_resource(
        Some(remote(&srv.url("/headers.wasm"), &sha(&module(1)))),
        &kv,
        FailurePolicy::FailClosed,
        false,
    );
    let out = conv.convert_one(&res).await.unwrap();
    assert!(
        matches!(out.outcome, Outcome::Rewritten { .. }),
        "{:?}",
        out.outcome
    );
    let (ec, pc) = decode_plugin(&out.resource);
    assert_eq!(ec.name, NAME);
    assert_eq!(ec.typed_config.unwrap().type_url, HTTP_WASM_TYPE_URL);
    assert_eq!(pc.root_id, "headers_root");
    assert_eq!(pc.failure_policy, FailurePolicy::FailClosed as i32);
    let v = vm(&pc);
    let Some(async_data_source::Specifier::Local(DataSource {
        specifier: Some(data_source::Specifier::Filename(f)),
        ..
    })) = v.code.as_ref().unwrap().specifier.as_ref()
    else {
        panic!("code is not a local file: {:?}", v.code)
    };
    assert_eq!(std::fs::read(f).unwrap(), module(1));
    let env = v.environment_variables.as_ref().unwrap();
    assert_eq!(env.key_values.len(), 1);
    assert_eq!(env.key_values["MY_VAR"], "x");
    assert_eq!(v.runtime, "envoy.wasm.runtime.v8");
}

#[tokio::test]
async fn only_istio_env_means_no_env_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m", 200, module(2));
    let conv = converter(dir.path());
    let res = istiod_resource(
        Some(remote(&srv.url("/m"), "")),
        &[(RESOURCE_VERSION_ENV, "1")],
        FailurePolicy::FailClosed,
        false,
    );
    let out = conv.convert_one(&res).await.unwrap();
    let (_, pc) = decode_plugin(&out.resource);
    assert!(vm(&pc).environment_variables.is_none());
}

#[tokio::test]
async fn local_code_and_other_filters_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let conv = converter(dir.path());
    let res = istiod_resource(
        Some(local("/opt/plugin.wasm")),
        &[(RESOURCE_VERSION_ENV, "1"), ("K", "V")],
        FailurePolicy::FailClosed,
        false,
    );
    let out = conv.convert_one(&res).await.unwrap();
    assert!(matches!(out.outcome, Outcome::Passthrough));
    // Byte for byte, `ISTIO_META_*` env included, as Istio's `tryUnmarshal` leaves it.
    assert_eq!(out.resource, res);
    let (_, pc) = decode_plugin(&out.resource);
    assert_eq!(
        vm(&pc)
            .environment_variables
            .as_ref()
            .unwrap()
            .key_values
            .get(RESOURCE_VERSION_ENV)
            .map(String::as_str),
        Some("1")
    );
    // Also inside a TypedStruct (file:// plugin written as an EnvoyFilter).
    let ts = typed_struct_local("/opt/plugin.wasm");
    let out = conv.convert_one(&ts).await.unwrap();
    assert!(matches!(out.outcome, Outcome::Passthrough));
    assert_eq!(out.resource, ts);

    let rbac = pack(ECDS_TYPE_URL, &fallback_filter("other", false, true));
    let out = conv.convert_one(&rbac).await.unwrap();
    assert!(matches!(out.outcome, Outcome::Passthrough));
    assert_eq!(out.resource, rbac);
}

fn decode_http_rbac(any: &Any) -> (String, HttpRbac) {
    let ec = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
    let t = ec.typed_config.unwrap();
    assert_eq!(t.type_url, HTTP_RBAC_TYPE_URL);
    (ec.name, HttpRbac::decode(t.value.as_slice()).unwrap())
}

#[tokio::test]
async fn fetch_failure_becomes_an_rbac_filter_per_fail_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m", 404, vec![]);
    let conv = converter(dir.path());
    let url = srv.url("/m");
    for (policy, open) in [
        (FailurePolicy::FailOpen, true),
        (FailurePolicy::FailClosed, false),
        (FailurePolicy::FailReload, false),
        (FailurePolicy::Unspecified, false),
    ] {
        let res = istiod_resource(Some(remote(&url, "")), &[], policy, false);
        let out = conv.convert_one(&res).await.unwrap();
        let Outcome::Fallback {
            fail_open,
            url: u,
            plugin,
            error,
            ..
        } = &out.outcome
        else {
            panic!("{:?}", out.outcome)
        };
        assert_eq!(
            (*fail_open, u.as_str(), plugin.as_str()),
            (open, url.as_str(), "default.headers")
        );
        assert!(error.to_string().contains("404"), "{error}");
        let (name, rbac) = decode_http_rbac(&out.resource);
        assert_eq!(name, NAME);
        if open {
            assert_eq!(
                (rbac.rules, rbac.rules_stat_prefix.as_str()),
                (None, "wasm-default-allow")
            );
        } else {
            assert_eq!(
                rbac.rules,
                Some(RbacRules::default()),
                "ALLOW with no policies denies all"
            );
            assert_eq!(rbac.rules_stat_prefix, "wasm-default-deny");
        }
    }
    // Istio < 1.25 said FAIL_OPEN with the deprecated boolean.
    #[allow(deprecated)]
    let legacy = {
        let mut pc = PluginConfig {
            fail_open: true,
            ..Default::default()
        };
        pc.vm = Some(plugin_config::Vm::VmConfig(VmConfig {
            code: Some(remote(&url, "")),
            ..Default::default()
        }));
        pack(
            ECDS_TYPE_URL,
            &TypedExtensionConfig {
                name: NAME.into(),
                typed_config: Some(pack(HTTP_WASM_TYPE_URL, &HttpWasm { config: Some(pc) })),
            },
        )
    };
    let out = conv.convert_one(&legacy).await.unwrap();
    assert!(matches!(
        out.outcome,
        Outcome::Fallback {
            fail_open: true,
            ..
        }
    ));
}

#[tokio::test]
async fn network_filters_fall_back_to_network_rbac() {
    let dir = tempfile::tempdir().unwrap();
    let conv = converter(dir.path());
    let res = istiod_resource(
        Some(remote("http://127.0.0.1:1/m", "")),
        &[],
        FailurePolicy::FailClosed,
        true,
    );
    let out = conv.convert_one(&res).await.unwrap();
    let ec = TypedExtensionConfig::decode(out.resource.value.as_slice()).unwrap();
    let t = ec.typed_config.unwrap();
    assert_eq!(t.type_url, NETWORK_RBAC_TYPE_URL);
    let rbac = NetworkRbac::decode(t.value.as_slice()).unwrap();
    assert_eq!(
        (rbac.rules, rbac.stat_prefix.as_str()),
        (Some(RbacRules::default()), "wasm-default-deny")
    );
}

#[tokio::test]
async fn an_empty_pull_secret_falls_back_without_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/m", 200, module(3));
    let conv = converter(dir.path());
    let res = istiod_resource(
        Some(remote(&srv.url("/m"), "")),
        &[(PULL_SECRET_ENV, "")],
        FailurePolicy::FailOpen,
        false,
    );
    let out = conv.convert_one(&res).await.unwrap();
    let Outcome::Fallback { error, .. } = out.outcome else {
        panic!()
    };
    assert!(matches!(error, RewriteError::MissingPullSecret));
    assert_eq!(srv.total(), 0);
}

#[tokio::test]
async fn malformed_resources_are_errors_to_nack() {
    let dir = tempfile::tempdir().unwrap();
    let conv = converter(dir.path());
    let garbage = Any {
        type_url: ECDS_TYPE_URL.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    assert!(matches!(
        conv.convert_one(&garbage).await,
        Err(ConvertError::Unmarshal { .. })
    ));
    let no_typed = pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: None,
        },
    );
    assert!(matches!(
        conv.convert_one(&no_typed).await,
        Err(ConvertError::NoTypedConfig { .. })
    ));
    let no_code = istiod_resource(None, &[], FailurePolicy::FailClosed, false);
    assert!(matches!(
        conv.convert_one(&no_code).await,
        Err(ConvertError::NoCode { .. })
    ));
    // No `config`, or a `config` without `vm_config`: Istio NACKs these too.
    let http_no_config = pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: Some(pack(HTTP_WASM_TYPE_URL, &HttpWasm { config: None })),
        },
    );
    let err = conv.convert_one(&http_no_config).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no remote and local load found in Wasm HTTP filter of ECDS resource {NAME}")
    );
    let network_no_vm = pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: Some(pack(
                NETWORK_WASM_TYPE_URL,
                &NetworkWasm {
                    config: Some(PluginConfig::default()),
                },
            )),
        },
    );
    let err = conv.convert_one(&network_no_vm).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConvertError::NoCode {
                filter: "Network",
                ..
            }
        ),
        "{err}"
    );
    let ts_no_config = pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: Some(pack(
                typed_struct::UDPA,
                &typed_struct::TypedStruct {
                    type_url: HTTP_WASM_TYPE_URL.into(),
                    value: Some(Default::default()),
                },
            )),
        },
    );
    assert!(matches!(
        conv.convert_one(&ts_no_config).await,
        Err(ConvertError::NoCode { filter: "HTTP", .. })
    ));
    assert_eq!(
        conv.cache()
            .metrics()
            .conversion_count(ConversionResult::UnmarshalFailure),
        6
    );
    // One bad resource fails the whole response.
    let good = istiod_resource(
        Some(local("/x.wasm")),
        &[],
        FailurePolicy::FailClosed,
        false,
    );
    assert!(conv.convert_all(&[good, garbage]).await.is_err());
}

#[tokio::test]
async fn resources_of_one_response_are_converted_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    let delay = Duration::from_millis(800);
    let resources: Vec<Any> = (0..4u8)
        .map(|i| {
            let path = format!("/m{i}");
            srv.set_route(
                &path,
                Route {
                    status: 200,
                    body: module(50 + i),
                    delay,
                },
            );
            istiod_resource(
                Some(remote(&srv.url(&path), "")),
                &[],
                FailurePolicy::FailClosed,
                false,
            )
        })
        .collect();
    let conv = converter(dir.path());
    let start = Instant::now();
    let out = conv.convert_all(&resources).await.unwrap();
    let took = start.elapsed();
    assert!(
        out.iter()
            .all(|c| matches!(c.outcome, Outcome::Rewritten { .. }))
    );
    assert!(
        took < delay * 3,
        "4 fetches of {delay:?} took {took:?}: not parallel"
    );
}

fn json_to_struct(v: serde_json::Value) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    fn value(v: serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(ListValue {
                values: a.into_iter().map(value).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(Struct {
                fields: o.into_iter().map(|(k, v)| (k, value(v))).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }
    match value(v).kind {
        Some(Kind::StructValue(s)) => s,
        _ => panic!("not an object"),
    }
}

fn typed_struct_resource(url: &str, sha: &str, policy: &str) -> Any {
    let json = serde_json::json!({
        "config": {
            "name": "envoyfilter.wasm",
            "failure_policy": policy,
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"},
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"remote": {"http_uri": {"uri": url, "timeout": "10s"}, "sha256": sha}},
                "environment_variables": {"key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "3", "KEEP": "me"}},
            },
        }
    });
    let ts = typed_struct::TypedStruct {
        type_url: HTTP_WASM_TYPE_URL.into(),
        value: Some(json_to_struct(json)),
    };
    pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: Some(pack(typed_struct::UDPA, &ts)),
        },
    )
}

#[tokio::test]
async fn typed_struct_wasm_configs_are_converted_too() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set("/ts.wasm", 200, module(70));
    let conv = converter(dir.path());
    let out = conv
        .convert_one(&typed_struct_resource(
            &srv.url("/ts.wasm"),
            &sha(&module(70)),
            "FAIL_CLOSED",
        ))
        .await
        .unwrap();
    let Outcome::Rewritten { path, .. } = &out.outcome else {
        panic!("{:?}", out.outcome)
    };
    assert_eq!(std::fs::read(path).unwrap(), module(70));
    let ec = TypedExtensionConfig::decode(out.resource.value.as_slice()).unwrap();
    let t = ec.typed_config.unwrap();
    assert_eq!(t.type_url, typed_struct::UDPA, "still a TypedStruct");
    let ts = typed_struct::TypedStruct::decode(t.value.as_slice()).unwrap();
    let json = format!("{:?}", ts.value.unwrap());
    assert!(
        json.contains(path.as_str()) && json.contains("filename"),
        "{json}"
    );
    assert!(
        !json.contains("ISTIO_META") && json.contains("KEEP"),
        "{json}"
    );
    assert!(!json.contains("remote"), "{json}");

    // A failure follows the fail strategy written in the JSON.
    let out = conv
        .convert_one(&typed_struct_resource(
            "http://127.0.0.1:1/x.wasm",
            "",
            "FAIL_OPEN",
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            out.outcome,
            Outcome::Fallback {
                fail_open: true,
                ..
            }
        ),
        "{:?}",
        out.outcome
    );
    let (_, rbac) = decode_http_rbac(&out.resource);
    assert_eq!(rbac.rules_stat_prefix, "wasm-default-allow");
}

#[tokio::test]
async fn many_resources_for_one_module_fetch_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = FileServer::start().await;
    srv.set_route(
        "/shared.wasm",
        Route {
            status: 200,
            body: module(80),
            delay: Duration::from_millis(200),
        },
    );
    let conv = converter(dir.path());
    let resources: Vec<Any> = (0..8)
        .map(|i| {
            let pc = PluginConfig {
                name: format!("default.p{i}"),
                vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                    code: Some(remote(&srv.url("/shared.wasm"), &sha(&module(80)))),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let ec = TypedExtensionConfig {
                name: format!("extensions.istio.io/wasmplugin/default.p{i}"),
                typed_config: Some(pack(HTTP_WASM_TYPE_URL, &HttpWasm { config: Some(pc) })),
            };
            pack(ECDS_TYPE_URL, &ec)
        })
        .collect();
    let out = conv.convert_all(&resources).await.unwrap();
    assert!(
        out.iter()
            .all(|c| matches!(c.outcome, Outcome::Rewritten { .. }))
    );
    assert_eq!(srv.hits("/shared.wasm"), 1, "single flight");
    assert_eq!(conv.cache().in_use().len(), 1);
}

#[tokio::test]
async fn conversion_can_be_switched_off_as_in_istio() {
    let dir = tempfile::tempdir().unwrap();
    let conv = converter(dir.path()).with_conversion(false);
    let res = istiod_resource(
        Some(remote("oci://127.0.0.1:1/p:v1", "")),
        &[(RESOURCE_VERSION_ENV, "1")],
        FailurePolicy::FailClosed,
        false,
    );
    let out = conv.convert_one(&res).await.unwrap();
    assert!(matches!(out.outcome, Outcome::Passthrough));
    assert_eq!(out.resource, res);
}

/// A file:// plugin inside a `udpa.type.v1.TypedStruct`, with Istio's env entries.
fn typed_struct_local(path: &str) -> Any {
    let json = serde_json::json!({
        "config": {
            "name": "default.headers",
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": path}},
                "environment_variables": {"key_values": {
                    "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "3",
                    "KEEP": "x"
                }}
            }
        }
    });
    let ts = typed_struct::TypedStruct {
        type_url: HTTP_WASM_TYPE_URL.into(),
        value: Some(json_to_struct(json)),
    };
    pack(
        ECDS_TYPE_URL,
        &TypedExtensionConfig {
            name: NAME.into(),
            typed_config: Some(pack(typed_struct::UDPA, &ts)),
        },
    )
}

#[tokio::test]
async fn a_remote_without_http_uri_counts_as_miss_remote_fetch_hint() {
    let dir = tempfile::tempdir().unwrap();
    let conv = converter(dir.path());
    let no_uri = AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Remote(RemoteDataSource {
            http_uri: None,
            sha256: String::new(),
            retry_policy: None,
        })),
    };
    let res = istiod_resource(Some(no_uri), &[], FailurePolicy::FailOpen, false);
    let out = conv.convert_one(&res).await.unwrap();
    assert!(
        matches!(
            out.outcome,
            Outcome::Fallback {
                error: RewriteError::NoHttpUri,
                fail_open: true,
                ..
            }
        ),
        "{:?}",
        out.outcome
    );
    let m = conv.cache().metrics();
    assert_eq!(m.conversion_count(ConversionResult::MissRemoteFetchHint), 1);
    assert_eq!(m.conversion_count(ConversionResult::FetchFailure), 0);
}

#[tokio::test]
async fn conversion_duration_is_recorded_once_per_ecds_response() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = crate::metrics::registry();
    let metrics = Metrics::register(&mut registry);
    let mut o = CacheOptions::new(dir.path());
    o.fetch = fetch_options();
    let conv = Converter::new(ModuleCache::open(o, metrics).unwrap());
    let resources: Vec<Any> = (0..3)
        .map(|i| {
            istiod_resource(
                Some(local(&format!("/opt/{i}.wasm"))),
                &[],
                FailurePolicy::FailClosed,
                false,
            )
        })
        .collect();
    conv.convert_all(&resources).await.unwrap();
    let text = crate::metrics::encode(&registry).unwrap();
    assert!(
        text.contains("\nistio_agent_wasm_config_conversion_duration_count 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nistio_agent_wasm_config_conversion_count{result=\"no_remote_load\"} 3\n"),
        "{text}"
    );
}
