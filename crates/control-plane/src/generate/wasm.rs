//! The Wasm pieces: LDS filters with `config_discovery` and the ECDS `TypedExtensionConfig`,
//! field for field as istiod 1.29 fills them.

use serde_json::{Value, json};

use super::ads_source;
use crate::config::{Config, Plugin};
use crate::model::wasm::{EnvValueSource, FailStrategy, PluginType, PullPolicy};
use crate::validate::decode_base64;

const HTTP_WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NET_WASM: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
const NET_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

fn config_discovery(types: [&str; 2]) -> Value {
    json!({
        "config_source": ads_source(Some("0s")),
        "type_urls": types,
    })
}

/// The HCM `HttpFilter` for an HTTP plugin: its ECDS name and a config discovery source.
pub fn http_filter_for(p: &Plugin) -> Value {
    json!({"name": p.resource_name, "config_discovery": config_discovery([HTTP_WASM, HTTP_RBAC])})
}

/// The listener network `Filter` for a NETWORK plugin.
pub fn network_filter_for(p: &Plugin) -> Value {
    json!({"name": p.resource_name, "config_discovery": config_discovery([NET_WASM, NET_RBAC])})
}

/// The pull secret's docker config JSON, or "" when missing or of the wrong type (as istiod).
fn pull_secret(p: &Plugin, config: &Config) -> Option<String> {
    let name = p.spec.image_pull_secret.as_ref()?;
    let Some(secret) = config
        .secrets
        .get(&(p.meta.namespace.clone(), name.clone()))
    else {
        tracing::warn!(plugin = %p.resource_name, secret = %name, "imagePullSecret not found in the plugin's namespace");
        return Some(String::new());
    };
    if secret.spec.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
        tracing::warn!(plugin = %p.resource_name, secret = %name, "imagePullSecret is not of type kubernetes.io/dockerconfigjson");
        return Some(String::new());
    }
    let raw = secret
        .spec
        .string_data
        .get(".dockerconfigjson")
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| {
            secret
                .spec
                .data
                .get(".dockerconfigjson")
                .and_then(|d| decode_base64(d))
        });
    Some(
        raw.map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
    )
}

/// The ECDS resource (`TypedExtensionConfig` JSON) of a plugin.
pub fn ecds_resource(p: &Plugin, config: &Config) -> Value {
    let spec = &p.spec;
    let mut env = serde_json::Map::new();
    if let Some(s) = pull_secret(p, config) {
        env.insert("ISTIO_META_WASM_IMAGE_PULL_SECRET".into(), json!(s));
    }
    match spec.image_pull_policy {
        Some(PullPolicy::IfNotPresent) => {
            env.insert(
                "ISTIO_META_WASM_IMAGE_PULL_POLICY".into(),
                json!("IfNotPresent"),
            );
        }
        Some(PullPolicy::Always) => {
            env.insert("ISTIO_META_WASM_IMAGE_PULL_POLICY".into(), json!("Always"));
        }
        _ => {}
    }
    env.insert(
        "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION".into(),
        json!(p.meta.resource_version),
    );
    let mut host_keys = Vec::new();
    for e in spec.vm_config.iter().flat_map(|v| &v.env) {
        match e.value_from {
            Some(EnvValueSource::Host) => host_keys.push(e.name.clone()),
            _ => {
                env.insert(e.name.clone(), json!(e.value.clone().unwrap_or_default()));
            }
        }
    }
    let mut env_json = json!({"key_values": env});
    if !host_keys.is_empty() {
        env_json["host_env_keys"] = json!(host_keys);
    }
    let code = match p.url.strip_prefix("file://") {
        Some(path) => json!({"local": {"filename": path}}),
        None => json!({"remote": {
            "http_uri": {"uri": p.url, "timeout": "30s", "cluster": "_"},
            "sha256": spec.sha256.clone().unwrap_or_default(),
        }}),
    };
    let mut plugin = json!({
        "name": p.plugin_config_name(),
        "root_id": spec.plugin_name.clone().unwrap_or_default(),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": code,
            "environment_variables": env_json,
        },
        "failure_policy": match spec.fail_strategy {
            Some(FailStrategy::FailOpen) => "FAIL_OPEN",
            Some(FailStrategy::FailReload) => "FAIL_RELOAD",
            _ => "FAIL_CLOSED",
        },
    });
    if let Some(cfg) = &spec.plugin_config
        && !cfg.is_empty()
    {
        plugin["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": Value::Object(cfg.clone()).to_string(),
        });
    }
    let ty = if p.type_ == PluginType::Network {
        NET_WASM
    } else {
        HTTP_WASM
    };
    json!({
        "name": p.resource_name,
        "typed_config": {"@type": ty, "config": plugin},
    })
}

/// istiod sets `PluginConfig.configuration` to an empty `Any` when there is no `pluginConfig`;
/// proto3 JSON cannot spell an `Any` without a type, so it is set on the encoded resource.
/// Anything that does not decode as a Wasm `TypedExtensionConfig` is returned unchanged.
pub(super) fn with_empty_configuration(bytes: Vec<u8>) -> Vec<u8> {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm as HttpWasm;
    use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm as NetWasm;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    let Ok(mut tec) = TypedExtensionConfig::decode(bytes.as_slice()) else {
        return bytes;
    };
    let Some(typed) = tec.typed_config.as_mut() else {
        return bytes;
    };
    let patched = if typed.type_url == HTTP_WASM {
        HttpWasm::decode(typed.value.as_slice()).ok().map(|mut w| {
            if let Some(c) = w.config.as_mut() {
                c.configuration.get_or_insert_with(Any::default);
            }
            w.encode_to_vec()
        })
    } else if typed.type_url == NET_WASM {
        NetWasm::decode(typed.value.as_slice()).ok().map(|mut w| {
            if let Some(c) = w.config.as_mut() {
                c.configuration.get_or_insert_with(Any::default);
            }
            w.encode_to_vec()
        })
    } else {
        None
    };
    match patched {
        Some(v) => {
            typed.value = v;
            tec.encode_to_vec()
        }
        None => bytes,
    }
}
