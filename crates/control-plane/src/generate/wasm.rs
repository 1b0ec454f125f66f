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

/// istiod's `toSecretResourceName`: `credentials.ToResourceName` then `ParseResourceName`, with
/// the namespace forced to the plugin's (`other/foo` and `kubernetes://foo` both mean secret
/// `foo` of the plugin's namespace). `None` (no env var at all) when the name does not parse.
pub(crate) fn secret_resource_name(name: &str, plugin_ns: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let rn = if name.starts_with("builtin://") {
        "default".to_string()
    } else if name.starts_with("invalid://") {
        "invalid://".to_string()
    } else if ["configmap://", "kubernetes://", "kubernetes-gateway://"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        name.to_string()
    } else {
        format!("kubernetes://{name}")
    };
    // `ParseResourceName`: the secret name (its namespace is replaced anyway) and the type.
    let (ty, secret) = if let Some(res) = rn.strip_prefix("kubernetes://") {
        let mut split = res.split('/');
        let first = split.next().unwrap_or_default();
        ("kubernetes", split.next().unwrap_or(first))
    } else if let Some((ty, res)) = [
        ("configmap", rn.strip_prefix("configmap://")),
        (
            "kubernetes-gateway",
            rn.strip_prefix("kubernetes-gateway://"),
        ),
    ]
    .into_iter()
    .find_map(|(ty, res)| res.map(|r| (ty, r)))
    {
        let mut split = res.split('/');
        let (ns, secret) = (split.next().unwrap_or_default(), split.next()?);
        if ns.is_empty() || secret.is_empty() {
            return None;
        }
        (ty, secret)
    } else if rn.starts_with("invalid://") {
        ("invalid", "")
    } else {
        return None;
    };
    Some(format!("{ty}://{plugin_ns}/{secret}"))
}

/// The `ISTIO_META_WASM_IMAGE_PULL_SECRET` value: the docker config JSON of the secret named by a
/// `kubernetes://<ns>/<name>` resource name (istiod's `parseSecretName` + `GetDockerCredential`),
/// or "" when it names another type, is missing, is not `kubernetes.io/dockerconfigjson`, or has
/// no `.dockerconfigjson` key; `None` when the plugin has no (parsable) imagePullSecret.
fn pull_secret(p: &Plugin, config: &Config) -> Option<String> {
    let rn = secret_resource_name(p.spec.image_pull_secret.as_deref()?, &p.meta.namespace)?;
    let Some((ns, name)) = rn
        .strip_prefix("kubernetes://")
        .and_then(|r| r.split_once('/'))
    else {
        tracing::warn!(plugin = %p.resource_name, secret = %rn, "malformed Wasm pull secret resource name");
        return Some(String::new());
    };
    let Some(secret) = config.secrets.get(&(ns.to_string(), name.to_string())) else {
        tracing::warn!(plugin = %p.resource_name, secret = %rn, "imagePullSecret not found in the plugin's namespace");
        return Some(String::new());
    };
    if secret.spec.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
        tracing::warn!(plugin = %p.resource_name, secret = %rn, "imagePullSecret is not of type kubernetes.io/dockerconfigjson");
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
    let code = match &p.local_file {
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
            "value": super::go_json::struct_to_string(cfg),
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
