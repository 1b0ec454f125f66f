//! Bootstrap files: YAML or JSON → proto3 JSON mapping through Envoy's descriptors → the
//! envoy-types `Bootstrap`, exactly as Envoy's own loader reads them (unknown fields rejected).

use prost::Message;

use super::ConfigError;
use crate::pb::bootstrap::Bootstrap;

const BOOTSTRAP_TYPE: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// Reads and parses a bootstrap file (`.json` as JSON, anything else as YAML, which is a
/// superset of JSON anyway).
pub fn load_file(path: &std::path::Path) -> Result<Bootstrap, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses bootstrap YAML or JSON text.
pub fn parse(text: &str) -> Result<Bootstrap, ConfigError> {
    let value = parse_value(text)?;
    from_value(&value)
}

/// YAML/JSON text → JSON value.
pub fn parse_value(text: &str) -> Result<serde_json::Value, ConfigError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ConfigError::Parse(format!("JSON: {e}")))
    } else {
        serde_saphyr::from_str::<serde_json::Value>(text)
            .map_err(|e| ConfigError::Parse(format!("YAML: {e}")))
    }
}

/// JSON value → `Bootstrap` through the proto3 JSON mapping.
pub fn from_value(value: &serde_json::Value) -> Result<Bootstrap, ConfigError> {
    let bytes = wasmesh_xds::descriptors::from_json(BOOTSTRAP_TYPE, value)
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    Bootstrap::decode(bytes.as_slice()).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// The bootstrap as proto3 JSON (for `/config_dump`).
pub fn to_json(bootstrap: &Bootstrap) -> serde_json::Value {
    wasmesh_xds::descriptors::to_json(BOOTSTRAP_TYPE, &bootstrap.encode_to_vec())
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_any_and_durations() {
        let b = parse(
            r#"
static_resources:
  clusters:
  - name: c
    connect_timeout: 0.25s
    type: STATIC
"#,
        )
        .unwrap();
        let c = &b.static_resources.unwrap().clusters[0];
        assert_eq!(c.connect_timeout.as_ref().unwrap().nanos, 250_000_000);
        let err = parse("static_resources: {listenerz: []}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listenerz"), "{err}");
    }
}
