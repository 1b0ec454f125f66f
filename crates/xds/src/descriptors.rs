//! The Envoy v3 descriptor pool: the proto3 JSON mapping (YAML/JSON bootstraps, `/config_dump`)
//! for every message in `envoy_types::pb`.

use std::sync::Mutex;

use prost_reflect::{DescriptorPool, DynamicMessage};

/// The `FileDescriptorSet` shipped by envoy-types 0.7.7 (see `PROVENANCE.md`).
const ENVOY_DESCRIPTORS: &[u8] = include_bytes!("envoy_descriptors.bin");

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
            DescriptorPool::decode(ENVOY_DESCRIPTORS)
                .expect("embedded Envoy descriptor set is valid")
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
    let desc = descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| DescriptorError::UnknownType(type_name.to_string()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|source| DescriptorError::Decode {
        type_name: type_name.to_string(),
        source,
    })?;
    serde_json::to_value(&msg).map_err(|source| DescriptorError::Json {
        type_name: type_name.to_string(),
        source,
    })
}

/// Decodes proto3 JSON (or YAML already turned into a JSON value) into message `type_name` and
/// returns its protobuf encoding. Unknown fields are rejected, naming the field.
pub fn from_json(type_name: &str, json: &serde_json::Value) -> Result<Vec<u8>, DescriptorError> {
    use prost::Message;
    let desc = descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| DescriptorError::UnknownType(type_name.to_string()))?;
    let msg = DynamicMessage::deserialize(desc, json).map_err(|source| DescriptorError::Json {
        type_name: type_name.to_string(),
        source,
    })?;
    Ok(msg.encode_to_vec())
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
}
