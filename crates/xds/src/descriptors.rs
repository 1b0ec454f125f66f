//! The Envoy v3 descriptor pool: the proto3 JSON mapping (YAML/JSON bootstraps, `/config_dump`)
//! for every message in `envoy_types::pb`.

use std::sync::Mutex;

use prost_reflect::{DescriptorPool, DynamicMessage};

/// The `FileDescriptorSet` shipped by envoy-types 0.7.7 (see `PROVENANCE.md`).
const ENVOY_DESCRIPTORS: &[u8] = include_bytes!("envoy_descriptors.bin");
/// Istio's own Envoy extensions (`istio.stats`, `istio.metadata_exchange`, `istio.alpn`), from
/// `proto/istio/*.proto`: istiod's listeners and clusters carry them.
const ISTIO_DESCRIPTORS: &[u8] = include_bytes!("istio_descriptors.bin");

/// Errors converting between protobuf bytes, `Any` and JSON through the descriptor pool.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// The type is not in the Envoy descriptor set.
    #[error("unknown protobuf message type {0:?} (not in the Envoy v3 descriptor set)")]
    UnknownType(String),
    /// The bytes do not decode as the named message.
    #[error("cannot decode {type_name}: {source}")]
    Decode {
        /// Fully qualified message name.
        type_name: String,
        /// Decoder error.
        source: prost::DecodeError,
    },
    /// The JSON does not map onto the named message.
    #[error("cannot convert JSON to {type_name}: {source}")]
    Json {
        /// Fully qualified message name.
        type_name: String,
        /// The JSON mapping error (names the unknown or mistyped field).
        source: serde_json::Error,
    },
}

/// The decoded pool, while somebody keeps it (see [`release_descriptor_pool`]).
static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// The descriptor pool for the Envoy v3 API, decoded on first use and cached (a cheap clone of
/// a shared pool).
///
/// Shared by the proxy (bootstrap YAML/JSON → `envoy_types::pb` messages via `DynamicMessage`)
/// and by the control plane (`/config_dump`-style JSON for golden tests).
pub fn descriptor_pool() -> DescriptorPool {
    let mut cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    cached
        .get_or_insert_with(|| {
            // The bytes are a compile-time constant produced by protoc for envoy-types; decoding
            // can only fail if the file was corrupted in the repository, which the unit test
            // below catches.
            #[allow(clippy::expect_used)]
            {
                let mut pool = DescriptorPool::decode(ENVOY_DESCRIPTORS)
                    .expect("embedded Envoy descriptor set is valid");
                pool.decode_file_descriptor_set(ISTIO_DESCRIPTORS)
                    .expect("embedded Istio descriptor set is valid");
                pool
            }
        })
        .clone()
}

/// Drops the cached pool. Decoded, the whole Envoy API is ~50 MiB of heap, most of a running
/// proxy's memory, and it is needed only while a config is parsed or built: the proxy releases it
/// once it serves and when xDS goes quiet. The next use decodes it again (~70 ms, release build).
pub fn release_descriptor_pool() {
    let released = POOL.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(released);
    if let Some(hook) = RELEASE_HOOK.get() {
        hook();
    }
}

/// Called after the pool is released (the binary returns the freed pages to the OS there).
static RELEASE_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets the function [`release_descriptor_pool`] calls after dropping the pool; first call wins.
pub fn on_descriptor_release(hook: fn()) {
    let _ = RELEASE_HOOK.set(hook);
}

/// Encodes protobuf `bytes` of message `type_name` (e.g. `envoy.config.listener.v3.Listener`) as
/// proto3 JSON, the way Envoy prints `/config_dump`. Nested `Any`s are expanded with `@type`.
pub fn to_json(type_name: &str, bytes: &[u8]) -> Result<serde_json::Value, DescriptorError> {
    to_json_with(type_name, bytes, false)
}

/// [`to_json`] with the `.proto` field names (`connect_timeout`, not `connectTimeout`), as
/// Envoy writes `/config_dump`.
pub fn to_json_proto_names(
    type_name: &str,
    bytes: &[u8],
) -> Result<serde_json::Value, DescriptorError> {
    to_json_with(type_name, bytes, true)
}

fn to_json_with(
    type_name: &str,
    bytes: &[u8],
    proto_names: bool,
) -> Result<serde_json::Value, DescriptorError> {
    let desc = descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| DescriptorError::UnknownType(type_name.to_string()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|source| DescriptorError::Decode {
        type_name: type_name.to_string(),
        source,
    })?;
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(proto_names);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| DescriptorError::Json {
            type_name: type_name.to_string(),
            source,
        })
}

/// Decodes proto3 JSON (or YAML already turned into a JSON value) into message `type_name` and
/// returns its protobuf encoding. Unknown fields are rejected, naming the field.
pub fn from_json(type_name: &str, json: &serde_json::Value) -> Result<Vec<u8>, DescriptorError> {
    from_json_with(type_name, json, false)
}

/// [`from_json`], ignoring unknown fields when `allow_unknown` (Envoy's
/// `--allow-unknown-static-fields`, which istio-agent always passes).
pub fn from_json_with(
    type_name: &str,
    json: &serde_json::Value,
    allow_unknown: bool,
) -> Result<Vec<u8>, DescriptorError> {
    use prost::Message;
    let desc = descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| DescriptorError::UnknownType(type_name.to_string()))?;
    let mut json = json.clone();
    normalize(&desc, &mut json);
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(!allow_unknown);
    let msg =
        DynamicMessage::deserialize_with_options(desc, &json, &options).map_err(|source| {
            DescriptorError::Json {
                type_name: type_name.to_string(),
                source,
            }
        })?;
    Ok(msg.encode_to_vec())
}

/// `Any` type URLs of the `TypedStruct`s Envoy unwraps wherever it takes an `Any`.
pub const TYPED_STRUCT_URLS: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// The JSON of an `Any` holding a `TypedStruct` (`{"@type": TypedStruct, "type_url": T,
/// "value": {...}}`) becomes the `Any` of the message it describes (`{"@type": T, ...}`).
fn unwrap_typed_struct_json(map: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    let is_typed_struct = map
        .get("@type")
        .and_then(Value::as_str)
        .is_some_and(|t| TYPED_STRUCT_URLS.contains(&t));
    if !is_typed_struct {
        return;
    }
    let Some(Value::String(url)) = map.get("type_url").or_else(|| map.get("typeUrl")).cloned()
    else {
        return;
    };
    let value = match map.get("value") {
        Some(Value::Object(v)) => v.clone(),
        None => serde_json::Map::new(),
        Some(_) => return,
    };
    *map = value;
    map.insert("@type".into(), Value::String(url));
}

/// Makes JSON that Envoy accepts acceptable to the proto3 JSON mapping too:
/// - a single value where a repeated field goes becomes a list of one;
/// - enum values written in another case (`lb_policy: round_robin`, `type: strict_dns`) become
///   the declared name when that is their upper-case form (Envoy parses JSON and YAML with
///   protobuf's `case_insensitive_enum_parsing`, and many published configs rely on it);
/// - `Any`s holding a `udpa.type.v1.TypedStruct` or `xds.type.v3.TypedStruct` become the
///   message the struct describes, as Envoy unwraps them (the proxy-wasm Go SDK's examples
///   configure their filters this way).
fn normalize(desc: &prost_reflect::MessageDescriptor, json: &mut serde_json::Value) {
    use prost_reflect::Kind;
    use serde_json::Value;
    let Value::Object(map) = json else { return };
    if desc.full_name() == "google.protobuf.Any" {
        unwrap_typed_struct_json(map);
        let inner = map
            .get("@type")
            .and_then(Value::as_str)
            .and_then(|url| url.rsplit('/').next())
            .and_then(|name| desc.parent_pool().get_message_by_name(name));
        if let Some(inner) = inner {
            normalize(&inner, json);
        }
        return;
    }
    if desc.full_name().starts_with("google.protobuf.") {
        return; // well-known types have their own JSON forms
    }
    for (key, value) in map.iter_mut() {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            continue;
        };
        let (kind, values): (Kind, Vec<&mut Value>) = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let kind = entry.map_entry_value_field().kind();
            match value {
                Value::Object(m) => (kind, m.values_mut().collect()),
                _ => continue,
            }
        } else if field.is_list() {
            // A single value where a list goes is a list of one, as Envoy's parser takes it
            // (`listeners: {address: ...}` in the proxy-wasm Rust SDK's examples).
            if !matches!(value, Value::Array(_) | Value::Null) {
                *value = Value::Array(vec![value.take()]);
            }
            match value {
                Value::Array(items) => (field.kind(), items.iter_mut().collect()),
                _ => continue,
            }
        } else {
            (field.kind(), vec![value])
        };
        for v in values {
            match &kind {
                Kind::Message(m) => normalize(m, v),
                Kind::Enum(e) => {
                    if let Value::String(name) = v
                        && e.get_value_by_name(name).is_none()
                    {
                        let upper = name.to_ascii_uppercase();
                        if e.get_value_by_name(&upper).is_some() {
                            *name = upper;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The `Any` a `udpa.type.v1.TypedStruct` or `xds.type.v3.TypedStruct` describes (Envoy
/// unwraps them wherever it takes a typed config); `None` for any other `Any`.
pub fn unwrap_typed_struct(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<Option<envoy_types::pb::google::protobuf::Any>, DescriptorError> {
    use prost::Message;
    if !TYPED_STRUCT_URLS.contains(&any.type_url.as_str()) {
        return Ok(None);
    }
    let ts =
        TypedStruct::decode(any.value.as_slice()).map_err(|source| DescriptorError::Decode {
            type_name: "xds.type.v3.TypedStruct".into(),
            source,
        })?;
    let value = ts.value.unwrap_or_default().encode_to_vec();
    let json = to_json("google.protobuf.Struct", &value)?;
    let inner = ts.type_url.rsplit('/').next().unwrap_or_default();
    let value = from_json(inner, &json)?;
    Ok(Some(envoy_types::pb::google::protobuf::Any {
        type_url: ts.type_url,
        value,
    }))
}

/// `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct` (the same layout; neither is in
/// the Envoy descriptor set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    /// The described message's type URL.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Its fields, in proto3 JSON form.
    #[prost(message, optional, tag = "2")]
    pub value: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// Proto3 JSON of an `Any` (`{"@type": ..., fields...}`).
pub fn any_to_json(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<serde_json::Value, DescriptorError> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let mut v = to_json(type_name, &any.value)?;
    if let serde_json::Value::Object(map) = &mut v {
        map.insert(
            "@type".into(),
            serde_json::Value::String(any.type_url.clone()),
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;

    #[test]
    fn pool_has_the_types_we_serve() {
        for name in [
            "envoy.config.listener.v3.Listener",
            "envoy.config.core.v3.TypedExtensionConfig",
            "envoy.extensions.filters.http.wasm.v3.Wasm",
            "envoy.config.bootstrap.v3.Bootstrap",
        ] {
            assert!(
                descriptor_pool().get_message_by_name(name).is_some(),
                "{name}"
            );
        }
    }

    #[test]
    fn json_round_trip_and_unknown_field() {
        let json = serde_json::json!({"name": "c", "connect_timeout": "1.5s"});
        let bytes = from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
        let c = Cluster::decode(bytes.as_slice()).unwrap();
        assert_eq!(c.name, "c");
        assert_eq!(c.connect_timeout.unwrap().nanos, 500_000_000);
        let back = to_json("envoy.config.cluster.v3.Cluster", &bytes).unwrap();
        assert_eq!(back["connectTimeout"], "1.500s");
        let err = from_json(
            "envoy.config.cluster.v3.Cluster",
            &serde_json::json!({"namez": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("namez"), "{err}");
    }

    /// Envoy parses enums case-insensitively (protobuf's `case_insensitive_enum_parsing`), in
    /// nested messages, lists and `Any`s too; a name that is no enum value still fails.
    #[test]
    fn enum_names_in_lower_case_parse_like_envoys() {
        let json = serde_json::json!({
            "name": "c", "type": "strict_dns", "lb_policy": "least_request",
            "health_checks": [{"timeout": "1s", "interval": "1s", "http_health_check": {
                "path": "/", "codec_client_type": "http2"}}],
            "typed_extension_protocol_options": {"x": {
                "@type": "type.googleapis.com/envoy.config.core.v3.HealthStatusSet",
                "statuses": ["healthy", "DRAINING"]}}
        });
        let bytes = from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
        let back = to_json("envoy.config.cluster.v3.Cluster", &bytes).unwrap();
        assert_eq!(back["type"], "STRICT_DNS");
        // one value for a list: a list of one
        let single = serde_json::json!({"listeners": {"name": "l"}});
        let sr = "envoy.config.bootstrap.v3.Bootstrap.StaticResources";
        let one = to_json(sr, &from_json(sr, &single).unwrap()).unwrap();
        assert_eq!(one["listeners"], serde_json::json!([{"name": "l"}]));
        assert_eq!(back["lbPolicy"], "LEAST_REQUEST");
        assert_eq!(
            back["healthChecks"][0]["httpHealthCheck"]["codecClientType"],
            "HTTP2"
        );
        assert_eq!(
            back["typedExtensionProtocolOptions"]["x"]["statuses"],
            serde_json::json!(["HEALTHY", "DRAINING"])
        );
        let err = from_json(
            "envoy.config.cluster.v3.Cluster",
            &serde_json::json!({"lb_policy": "round_robbin"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("round_robbin"), "{err}");
    }

    /// A binary `TypedStruct` `Any` (as xDS carries it) unwraps to the message it describes.
    #[test]
    fn binary_typed_structs_are_unwrapped() {
        use envoy_types::pb::google::protobuf::Any;
        let wasm = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
        let value = serde_json::json!({"config": {"name": "p", "root_id": "r"}});
        let ts = TypedStruct {
            type_url: wasm.into(),
            value: Some(
                envoy_types::pb::google::protobuf::Struct::decode(
                    from_json("google.protobuf.Struct", &value)
                        .unwrap()
                        .as_slice(),
                )
                .unwrap(),
            ),
        };
        let any = Any {
            type_url: TYPED_STRUCT_URLS[1].into(),
            value: ts.encode_to_vec(),
        };
        let inner = unwrap_typed_struct(&any).unwrap().unwrap();
        assert_eq!(inner.type_url, wasm);
        let back = to_json("envoy.extensions.filters.http.wasm.v3.Wasm", &inner.value).unwrap();
        assert_eq!(back["config"]["rootId"], "r");
        let plain = Any {
            type_url: wasm.into(),
            value: inner.value.clone(),
        };
        assert!(unwrap_typed_struct(&plain).unwrap().is_none());
    }

    /// A filter config wrapped in a `TypedStruct` (udpa or xds) reads as the message it
    /// describes, as in Envoy.
    #[test]
    fn typed_structs_are_unwrapped() {
        for ts in TYPED_STRUCT_URLS {
            let json = serde_json::json!({"name": "f", "typed_config": {
                "@type": ts,
                "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "value": {"config": {"name": "p", "failure_policy": "fail_open",
                    "vm_config": {"runtime": "envoy.wasm.runtime.v8"}}}
            }});
            let bytes = from_json(
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
                &json,
            )
            .unwrap();
            let back = to_json(
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
                &bytes,
            )
            .unwrap();
            let tc = &back["typedConfig"];
            assert_eq!(
                tc["@type"],
                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
            );
            assert_eq!(tc["config"]["name"], "p");
            assert_eq!(tc["config"]["failurePolicy"], "FAIL_OPEN");
        }
    }
}
